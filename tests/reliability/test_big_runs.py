"""Big run folders: 100,000 small files, and one file over 4 GiB (sparse on disk).

Through the real claim → tar → OpenPGP → validation → key wrap → publish path
(``attempt_run`` on a SQLite store), in bounded time: the trees live on tmpfs
(``/dev/shm``) where the disk would be the bottleneck.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dfarchive.archiving.keys import resolve_recipient
from dfarchive.archiving.pipeline import ArchiveSettings
from dfarchive.coordination.attempt import AttemptOutcome, attempt_run
from dfarchive.coordination.store import NewRun, SqliteStore
from dfarchive.ops.restore import restore_archive
from tests.support.gpg import GnupgHome, new_gnupg_home
from tests.support.workspace import SENTINEL

SHM = Path("/dev/shm")
SMALL_FILES, PER_DIRECTORY = 100_000, 1_000
BIG_SIZE = (4 << 30) + 12_345  # over 4 GiB, not a multiple of anything


def memory_available() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A private directory on tmpfs when the memory allows the >4 GiB archive and its
    restored copy there at once, else in the temporary directory (slower, on disk)."""
    usable = SHM.is_dir() and os.access(SHM, os.W_OK) and memory_available() > 12 << 30
    base = SHM if usable else None
    path = Path(tempfile.mkdtemp(prefix="dfarchive-big-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def keyring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[GnupgHome]:
    home = new_gnupg_home(tmp_path / "gpg")
    monkeypatch.setenv("GNUPGHOME", home.home)
    try:
        yield home
    finally:
        home.stop_agent()


def archive_once(base: Path, run: Path, keyring: GnupgHome, store_dir: Path) -> dict:
    settings = ArchiveSettings(
        destination_path=base / "archives", keys_path=base / "keys", gnupg_home=Path(keyring.home)
    )
    settings.destination_path.mkdir()
    settings.keys_path.mkdir(mode=0o700)
    recipient = resolve_recipient(keyring.fingerprint, gnupg_home=keyring.home)
    with SqliteStore(store_dir / "runs.sqlite3") as store:
        store.setup()
        store.register_many([NewRun(run.name, str(run), "seqA")], worker_id="scanner:1")
        outcome = attempt_run(
            store,
            run.name,
            worker_id="worker:1",
            settings=settings,
            recipient=recipient,
            sequencing_path=run.parent.parent,
        )
        doc = store.get(run.name)
    assert outcome is AttemptOutcome.ENCRYPTED, doc and doc.get("last_error")
    assert doc is not None and doc["status"] == "encrypted"
    return doc


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_100000_small_files(scratch: Path, keyring: GnupgHome, tmp_path: Path) -> None:
    run = scratch / "seq" / "seqA" / "run_many"
    started = time.monotonic()
    for first in range(0, SMALL_FILES, PER_DIRECTORY):
        directory = run / f"C{first // PER_DIRECTORY:03d}.1"
        directory.mkdir(parents=True)
        for i in range(first, first + PER_DIRECTORY):
            with open(directory / f"s_{i}.bcl", "wb") as f:
                f.write(i.to_bytes(4, "big"))
    (run / SENTINEL).write_text("0\n")
    built = time.monotonic()
    doc = archive_once(scratch, run, keyring, tmp_path)
    archived = time.monotonic()
    directories = SMALL_FILES // PER_DIRECTORY
    assert doc["archive"]["members"] == 1 + directories + SMALL_FILES + 1  # + run, sentinel
    # headers and one data block per file, the folders' headers, and the end marker
    assert doc["archive"]["plaintext_size"] >= 512 * (2 * SMALL_FILES + directories + 2)
    assert Path(doc["archive"]["file"]).stat().st_size == doc["archive"]["size"]
    print(f"built in {built - started:.1f} s, archived in {archived - built:.1f} s")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_one_file_over_4_gib(scratch: Path, keyring: GnupgHome, tmp_path: Path) -> None:
    run = tmp_path / "seq" / "seqA" / "run_huge"  # on disk: sparse, nothing really stored
    run.mkdir(parents=True)
    with open(run / "huge.cbcl", "wb") as f:
        f.seek(BIG_SIZE - 1)
        f.write(b"\x01")  # a last byte that is not a hole
    (run / SENTINEL).write_text("0\n")
    started = time.monotonic()
    doc = archive_once(scratch, run, keyring, tmp_path)
    archived = time.monotonic()
    record = doc["archive"]
    assert record["members"] == 3
    blocks = lambda size: -(-size // 512) * 512  # noqa: E731 - tar pads to whole blocks
    members = 3 * 512 + blocks(BIG_SIZE) + blocks(2)  # headers, huge file, sentinel
    assert members <= record["plaintext_size"] <= members + 1024 + 10240  # end + record
    assert record["plaintext_size"] % 10240 == 0  # tar's records
    archive = Path(record["file"])
    assert archive.stat().st_size == record["size"] > BIG_SIZE

    from dfarchive.archiving.keys import unwrap_key

    passphrase = unwrap_key(Path(record["key_file"]), gnupg_home=keyring.home)
    into = scratch / "restored"
    result = restore_archive(
        archive,
        passphrase,
        into,
        run_id="run_huge",
        plaintext_size=record["plaintext_size"],
        plaintext_sha256=record["plaintext_sha256"],
    )
    assert result.checked_against_record and result.members == 3
    restored_in = time.monotonic() - archived
    print(f"archived in {archived - started:.1f} s, restored in {restored_in:.1f} s")
    restored = into / "run_huge" / "huge.cbcl"
    assert restored.stat().st_size == BIG_SIZE
    with open(restored, "rb") as f:
        f.seek(BIG_SIZE - 1)
        assert f.read() == b"\x01"
