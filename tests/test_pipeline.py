"""One run end to end through the real pipeline: tar, OpenPGP, validation, key wrap,
publish, and the store transitions around it (attempt_run)."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import threading
from pathlib import Path

import pytest

from dfarchive import keys, pipeline
from dfarchive.attempt import Outcome, attempt_run
from dfarchive.errors import PreflightError, RecipientError
from dfarchive.keys import Recipient, resolve_recipient
from dfarchive.pipeline import ArchiveSettings, archive_run
from dfarchive.store import NewRun, SqliteStore


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
    assert outcome is Outcome.ENCRYPTED
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
    assert again is Outcome.SKIPPED
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
    assert outcome is Outcome.FAILED
    doc = store.get("run_gone")
    assert doc["status"] == "pending" and doc["failure_count"] == 1
    assert "run_gone does not exist" in doc["last_error"]
