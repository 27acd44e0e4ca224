"""Run documents edited by hand into odd states, on SQLite and on CouchDB.

The documents are written behind dfarchive's back (raw SQL / raw HTTP PUT, as an
operator with the sqlite3 shell or Fauxton would), then a scheduling pass, two real
``dataflow_archive --once`` runs, ``dfarchive status`` and ``status --json`` meet them.
Each odd document ends in a stated, reported state; nothing crashes, nothing loops,
nothing is left ``processing``.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dfarchive.service.config import load_config
from dfarchive.service.scheduler import schedule_pass
from dfarchive.service.stores import open_store
from tests.support.gpg import GnupgHome, new_gnupg_home
from tests.support.workspace import Finished, Workspace

pytestmark = pytest.mark.timeout(150)

PASSWORD_ENV = "DFARCHIVE_STATUSDB_PASSWORD"
ORIGINAL = {"worker_id": "old-tool:1", "created_at": "2026-01-01T00:00:00+00:00"}
WEIRD_RUN = "run 'q' \"dq\" #1 ?x=%2F&y"  # quotes, spaces and URL syntax in a document id


@pytest.fixture(scope="module")
def keyring(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GnupgHome]:
    home = new_gnupg_home(tmp_path_factory.mktemp("odd") / "gpg")
    try:
        yield home
    finally:
        home.stop_agent()


@dataclass
class Backend:
    name: str
    ws: Workspace
    config: Path
    env: dict[str, str]
    put: Callable[[dict[str, Any]], None]

    def docs(self) -> dict[str, dict[str, Any]]:
        with open_store(load_config(self.config, environ=self.env)) as store:
            return {doc["_id"]: doc for doc in store.runs()}

    def run(self, *args: str) -> Finished:
        program = "dataflow_archive" if args[0] == "--once" else "dfarchive"
        return self.ws.run(program, *args, "-c", str(self.config), env=self.env)


@pytest.fixture(params=["sqlite", "couchdb"])
def backend(request, tmp_path: Path, keyring: GnupgHome) -> Iterator[Backend]:
    ws = Workspace(tmp_path / "site" / "facility", keyring)  # room above it to escape to
    if request.param == "sqlite":
        config = ws.config()
        env = ws.env()
        assert ws.run("dfarchive", "init", "-c", str(config)).returncode == 0

        def put(doc: dict[str, Any]) -> None:
            with sqlite3.connect(ws.state) as db:  # as `sqlite3 runs.sqlite3` would
                db.execute(
                    "INSERT OR REPLACE INTO runs (id, rev, status, body) VALUES (?, 1, ?, ?)",
                    (doc["_id"], doc.get("status"), json.dumps(doc)),
                )

        yield Backend("sqlite", ws, config, env, put)
        return
    server = request.getfixturevalue("couchdb_server")
    database = request.getfixturevalue("couchdb_database")
    config = ws.config(
        statusdb={"url": server.url, "database": database, "username": server.username}
    )
    env = ws.env(**{PASSWORD_ENV: server.password})
    assert ws.run("dfarchive", "init", "-c", str(config), env=env).returncode == 0

    def put(doc: dict[str, Any]) -> None:  # raw HTTP, as any client could (even "..")
        response = server.request("POST", f"/{database}/_bulk_docs", json={"docs": [doc]})
        assert response.status_code == 201, response.text
        assert response.json()[0].get("ok"), response.text

    yield Backend("couchdb", ws, config, env, put)


def seed(backend: Backend) -> dict[str, Path]:
    ws = backend.ws
    folders = {
        name: ws.make_run("seqA", name)
        for name in ("odd_unknown_status", "odd_no_status", "odd_count_string", "odd_no_lease")
    }
    folders[WEIRD_RUN] = ws.make_run("seqA", WEIRD_RUN)  # registered by the scan itself
    docs = [
        {"_id": "odd_unknown_status", "status": "archiving", "failure_count": 0},
        {"_id": "odd_no_status", "failure_count": 0},
        {"_id": "odd_no_path", "status": "pending", "failure_count": 0},
        {"_id": "odd_count_string", "status": "pending", "failure_count": "2"},
        {"_id": "odd_count_word", "status": "pending", "failure_count": "two",
         "path": str(ws.seq / "seqA" / "odd_count_word")},
        {"_id": "odd_no_lease", "status": "processing", "failure_count": 0,
         "worker_id": "old-tool:1"},
        {"_id": "odd_relative_path", "status": "pending", "failure_count": 0,
         "path": "seqA/odd_relative_path"},
        {"_id": "odd_garbage", "status": "encrypted", "failure_count": None, "archive": "oops",
         "progress": "x", "attempts": {"a": 1}, "updated_at": 12, "sequencer": ["?"],
         "path": str(ws.seq / "seqB" / "odd_garbage")},
    ]  # fmt: skip
    for doc in docs:
        if doc["_id"] in folders:
            doc["path"] = str(folders[doc["_id"]])
        backend.put({**ORIGINAL, "updated_at": ORIGINAL["created_at"], **doc})
    if backend.name == "sqlite":
        with sqlite3.connect(ws.state) as db:
            db.execute(
                "INSERT INTO runs (id, rev, status, body) VALUES ('odd_bad_json', 1, "
                '\'pending\', \'{"_id": "odd_bad_json", "status": \')'
            )
    return folders


def test_odd_documents_are_handled_reported_and_never_crash(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    folders = seed(backend)
    before = backend.docs()
    visible = set(before)
    expected_visible = {
        "odd_unknown_status", "odd_no_status", "odd_count_string", "odd_count_word",
        "odd_no_lease", "odd_relative_path", "odd_garbage",
    }  # fmt: skip
    if backend.name == "sqlite":
        expected_visible |= {"odd_no_path", "odd_bad_json"}
        assert before["odd_bad_json"]["status"] == "unreadable"
        assert "not valid JSON" in before["odd_bad_json"]["last_error"]
    # CouchDB: a document without a path is not a run document (the views skip it)
    assert visible == expected_visible

    # a scheduling pass: reports the unknown states of folders it finds, never raises
    config = load_config(backend.config, environ=backend.env)
    with open_store(config) as store, caplog.at_level(logging.INFO, logger="dfarchive"):
        report = schedule_pass(store, config, worker_id="scheduler:1")
    assert report.registered == [WEIRD_RUN]
    assert report.reclaimed == ["odd_no_lease"]  # processing with no lease: expired
    errors = {r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR}
    assert any("[odd_unknown_status] not archived" in e and "'archiving'" in e for e in errors)
    assert any("[odd_no_status] not archived" in e and "None" in e for e in errors)

    # dataflow_archive --once, twice: what can be archived is, the rest is counted
    first = backend.run("--once")
    second = backend.run("--once")
    for result in (first, second):
        assert result.returncode == 1, result.output
        assert "Traceback" not in result.output and "crashed" not in result.output
        assert result.seconds < 60
    docs = backend.docs()
    assert not [d["_id"] for d in docs.values() if d.get("status") == "processing"]
    for run_id in ("odd_unknown_status", "odd_no_status", "odd_garbage"):
        assert docs[run_id]["_rev"] == before[run_id]["_rev"], run_id  # left alone
    for run_id in ("odd_count_string", WEIRD_RUN):
        assert docs[run_id]["status"] == "encrypted", docs[run_id]
        assert (backend.ws.archives / f"{run_id}.tar.gpg").is_file()
    assert docs["odd_count_string"]["failure_count"] == "2"  # kept as stored
    lease = docs["odd_no_lease"]
    assert (lease["status"], lease["failure_count"]) == ("encrypted", 1)
    assert "lease expired" in lease["attempts"][0]["error"]
    doc = docs["odd_count_word"]
    assert (doc["status"], doc["failure_count"]) == ("pending", 2), doc  # once per run
    assert "does not exist" in doc["last_error"]
    refused = {"odd_relative_path": "path 'seqA/odd_relative_path' is not an absolute path"}
    if backend.name == "sqlite":
        refused["odd_no_path"] = "no usable 'path'"
        assert docs["odd_bad_json"]["status"] == "unreadable"  # never overwritten
    for run_id, reason in refused.items():  # failed at once: retrying can't help
        doc = docs[run_id]
        assert (doc["status"], doc["failure_count"]) == ("failed", 1), doc
        assert doc["last_error"].startswith("refused: ") and reason in doc["last_error"]
    assert backend.ws.partials() == []

    # the operator's view of it all
    table = backend.run("status")
    assert table.returncode == 0, table.output
    assert "Traceback" not in table.output
    for run_id in expected_visible | {WEIRD_RUN}:
        assert run_id in table.stdout
    assert "archiving" in table.stdout and "1 without status" in table.stdout
    listed = backend.run("status", "--json")
    assert listed.returncode == 0, listed.output
    assert {doc["_id"] for doc in json.loads(listed.stdout)} == expected_visible | {WEIRD_RUN}
    shown = backend.run("show", "odd_garbage")
    assert shown.returncode == 0 and json.loads(shown.stdout)["archive"] == "oops"
    assert len(folders) == 5


def test_many_runs_skipped_at_once_do_not_hang_the_loop(
    tmp_path: Path, keyring: GnupgHome, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An attempt that ends before the loop registers its callback (a refused claim
    takes a millisecond) once deadlocked ``dataflow_archive``'s loop. Many of them,
    with the interpreter switching threads as often as it can."""
    import sys
    import threading

    from dfarchive.service.localloop import LocalArchiver
    from dfarchive.service.startup import prepare

    monkeypatch.setenv("GNUPGHOME", keyring.home)
    ws = Workspace(tmp_path, keyring)
    runtime = prepare(load_config(ws.config(concurrency=4)))
    with sqlite3.connect(ws.state) as db:  # pending rows whose body no transition accepts
        db.executemany(
            "INSERT INTO runs (id, rev, status, body) VALUES (?, 1, 'pending', '[]')",
            [(f"skipped_{n:03d}",) for n in range(300)],
        )
    archiver = LocalArchiver(runtime)
    result: list[bool] = []
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        loop = threading.Thread(target=lambda: result.append(archiver.run(once=True)), daemon=True)
        loop.start()
        loop.join(60)
    finally:
        sys.setswitchinterval(interval)
    assert not loop.is_alive(), "the loop hung"
    runtime.store.close()
    assert result == [True]
    assert len(archiver.outcomes) == 300


