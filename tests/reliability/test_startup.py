"""Bad configuration and bad surroundings at start-up: every one is a one-line error,
exit code 2, quickly, with no traceback and no secret in the output.

The config-file cases complete ``tests/service/test_config.py`` (only shapes it lacks); the
start-up cases run the real ``dataflow_archive`` / ``dfarchive`` processes against an
unreachable CouchDB and RabbitMQ, the CouchDB test server with a wrong password, a
keyring with unusable keys, and a read-only destination (a read-only bind mount: as
root, permission bits don't stop writes, a read-only mount does).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import subprocess
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dfarchive.archiving.keys import resolve_recipient
from dfarchive.coordination.attempt import AttemptOutcome, attempt_run
from dfarchive.coordination.store import NewRun, SqliteStore
from dfarchive.errors import ConfigError
from dfarchive.service.config import load_config
from tests.support.gpg import GnupgHome, new_gnupg_home
from tests.support.waiting import wait_until
from tests.support.workspace import Finished, Workspace

pytestmark = pytest.mark.timeout(90)

#: A start-up error must come this fast (seconds): no retry storm against a dead server.
FAST = 15.0
SECRET = "Pa55-w0rd-that-must-not-show"


def assert_startup_error(result: Finished, *expected: str) -> str:
    """Exit 2, one line on stderr holding ``expected``, nothing else, quickly."""
    assert result.returncode == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    assert SECRET not in result.output
    for text in expected:
        assert text in lines[0], lines[0]
    assert result.seconds < FAST, f"took {result.seconds:.1f} s"
    return lines[0]


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def keyring(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GnupgHome]:
    """A recipient key, plus an expired one and a sign-only one."""
    home = new_gnupg_home(tmp_path_factory.mktemp("startup") / "gpg")
    home.make_key("expired <expired@dfarchive.invalid>", expire="1d", faked_time="20200101T000000!")
    home.make_key("signer <signer@dfarchive.invalid>", subkey_usage=None)
    try:
        yield home
    finally:
        home.stop_agent()


@pytest.fixture
def ws(tmp_path: Path, keyring: GnupgHome) -> Workspace:
    return Workspace(tmp_path, keyring)


# -- the config file (shapes tests/service/test_config.py does not have) ------------------


def base_config(tmp_path: Path) -> str:
    for name in ("seq", "arch"):
        (tmp_path / name).mkdir(exist_ok=True)
    return f"sequencing_path: {tmp_path}/seq\ndestination_path: {tmp_path}/arch\ngpg_receiver: x\n"


MORE_BAD_CONFIGS = {
    "missing destination_path": (
        "sequencing_path: {tmp}/seq\ngpg_receiver: x\n",
        "destination_path: missing; this key is required",
    ),
    "missing statusdb.url": (
        "{base}statusdb:\n  database: runs\n",
        "statusdb.url: missing; this key is required",
    ),
    "required key set to null": (
        "sequencing_path: {tmp}/seq\ndestination_path: {tmp}/arch\ngpg_receiver:\n",
        "gpg_receiver: missing; this key is required",
    ),
    "required key empty": (
        "sequencing_path: {tmp}/seq\ndestination_path: {tmp}/arch\ngpg_receiver: '  '\n",
        "gpg_receiver: expected a non-empty string, got a string",
    ),
    "path as a number": (
        "sequencing_path: 3\ndestination_path: {tmp}/arch\ngpg_receiver: x\n",
        "sequencing_path: expected a non-empty string, got a number",
    ),
    "recipient as a list": (
        "sequencing_path: {tmp}/seq\ndestination_path: {tmp}/arch\ngpg_receiver: [a, b]\n",
        "gpg_receiver: expected a non-empty string, got a list",
    ),
    "statusdb as a string": (
        "{base}statusdb: http://127.0.0.1:5984\n",
        "statusdb: expected a mapping, got a string",
    ),
    "boolean as a string": (
        "{base}validate_from_device: 'yes'\n",
        "validate_from_device: expected true or false, got a string",
    ),
    "whole number as a fraction": (
        "{base}concurrency: 1.5\n",
        "concurrency: expected a whole number >= 1, got a number",
    ),
    "whole number as a boolean": (
        "{base}max_attempts: true\n",
        "max_attempts: expected a whole number >= 1, got a boolean",
    ),
    "seconds as a quoted number": (
        "{base}lease_seconds: '300'\n",
        "lease_seconds: expected a number of seconds, got a string",
    ),
    "port out of range": (
        "{base}metrics_port: 70000\n",
        "metrics_port: expected a TCP port number (1-65535), got 70000",
    ),
    "unknown auth method": (
        "{base}statusdb:\n  url: http://h:5984\n  database: d\n  auth: kerberos\n",
        "statusdb.auth: expected one of basic, session",
    ),
    "keys_path is a file": (
        "{base}keys_path: {tmp}/a_file\n",
        "keys_path: {tmp}/a_file exists but is not a directory",
    ),
    "gnupg_home missing": (
        "{base}gnupg_home: {tmp}/no_keyring\n",
        "gnupg_home: {tmp}/no_keyring does not exist",
    ),
    "empty string in a list": (
        "{base}ignore:\n  - ''\n",
        "ignore[0]: expected a non-empty string, got a string",
    ),
    "unknown key without a close match": (
        "{base}colour: blue\n",
        "colour: unknown key; known keys: statusdb, sequencing_path",
    ),
    "a key that is not a string": (
        "{base}3: x\n",
        "3: unknown key",
    ),
    "statusdb url without a host": (
        "{base}statusdb:\n  url: 'http://'\n  database: d\n",
        "statusdb.url: expected an http(s) URL or host name",
    ),
}


@pytest.mark.parametrize("case", list(MORE_BAD_CONFIGS))
def test_more_bad_configs_name_the_file_and_the_key(case: str, tmp_path: Path) -> None:
    template, expected = MORE_BAD_CONFIGS[case]
    (tmp_path / "a_file").write_text("")
    base = base_config(tmp_path)
    path = tmp_path / "df_archive.yaml"
    path.write_text(template.format(tmp=tmp_path, base=base))
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    message = str(caught.value)
    assert message.startswith(f"{path}: "), message
    assert expected.format(tmp=tmp_path) in message
    assert "\n" not in message


# -- unreachable servers, refused credentials -----------------------------------------------


@pytest.mark.parametrize("program", ["dataflow_archive", "dfarchive"])
def test_an_unreachable_couchdb_is_a_fast_one_line_startup_error(
    ws: Workspace, program: str
) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    config = ws.config(statusdb={"url": url, "database": "runs", "username": "archiver"})
    env = ws.env(DFARCHIVE_STATUSDB_PASSWORD=SECRET)
    args = ["status"] if program == "dfarchive" else ["--once"]
    result = ws.run(program, *args, "-c", str(config), env=env)
    assert_startup_error(result, url, "unreachable", "Connection refused")


@pytest.mark.parametrize("program", ["dataflow_archive", "dfarchive"])
def test_an_unreachable_broker_is_a_fast_one_line_startup_error(
    ws: Workspace, program: str
) -> None:
    port = closed_port()
    config = ws.config(broker_url=f"amqp://archiver:{SECRET}@127.0.0.1:{port}/%2F")
    args = ["scheduler"] if program == "dfarchive" else []
    result = ws.run(program, *args, "-c", str(config), "--once")
    line = assert_startup_error(result, "broker_url", f"127.0.0.1:{port}")
    assert "archiver:" not in line


@pytest.mark.parametrize("auth", ["basic", "session"])
def test_a_wrong_couchdb_password_is_a_clear_startup_error(
    ws: Workspace, couchdb_server, couchdb_database: str, auth: str
) -> None:
    config = ws.config(
        statusdb={
            "url": couchdb_server.url,
            "database": couchdb_database,
            "username": couchdb_server.username,
            "auth": auth,
        }
    )
    env = ws.env(DFARCHIVE_STATUSDB_PASSWORD=SECRET)
    for program, args in (
        ("dataflow_archive", ["-c", str(config), "--once"]),
        ("dfarchive", ["status", "-c", str(config)]),
    ):
        result = ws.run(program, *args, env=env)
        assert_startup_error(result, couchdb_server.url, repr(couchdb_server.username), "refused")


# -- the recipient key ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("receiver", "problem"),
    [
        ("nobody@dfarchive.invalid", "no public key found"),
        ("expired@dfarchive.invalid", "is expired"),
        ("signer@dfarchive.invalid", "has no usable encryption key"),
    ],
)
def test_an_unusable_recipient_is_a_startup_error_naming_it(
    ws: Workspace, receiver: str, problem: str
) -> None:
    config = ws.config(gpg_receiver=receiver)
    ws.make_run("seqA", "run_waiting")
    result = ws.run("dataflow_archive", "-c", str(config), "--once")
    assert_startup_error(result, "gpg_receiver", repr(receiver), problem)
    assert not ws.state.exists() or ws.documents() == {}  # nothing was registered


# -- output directories ------------------------------------------------------------------------


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """``path`` made read-only by a read-only bind mount of itself (as root, permission
    bits would not stop a write); unmounted afterwards."""
    for command in (
        ["mount", "--bind", str(path), str(path)],
        ["mount", "-o", "remount,bind,ro", str(path)],
    ):
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            subprocess.run(["umount", str(path)], capture_output=True, timeout=30)
            pytest.fail(f"cannot make {path} read-only: {done.stderr.strip()}", pytrace=False)
    try:
        yield
    finally:
        subprocess.run(["umount", str(path)], check=True, capture_output=True, timeout=30)


@pytest.mark.parametrize("key", ["destination_path", "keys_path"])
def test_a_read_only_output_directory_is_a_startup_error(ws: Workspace, key: str) -> None:
    config = ws.config()
    path = ws.archives if key == "destination_path" else ws.keys
    with read_only(path):
        result = ws.run("dataflow_archive", "-c", str(config), "--once")
    assert_startup_error(result, f"{key}: {path}", "not writable")


def test_a_destination_turning_read_only_mid_life_is_a_counted_failure(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GNUPGHOME", ws.home.home)
    run = ws.make_run("seqA", "run_ro")
    settings = load_config(ws.config()).archive_settings()
    recipient = resolve_recipient(ws.home.fingerprint, gnupg_home=ws.home.home)
    with SqliteStore(ws.state) as store:
        store.setup()
        store.register_many([NewRun("run_ro", str(run), "seqA")], worker_id="s:1")
        with read_only(ws.archives):
            outcome = attempt_run(
                store,
                "run_ro",
                worker_id="w:1",
                settings=settings,
                recipient=recipient,
                sequencing_path=ws.seq,
            )
        doc = store.get("run_ro")
    assert outcome is AttemptOutcome.FAILED
    assert (doc["status"], doc["failure_count"]) == ("pending", 1)
    assert f"output directory {ws.archives} is not writable" in doc["last_error"]
    assert list(ws.archives.iterdir()) == [] and list(ws.keys.iterdir()) == []


def test_a_world_readable_keys_path_is_refused_with_the_chmod_hint(ws: Workspace) -> None:
    ws.keys.chmod(0o755)
    result = ws.run("dataflow_archive", "-c", str(ws.config()), "--once")
    assert_startup_error(
        result, f"keys_path: {ws.keys} is accessible to all users (mode 755)",
        f"run: chmod o-rwx {ws.keys}",
    )  # fmt: skip
    ws.keys.chmod(0o750)  # group access is the operator's choice
    result = ws.run("dataflow_archive", "-c", str(ws.config()), "--once")
    assert result.returncode == 0, result.output


def test_config_errors_need_no_traceback_even_with_odd_bytes(ws: Workspace) -> None:
    config = ws.base / "df_archive.yaml"
    config.write_bytes(b"sequencing_path: \xff\xfe\n")
    result = ws.run("dataflow_archive", "-c", str(config))
    assert_startup_error(result, str(config), "cannot read the config file")
    config.write_text(textwrap.dedent("statusdb:\n  url: [1, 2\n"))
    result = ws.run("dfarchive", "status", "-c", str(config))
    assert_startup_error(result, str(config), "not valid YAML")


# -- the recipient lost after start-up --------------------------------------------------


def test_a_recipient_removed_mid_way_pauses_the_loop_uncounted_until_it_is_back(
    ws: Workspace,
    keyring: GnupgHome,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every run used to burn its attempts on RecipientError. Now: released uncounted
    with last_error, one CRITICAL line, no claims while the key is missing (checked
    every scan_interval), archived once the key is imported again."""
    from dfarchive.archiving import keys
    from dfarchive.service.localloop import LocalArchiver
    from dfarchive.service.startup import prepare

    worker = GnupgHome(home=str(tmp_path_factory.mktemp("wk")), fingerprint=keyring.fingerprint)
    Path(worker.home).chmod(0o700)
    public_key = keyring.gpg("--export", keyring.fingerprint)
    worker.gpg("--import", input=public_key)  # a worker host holds the public key only
    monkeypatch.setenv("GNUPGHOME", worker.home)
    for name in ("run_a", "run_b", "run_c"):
        ws.make_run("seqA", name)
    runtime = prepare(load_config(ws.config(gnupg_home=worker.home, concurrency=2)))
    checks: list[float] = []
    real_resolve = keys.resolve_recipient

    def counted_resolve(name, *, gnupg_home=None):  # type: ignore[no-untyped-def]
        checks.append(time.monotonic())  # the key check each attempt and re-check makes
        return real_resolve(name, gnupg_home=gnupg_home)

    monkeypatch.setattr(keys, "resolve_recipient", counted_resolve)
    worker.gpg("--yes", "--delete-keys", keyring.fingerprint)  # after start-up
    archiver = LocalArchiver(runtime)
    loop = threading.Thread(target=archiver.run, daemon=True)
    caplog.set_level(logging.INFO, logger="dfarchive")
    loop.start()
    try:
        docs = wait_until(
            lambda: (
                (d := ws.documents())
                and sum(doc.get("last_error") is not None for doc in d.values()) == 2
                and d
            ),
            60,
            "two runs released",
        )
        released = {run_id: doc for run_id, doc in docs.items() if doc.get("last_error")}
        for doc in released.values():
            assert (doc["status"], doc["failure_count"]) == ("pending", 0)
            assert doc["last_error"].startswith(
                "not archived now: the GPG recipient is unusable: GPG recipient "
                f"'{keyring.fingerprint}': no public key found"
            )
        seen = len(checks)
        wait_until(lambda: len(checks) >= seen + 3, 60, "three re-checks of the key")
        assert ws.documents() == docs  # nothing claimed meanwhile
        untouched = [doc for doc in docs.values() if not doc.get("last_error")]
        assert len(untouched) == 1 and "claim_token" not in untouched[0]
        loud = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(loud) == 1 and loud[0].levelno == logging.CRITICAL, loud
        assert keyring.fingerprint in loud[0].getMessage()

        worker.gpg("--import", input=public_key)
        wait_until(
            lambda: all(doc["status"] == "encrypted" for doc in ws.documents().values()),
            60,
            "every run encrypted once the key is back",
        )
    finally:
        archiver.stop()
        loop.join(60)
        runtime.store.close()
    docs = ws.documents()
    assert all(doc["failure_count"] == 0 for doc in docs.values())
    assert sorted(p.name for p in ws.archives.iterdir()) == [
        "run_a.tar.gpg", "run_b.tar.gpg", "run_c.tar.gpg"
    ]  # fmt: skip
    assert [r.getMessage() for r in caplog.records if "taking new runs" in r.getMessage()] == [
        f"GPG recipient {keyring.fingerprint} is usable again; taking new runs"
    ]
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == loud
