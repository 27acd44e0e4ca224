"""One run end to end through the real pipeline: tar, OpenPGP, validation, key wrap,
publish, and the store transitions around it (attempt_run)."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
import subprocess
import tarfile
import threading
from pathlib import Path

import pytest

from dfarchive.archiving import keys, pipeline, tarstream, validate
from dfarchive.archiving.engines import ENGINE_NAMES, meter
from dfarchive.archiving.keys import Recipient, resolve_recipient
from dfarchive.archiving.partialfile import PartialFile
from dfarchive.archiving.pipeline import ArchiveSettings, archive_run
from dfarchive.coordination.attempt import AttemptOutcome, attempt_run
from dfarchive.coordination.store import NewRun, SqliteStore
from dfarchive.errors import (
    Cancelled,
    PreflightError,
    RecipientError,
    ToolError,
    ValidationError,
)
from dfarchive.openpgp import decrypt
from dfarchive.ops.restore import restore_archive
from dfarchive.plumbing.writeprogress import WriteProgress
from tests.support.clock import ManualClock
from tests.support.waiting import wait_until


@pytest.fixture
def outputs(tmp_path) -> ArchiveSettings:
    dest, keydir = tmp_path / "archives", tmp_path / "keys"
    dest.mkdir()
    keydir.mkdir(mode=0o700)
    return ArchiveSettings(destination_path=dest, keys_path=keydir)


@pytest.fixture
def recipient(gnupg_home) -> Recipient:
    return resolve_recipient(gnupg_home.fingerprint, gnupg_home=gnupg_home.home)


@pytest.fixture
def seen_keys(monkeypatch) -> list[bytes]:
    """Record every run key the pipeline makes (to search for it afterwards)."""
    made: list[bytes] = []
    original = keys.new_run_key

    def recording() -> bytes:
        made.append(original())
        return made[-1]

    monkeypatch.setattr(pipeline, "new_run_key", recording)
    return made


def tree(root: Path) -> dict[str, tuple]:
    """Everything restore must reproduce: names, bytes, modes, mtimes, link targets."""
    found = {}
    for path in sorted(root.rglob("*")):
        st = os.lstat(path)
        rel = os.fsencode(path.relative_to(root))
        if stat.S_ISLNK(st.st_mode):
            found[rel] = ("link", os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            found[rel] = ("dir", stat.S_IMODE(st.st_mode))
        else:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            found[rel] = ("file", stat.S_IMODE(st.st_mode), int(st.st_mtime), digest)
    return found


def stock_restore(archive: Path, key: Path, into: Path, gnupg_home) -> None:
    """Exactly the README's stock-tools restore."""
    into.mkdir()
    subprocess.run(
        [
            "bash",
            "-c",
            'set -o pipefail; gpg --batch -q -d "$1" | gpg --batch -q --pinentry-mode loopback '
            '--passphrase-fd 0 -d "$2" | tar -x -C "$3"',
            "restore",
            str(key),
            str(archive),
            str(into),
        ],
        env=gnupg_home.env,
        check=True,
        capture_output=True,
        timeout=120,
    )


def child_pids() -> set[str]:
    found = subprocess.run(["pgrep", "-P", str(os.getpid())], capture_output=True, text=True)
    return set(found.stdout.split())


def no_partials(*directories: Path) -> bool:
    return not any(p.name.endswith(".partial") for d in directories for p in d.iterdir())


