"""Run folders that change under dfarchive: between scans, after registration and while
tar reads them. Real scheduling passes, claims, tar, OpenPGP and gpg, in this process
(``schedule_pass`` + ``attempt_run`` on a SQLite store); every case asserts the run
document and the files on disk."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dfarchive.archiving import pipeline as pipeline_module
from dfarchive.archiving.keys import Recipient, resolve_recipient
from dfarchive.archiving.pipeline import ArchiveSettings
from dfarchive.coordination import attempt as attempt_module
from dfarchive.coordination.attempt import AttemptOutcome, attempt_run
from dfarchive.coordination.store import SqliteStore
from dfarchive.service.config import Config, load_config
from dfarchive.service.scheduler import schedule_pass
from tests.support.gpg import new_gnupg_home
from tests.support.workspace import (
    SENTINEL,
    Workspace,
    descendants,
    plaintext_of,
    tar_members,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def keyring(tmp_path_factory: pytest.TempPathFactory):
    home = new_gnupg_home(tmp_path_factory.mktemp("keyring") / "gpg")
    try:
        yield home
    finally:
        home.stop_agent()


@dataclass
class Setup:
    ws: Workspace
    config: Config
    store: SqliteStore
    recipient: Recipient

    @property
    def settings(self) -> ArchiveSettings:
        return self.config.archive_settings()

    def schedule(self) -> list[str]:
        return schedule_pass(self.store, self.config, worker_id="scheduler:1").registered

    def attempt(self, run_id: str) -> AttemptOutcome:
        return attempt_run(
            self.store,
            run_id,
            worker_id="worker:1",
            settings=self.settings,
            recipient=self.recipient,
            sequencing_path=self.config.sequencing_path,
        )

    def doc(self, run_id: str) -> dict:
        doc = self.store.get(run_id)
        assert doc is not None, run_id
        return doc

    def assert_counted_failure(self, run_id: str, *fragments: str) -> None:
        """Back to pending, counted, ``last_error`` saying all of ``fragments``, no file."""
        doc = self.doc(run_id)
        assert (doc["status"], doc["failure_count"]) == ("pending", 1)
        for fragment in fragments:
            assert fragment in doc["last_error"]
        self.assert_nothing_published(run_id)

    def assert_nothing_published(self, run_id: str) -> None:
        assert not (self.ws.archives / f"{run_id}.tar.gpg").exists()
        assert not (self.ws.keys / f"{run_id}.key.gpg").exists()
        assert self.ws.partials() == []


@pytest.fixture
def setup(tmp_path: Path, keyring, monkeypatch: pytest.MonkeyPatch) -> Iterator[Setup]:
    monkeypatch.setenv("GNUPGHOME", keyring.home)
    ws = Workspace(tmp_path, keyring)
    config = load_config(ws.config())
    recipient = resolve_recipient(keyring.fingerprint, gnupg_home=keyring.home)
    children = set(descendants(os.getpid()))
    with SqliteStore(ws.state, lease_seconds=30) as store:
        store.setup()
        yield Setup(ws, config, store, recipient)
    assert set(descendants(os.getpid())) <= children  # no tar or gpg left running


def during_tar(monkeypatch: pytest.MonkeyPatch, action: Callable[[], None]) -> list[int]:
    """Call ``action`` once, at the first progress report of the next archive (tar is
    then reading the run folder: its output has only just started to flow)."""
    real = attempt_module.archive_run
    calls: list[int] = []

    def archive_run(*args, progress=None, **kwargs):
        def report(done: int, total: int) -> None:
            if not calls and done:
                calls.append(done)
                action()
            if progress is not None:
                progress(done, total)

        return real(*args, progress=report, **kwargs)

    monkeypatch.setattr(attempt_module, "archive_run", archive_run)
    return calls


def big_run(ws: Workspace, name: str, *subdirs: str, size: int = 48 << 20) -> Path:
    """A run folder whose big files (zeros) keep tar busy past the first progress report."""
    run = ws.make_run("seqA", name)
    for sub in subdirs or ("",):
        (run / sub).mkdir(parents=True, exist_ok=True)
        (run / sub / "big.bin").write_bytes(bytes(size))
    return run


# -- between scans and after registration ------------------------------------------------


def test_a_sentinel_appearing_between_scans_registers_the_run_then(setup: Setup) -> None:
    run = setup.ws.make_run("seqA", "run_late", complete=False)
    assert setup.schedule() == []  # scanned before the sentinel: not complete yet
    assert setup.store.get("run_late") is None
    (run / SENTINEL).write_text("0\n")
    assert setup.schedule() == ["run_late"]  # the next scan sees it
    assert setup.attempt("run_late") is AttemptOutcome.ENCRYPTED


def test_a_folder_renamed_after_registration_fails_clearly_and_the_new_name_is_archived(
    setup: Setup,
) -> None:
    run = setup.ws.make_run("seqA", "run_old")
    assert setup.schedule() == ["run_old"]
    run.rename(run.with_name("run_new"))
    assert setup.schedule() == ["run_new"]
    assert setup.attempt("run_old") is AttemptOutcome.FAILED
    setup.assert_counted_failure("run_old", f"run folder {run} does not exist (moved or deleted?)")
    assert setup.attempt("run_new") is AttemptOutcome.ENCRYPTED


def test_a_folder_replaced_by_a_symlink_after_registration_is_not_archived(
    setup: Setup,
) -> None:
    run = setup.ws.make_run("seqA", "run_moved")
    assert setup.schedule() == ["run_moved"]
    moved = setup.ws.base / "other_disk" / "run_moved"
    moved.parent.mkdir()
    shutil.move(run, moved)
    run.symlink_to(moved)  # "moved to another disk, left a link"
    assert setup.attempt("run_moved") is AttemptOutcome.FAILED
    doc = setup.doc("run_moved")
    assert "is now a symbolic link" in doc["last_error"] and str(moved) in doc["last_error"]
    setup.assert_nothing_published("run_moved")


def test_the_same_run_name_appearing_under_another_sequencer_later_is_flagged(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    first = setup.ws.make_run("seqB", "run_twice")
    assert setup.schedule() == ["run_twice"]
    assert setup.attempt("run_twice") is AttemptOutcome.ENCRYPTED
    second = setup.ws.make_run("seqA", "run_twice")  # sorts before seqB
    with caplog.at_level(logging.ERROR, logger="dfarchive"):
        assert setup.schedule() == []
    doc = setup.doc("run_twice")
    assert doc["path"] == str(first)  # the registered run is untouched
    [flagged] = [r.getMessage() for r in caplog.records if "not archiving" in r.getMessage()]
    assert repr(str(second)) in flagged and repr(str(first)) in flagged
    assert "status 'encrypted'" in flagged


# -- while tar reads the folder ------------------------------------------------------------


def test_a_file_changed_while_tar_reads_it_is_a_counted_failure(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = big_run(setup.ws, "run_changed")
    setup.schedule()
    with open(run / "big.bin", "ab") as big:
        during_tar(monkeypatch, lambda: big.write(b"more data\n") and big.flush())
        assert setup.attempt("run_changed") is AttemptOutcome.FAILED
    setup.assert_counted_failure("run_changed", "big.bin: file changed as we read it")


def test_a_file_appearing_in_the_folder_tar_is_reading_is_a_counted_failure(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = big_run(setup.ws, "run_appearing")
    setup.schedule()
    during_tar(monkeypatch, lambda: (run / "late_file.txt").write_text("late\n"))
    assert setup.attempt("run_appearing") is AttemptOutcome.FAILED
    setup.assert_counted_failure("run_appearing", "run_appearing", "changed")


def two_folders(ws: Workspace, name: str) -> tuple[Path, Path]:
    """A run with folders ``done`` (a small file) and ``reading`` (a big one), in the
    order tar takes them, so at the first progress report tar has left ``done``."""
    run = ws.make_run("seqA", name)
    (run / "d1").mkdir()
    (run / "d2").mkdir()
    # tar takes a directory's entries in readdir order
    done, reading = (run / n for n in os.listdir(run) if n in ("d1", "d2"))
    (done / "small.txt").write_text("small\n")
    (reading / "big.bin").write_bytes(bytes(48 << 20))
    return done, reading


def behind_tar(reading: Path, action: Callable[[], None]) -> Callable[[], None]:
    """``action``, once it is sure that tar is reading the big file in ``reading``."""

    def act() -> None:
        [tar] = [pid for pid, name in descendants(os.getpid()).items() if name == b"tar"]
        open_files = {os.readlink(f"/proc/{tar}/fd/{fd}") for fd in os.listdir(f"/proc/{tar}/fd")}
        assert str(reading / "big.bin") in open_files  # tar has left ``done``
        action()

    return act


def test_a_file_appearing_in_a_folder_tar_has_finished_is_a_counted_failure(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tar checks a directory when it leaves it: a file created in a directory it has
    already archived goes unnoticed by tar itself."""
    done, reading = two_folders(setup.ws, "run_behind")
    setup.schedule()
    during_tar(monkeypatch, behind_tar(reading, lambda: (done / "late_file.txt").write_text("x")))
    assert setup.attempt("run_behind") is AttemptOutcome.FAILED
    setup.assert_counted_failure(
        "run_behind", f"directory 'run_behind/{done.name}' had entries added"
    )


