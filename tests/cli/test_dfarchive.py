"""The ``dfarchive`` operator commands, on a real SQLite store, real gpg and real archives
(and ``status --json`` on CouchDB)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from dfarchive import __version__
from dfarchive.coordination.runstate import STATUSES
from dfarchive.coordination.store import NewRun, SqliteStore
from tests.support.archives import ArchivedRun, make_archived_run, tree
from tests.support.cli import add_run, run_cli, write_config
from tests.support.gpg import new_gnupg_home

ORIGINAL_FIELDS = {
    "_id": str,
    "path": str,
    "status": str,
    "worker_id": str,
    "failure_count": int,
    "created_at": str,
    "updated_at": str,
}


@pytest.fixture(scope="module")
def archived(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArchivedRun]:
    base = tmp_path_factory.mktemp("cli")
    home = new_gnupg_home(base / "gpg")
    try:
        yield make_archived_run(base, home)
    finally:
        home.stop_agent()


@pytest.fixture
def config(tmp_path: Path, archived: ArchivedRun, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A valid config file; ``$ARCHIVE_CONFIG`` names it (so ``-c`` is optional)."""
    path = write_config(tmp_path, archived)
    monkeypatch.setenv("ARCHIVE_CONFIG", str(path))
    return path


@pytest.fixture
def store(config: Path, capsys) -> Iterator[SqliteStore]:
    """The config's store, set up by ``dfarchive init``."""
    code, _, err = run_cli(capsys, "init")
    assert code == 0, err
    state = yaml.safe_load(config.read_text())["statusdb"]["url"].removeprefix("sqlite:")
    with SqliteStore(state, max_attempts=2) as opened:
        yield opened


def add_failed(store: SqliteStore, run_id: str) -> None:
    add_run(store, run_id)
    for _ in range(2):
        claim = store.claim(run_id, worker_id="host:2")
        assert claim is not None
        store.fail(claim, "ToolError: tar exited 2\nsecond line")


def add_encrypted(store: SqliteStore, archived: ArchivedRun, **changes: Any) -> None:
    add_run(store, archived.run_id, str(archived.source))
    claim = store.claim(archived.run_id, worker_id="host:3")
    assert claim is not None
    store.finish(claim, {**archived.record, **changes})


# -- basics ------------------------------------------------------------------------------


def test_version(capsys) -> None:
    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and out.strip() == f"dfarchive {__version__}"


def test_init_creates_the_store_and_keys_path(config: Path, tmp_path: Path, capsys) -> None:
    code, out, err = run_cli(capsys, "init", "-c", str(config))
    assert code == 0, err
    assert (tmp_path / "state" / "runs.sqlite3").is_file()
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    assert f"keys_path {tmp_path / 'keys'} ready (mode 0700)" in out
    assert f"SQLite {tmp_path / 'state' / 'runs.sqlite3'}" in out
    assert run_cli(capsys, "init")[0] == 0  # idempotent


def test_read_commands_before_init_point_to_init(config: Path, tmp_path: Path, capsys) -> None:
    code, out, err = run_cli(capsys, "status")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "run 'dfarchive init' first" in err
    assert not (tmp_path / "state" / "runs.sqlite3").exists()  # reading never creates it


# -- status / show -------------------------------------------------------------------------