@pytest.mark.parametrize("engine", ["inprocess", "gpg"])
def test_archive_restores_identically_with_stock_tools(
    engine, outputs, recipient, run_folder, gnupg_home, seen_keys, tmp_path
):
    run = run_folder()
    settings = ArchiveSettings(**{**outputs.__dict__, "engine": engine})
    before = tree(run.path)
    record = archive_run(run.path.name, run.path, settings, recipient)

    archive, key = Path(record["file"]), Path(record["key_file"])
    assert archive == outputs.destination_path / f"{run.path.name}.tar.gpg"
    assert key == outputs.keys_path / f"{run.path.name}.key.gpg"
    assert stat.S_IMODE(archive.stat().st_mode) == 0o640
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert record["size"] == archive.stat().st_size
    assert record["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert record["engine"] == engine
    assert record["recipient_fingerprint"] == recipient.fingerprint
    assert no_partials(outputs.destination_path, outputs.keys_path)

    restored = tmp_path / "restored"
    stock_restore(archive, key, restored, gnupg_home)
    assert tree(restored / run.path.name) == before
    assert tree(run.path) == before  # the source is untouched

    # the run key never reached disk in plaintext (hex or raw form)
    [run_key] = seen_keys
    for path in tmp_path.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            assert run_key not in data and bytes.fromhex(run_key.decode()) not in data, path


def test_tar_exclusions_are_honoured(outputs, recipient, run_folder, gnupg_home, tmp_path):
    run = run_folder(small_files=10, big_files=0)
    settings = ArchiveSettings(
        **{**outputs.__dict__, "tar_exclusions": ("Demultiplex*", "demux_*")}
    )
    record = archive_run(run.path.name, run.path, settings, recipient)
    restored = tmp_path / "restored"
    stock_restore(Path(record["file"]), Path(record["key_file"]), restored, gnupg_home)
    names = {p.name for p in (restored / run.path.name).iterdir()}
    assert "Demultiplex_Stats" not in names and "demux_1" not in names
    assert "RunInfo.xml" in names


def test_preflight_errors_name_the_folder(outputs, recipient, tmp_path):
    with pytest.raises(PreflightError, match="does not exist"):
        archive_run("gone", tmp_path / "gone", outputs, recipient)
    nosentinel = tmp_path / "run_x"
    nosentinel.mkdir()
    with pytest.raises(PreflightError, match=r"run_x has no sentinel"):
        archive_run("run_x", nosentinel, outputs, recipient)


def test_a_failure_after_encryption_leaves_no_partial_and_no_final_file(
    outputs, run_folder, recipient
):
    run = run_folder(small_files=10, big_files=1)
    bogus = Recipient(
        fingerprint="0" * 40, uid="nobody", expires=None, encryption_key_ids=("0" * 16,)
    )
    with pytest.raises(RecipientError):
        archive_run(run.path.name, run.path, outputs, bogus)
    assert list(outputs.destination_path.iterdir()) == []
    assert list(outputs.keys_path.iterdir()) == []


def test_cancel_mid_run_cleans_up(outputs, recipient, tmp_path):
    run = tmp_path / "big_run"
    run.mkdir()
    (run / ".metadata_rsync_exitcode").write_text("0")
    with open(run / "sparse.bin", "wb") as f:
        f.truncate(4 << 30)  # 4 GiB of zeros: far more than is done before the cancel
    cancel = threading.Event()
    progressed = threading.Event()

    def progress(done: int, total: int) -> None:
        if done > 0:
            progressed.set()

    def cancel_after_progress() -> None:
        progressed.wait(60)
        cancel.set()

    children_before = child_pids()  # e.g. the session's CouchDB test server
    canceller = threading.Thread(target=cancel_after_progress)
    canceller.start()
    with pytest.raises(Exception) as caught:
        archive_run("big_run", run, outputs, recipient, progress=progress, cancel=cancel)
    canceller.join()
    assert type(caught.value).__name__ == "Cancelled"
    assert list(outputs.destination_path.iterdir()) == []
    assert list(outputs.keys_path.iterdir()) == []
    assert child_pids() <= children_before  # tar and gpg are gone


# -- the archive holds exactly the run folder -------------------------------------------

SENTINEL = ".metadata_rsync_exitcode"


def make_run(sequencer: Path, name: str, *inside: str) -> Path:
    run = sequencer / name
    run.mkdir(parents=True)
    (run / SENTINEL).write_text("0\n")
    for file_name in inside:
        (run / file_name).write_text(f"{file_name}\n")
    return run


def entries(run: Path) -> list[bytes]:
    """The run folder and everything in it, named as tar members (raw bytes)."""
    parent = os.fsencode(run.parent)
    found = [os.fsencode(run.name)]
    for directory, dirs, files in os.walk(os.fsencode(run)):
        found += [os.path.relpath(os.path.join(directory, n), parent) for n in dirs + files]
    return sorted(found)


def archived_members(record: dict, run_key: bytes) -> list[bytes]:
    """The member names of a published archive, decrypted with dfarchive's reader."""
    plaintext = bytearray()
    with open(record["file"], "rb") as source:
        decrypt(source, run_key, plaintext.extend)
    with tarfile.open(fileobj=io.BytesIO(plaintext), errors="surrogateescape") as tar:
        return sorted(os.fsencode(m.name) for m in tar.getmembers())


# Run folder names GNU tar decodes on its command line unless told not to.
UNQUOTED_NAMES = {
    "octal_neighbour": "victim\\061",  # -> victim1, the folder next to it
    "octal_dot": "\\056",  # -> ".": the whole sequencer folder
    "octal_dotdot": "\\056\\056",  # -> "..": the whole sequencing tree
    "backslash": "back\\\\slash",  # -> back\slash: "Cannot stat"
    "backslash_n": "line\\nfeed",  # -> a newline
    "octal_backslash": "\\134",  # -> a lone backslash
}
INSIDE = ("RunInfo.xml", "in\\061side.txt", "a \\\\ b", "tab\\there", "\\056\\056")


@pytest.mark.parametrize("name", UNQUOTED_NAMES.values(), ids=UNQUOTED_NAMES.keys())
def test_a_run_folder_named_with_backslashes_is_archived_exactly(
    name, outputs, recipient, seen_keys, tmp_path
):
    sequencer = tmp_path / "seq" / "seqA"
    for decoy in ("victim1", "back\\slash", "line\nfeed", "\\"):  # what tar would decode to
        make_run(sequencer, decoy, "not_this_run.txt")
    run = make_run(sequencer, name, *INSIDE)
    before = tree(run)
    record = archive_run(name, run, outputs, recipient)
    [run_key] = seen_keys
    assert archived_members(record, run_key) == entries(run)
    assert record["members"] == len(entries(run))
    assert record["file"] == str(outputs.destination_path / f"{name}.tar.gpg")
    restore_archive(
        Path(record["file"]),
        run_key,
        tmp_path / "restored",
        run_id=name,
        plaintext_size=record["plaintext_size"],
        plaintext_sha256=record["plaintext_sha256"],
    )
    assert tree(tmp_path / "restored" / name) == before  # backslashes inside kept too
    assert {p.name for p in (tmp_path / "restored" / name).iterdir()} == {SENTINEL, *INSIDE}


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_victim_061_is_not_archived_as_its_neighbour_victim1(
    engine, outputs, recipient, seen_keys, tmp_path
):
    sequencer = tmp_path / "seq" / "seqA"
    neighbour = make_run(sequencer, "victim1", "neighbour.txt")
    run = make_run(sequencer, "victim\\061", "RunInfo.xml")
    settings = ArchiveSettings(**{**outputs.__dict__, "engine": engine})
    record = archive_run(run.name, run, settings, recipient)
    [run_key] = seen_keys
    assert archived_members(record, run_key) == [
        b"victim\\061", b"victim\\061/" + SENTINEL.encode(), b"victim\\061/RunInfo.xml",
    ]  # fmt: skip
    assert record["members"] == 3
    assert entries(neighbour) != entries(run)


VERBATIM_TAR_COMMAND = tarstream.tar_command


def unquoting_tar(run_path: Path, exclusions=()) -> list[str]:
    """The tar command as it was before names were passed verbatim."""
    return [arg for arg in VERBATIM_TAR_COMMAND(run_path, exclusions) if arg != "--no-unquote"]


def test_a_tar_member_from_outside_the_run_folder_fails_the_attempt(
    outputs, recipient, tmp_path, monkeypatch
):
    sequencer = tmp_path / "seq" / "seqA"
    make_run(sequencer, "victim1", "neighbour.txt")
    run = make_run(sequencer, "victim\\061", "RunInfo.xml")
    monkeypatch.setattr(tarstream, "tar_command", unquoting_tar)  # a tar decoding the name
    with pytest.raises(ToolError) as raised:
        archive_run(run.name, run, outputs, recipient)
    assert str(raised.value) == (
        "tar archived 'victim1' (and 2 more), which is not an entry of run folder "
        f"{run}: the archive would not hold exactly that folder; not archived"
    )
    assert list(outputs.destination_path.iterdir()) == []
    assert list(outputs.keys_path.iterdir()) == []


def test_a_hard_link_to_a_name_outside_the_run_folder_fails_the_attempt(
    outputs, recipient, tmp_path, monkeypatch
):
    run = make_run(tmp_path / "seq" / "seqA", "run_1", "link")
    stream = tmp_path / "crafted.tar"  # a tar stream naming another folder's file
    with tarfile.open(stream, "w", format=tarfile.GNU_FORMAT) as tar:
        tar.add(run, "run_1", recursive=False)
        tar.add(run / SENTINEL, f"run_1/{SENTINEL}")
        link = tarfile.TarInfo("run_1/link")
        link.type, link.linkname = tarfile.LNKTYPE, "run_2/secret"
        tar.addfile(link)
    monkeypatch.setattr(tarstream, "tar_command", lambda *args: ["cat", str(stream)])
    with pytest.raises(ToolError, match=r"^tar archived 'run_2/secret', which is not an entry"):
        archive_run("run_1", run, outputs, recipient)
    assert list(outputs.destination_path.iterdir()) == []
    assert list(outputs.keys_path.iterdir()) == []


# -- publishing: the key before the archive ----------------------------------------------


def test_the_key_is_published_durably_before_the_archive(
    outputs, recipient, run_folder, monkeypatch
):
    run = run_folder(small_files=5, big_files=0)
    events: list[tuple[str, str]] = []
    publish, fsync_directory = PartialFile.publish, pipeline.fsync_directory

    def recording_publish(self: PartialFile) -> Path:
        events.append(("rename", self.final.name))
        return publish(self)

    def recording_fsync(path: Path) -> None:
        events.append(("fsync", Path(path).name))
        fsync_directory(path)

    monkeypatch.setattr(PartialFile, "publish", recording_publish)
    monkeypatch.setattr(pipeline, "fsync_directory", recording_fsync)
    archive_run(run.path.name, run.path, outputs, recipient)
    assert events == [
        ("rename", f"{run.path.name}.key.gpg"),
        ("fsync", "keys"),
        ("rename", f"{run.path.name}.tar.gpg"),
        ("fsync", "archives"),
    ]


def test_a_failure_between_the_two_renames_leaves_no_archive_without_its_key(
    outputs, recipient, run_folder, monkeypatch
):
    run = run_folder(small_files=5, big_files=0)
    publish = PartialFile.publish
    published: list[Path] = []

    def second_rename_fails(self: PartialFile) -> Path:
        if published:
            raise OSError(errno.EIO, "injected I/O error", str(self.final))
        published.append(publish(self))
        return published[-1]

    monkeypatch.setattr(PartialFile, "publish", second_rename_fails)
    with pytest.raises(OSError, match="injected"):
        archive_run(run.path.name, run.path, outputs, recipient)
    assert published == [outputs.keys_path / f"{run.path.name}.key.gpg"]
    assert list(outputs.destination_path.iterdir()) == []  # no archive, no partial
    assert [p.name for p in outputs.keys_path.iterdir()] == [f"{run.path.name}.key.gpg"]


# -- progress ----------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_the_last_progress_report_counts_every_byte_tar_wrote(
    engine, outputs, recipient, tmp_path, monkeypatch
):
    run = make_run(tmp_path / "seq" / "seqA", "run_1")
    (run / "big.bin").write_bytes(os.urandom(3 << 20))  # several chunks
    frozen = ManualClock(1000.0)  # as the modules' time: every report falls in one instant
    monkeypatch.setattr(meter, "time", frozen)
    monkeypatch.setattr(pipeline, "time", frozen)
    reports: list[tuple[int, int]] = []
    settings = ArchiveSettings(**{**outputs.__dict__, "engine": engine})
    record = archive_run(
        "run_1", run, settings, recipient, progress=lambda *report: reports.append(report)
    )
    size = record["plaintext_size"]
    assert reports[0][0] < size  # the first chunk, reported at once
    assert reports[-1][0] == size  # and the end, although within the same second
    assert reports[-1][1] >= size


