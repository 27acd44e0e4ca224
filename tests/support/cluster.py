"""What the cluster tests share: the cluster (hosts, processes, documents, the end
state every fault must reach), small helpers, and the recovery records."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from tests.support.amqp import message_count
from tests.support.couchdb import NodeCouchServer
from tests.support.gpg import GnupgHome, extract, stock_decrypt
from tests.support.netns import Network
from tests.support.relay import TcpRelay
from tests.support.waiting import wait_until

BIN = Path(sys.executable).parent
SENTINEL = ".metadata_rsync_exitcode"
AMQP_PORT = 5672
#: Seconds a process gets to exit after SIGTERM before its group is killed.
STOP_SECONDS = 15.0


# -- helpers ------------------------------------------------------------------------------


def slow_tar(directory: Path, seconds_per_mib: float = 1.0) -> Path:
    """A ``tar`` wrapper in ``directory`` pausing at checkpoints (real tar, slower), so a
    run stays in flight long enough for a fault to hit it; put ``directory`` first on
    PATH."""
    directory.mkdir(parents=True, exist_ok=True)
    records = max(1, round(104.8576 / seconds_per_mib))  # 10 KiB records per 1 s pause
    wrapper = directory / "tar"
    wrapper.write_text(
        f"#!/bin/sh\nexec {shutil.which('tar')} --checkpoint={records} "
        '--checkpoint-action=sleep=1 "$@"\n'
    )
    wrapper.chmod(0o755)
    return directory


def make_run(sequencer_dir: Path, name: str, size: int) -> Path:
    """A complete run folder of about ``size`` bytes of random data."""
    run = sequencer_dir / name
    run.mkdir(parents=True)
    (run / "RunInfo.xml").write_text(f"<RunInfo id='{name}'/>")
    (run / "data.cbcl").write_bytes(os.urandom(size))
    (run / SENTINEL).write_text("0")
    return run


def parse_time(stamp: str) -> float:
    """A document timestamp (ISO-8601 UTC) as seconds since the epoch."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def poll(predicate: Callable[[], Any], what: str, timeout: float, *, every: float = 0.2) -> Any:
    """:func:`tests.support.waiting.wait_until`, in the argument order and with the
    default interval the cluster tests were written with."""
    return wait_until(predicate, timeout, what, every=every)


# -- recovery records -----------------------------------------------------------------------


@dataclass(frozen=True)
class Recovery:
    """What one fault cost: seconds from the fault to each step (the cut-off worker
    stopping its attempt, the lease expiring, the reclaim, the archive), and the
    attempts counted."""

    fault: str
    outcome: str
    fenced: float | None
    lease_expired: float | None
    reclaimed: float | None
    archived: float
    attempts_counted: int


RECOVERIES: list[Recovery] = []


def record_recovery(recovery: Recovery) -> None:
    RECOVERIES.append(recovery)
    print(f"\nRECOVERY {recovery}")


def seconds_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} s"


# -- the cluster ----------------------------------------------------------------------------