# -- hostile documents: nothing read from the store is trusted as a file name ------------


def folder_with_sentinel(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "SECRET.txt").write_text("not to be archived\n")
    (path / ".metadata_rsync_exitcode").write_text("0\n")
    return path


def files_under(root: Path) -> set[Path]:
    return {Path(d) / name for d, _, names in os.walk(root) for name in names}


def test_hostile_documents_fail_at_once_and_nothing_is_written_outside(
    backend: Backend, tmp_path: Path
) -> None:
    ws = backend.ws
    elsewhere = tmp_path / "elsewhere"
    long_id = "r" * 250  # <id>.tar.gpg.partial would not fit in a file name
    real = ws.make_run("seqA", "run_real")
    folder_with_sentinel(ws.seq / "seqA" / long_id)  # the scanner reports it too
    folder_with_sentinel(ws.base / "x")
    hostile = {  # id → (path, the reason last_error gives)
        "../../ESCAPED": (folder_with_sentinel(elsewhere / "ESCAPED"), "contains '/'"),
        "..": (elsewhere / "ESCAPED", "'..' is not a folder name"),
        ".": (elsewhere / "ESCAPED", "'.' is not a folder name"),
        "nul\x00id": (elsewhere / "ESCAPED", "control characters"),
        "esc\x1b[31mred": (elsewhere / "ESCAPED", "control characters"),
        long_id: (ws.seq / "seqA" / long_id, "250 bytes long; at most 239"),
        "run_elsewhere": (folder_with_sentinel(elsewhere / "run_elsewhere"), "not this run's"),
        "x": (f"{ws.seq}/seqA/../../x", "not this run's folder"),
        "run_alias": (real, f"'{real}' is not this run's folder"),
    }
    for run_id, (path, _) in hostile.items():
        backend.put({**ORIGINAL, "_id": run_id, "path": str(path), "status": "pending",
                     "failure_count": 0, "updated_at": ORIGINAL["created_at"]})  # fmt: skip
    before = files_under(tmp_path)
    result = backend.run("--once")
    assert result.returncode == 1, result.output
    assert "Traceback" not in result.output
    assert f"not registering '{ws.seq / 'seqA' / long_id}'" in result.output
    docs = backend.docs()
    assert docs["run_real"]["status"] == "encrypted"  # the real run is archived as usual
    unaddressable = {".", ".."} if backend.name == "couchdb" else set()  # URL dot segments
    for run_id, (_, reason) in hostile.items():
        if run_id in unaddressable:
            assert docs[run_id]["status"] == "pending" and "claim_token" not in docs[run_id]
            assert f"[{run_id!r}] refused: {reason}; the store can't update it" in result.output
            continue
        doc = docs[run_id]
        assert (doc["status"], doc["failure_count"]) == ("failed", 1), run_id
        assert doc["last_error"].startswith("refused: "), doc["last_error"]
        assert reason in doc["last_error"] and "nothing was read or written" in doc["last_error"]
        assert doc["attempts"][-1]["outcome"] == "failed"
    written = files_under(tmp_path) - before
    allowed = (ws.archives, ws.keys, ws.tmpdir)
    assert sorted(p for p in written if not p.is_relative_to(allowed[0])
                  and not p.is_relative_to(allowed[1]) and not p.is_relative_to(allowed[2])
                  and not p.name.startswith(("runs.sqlite3", "dfarchive.log"))) == []  # fmt: skip
    assert sorted(p.name for p in ws.archives.iterdir()) == ["run_real.tar.gpg"]
    assert sorted(p.name for p in ws.keys.iterdir()) == ["run_real.key.gpg"]
    assert not list(tmp_path.rglob("ESCAPED.*"))