# -- attempt_run: the pipeline inside the store's transitions --------------------------


@pytest.fixture
def store(tmp_path):
    with SqliteStore(tmp_path / "runs.sqlite3", lease_seconds=60) as store:
        store.setup()
        yield store


def test_attempt_archives_and_marks_encrypted(store, outputs, recipient, run_folder):
    run = run_folder(small_files=20, big_files=1)
    store.register_many([NewRun(run.path.name, str(run.path), "seqA")], worker_id="scanner:1")
    outcome = attempt_run(
        store,
        run.path.name,
        worker_id="host:1",
        settings=outputs,
        recipient=recipient,
        sequencing_path=run.path.parent.parent,
    )
    assert outcome is AttemptOutcome.ENCRYPTED
    doc = store.get(run.path.name)
    assert doc["status"] == "encrypted"
    assert doc["archive"]["file"] == str(outputs.destination_path / f"{run.path.name}.tar.gpg")
    assert doc["failure_count"] == 0
    # a duplicate message for the same run is harmless
    again = attempt_run(
        store,
        run.path.name,
        worker_id="host:2",
        settings=outputs,
        recipient=recipient,
        sequencing_path=run.path.parent.parent,
    )
    assert again is AttemptOutcome.SKIPPED
    assert store.get(run.path.name)["_rev"] == doc["_rev"]