def test_status_json_lists_the_documents_as_stored(
    store: SqliteStore, archived: ArchivedRun, capsys
) -> None:
    add_run(store, "run_pending")
    add_run(store, "run_processing")
    claim = store.claim("run_processing", worker_id="host:4")
    assert claim is not None
    store.heartbeat(claim, {"bytes_done": 50, "bytes_total": 200, "rate": 25_000_000})
    add_failed(store, "run_failed")
    add_encrypted(store, archived)
    code, out, err = run_cli(capsys, "status", "--json")
    assert code == 0, err
    docs = json.loads(out)
    assert docs == store.runs()
    assert [d["_id"] for d in docs] == sorted(
        ["run_pending", "run_processing", "run_failed", archived.run_id]
    )
    for doc in docs:
        for field, kind in ORIGINAL_FIELDS.items():
            assert type(doc[field]) is kind, (field, doc)
        assert doc["status"] in STATUSES
        for field in ("created_at", "updated_at"):
            assert datetime.fromisoformat(doc[field]).utcoffset().total_seconds() == 0
    by_id = {doc["_id"]: doc for doc in docs}
    assert by_id["run_failed"]["failure_count"] == 2
    assert by_id[archived.run_id]["archive"]["sha256"] == archived.record["sha256"]

    code, out, _ = run_cli(capsys, "status", "--json", "--status", "failed")
    assert [d["_id"] for d in json.loads(out)] == ["run_failed"]


def test_status_table(store: SqliteStore, archived: ArchivedRun, capsys) -> None:
    add_run(store, "run_pending")
    add_failed(store, "run_failed")
    add_encrypted(store, archived)
    code, out, err = run_cli(capsys, "status")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == [
        "RUN", "SEQUENCER", "STATUS", "PROGRESS", "MB/S", "WORKER", "AGE", "FAILS", "FIXITY",
        "LAST", "ERROR",
    ]  # fmt: skip
    failed = next(line for line in lines if line.startswith("run_failed"))
    assert failed.split()[:3] == ["run_failed", "A", "failed"]
    assert failed.endswith("ToolError: tar exited 2 second line")
    encrypted = next(line for line in lines if line.startswith(archived.run_id))
    assert "100%" in encrypted.split()
    assert lines[-1] == "3 runs: 1 pending, 1 encrypted, 1 failed"

    code, out, _ = run_cli(capsys, "status", "--status", "pending")
    assert [line.split()[0] for line in out.splitlines()[1:-1]] == ["run_pending"]
    assert out.splitlines()[-1] == "1 run: 1 pending (status pending)"


def test_status_flags_plaintext_keys_the_original_tool_left(
    store: SqliteStore, tmp_path: Path, capsys
) -> None:
    add_run(store, "run_pending")
    add_run(store, "run_other")
    leftover = tmp_path / "dest" / "run_pending.key"
    leftover.write_bytes(b"\x01\x02\n")
    (tmp_path / "dest" / "unknown_run.key").write_bytes(b"x")  # not a run we know
    warning = (
        f"dfarchive: warning: plaintext run key {leftover} left by dataflow_archive; it is "
        "removed when dfarchive archives or adopts that run\n"
    )
    code, out, err = run_cli(capsys, "status")
    assert (code, err) == (0, warning)
    flagged = next(line for line in out.splitlines() if line.startswith("run_pending"))
    assert flagged.endswith(f"plaintext key {leftover} left")
    assert "left" not in next(line for line in out.splitlines() if line.startswith("run_other"))
    # --json prints the documents exactly as stored: the warning goes to stderr only
    code, out, err = run_cli(capsys, "status", "--json")
    assert (code, err) == (0, warning)
    assert json.loads(out) == store.runs()


def test_status_of_an_empty_store(store: SqliteStore, capsys) -> None:
    assert run_cli(capsys, "status") == (0, "0 runs\n", "")
    assert run_cli(capsys, "status", "--json") == (0, "[]\n", "")


def test_show(store: SqliteStore, capsys) -> None:
    add_run(store, "run_1")
    code, out, _ = run_cli(capsys, "show", "run_1")
    assert code == 0 and json.loads(out) == store.get("run_1")
    code, out, err = run_cli(capsys, "show", "run_2")
    assert (code, out) == (1, "")
    assert err == "dfarchive: no run 'run_2' in the sqlite store\n"


# -- retry ---------------------------------------------------------------------------------