# -- the original tool's live claims ----------------------------------------------------


def test_a_live_claim_of_the_original_tool_is_left_alone_and_reported(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    from datetime import UTC, datetime, timedelta

    from dfarchive.coordination.runstate import timestamp

    ws = backend.ws
    run = ws.make_run("seqA", "run_legacy")
    an_hour_ago = timestamp(datetime.now(UTC) - timedelta(hours=1))
    backend.put({"_id": "run_legacy", "path": str(run), "status": "processing",
                 "worker_id": "seq-host-1", "failure_count": 0,
                 "created_at": an_hour_ago, "updated_at": an_hour_ago})  # fmt: skip
    config = load_config(backend.config, environ=backend.env)
    assert config.legacy_lease_seconds == 86400
    with open_store(config) as store, caplog.at_level(logging.INFO, logger="dfarchive"):
        for _ in range(2):
            assert schedule_pass(store, config, worker_id="scheduler").reclaimed == []
    held = [r.getMessage() for r in caplog.records if "original tool" in r.getMessage()]
    assert len(held) == 2  # once per pass
    assert held[0].startswith(
        "[run_legacy] processing by the original tool on host seq-host-1 (last updated 1:00:"
    )
    assert held[0].endswith(
        "To take it over now: stop the original worker on seq-host-1, then run: "
        "dfarchive release run_legacy"
    )
    before = backend.docs()["run_legacy"]
    result = backend.run("--once")
    assert result.returncode == 0, result.output
    assert backend.docs()["run_legacy"] == before  # never reclaimed, never touched
    assert "[run_legacy] processing by the original tool on host seq-host-1" in result.output

    # past legacy_lease_seconds it is reclaimed like an expired lease, then archived
    shorter = ws.config(legacy_lease_seconds=1800, **_statusdb_of(backend))
    result = backend.ws.run("dataflow_archive", "--once", "-c", str(shorter), env=backend.env)
    assert result.returncode == 0, result.output
    doc = backend.docs()["run_legacy"]
    assert (doc["status"], doc["failure_count"]) == ("encrypted", 1)
    assert doc["attempts"][0]["error"].startswith(
        "lease expired: the original tool on seq-host-1 held it with no lease"
    )
    assert doc["worker_id"] == doc["archive"]["host"]  # the host name, as the original tool


def _statusdb_of(backend: Backend) -> dict[str, Any]:
    import yaml

    return {"statusdb": yaml.safe_load(backend.config.read_text())["statusdb"]}
