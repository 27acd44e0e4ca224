"""Distributed workers, for real: `dramatiq dfarchive.actors` processes, a scheduler
process, RabbitMQ and the CouchDB-compatible server. Every run must end encrypted
exactly once, whatever happens to the workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.amqp import message_count

BIN = Path(sys.executable).parent
SENTINEL = ".metadata_rsync_exitcode"


class Deployment:
    """A test 'facility': config, folders, and the processes started for it."""

    def __init__(self, tmp_path, couchdb_server, database, amqp_url, queue, gnupg_home, **extra):
        self.tmp = tmp_path
        self.queue = queue
        self.amqp_url = amqp_url
        self.gnupg_home = gnupg_home
        for name in ("seq/seqA", "archives", "keys"):
            (tmp_path / name).mkdir(parents=True, exist_ok=True)
        (tmp_path / "keys").chmod(0o700)
        self.config = tmp_path / "df_archive.yaml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "statusdb": {
                        "url": couchdb_server.url,
                        "database": database,
                        "username": couchdb_server.username,
                        "password": couchdb_server.password,
                    },
                    "sequencing_path": str(tmp_path / "seq"),
                    "destination_path": str(tmp_path / "archives"),
                    "keys_path": str(tmp_path / "keys"),
                    "gpg_receiver": gnupg_home.fingerprint,
                    "broker_url": amqp_url,
                    "scan_interval": 0.5,
                    **extra,
                }
            )
        )
        self.store = couchdb_server.store(database=database)
        self.store.setup()
        self.processes: list[subprocess.Popen] = []

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "ARCHIVE_CONFIG": str(self.config),
            "GNUPGHOME": self.gnupg_home.home,
            "DFARCHIVE_QUEUE": self.queue,
            **extra,
        }

    def run_folder(self, name: str, size: int = 1 << 20) -> Path:
        run = self.tmp / "seq" / "seqA" / name
        run.mkdir(parents=True)
        (run / "RunInfo.xml").write_text(f"<RunInfo id='{name}'/>")
        with open(run / "big.cbcl", "wb") as f:
            f.truncate(size)
        (run / SENTINEL).write_text("0")
        return run

    def worker(self, host: str, *, threads: int = 2, shutdown_timeout_ms: int = 600_000):
        log = open(self.tmp / f"worker-{host}.log", "w")  # noqa: SIM115 - closed at exit
        proc = subprocess.Popen(
            [
                str(BIN / "dramatiq"),
                "dfarchive.actors",
                "--processes",
                "1",
                "--threads",
                str(threads),
                "--worker-shutdown-timeout",
                str(shutdown_timeout_ms),
            ],
            env=self.env(DFARCHIVE_WORKER_ID=host),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes.append(proc)
        return proc

    def scheduler(self) -> subprocess.Popen:
        log = open(self.tmp / "scheduler.log", "w")  # noqa: SIM115 - closed at exit
        proc = subprocess.Popen(
            [str(BIN / "dataflow_archive"), "-c", str(self.config)],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.processes.append(proc)
        return proc

    def docs(self) -> dict[str, dict]:
        return {doc["_id"]: doc for doc in self.store.runs()}

    def wait_for(self, predicate, what: str, timeout: float = 120) -> dict[str, dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            docs = self.docs()
            if predicate(docs):
                return docs
            time.sleep(0.2)  # polling the store with a deadline
        logs = "\n".join(p.read_text()[-3000:] for p in self.tmp.glob("*.log"))
        raise AssertionError(f"timed out waiting for {what}; documents: {self.docs()}\n{logs}")

    def partials(self) -> list[Path]:
        return [
            p
            for d in ("archives", "keys")
            for p in (self.tmp / d).iterdir()
            if p.name.endswith(".partial")
        ]

    def stop_all(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.processes:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL) if proc.pid else None
                proc.kill()
                proc.wait(timeout=10)
        self.store.close()


@pytest.fixture
def deployment(
    tmp_path, couchdb_server, couchdb_database, amqp_url, queue_name, gnupg_home
) -> Iterator[Deployment]:
    made: list[Deployment] = []

    def make(**extra) -> Deployment:
        made.append(
            Deployment(
                tmp_path,
                couchdb_server,
                couchdb_database,
                amqp_url,
                queue_name,
                gnupg_home,
                **extra,
            )
        )
        return made[-1]

    yield make
    for d in made:
        d.stop_all()


def all_encrypted(count: int):
    return lambda docs: (
        len(docs) == count and all(d["status"] == "encrypted" for d in docs.values())
    )


def test_two_hosts_archive_twelve_runs_exactly_once(deployment):
    d = deployment()
    for n in range(12):
        d.run_folder(f"run_{n:02d}", size=(n + 1) << 20)
    d.scheduler()
    d.worker("hostA")
    d.worker("hostB")
    docs = d.wait_for(all_encrypted(12), "12 runs encrypted")
    hosts = set()
    for run_id, doc in docs.items():
        assert doc["failure_count"] == 0
        assert [a["outcome"] for a in doc["attempts"]] == ["encrypted"], run_id
        hosts.add(doc["worker_id"].split(":")[0])
        assert Path(doc["archive"]["file"]).stat().st_size == doc["archive"]["size"]
        assert Path(doc["archive"]["key_file"]).is_file()
    assert hosts == {"hostA", "hostB"}
    assert sorted(p.name for p in (d.tmp / "archives").iterdir()) == [
        f"run_{n:02d}.tar.gpg" for n in range(12)
    ]
    assert d.partials() == []
    assert message_count(d.amqp_url, d.queue + ".XQ") == 0


def test_killed_worker_run_is_reclaimed_and_archived_by_the_other(deployment):
    d = deployment(lease_seconds=3)
    d.run_folder("run_big", size=2 << 30)
    d.scheduler()
    victim = d.worker("hostA", threads=1)
    docs = d.wait_for(
        lambda docs: (
            docs.get("run_big", {}).get("status") == "processing"
            and (docs["run_big"].get("progress") or {}).get("bytes_done", 0) > 0
        ),
        "run_big in progress on hostA",
    )
    assert docs["run_big"]["worker_id"].startswith("hostA:")
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(timeout=10)
    d.worker("hostB", threads=1)
    docs = d.wait_for(all_encrypted(1), "run_big encrypted by hostB", timeout=240)
    doc = docs["run_big"]
    assert doc["worker_id"].startswith("hostB:")
    assert doc["failure_count"] == 1
    assert "lease expired" in doc["attempts"][0]["error"]
    assert d.partials() == []


def test_a_run_that_always_fails_ends_failed_after_max_attempts(deployment):
    d = deployment(max_attempts=3)
    run = d.run_folder("run_doomed")
    d.run_folder("run_fine")
    d.scheduler()
    d.wait_for(lambda docs: "run_doomed" in docs, "registration")
    # the folder disappears after registration: every attempt fails in pre-flight
    for path in sorted(run.rglob("*"), reverse=True):
        path.unlink()
    run.rmdir()
    d.worker("hostA")
    docs = d.wait_for(
        lambda docs: (
            docs["run_doomed"]["status"] == "failed" and docs["run_fine"]["status"] == "encrypted"
        ),
        "run_doomed failed",
    )
    doom = docs["run_doomed"]
    assert doom["failure_count"] == 3
    assert [a["outcome"] for a in doom["attempts"]] == ["failed"] * 3
    assert "does not exist" in doom["last_error"]
    assert message_count(d.amqp_url, d.queue + ".XQ") == 0


def test_sigterm_with_short_shutdown_timeout_releases_the_run(deployment):
    d = deployment(lease_seconds=6)  # heartbeats (and progress) every 2 s
    d.run_folder("run_big", size=6 << 30)
    d.scheduler()
    first = d.worker("hostA", threads=1, shutdown_timeout_ms=1000)
    d.wait_for(
        lambda docs: (
            docs.get("run_big", {}).get("status") == "processing"
            and (docs["run_big"].get("progress") or {}).get("bytes_done", 0) > 0
        ),
        "run_big in progress",
    )
    first.send_signal(signal.SIGTERM)
    first.wait(timeout=60)
    docs = d.wait_for(lambda docs: docs["run_big"]["status"] == "pending", "run_big released")
    assert docs["run_big"]["failure_count"] == 0
    assert docs["run_big"]["attempts"][-1]["outcome"] == "released"
    assert d.partials() == []
    assert message_count(d.amqp_url, d.queue + ".XQ") == 0