def test_retry_puts_a_failed_run_back_to_pending(store: SqliteStore, capsys) -> None:
    add_failed(store, "run_failed")
    code, out, err = run_cli(capsys, "retry", "run_failed")
    assert code == 0, err
    assert out.startswith("run_failed: failed -> pending")
    doc = store.get("run_failed")
    assert (doc["status"], doc["failure_count"]) == ("pending", 0)


def test_retry_refuses_other_states_and_unknown_runs(store: SqliteStore, capsys) -> None:
    add_run(store, "run_pending")
    code, out, err = run_cli(capsys, "retry", "run_pending")
    assert (code, out) == (1, "")
    assert "cannot retry" in err and "'pending'; only failed runs can be retried" in err
    assert store.get("run_pending")["status"] == "pending"
    code, _, err = run_cli(capsys, "retry", "nope")
    assert code == 1 and "no run 'nope'" in err


def test_release_puts_a_processing_run_back_to_pending(store: SqliteStore, capsys) -> None:
    add_run(store, "run_stuck")
    assert store.claim("run_stuck", worker_id="gone-host:7") is not None
    code, out, err = run_cli(capsys, "release", "run_stuck")
    assert code == 0, err
    assert out.startswith("run_stuck: processing -> pending (was held by gone-host:7)")
    doc = store.get("run_stuck")
    assert (doc["status"], doc["failure_count"]) == ("pending", 0)
    code, out, err = run_cli(capsys, "release", "run_stuck")  # pending now: refused
    assert (code, out) == (1, "")
    assert "cannot release" in err and "only processing runs can be released" in err
    code, _, err = run_cli(capsys, "release", "nope")
    assert code == 1 and "no run 'nope'" in err


# -- verify --------------------------------------------------------------------------------