def test_attempt_on_a_vanished_folder_counts_a_failure(store, outputs, recipient, tmp_path):
    store.register_many([NewRun("run_gone", str(tmp_path / "run_gone"), "seqA")], worker_id="s")
    outcome = attempt_run(
        store,
        "run_gone",
        worker_id="h:1",
        settings=outputs,
        recipient=recipient,
        sequencing_path=tmp_path.parent,
    )
    assert outcome is AttemptOutcome.FAILED
    doc = store.get("run_gone")
    assert doc["status"] == "pending" and doc["failure_count"] == 1
    assert "run_gone does not exist" in doc["last_error"]


# -- validation overlapped with writing ----------------------------------------------------

METHODS = ("inprocess", "gpg")


def settings_with(
    outputs: ArchiveSettings, tmp_path: Path, name: str, **changes
) -> ArchiveSettings:
    """``outputs`` with output directories of their own and ``changes``."""
    dest, keydir = tmp_path / name / "archives", tmp_path / name / "keys"
    dest.mkdir(parents=True)
    keydir.mkdir(mode=0o700)
    fields = {**outputs.__dict__, "destination_path": dest, "keys_path": keydir}
    return ArchiveSettings(**{**fields, **changes})


def dfarchive_threads() -> set[threading.Thread]:
    """Our helper threads (writer, readers, hashers, validation, relays, stderr drains)."""
    helpers = ("dfarchive-", "tar-stderr", "gpg-stderr")
    return {t for t in threading.enumerate() if t.name.startswith(helpers) and t.is_alive()}


