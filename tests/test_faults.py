"""Faults injected into real `dataflow_archive` processes: kill -9 at random points,
a paused worker whose lease is taken over, and a destination disk that fills up.
After recovery every run is encrypted exactly once and every archive verifies."""

from __future__ import annotations

import errno
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from dfarchive.coordination.store import SqliteStore
from tests.support.waiting import wait_until

BIN = Path(sys.executable).parent
SENTINEL = ".metadata_rsync_exitcode"


class Site:
    """One host's folders, config and state, for dataflow_archive processes."""

    def __init__(self, root: Path, gnupg_home, destination: Path | None = None, **extra):
        self.root = root
        self.gnupg_home = gnupg_home
        self.destination = destination or root / "archives"
        for path in (root / "seq" / "seqA", self.destination, root / "keys"):
            path.mkdir(parents=True, exist_ok=True)
        (root / "keys").chmod(0o700)
        self.config = root / "df_archive.yaml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "statusdb": {"url": f"sqlite:{root / 'runs.sqlite3'}"},
                    "sequencing_path": str(root / "seq"),
                    "destination_path": str(self.destination),
                    "keys_path": str(root / "keys"),
                    "gpg_receiver": gnupg_home.fingerprint,
                    "scan_interval": 0.2,
                    "concurrency": 1,
                    **extra,
                }
            )
        )
        self.slow_path = ""

    def slow_tar(self) -> None:
        """Real tar, pausing one second per MiB: keeps a run in flight."""
        bin_dir = self.root / "slowbin"
        bin_dir.mkdir(exist_ok=True)
        (bin_dir / "tar").write_text(
            f"#!/bin/sh\nexec {shutil.which('tar')} --checkpoint=105 "
            '--checkpoint-action=sleep=1 "$@"\n'
        )
        (bin_dir / "tar").chmod(0o755)
        self.slow_path = f"{bin_dir}:"

    def run_folder(self, name: str, size: int, *, random_bytes: bool = False) -> Path:
        run = self.root / "seq" / "seqA" / name
        run.mkdir()
        (run / "RunInfo.xml").write_text(f"<RunInfo id='{name}'/>")
        with open(run / "data.cbcl", "wb") as f:
            if random_bytes:
                f.write(os.urandom(size))
            else:
                f.truncate(size)
        (run / SENTINEL).write_text("0")
        return run

    def start(self, *args: str, slow: bool = False, log: str = "archiver") -> subprocess.Popen:
        env = {**os.environ, "GNUPGHOME": self.gnupg_home.home}
        if slow:
            env["PATH"] = self.slow_path + env["PATH"]
        return subprocess.Popen(
            [str(BIN / "dataflow_archive"), "-c", str(self.config), *args],
            env=env,
            stdout=open(self.root / f"{log}.log", "a"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def once(self) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "dataflow_archive"), "-c", str(self.config), "--once"],
            env={**os.environ, "GNUPGHOME": self.gnupg_home.home},
            capture_output=True,
            text=True,
            timeout=300,
        )

    def docs(self) -> dict[str, dict]:
        with SqliteStore(self.root / "runs.sqlite3") as store:
            store.setup()
            return {doc["_id"]: doc for doc in store.runs()}

    def wait_for(self, predicate, what: str, timeout: float = 60) -> dict[str, dict]:
        def ready() -> tuple[dict[str, dict]] | None:
            docs = self.docs()
            return (docs,) if predicate(docs) else None  # a tuple: true even if docs is {}

        (docs,) = wait_until(ready, timeout, what, detail=self.docs)
        return docs

    def wait_leases_expired(self, timeout: float = 30) -> None:
        def expired(docs: dict[str, dict]) -> bool:
            now = datetime.now(UTC).isoformat(timespec="seconds")
            return all(
                (d.get("lease_expires_at") or "") < now
                for d in docs.values()
                if d["status"] == "processing"
            )

        self.wait_for(expired, "leases to expire", timeout)

    def partials(self) -> list[str]:
        return [
            p.name
            for d in (self.destination, self.root / "keys")
            for p in d.iterdir()
            if p.name.endswith(".partial")
        ]

    def verify_deep(self, run_id: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "dfarchive"), "verify", "--deep", "-c", str(self.config), run_id],
            env={**os.environ, "GNUPGHOME": self.gnupg_home.home},
            capture_output=True,
            text=True,
            timeout=120,
        )


