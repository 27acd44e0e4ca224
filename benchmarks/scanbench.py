"""Scan + register scaling: one scheduling pass over many run folders, some new.

The tree is ``sequencing_path/<20 sequencers>/<run>/`` with the sentinel in every run
folder (plus one folder per sequencer still transferring). Before the timed pass the
store already knows all runs but the new ones (registered untimed, and the views
queried once, as earlier passes would have left them). Then:

* dfarchive: :func:`dfarchive.service.scheduler.schedule_pass` (scan, register, reclaim
  expired leases) on the SQLite store and on the CouchDB store, each time a fresh store
  object, as in a scheduler's first pass; a second pass with nothing new shows the cost
  of every later ``scan_interval`` (it still reads, once, the documents the first pass
  registered: on CouchDB, later passes read only documents the changes feed reports).
* the original tool's pattern, on the same CouchDB server: one ``PUT`` per run folder
  found (201 for a new run, 409 for a known one), then the ``runfolder_id`` view with
  ``include_docs`` to find the pending runs.
* dfarchive with a broker (``dfarchive scheduler --once``): the same first pass on a
  fresh store whose known runs are archived already (``encrypted``), enqueuing too: the
  new runs are registered, marked in one write and their messages sent (collected in a
  list here: the store's side is measured, not RabbitMQ's).

Store requests: HTTP requests for CouchDB (``CouchStore.request_count``); for SQLite,
the store's connection rounds (one read or one transaction each).
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import statistics
import string
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

from dfarchive.coordination import runstate
from dfarchive.coordination.store.base import NewRun, RunStore
from dfarchive.coordination.store.couchdb import LOOKUP_VIEWS, CouchStore
from dfarchive.coordination.store.sqlite import SqliteStore
from dfarchive.service.config import Config
from dfarchive.service.scheduler import schedule_pass
from tests.support.couchdb import CouchServer, NodeCouchServer

SENTINEL = ".metadata_rsync_exitcode"
SEQUENCERS = 20
TREE_VERSION = 1
HTTP_TIMEOUT = 60


@dataclass(frozen=True)
class ScanTree:
    """A sequencing tree: its path, and its complete runs split into known and new."""

    path: str
    runs: int
    new: int
    known_runs: list[tuple[str, str]]  # (sequencer, run)
    new_runs: list[tuple[str, str]]

    def new_run_records(self, which: list[tuple[str, str]]) -> list[NewRun]:
        return [
            NewRun(run_id=run, path=str(Path(self.path) / seq / run), sequencer=seq)
            for seq, run in which
        ]


def build_tree(root: Path, runs: int, new: int, *, seed: int = 1) -> ScanTree:
    """Build (or reuse) a tree of ``runs`` complete run folders, ``new`` of them new."""
    path = Path(root) / f"scan-{runs}-{new}-{seed}"
    manifest = path.with_name(path.name + ".json")
    if path.is_dir() and manifest.is_file():
        stored = json.loads(manifest.read_text())
        if stored.pop("version", None) == TREE_VERSION:
            return ScanTree(
                **{
                    **stored,
                    "known_runs": [tuple(x) for x in stored["known_runs"]],
                    "new_runs": [tuple(x) for x in stored["new_runs"]],
                }
            )
    shutil.rmtree(path, ignore_errors=True)
    rng = random.Random(seed)
    folders: list[tuple[str, str]] = []
    for i in range(runs):
        sequencer = f"A{1000 + i % SEQUENCERS:05d}"
        day = datetime.fromordinal(738000 + i // SEQUENCERS).strftime("%y%m%d")
        flowcell = "".join(rng.choices(string.ascii_uppercase + string.digits, k=9))
        folders.append((sequencer, f"{day}_{sequencer}_{i // SEQUENCERS:04d}_A{flowcell}"))
    for sequencer, run in folders:
        folder = path / sequencer / run
        folder.mkdir(parents=True)
        (folder / "RunInfo.xml").write_text("<RunInfo/>\n")
        (folder / SENTINEL).write_text("0\n")
    for s in range(SEQUENCERS):  # still transferring: no sentinel
        (path / f"A{1000 + s:05d}" / f"999999_A{1000 + s:05d}_9999_ATRANSFER").mkdir()
    new_indexes = set(rng.sample(range(runs), new))
    tree = ScanTree(
        path=str(path),
        runs=runs,
        new=new,
        known_runs=[f for i, f in enumerate(folders) if i not in new_indexes],
        new_runs=[f for i, f in enumerate(folders) if i in new_indexes],
    )
    manifest.write_text(json.dumps({**asdict(tree), "version": TREE_VERSION}))
    return tree


class CountingSqliteStore(SqliteStore):
    """The SQLite store, counting its connection rounds (one read or one transaction)."""

    requests = 0

    @contextmanager
    def _db(self, *, write: bool = False) -> Iterator[Any]:
        self.requests += 1
        with super()._db(write=write) as db:
            yield db


def _config(tree: ScanTree, work_dir: Path) -> Config:
    return Config(
        source="benchmark",
        sequencing_path=Path(tree.path),
        destination_path=work_dir,
        gpg_receiver="unused",
        keys_path=work_dir,
    )


def _timed_pass(
    store: RunStore,
    config: Config,
    count: Callable[[], int],
    tree: ScanTree,
    expected: int,
    *,
    enqueue: bool = False,
) -> dict[str, Any]:
    sent: list[str] = []
    before = count()
    started = time.perf_counter()
    report = schedule_pass(
        store, config, worker_id="benchmark", enqueue=sent.append if enqueue else None
    )
    seconds = time.perf_counter() - started
    if len(report.registered) != expected or report.found != tree.runs:
        raise RuntimeError(
            f"scan pass found {report.found} runs and registered {len(report.registered)}, "
            f"expected {tree.runs} and {expected}"
        )
    if enqueue and sorted(sent) != sorted(report.registered):
        raise RuntimeError(f"enqueued {len(sent)} runs, expected the {expected} new ones")
    return {
        "seconds": seconds,
        "requests": count() - before,
        "found": report.found,
        "registered": len(report.registered),
        **({"enqueued": len(sent)} if enqueue else {}),
    }


def _store_archived(store: RunStore, tree: ScanTree) -> None:
    """Store the known runs as archived (``encrypted``): not due for a message."""
    now = datetime.now(UTC)
    docs = [
        {
            **runstate.new_run(
                run.run_id, path=run.path, sequencer=run.sequencer, worker_id="setup", now=now
            ),
            "status": runstate.ENCRYPTED,
        }
        for run in tree.new_run_records(tree.known_runs)
    ]
    store._insert_missing(docs)  # the store's bulk insert: no transition makes this state


def _passes(
    store: RunStore, tree: ScanTree, work_dir: Path, count: Callable[[], int]
) -> dict[str, Any]:
    config = _config(tree, work_dir)
    new_pass = _timed_pass(store, config, count, tree, tree.new)
    steady_pass = _timed_pass(store, config, count, tree, 0)
    if count() == 0:
        raise RuntimeError(f"{store.backend} store made no request: the counter is broken")
    return {"new_pass": new_pass, "steady_pass": steady_pass}


def bench_sqlite(tree: ScanTree, work_dir: Path) -> dict[str, Any]:
    """dfarchive's scheduling passes on a fresh SQLite store that knows the old runs,
    then the pass with a broker on another whose old runs are archived."""
    folder = work_dir / f"sqlite-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    try:
        store = CountingSqliteStore(folder / "runs.sqlite3")
        with store:
            store.setup()
            store.register_many(tree.new_run_records(tree.known_runs), worker_id="setup")
            store.reclaim_expired()
            passes = _passes(store, tree, work_dir, lambda: store.requests)
        store = CountingSqliteStore(folder / "enqueue.sqlite3")
        with store:
            store.setup()
            _store_archived(store, tree)
            store.reclaim_expired()
            enqueue_pass = _timed_pass(
                store,
                _config(tree, work_dir),
                lambda: store.requests,
                tree,
                tree.new,
                enqueue=True,
            )
        return {**passes, "enqueue_pass": enqueue_pass}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _database(server: CouchServer) -> Iterator[str]:
    name = f"dfarchive_bench_{uuid.uuid4().hex[:12]}"
    try:
        yield name
    finally:
        with contextlib.suppress(requests.RequestException):
            server.request("DELETE", f"/{name}", timeout=HTTP_TIMEOUT)


def _couch_store(server: CouchServer, database: str) -> CouchStore:
    return server.store(database, timeout=HTTP_TIMEOUT)


def bench_couch(tree: ScanTree, work_dir: Path, server: CouchServer) -> dict[str, Any]:
    """dfarchive's scheduling passes on a fresh CouchDB database that knows the old runs,
    then the pass with a broker on another whose old runs are archived."""
    with _database(server) as name, _couch_store(server, name) as store:
        store.setup()
        store.register_many(tree.new_run_records(tree.known_runs), worker_id="setup")
        store.reclaim_expired()  # brings the by_status view index up to date
        passes = _passes(store, tree, work_dir, lambda: store.request_count)
    with _database(server) as name:
        with _couch_store(server, name) as store:
            store.setup()
            _store_archived(store, tree)
            store.due_for_enqueue(0)  # brings the by_status view index up to date
        with _couch_store(server, name) as store:  # a fresh scheduler process
            enqueue_pass = _timed_pass(
                store,
                _config(tree, work_dir),
                lambda: store.request_count,
                tree,
                tree.new,
                enqueue=True,
            )
    return {**passes, "enqueue_pass": enqueue_pass}


def _original_doc(path: Path) -> dict[str, Any]:
    return {
        "_id": path.name,
        "path": str(path),
        "status": "pending",
        "created_at": datetime.now(UTC).isoformat(),
    }


def bench_original(tree: ScanTree, server: CouchServer) -> dict[str, Any]:
    """The original tool's pass (a PUT per run folder, then the view) on the same server."""
    with _database(server) as name, requests.Session() as http:
        http.auth = (server.username, server.password or "") if server.username else None
        db = f"{server.url}/{name}"
        http.put(db, timeout=HTTP_TIMEOUT).raise_for_status()
        design = {"views": LOOKUP_VIEWS}
        http.put(f"{db}/_design/lookup", json=design, timeout=HTTP_TIMEOUT).raise_for_status()
        known = [_original_doc(Path(tree.path) / s / r) for s, r in tree.known_runs]
        known = [{**doc, "status": "encrypted"} for doc in known]
        http.post(f"{db}/_bulk_docs", json={"docs": known}, timeout=HTTP_TIMEOUT)
        view = f"{db}/_design/lookup/_view/runfolder_id"
        http.get(view, params={"limit": 1}, timeout=HTTP_TIMEOUT).raise_for_status()
        requests_made = 0
        started = time.perf_counter()
        for sequencer in sorted(Path(tree.path).iterdir()):
            if not sequencer.is_dir():
                continue
            for run in sorted(sequencer.iterdir()):
                if not run.is_dir() or not (run / SENTINEL).exists():
                    continue
                response = http.put(f"{db}/{run.name}", json=_original_doc(run))
                requests_made += 1
                if response.status_code not in (201, 202, 409):
                    response.raise_for_status()
        rows = http.get(view, params={"include_docs": "true"}, timeout=HTTP_TIMEOUT)
        rows.raise_for_status()
        requests_made += 1
        pending = [r for r in rows.json()["rows"] if r["doc"].get("status") == "pending"]
        seconds = time.perf_counter() - started
    if len(pending) != tree.new:
        raise RuntimeError(f"original pattern found {len(pending)} pending runs, not {tree.new}")
    return {
        "new_pass": {
            "seconds": seconds,
            "requests": requests_made,
            "found": tree.runs,
            "registered": len(pending),
        }
    }