def assert_nothing_left(settings: ArchiveSettings, children_before: set[str], threads_before):
    """No partial or final file, no child process, no helper thread (they end within
    a few poll intervals: polled with a deadline)."""
    assert list(settings.destination_path.iterdir()) == []
    assert list(settings.keys_path.iterdir()) == []
    assert child_pids() <= children_before
    wait_until(
        lambda: not dfarchive_threads() - threads_before, 30, "the helper threads to end",
        detail=lambda: dfarchive_threads() - threads_before,
    )  # fmt: skip


def big_sparse_run(tmp_path: Path) -> Path:
    """A run of 4 GiB of zeros: far more than is written before the tests' failures."""
    run = make_run(tmp_path / "seq", "big_run")
    with open(run / "sparse.bin", "wb") as f:
        f.truncate(4 << 30)
    return run


@pytest.mark.parametrize("direct_io", [True, False], ids=["direct", "buffered"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_overlapped_validation_records_exactly_what_validating_after_does(
    engine, method, direct_io, outputs, recipient, tmp_path
):
    run = make_run(tmp_path / "seq", "run_1", "RunInfo.xml")
    (run / "big.bin").write_bytes(os.urandom(9 << 20 | 12345))  # blocks and a tail
    records = {}
    for mode in ("overlapped", "after"):
        settings = settings_with(
            outputs,
            tmp_path,
            mode,
            engine=engine,
            validate_with=method,
            direct_io=direct_io,
            validate=mode,
        )
        assert pipeline.overlaps(settings) == (mode == "overlapped")
        records[mode] = record = archive_run("run_1", run, settings, recipient)
        archive = Path(record["file"])
        assert record["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
        assert record["size"] == archive.stat().st_size
        assert no_partials(settings.destination_path, settings.keys_path)
    overlapped, after = records["overlapped"], records["after"]
    assert overlapped.keys() == after.keys()
    per_archive = {"file", "key_file", "sha256", "seconds"}  # new key and IV, own paths
    assert {k: v for k, v in overlapped.items() if k not in per_archive} == {
        k: v for k, v in after.items() if k not in per_archive
    }
    assert overlapped["validated_with"] == method


def test_validate_from_device_keeps_reading_after_the_fsync(
    outputs, recipient, tmp_path, monkeypatch
):
    run = make_run(tmp_path / "seq", "run_1", "RunInfo.xml")
    settings = settings_with(outputs, tmp_path, "cold", validate_from_device=True)
    assert settings.validate == "overlapped" and not pipeline.overlaps(settings)
    calls = []
    original = pipeline.validate_archive

    def recording(path: Path, *args, **kwargs) -> str:
        calls.append((path.stat().st_size, kwargs["from_device"]))  # the whole archive
        return original(path, *args, **kwargs)

    monkeypatch.setattr(pipeline, "validate_archive", recording)
    record = archive_run("run_1", run, settings, recipient)
    assert calls == [(record["size"], True)]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_a_range_corrupted_between_write_and_read_back_fails_the_attempt_mid_write(
    engine, method, outputs, recipient, tmp_path, monkeypatch
):
    run = big_sparse_run(tmp_path)
    settings = settings_with(outputs, tmp_path, "out", engine=engine, validate_with=method)
    partial = settings.destination_path / "big_run.tar.gpg.partial"
    original = WriteProgress.advance
    published: list[int] = []

    def corrupt_then_publish(self: WriteProgress, count: int) -> None:
        if not published:  # the first block is on the disk, not yet read back
            fd = os.open(partial, os.O_WRONLY)
            os.pwrite(fd, bytes(1000), 300)  # the first tar header's bytes, zeroed
            os.close(fd)
        published.append(count)
        original(self, count)

    monkeypatch.setattr(WriteProgress, "advance", corrupt_then_publish)
    children_before, threads_before = child_pids(), dfarchive_threads()
    with pytest.raises(ValidationError, match=str(partial)):
        archive_run("big_run", run, settings, recipient)
    assert sum(published) < 1 << 30  # the writer was stopped: far from its 4 GiB
    assert_nothing_left(settings, children_before, threads_before)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_cancel_during_overlap_leaves_no_partial_child_or_thread(
    engine, method, outputs, recipient, tmp_path, monkeypatch
):
    run = big_sparse_run(tmp_path)
    settings = settings_with(outputs, tmp_path, "out", engine=engine, validate_with=method)
    cancel, reading = threading.Event(), threading.Event()
    original = WriteProgress.wait_for

    def noting_reads(self: WriteProgress, offset: int, *stops) -> bool:
        if offset > validate.READ_SIZE:  # the first block was read back
            reading.set()
        return original(self, offset, *stops)

    monkeypatch.setattr(WriteProgress, "wait_for", noting_reads)

    def cancel_while_both_run() -> None:
        reading.wait(120)
        cancel.set()

    children_before, threads_before = child_pids(), dfarchive_threads()
    canceller = threading.Thread(target=cancel_while_both_run)
    canceller.start()
    try:
        with pytest.raises(Cancelled):
            archive_run("big_run", run, settings, recipient, cancel=cancel)
    finally:
        reading.set()
        canceller.join()
    assert_nothing_left(settings, children_before, threads_before)


@pytest.mark.parametrize("mode", ["overlapped", "after"])
def test_progress_is_one_figure_for_writing_and_validating(
    mode, outputs, recipient, tmp_path, monkeypatch
):
    run = make_run(tmp_path / "seq", "run_1")
    (run / "big.bin").write_bytes(os.urandom(9 << 20))
    frozen = ManualClock(1000.0)  # as the modules' time: only first and last reports
    for module in (meter, pipeline, validate):
        monkeypatch.setattr(module, "time", frozen)
    reports: list[tuple[int, int]] = []
    settings = settings_with(outputs, tmp_path, mode, validate=mode)
    record = archive_run(
        "run_1", run, settings, recipient, progress=lambda *report: reports.append(report)
    )
    size = record["plaintext_size"]
    done = [d for d, _ in reports]
    assert done == sorted(done)  # one figure, never going back
    assert done[-1] == size and reports[-1][1] >= size
    # writing and validating are each half of it
    assert size // 2 in done or mode == "overlapped"
    assert any(0 < d < size // 2 for d in done)  # the first chunk written (or validated)
    if mode == "after":  # every byte written, then the first chunk validated, then all
        assert done[-3:] == [size // 2, done[-2], size] and size // 2 < done[-2] < size