@pytest.mark.parametrize("deep", [False, True], ids=["plain", "deep"])
@pytest.mark.parametrize("damage", ["none", "flip", "truncate", "append"])
def test_verify(
    store: SqliteStore, archived: ArchivedRun, tmp_path: Path, capsys, damage: str, deep: bool
) -> None:
    copy = tmp_path / "dest" / archived.archive.name
    data = bytearray(archived.archive.read_bytes())
    if damage == "flip":
        data[len(data) // 3] ^= 0x04
    elif damage == "truncate":
        del data[-1:]
    elif damage == "append":
        data += b"\n"
    copy.write_bytes(bytes(data))
    add_encrypted(store, archived, file=str(copy))
    code, out, err = run_cli(capsys, "verify", archived.run_id, *(["--deep"] if deep else []))
    if damage == "none":
        assert code == 0, out + err
        assert out.splitlines()[-1].endswith("verification passed")
        return
    assert code == 1, out + err
    assert "FAILED" in out.splitlines()[-1]
    mismatches = [line for line in out.splitlines() if line.startswith("MISMATCH")]
    what = {"flip": "SHA-256 is", "truncate": "bytes, the record says", "append": "bytes, the"}
    assert any(what[damage] in line for line in mismatches), out
    if deep:
        assert any("does not decrypt" in line for line in mismatches), out


def test_verify_deep_detects_an_edited_plaintext_checksum(
    store: SqliteStore, archived: ArchivedRun, capsys
) -> None:
    add_encrypted(store, archived, plaintext_sha256="00" * 32)
    assert run_cli(capsys, "verify", archived.run_id)[0] == 0
    code, out, _ = run_cli(capsys, "verify", archived.run_id, "--deep")
    assert code == 1
    assert (
        f"MISMATCH  plaintext SHA-256 is {archived.record['plaintext_sha256']}, "
        f"the record says {'00' * 32}" in out.splitlines()
    )


def test_verify_without_an_archive(store: SqliteStore, capsys) -> None:
    add_run(store, "run_pending")
    code, out, err = run_cli(capsys, "verify", "run_pending")
    assert (code, out) == (1, "")
    assert "nothing to verify" in err and "not encrypted" in err
    code, _, err = run_cli(capsys, "verify", "nope", "--deep")
    assert code == 1 and "no run 'nope'" in err


# -- restore -------------------------------------------------------------------------------


def test_restore_from_the_store(
    store: SqliteStore, archived: ArchivedRun, tmp_path: Path, capsys
) -> None:
    add_encrypted(store, archived)
    into = tmp_path / "restored"
    code, out, err = run_cli(capsys, "restore", archived.run_id, "--to", str(into))
    assert code == 0, err
    assert "plaintext SHA-256 matches the record" in out
    assert tree(into / archived.run_id) == tree(archived.source)
    code, out, err = run_cli(capsys, "restore", archived.run_id, "--to", str(into))
    assert code == 1 and err.count("\n") == 1 and "already exists" in err


def test_restore_checks_the_recorded_checksum(
    store: SqliteStore, archived: ArchivedRun, tmp_path: Path, capsys
) -> None:
    add_encrypted(store, archived, plaintext_sha256="11" * 32)
    code, _, err = run_cli(capsys, "restore", archived.run_id, "--to", str(tmp_path / "r"))
    assert code == 1 and "plaintext SHA-256" in err and "nothing restored" in err
    assert os.listdir(tmp_path / "r") == []


def test_restore_of_an_unknown_or_unarchived_run(
    store: SqliteStore, tmp_path: Path, capsys
) -> None:
    code, _, err = run_cli(capsys, "restore", "nope", "--to", str(tmp_path / "r"))
    assert code == 1 and "no run 'nope'" in err and "--archive and --key" in err
    add_run(store, "run_pending")
    code, _, err = run_cli(capsys, "restore", "run_pending", "--to", str(tmp_path / "r"))
    assert code == 1 and "not encrypted" in err


# -- every command: a broken config is exit 2 and one line -------------------------------


COMMANDS = [
    ["init"],
    ["status"],
    ["status", "--json"],
    ["show", "run"],
    ["retry", "run"],
    ["verify", "run"],
    ["verify", "run", "--deep"],
    ["restore", "run", "--to", "somewhere"],
    ["restore", "run", "--to", "somewhere", "--archive", "a", "--key", "k"],
    ["scheduler", "--once"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
@pytest.mark.parametrize("broken", ["missing", "not_yaml", "unknown_key", "bad_value"])
def test_a_broken_config_is_exit_2_in_one_line(
    command: list[str], broken: str, tmp_path: Path, capsys
) -> None:
    path = tmp_path / "broken.yaml"
    if broken == "not_yaml":
        path.write_text("statusdb: [unclosed\n")
    elif broken == "unknown_key":
        path.write_text("sequencing_pth: /x\n")
    elif broken == "bad_value":
        path.write_text(f"sequencing_path: {tmp_path}\ndestination_path: {tmp_path}\n"
                        "gpg_receiver: x\nmax_attempts: zero\n")  # fmt: skip
    code, out, err = run_cli(capsys, *command, "-c", str(path))
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith(f"dfarchive: error: {path}")


def test_usage_errors_are_exit_2(capsys) -> None:
    assert run_cli(capsys)[0] == 2
    assert run_cli(capsys, "frobnicate")[0] == 2
    assert run_cli(capsys, "restore", "run")[0] == 2  # --to is required
    assert run_cli(capsys, "status", "--status", "sleeping")[0] == 2


# -- scheduler ---------------------------------------------------------------------------


def test_scheduler_delegates(config: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    import signal

    import dfarchive.service.scheduler

    calls = []
    monkeypatch.setattr(signal, "signal", lambda *args: None)
    monkeypatch.setattr(
        dfarchive.service.scheduler,
        "run_scheduler",
        lambda config, *, once, stop: calls.append((config.source, once, stop.is_set())) or 0,
    )
    assert run_cli(capsys, "scheduler", "--once")[0] == 0
    assert run_cli(capsys, "scheduler")[0] == 0
    assert calls == [(str(config), True, False), (str(config), False, False)]


# -- the installed console script, in a subprocess --------------------------------------------


def test_console_script(
    store: SqliteStore, archived: ArchivedRun, tmp_path: Path, monkeypatch
) -> None:
    """``dfarchive`` as installed, with the key found through ``$GNUPGHOME``."""
    add_encrypted(store, archived)
    config = write_config(tmp_path, archived, gnupg_home=None)
    script = Path(sys.executable).with_name("dfarchive")
    assert script.exists(), "the project is not installed (pip install -e .)"
    env = {**archived.home.env, "ARCHIVE_CONFIG": str(config)}

    def dfarchive(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(script), *args], env=env, capture_output=True, text=True, timeout=60
        )

    done = dfarchive("status", "--json")
    assert done.returncode == 0, done.stderr
    assert [doc["_id"] for doc in json.loads(done.stdout)] == [archived.run_id]
    done = dfarchive("verify", archived.run_id, "--deep")
    assert done.returncode == 0, done.stdout + done.stderr
    empty = tmp_path / "empty-gnupg"  # a keyring without the private key
    empty.mkdir(mode=0o700)
    env["GNUPGHOME"] = str(empty)
    try:
        done = dfarchive("verify", archived.run_id, "--deep")
    finally:
        subprocess.run(["gpgconf", "--kill", "all"], env=env, capture_output=True, timeout=30)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith("dfarchive: error: cannot unwrap the run key")
    assert "No secret key" in done.stderr
    assert done.stderr.count("\n") == 1


# -- CouchDB -------------------------------------------------------------------------------


def test_status_json_on_couchdb(
    couchdb_server, couchdb_database: str, couchdb_store, archived: ArchivedRun,
    tmp_path: Path, capsys,
) -> None:  # fmt: skip
    couch = couchdb_store(max_attempts=2)
    couch.register_many([NewRun("run_a", "/seq/A/run_a", "A")], worker_id="host:1")
    couch.register_many([NewRun("run_b", "/seq/A/run_b", "A")], worker_id="host:1")
    claim = couch.claim("run_b", worker_id="host:2")
    assert claim is not None
    couch.fail(claim, "boom")
    statusdb = {
        "url": couchdb_server.url,
        "database": couchdb_database,
        **({"username": couchdb_server.username} if couchdb_server.username else {}),
        **({"password": couchdb_server.password} if couchdb_server.password else {}),
    }
    config = write_config(tmp_path, archived, statusdb=statusdb)
    code, out, err = run_cli(capsys, "status", "--json", "-c", str(config))
    assert code == 0, err
    docs = json.loads(out)
    assert [doc["_id"] for doc in docs] == ["run_a", "run_b"]
    for doc in docs:
        for field, kind in ORIGINAL_FIELDS.items():
            assert type(doc[field]) is kind, (field, doc)
        assert doc["_rev"]
    assert (docs[1]["status"], docs[1]["failure_count"], docs[1]["last_error"]) == (
        "pending", 1, "boom",
    )  # fmt: skip
    code, out, _ = run_cli(capsys, "status", "-c", str(config))
    assert code == 0 and out.splitlines()[-1] == "2 runs: 2 pending"


# -- fixity audits: verify --all, status --fixity ------------------------------------------


def add_encrypted_copy(
    store: SqliteStore, archived: ArchivedRun, run_id: str, tmp_path: Path, flip: bool = False
) -> Path:
    """Another encrypted run whose archive is a copy of ``archived``'s (a byte flipped)."""
    data = bytearray(archived.archive.read_bytes())
    if flip:
        data[len(data) // 2] ^= 0x01
    copy = tmp_path / f"{run_id}.tar.gpg"
    copy.write_bytes(bytes(data))
    add_run(store, run_id, f"/seq/A/{run_id}")
    claim = store.claim(run_id, worker_id="host:3")
    assert claim is not None
    store.finish(claim, {**archived.record, "file": str(copy)})
    return copy


def test_verify_all_audits_records_and_fails_on_a_flipped_byte(
    store: SqliteStore, archived: ArchivedRun, tmp_path: Path, capsys
) -> None:
    add_encrypted(store, archived)
    add_encrypted_copy(store, archived, "run_flipped", tmp_path, flip=True)
    gone = add_encrypted_copy(store, archived, "run_on_tape", tmp_path)
    gone.unlink()
    add_run(store, "run_original")
    doc = store.get("run_original")
    assert doc is not None
    store._replace({**doc, "status": "encrypted"})  # the original tool's, not adopted
    add_run(store, "run_pending")

    code, out, err = run_cli(capsys, "verify", "--all", "--max-rate", "100")
    assert code == 1, err
    lines = out.splitlines()
    assert f"ok        {archived.run_id}" in lines
    flipped = next(line for line in lines if line.startswith("FAILED    run_flipped: "))
    assert "SHA-256 is" in flipped
    assert f"MISSING   run_on_tape: archive {gone} is missing" in lines
    assert lines[-2].startswith("3 runs audited: 1 ok, 1 failed, 1 missing (")
    assert lines[-1].startswith("1 encrypted runs not audited: archived by the original tool")
    recorded = {d["_id"]: d.get("fixity") for d in store.runs()}
    assert recorded[archived.run_id]["result"] == "ok"
    assert recorded["run_flipped"]["result"] == "failed"
    assert recorded["run_flipped"]["reason"] == flipped.split(": ", 1)[1]
    assert recorded["run_on_tape"]["result"] == "missing"
    assert recorded["run_original"] is None and recorded["run_pending"] is None
    assert recorded[archived.run_id]["deep"] is False and recorded[archived.run_id]["host"]

    code, out, _ = run_cli(capsys, "status", "--fixity", "failed")
    rows = out.splitlines()
    assert [line.split()[0] for line in rows[1:-1]] == ["run_flipped"]
    assert rows[1].split()[8].startswith("failed/")
    assert rows[-1] == "1 run: 1 encrypted (fixity failed)"
    code, out, _ = run_cli(capsys, "status", "--fixity", "missing")
    assert [line.split()[0] for line in out.splitlines()[1:-1]] == ["run_on_tape"]
    code, out, _ = run_cli(capsys, "status")
    cells = {line.split()[0]: line.split()[8] for line in out.splitlines()[1:-1]}
    assert cells["run_pending"] == "-" and cells["run_original"] == "-"
    assert cells[archived.run_id].startswith("ok/")

    # --older-than: the runs checked just now are skipped
    code, out, _ = run_cli(capsys, "verify", "--all", "--older-than", "1")
    assert code == 0 and out.splitlines()[0].startswith("0 runs audited")


def test_verify_all_deep_and_single_runs_record_too(
    store: SqliteStore, archived: ArchivedRun, capsys
) -> None:
    add_encrypted(store, archived)
    code, out, err = run_cli(capsys, "verify", "--all", "--deep")
    assert code == 0, err
    assert "1 runs deep audited: 1 ok, 0 failed, 0 missing" in out
    first = store.get(archived.run_id)["fixity"]  # type: ignore[index]
    assert first["deep"] is True and first["result"] == "ok"
    code, out, err = run_cli(capsys, "verify", archived.run_id)
    assert code == 0, err
    doc = store.get(archived.run_id)
    assert doc["fixity"]["deep"] is False and doc["fixity_history"] == [first]  # type: ignore[index]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["verify"], "verify: give either RUN_ID or --all"),
        (["verify", "run_1", "--all"], "verify: give either RUN_ID or --all"),
        (["verify", "run_1", "--older-than", "3"], "verify: --older-than goes with --all"),
    ],
)
def test_verify_usage_errors(store: SqliteStore, capsys, argv: list[str], message: str) -> None:
    code, out, err = run_cli(capsys, *argv)
    assert (code, out, err) == (2, "", f"dfarchive: {message}\n")
