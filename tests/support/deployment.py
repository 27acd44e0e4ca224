"""A test 'facility' of real processes: ``dramatiq dfarchive.actors`` workers, the
``dataflow_archive`` scheduler, RabbitMQ and the CouchDB-compatible server.

Shared by the end-to-end tests that need one (not a test module: importing it collects
no tests); the ``deployment`` fixture in tests/conftest.py makes them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.support.waiting import wait_until

BIN = Path(sys.executable).parent
SENTINEL = ".metadata_rsync_exitcode"


class Deployment:
    """Config, folders (``seq/seqA``, ``archives``, ``keys``) and the processes started."""

    def __init__(
        self, tmp_path: Path, couchdb_server, database: str, amqp_url: str, queue: str,
        gnupg_home, **extra: Any,
    ) -> None:  # fmt: skip
        self.tmp = tmp_path
        self.queue = queue
        self.amqp_url = amqp_url
        self.gnupg_home = gnupg_home
        for name in ("seq/seqA", "archives", "keys"):
            (tmp_path / name).mkdir(parents=True, exist_ok=True)
        (tmp_path / "keys").chmod(0o700)
        self.config = tmp_path / "df_archive.yaml"
        settings = couchdb_server.facility_config(
            database, tmp_path, gnupg_home.fingerprint, broker_url=amqp_url, scan_interval=0.5
        )
        self.config.write_text(yaml.safe_dump({**settings, **extra}))
        self.store = couchdb_server.store(database=database)
        self.store.setup()
        self.processes: list[subprocess.Popen] = []

    def slow_tar(self, seconds_per_mib: float = 1.0) -> None:
        """Make the workers' tar pause at checkpoints (real tar, just slower), so a run
        stays in flight long enough for broker and store faults to hit it."""
        bin_dir = self.tmp / "slowbin"
        bin_dir.mkdir(exist_ok=True)
        wrapper = bin_dir / "tar"
        records = max(1, round(104.8576 / seconds_per_mib))  # 10 KiB records per pause
        wrapper.write_text(
            "#!/bin/sh\n"
            f"exec {shutil.which('tar')} --checkpoint={records} "
            '--checkpoint-action=sleep=1 "$@"\n'
        )
        wrapper.chmod(0o755)
        self.extra_path = f"{bin_dir}:"

    extra_path = ""

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "PATH": self.extra_path + os.environ["PATH"],
            "PYTHONUNBUFFERED": "1",  # logs reach the files while the processes run
            "ARCHIVE_CONFIG": str(self.config),
            "GNUPGHOME": self.gnupg_home.home,
            "DFARCHIVE_QUEUE": self.queue,
            **extra,
        }

    def run_folder(self, name: str, size: int = 1 << 20, *, random: bool = False) -> Path:
        run = self.tmp / "seq" / "seqA" / name
        run.mkdir(parents=True)
        (run / "RunInfo.xml").write_text(f"<RunInfo id='{name}'/>")
        with open(run / "big.cbcl", "wb") as f:
            if random:
                f.write(os.urandom(size))
            else:
                f.truncate(size)
        (run / SENTINEL).write_text("0")
        return run

    def worker(
        self,
        host: str,
        *,
        processes: int = 1,
        threads: int = 2,
        shutdown_timeout_ms: int = 600_000,
        **env: str,
    ) -> subprocess.Popen:
        log = open(self.tmp / f"worker-{host}.log", "w")  # noqa: SIM115 - closed at exit
        proc = subprocess.Popen(
            [
                str(BIN / "dramatiq"),
                "dfarchive.actors",
                "--processes",
                str(processes),
                "--threads",
                str(threads),
                "--worker-shutdown-timeout",
                str(shutdown_timeout_ms),
            ],
            env=self.env(DFARCHIVE_WORKER_ID=host, **env),
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
            start_new_session=True,  # stop_all may kill its group
        )
        self.processes.append(proc)
        return proc

    def cli(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``dfarchive ARGV…`` with this facility's config."""
        return subprocess.run(
            [str(BIN / "dfarchive"), *argv, "-c", str(self.config)],
            env=self.env(),
            check=check,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def restore(self, run_id: str) -> Path:
        """``dfarchive restore`` the run into a fresh folder; return the restored run."""
        into = self.tmp / "restored"
        into.mkdir(exist_ok=True)
        self.cli("restore", run_id, "--to", str(into))
        return into / run_id

    def docs(self) -> dict[str, dict]:
        return {doc["_id"]: doc for doc in self.store.runs()}

    def logs(self) -> str:
        return "\n".join(p.read_text()[-4000:] for p in self.tmp.glob("*.log"))

    def wait_for(self, predicate, what: str, timeout: float = 120) -> dict[str, dict]:
        def ready() -> tuple[dict[str, dict]] | None:
            docs = self.docs()
            return (docs,) if predicate(docs) else None  # a tuple: true even if docs is {}

        (docs,) = wait_until(
            ready,
            timeout,
            what,
            every=0.2,
            detail=lambda: f"documents: {self.docs()}\n{self.logs()}",
        )
        return docs

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
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        self.store.close()