class Cluster:
    """One test's facility on its own network. Build it with the ``cluster`` fixture."""

    def __init__(
        self,
        root: Path,
        network: Network,
        couch: NodeCouchServer,
        relay: TcpRelay,
        amqp_url: str,
        queue: str,
        gnupg_home: GnupgHome,
        settings: dict[str, Any],
    ) -> None:
        self.root = root
        self.network = network
        self.couch = couch
        self.relay = relay
        self.amqp_url = amqp_url  # from the root namespace, for checks
        self.queue = queue
        self.gnupg_home = gnupg_home
        self.couch_address = couch.host
        self.amqp_address = relay.address[0]
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        for name in ("seq/seqA", "archives", "keys"):
            (root / name).mkdir(parents=True, exist_ok=True)
        (root / "keys").chmod(0o700)
        settings = {"scan_interval": 0.5, "lease_seconds": 6.0, **settings}
        self.lease_seconds = float(settings["lease_seconds"])
        config = couch.facility_config(
            "runs",
            root,
            gnupg_home.fingerprint,
            broker_url=f"amqp://guest:guest@{self.amqp_address}:{AMQP_PORT}/%2F",
            **settings,
        )
        self.config = root / "df_archive.yaml"
        self.config.write_text(yaml.safe_dump(config))
        self.store = couch.store("runs")
        self.store.setup()
        self.path = f"{slow_tar(root / 'slowbin')}:{os.environ['PATH']}"

    # -- hosts and processes

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PATH": self.path,
            "PYTHONUNBUFFERED": "1",
            "ARCHIVE_CONFIG": str(self.config),
            "GNUPGHOME": self.gnupg_home.home,
            "DFARCHIVE_QUEUE": self.queue,
        }

    def _start(self, host: str, argv: list[str]) -> subprocess.Popen[bytes]:
        if host not in self.network.hosts:
            self.network.add_host(host)
        with (self.root / f"{host}.log").open("ab") as log:
            process = subprocess.Popen(
                self.network.command(host, argv),
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, killed as one
            )
        self.processes[host] = process
        return process

    def worker(self, host: str, *, threads: int = 2) -> subprocess.Popen[bytes]:
        """``dramatiq dfarchive.actors`` on ``host`` (one process, ``threads`` threads)."""
        argv = [
            str(BIN / "dramatiq"), "dfarchive.actors",
            "--processes", "1", "--threads", str(threads),
            "--worker-shutdown-timeout", "5000",
        ]  # fmt: skip
        return self._start(host, argv)

    def scheduler(self, host: str = "sched") -> subprocess.Popen[bytes]:
        return self._start(host, [str(BIN / "dataflow_archive"), "-c", str(self.config)])

    def log(self, host: str) -> str:
        path = self.root / f"{host}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """SIGTERM every process group; SIGKILL what is left after STOP_SECONDS."""
        for process in self.processes.values():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # children outliving the leader too
            process.wait(timeout=30)

    # -- runs and documents

    def run_folder(self, name: str, size: int = 8 << 20) -> Path:
        return make_run(self.root / "seq" / "seqA", name, size)

    def docs(self) -> dict[str, dict[str, Any]]:
        return {doc["_id"]: doc for doc in self.store.runs()}

    def wait_for(
        self, predicate: Callable[[dict[str, dict[str, Any]]], Any], what: str, timeout: float
    ) -> Any:
        """Poll the documents until ``predicate(docs)`` is true; the logs on failure."""
        try:
            return poll(lambda: predicate(self.docs()), what, timeout)
        except AssertionError as error:
            logs = "\n".join(
                f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                for p in sorted(self.root.glob("*.log"))
            )
            raise AssertionError(f"{error}\ndocuments: {self.docs()}\n{logs}") from None

    def in_flight_on(self, host: str) -> Callable[[dict[str, dict[str, Any]]], str | None]:
        """Predicate: the id of a run ``host`` is archiving with progress, if any."""

        def check(docs: dict[str, dict[str, Any]]) -> str | None:
            for run_id, doc in sorted(docs.items()):
                holder = str(doc.get("worker_id") or "").split(":")[0]
                done = (doc.get("progress") or {}).get("bytes_done", 0)
                if doc["status"] == "processing" and holder == host and done > 0:
                    return run_id
            return None

        return check

    def partials(self) -> list[Path]:
        folders = (self.root / "archives", self.root / "keys")
        return sorted(p for d in folders for p in d.iterdir() if ".partial" in p.name)

    # -- the end state every fault must reach

    def assert_end_state(self, runs: dict[str, int]) -> dict[str, dict[str, Any]]:
        """Every run encrypted exactly once, restorable with stock gpg + tar; no partial
        file, no processing document, no dead letter. Returns the documents."""
        docs = self.docs()
        assert sorted(docs) == sorted(runs)
        for run_id, doc in docs.items():
            assert doc["status"] == "encrypted", (run_id, doc)
            outcomes = [a["outcome"] for a in doc["attempts"]]
            assert outcomes.count("encrypted") == 1, (run_id, outcomes)
            assert outcomes[-1] == "encrypted", (run_id, outcomes)
        archives = sorted(p.name for p in (self.root / "archives").iterdir())
        assert archives == sorted(f"{run_id}.tar.gpg" for run_id in runs)
        keys = sorted(p.name for p in (self.root / "keys").iterdir())
        assert keys == sorted(f"{run_id}.key.gpg" for run_id in runs)
        assert self.partials() == []
        assert message_count(self.amqp_url, self.queue + ".XQ") == 0
        for run_id in runs:
            self.assert_restores(run_id)
        return docs

    def assert_restores(self, run_id: str) -> None:
        """Stock gpg unwraps the key and decrypts the archive; stock tar extracts the
        very bytes of the run folder."""
        key = self.gnupg_home.gpg("--decrypt", str(self.root / "keys" / f"{run_id}.key.gpg"))
        decrypted = stock_decrypt(self.root / "archives" / f"{run_id}.tar.gpg", key.strip())
        assert decrypted.returncode == 0, decrypted.stderr.decode(errors="replace")[-2000:]
        restored = self.root / "restored" / run_id
        extract(decrypted.stdout, restored)
        source = self.root / "seq" / "seqA" / run_id
        copy = next(path for path in restored.rglob(run_id) if path.is_dir())
        for name in ("RunInfo.xml", "data.cbcl"):
            assert (copy / name).read_bytes() == (source / name).read_bytes(), (run_id, name)