def test_a_file_rewritten_after_tar_read_it_is_a_counted_failure(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same size, same folder listing: only the file's own stamp shows the change."""
    done, reading = two_folders(setup.ws, "run_rewritten")
    setup.schedule()
    with open(done / "small.txt", "r+b") as small:
        during_tar(monkeypatch, behind_tar(reading, lambda: os.pwrite(small.fileno(), b"S", 0)))
        assert setup.attempt("run_rewritten") is AttemptOutcome.FAILED
    setup.assert_counted_failure(
        "run_rewritten", f"file 'run_rewritten/{done.name}/small.txt' was modified"
    )
    # the folder holds still now: the next attempt archives the new content
    assert setup.attempt("run_rewritten") is AttemptOutcome.ENCRYPTED
    plaintext = plaintext_of(
        setup.ws.archives / "run_rewritten.tar.gpg", setup.ws.run_key("run_rewritten")
    )
    assert b"Small\n" in plaintext


def test_a_file_changed_after_tar_read_it_is_a_counted_failure(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The folder must still be as tar saw it when the run is marked archived: a change
    after the archive was written and validated (here, while the key is wrapped, the
    last step before publishing) fails the attempt."""
    run = big_run(setup.ws, "run_late_change", size=1 << 20)
    real = pipeline_module.wrap_key

    def wrap_key(*args, **kwargs):
        (run / "RunInfo.xml").chmod(0o600)  # metadata only: the change time still moves
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline_module, "wrap_key", wrap_key)
    setup.schedule()
    assert setup.attempt("run_late_change") is AttemptOutcome.FAILED
    doc = setup.doc("run_late_change")
    assert "file 'run_late_change/RunInfo.xml' was modified" in doc["last_error"]
    setup.assert_nothing_published("run_late_change")


def test_a_folder_deleted_while_tar_reads_it_is_a_counted_failure(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = big_run(setup.ws, "run_deleted", "sub")
    (run / "sub" / "other.txt").write_text("x\n")
    setup.schedule()
    during_tar(monkeypatch, lambda: shutil.rmtree(run))
    assert setup.attempt("run_deleted") is AttemptOutcome.FAILED
    setup.assert_counted_failure("run_deleted", "run_deleted")


def test_a_quiet_folder_still_archives_with_every_member(setup: Setup) -> None:
    """The control case: the same shapes, unchanged, end encrypted and complete."""
    big_run(setup.ws, "run_quiet", "d1", "d2", size=1 << 20)
    setup.schedule()
    assert setup.attempt("run_quiet") is AttemptOutcome.ENCRYPTED
    names = [
        m.name
        for m in tar_members(
            plaintext_of(setup.ws.archives / "run_quiet.tar.gpg", setup.ws.run_key("run_quiet"))
        )
    ]
    assert sorted(names) == sorted(
        ["run_quiet", "run_quiet/RunInfo.xml", f"run_quiet/{SENTINEL}", "run_quiet/d1",
         "run_quiet/d1/big.bin", "run_quiet/d2", "run_quiet/d2/big.bin"]
    )  # fmt: skip
    assert setup.doc("run_quiet")["archive"]["members"] == 7


def test_changes_in_excluded_folders_are_ignored(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tar_exclusions name folders other tools may still write (demultiplexing)."""
    setup.config = load_config(setup.ws.config(tar_exclusions=["Demultiplex*"]))
    run = big_run(setup.ws, "run_demux")
    stats = run / "Demultiplex_Stats"
    stats.mkdir()
    (stats / "log.txt").write_text("started\n")

    def demultiplexing() -> None:
        (stats / "new.txt").write_text("x")
        with open(stats / "log.txt", "a") as log:
            log.write("still going\n")

    setup.schedule()
    during_tar(monkeypatch, demultiplexing)
    assert setup.attempt("run_demux") is AttemptOutcome.ENCRYPTED