def _kind(server: CouchServer) -> str:
    """What the report calls the server."""
    if isinstance(server, NodeCouchServer):
        return "express-pouchdb test server (in memory)"
    return "external"


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def run_scan_benchmark(
    tree: ScanTree,
    work_dir: Path,
    server: CouchServer,
    *,
    rounds: int,
    original_rounds: int,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """``rounds`` rounds of SQLite, CouchDB (and, in the first ``original_rounds``, the
    original pattern), alternating; every pass and the medians."""
    results: dict[str, list[dict[str, Any]]] = {"sqlite": [], "couchdb": [], "original": []}
    for i in range(rounds):
        results["sqlite"].append(bench_sqlite(tree, work_dir))
        results["couchdb"].append(bench_couch(tree, work_dir, server))
        if i < original_rounds:
            results["original"].append(bench_original(tree, server))
        progress(
            f"scan round {i + 1}/{rounds}: "
            + ", ".join(
                f"{backend} {passes[-1]['new_pass']['seconds']:.2f} s "
                f"{passes[-1]['new_pass']['requests']} requests"
                for backend, passes in results.items()
                if passes and len(passes) == i + 1
            )
        )
    summary = {
        backend: {
            pass_name: {
                key: _stats([p[pass_name][key] for p in passes]) for key in ("seconds", "requests")
            }
            for pass_name in passes[0]
        }
        for backend, passes in results.items()
        if passes
    }
    return {
        "tree": {"runs": tree.runs, "new": tree.new, "sequencers": SEQUENCERS},
        "server": _kind(server),
        "rounds": results,
        "summary": summary,
    }