def fill_up(path: Path) -> None:
    """Write to ``path`` until its file system is full (unbuffered: no late flush)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    block = b"\0" * (1 << 20)
    try:
        while True:
            os.write(fd, block)
    except OSError as error:
        assert error.errno == errno.ENOSPC, error
    finally:
        os.close(fd)


def kill_group(proc: subprocess.Popen) -> None:
    """What a lost host looks like: the process and its tar/gpg children, at once."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def test_kill_9_at_random_points_loses_and_duplicates_nothing(tmp_path, gnupg_home):
    # crashes count as failures: allow more of them than this test inflicts
    site = Site(tmp_path, gnupg_home, lease_seconds=2, max_attempts=50)
    runs = [f"run_{n:02d}" for n in range(20)]
    for run in runs:
        site.run_folder(run, 16 << 20)
    rng = random.Random(20261125)
    for _ in range(20):
        site.wait_leases_expired()
        proc = site.start()
        time.sleep(rng.uniform(0.3, 2.5))  # the random point of the kill
        kill_group(proc)
        # the invariant holds at every instant: encrypted means complete and in place
        for run_id, doc in site.docs().items():
            if doc["status"] == "encrypted":
                assert Path(doc["archive"]["file"]).stat().st_size == doc["archive"]["size"]
                assert Path(doc["archive"]["key_file"]).is_file(), run_id
    site.wait_leases_expired()
    result = site.once()
    assert result.returncode == 0, result.stderr[-3000:]
    docs = site.docs()
    assert sorted(docs) == runs
    for run_id, doc in docs.items():
        assert doc["status"] == "encrypted", doc
        assert [a["outcome"] for a in doc["attempts"]].count("encrypted") == 1
        verified = site.verify_deep(run_id)
        assert verified.returncode == 0, verified.stdout + verified.stderr
    assert site.partials() == []
    # the kills landed: attempts were interrupted, noticed by their lease, and recovered
    errors = [a.get("error", "") for d in docs.values() for a in d["attempts"]]
    interrupted = [e for e in errors if e]
    assert interrupted and all(e.startswith("lease expired") for e in interrupted)


def test_paused_worker_abandons_a_run_taken_over_by_another(tmp_path, gnupg_home):
    site = Site(tmp_path, gnupg_home, lease_seconds=3)
    site.slow_tar()
    site.run_folder("run_paused", 8 << 20)
    paused = site.start(slow=True, log="paused")
    try:
        site.wait_for(
            lambda docs: docs.get("run_paused", {}).get("status") == "processing",
            "the run in flight",
        )
        os.killpg(paused.pid, signal.SIGSTOP)
        site.wait_leases_expired()
        result = site.once()  # another worker reclaims and archives it
        assert result.returncode == 0, result.stderr[-3000:]
        taken_over = site.docs()["run_paused"]
        assert taken_over["status"] == "encrypted"
        os.killpg(paused.pid, signal.SIGCONT)
        wait_until(
            lambda: "abandoning this attempt" in (tmp_path / "paused.log").read_text(),
            30, "the paused worker abandoning its attempt", every=0.1,
            detail=(tmp_path / "paused.log").read_text,
        )  # fmt: skip
        paused.send_signal(signal.SIGINT)
        paused.wait(timeout=60)
    finally:
        if paused.poll() is None:
            kill_group(paused)
    after = site.docs()["run_paused"]
    assert after["_rev"] == taken_over["_rev"]  # the paused worker wrote nothing
    assert after["failure_count"] == 1  # the reclaim
    verified = site.verify_deep("run_paused")
    assert verified.returncode == 0, verified.stdout
    assert site.partials() == []


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A 400 MiB tmpfs as the destination volume."""
    mount = tmp_path / "volume"
    mount.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=400m", "tmpfs", str(mount)],
        check=True,
        capture_output=True,
    )
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False, capture_output=True)


def test_disk_full_mid_archive_fails_cleanly_and_retries_later(tmp_path, gnupg_home, small_disk):
    site = Site(tmp_path, gnupg_home, destination=small_disk / "archives")
    site.slow_tar()
    run = site.run_folder("run_big", 12 << 20, random_bytes=True)
    source_before = (run / "data.cbcl").read_bytes()
    proc = site.start(slow=True)
    try:
        wait_until(site.partials, 60, "the archive to start")
        # something else fills the volume while the archive is being written
        filler = small_disk / "filler"
        fill_up(filler)
        doc = site.wait_for(
            lambda docs: "No space left" in (docs["run_big"].get("last_error") or ""),
            "the disk-full error",
            timeout=120,
        )["run_big"]
        assert doc["failure_count"] == 0  # a full disk is not the run's fault
        assert site.partials() == []
        assert not (site.destination / "run_big.tar.gpg").exists()
        assert (run / "data.cbcl").read_bytes() == source_before
        filler.unlink()  # space is back: the same process archives it on a later pass
        doc = site.wait_for(
            lambda docs: docs["run_big"]["status"] == "encrypted", "the retry", timeout=120
        )["run_big"]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    outcomes = [a["outcome"] for a in doc["attempts"]]
    assert outcomes[0] == "released" and outcomes[-1] == "encrypted"
    assert "No space left on device" in doc["attempts"][0]["error"]
    assert site.verify_deep("run_big").returncode == 0
