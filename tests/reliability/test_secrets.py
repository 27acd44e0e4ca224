"""Secrets stay secret: the run key, the CouchDB password, and the modes of what is
written.

Real ``dataflow_archive --once`` runs while a sampler reads the argv and environment of
every process on the machine (tar, gpg and the gpg-agent gpg starts included); the run
key is learned only afterwards, by unwrapping ``<run>.key.gpg`` with the test keyring,
and then searched for (64 hex characters and the 32 raw bytes) in what was sampled, in
every file under the workspace (``TMPDIR`` points into it) and in the logs.
"""

from __future__ import annotations

import contextlib
import os
import resource
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dfarchive.archiving import pipeline
from dfarchive.archiving.keys import resolve_recipient
from dfarchive.coordination import attempt as attempt_module
from dfarchive.coordination.attempt import AttemptOutcome, attempt_run
from dfarchive.coordination.store import NewRun, SqliteStore
from dfarchive.service.config import load_config
from tests.support.gpg import GnupgHome, new_gnupg_home
from tests.support.waiting import wait_until
from tests.support.workspace import (
    BIN,
    ProcessSampler,
    Workspace,
    files_holding,
    started,
)

pytestmark = pytest.mark.timeout(120)

PASSWORD_ENV = "DFARCHIVE_STATUSDB_PASSWORD"


@pytest.fixture
def keyring(tmp_path: Path) -> Iterator[GnupgHome]:
    home = new_gnupg_home(tmp_path / "gpg")  # inside the workspace: searched like the rest
    try:
        yield home
    finally:
        home.stop_agent()


def slow_run(ws: Workspace, name: str) -> Path:
    """A run whose tar lives long enough to be sampled (a sparse 256 MiB file)."""
    run = ws.make_run("seqA", name)
    with open(run / "big.cbcl", "wb") as f:
        f.truncate(256 << 20)
    (run / "SampleSheet.csv").write_text("[Header]\n")
    return run


def sampled_run(
    ws: Workspace, config: Path, env: dict[str, str], *, children: set[bytes]
) -> tuple[ProcessSampler, str]:
    """``dataflow_archive --once`` under the sampler; returns it and the output.
    ``children``: names of the long-lived children the sampler must have caught (the
    gpg runs that wrap the key last milliseconds: sampled when caught)."""
    argv = [str(BIN / "dataflow_archive"), "-c", str(config), "--once"]
    with started(argv, env=env, cwd=ws.base) as process, ProcessSampler(process.pid) as sampler:
        out, err = process.communicate(timeout=100)
    output = (out + err).decode(errors="backslashreplace")
    assert process.returncode == 0, output
    assert sampler.rounds > 0
    assert children <= sampler.descendant_names, sampler.descendant_names
    return sampler, output


@pytest.mark.parametrize("engine", ["inprocess", "gpg"])
def test_the_run_key_is_never_on_disk_in_argv_environment_or_logs(
    tmp_path: Path, keyring: GnupgHome, engine: str
) -> None:
    ws = Workspace(tmp_path, keyring)
    slow_run(ws, "run_secret")
    config = ws.config(engine=engine, validate_with=engine, log_level="DEBUG")
    children = {b"tar", b"gpg"} if engine == "gpg" else {b"tar"}
    sampler, output = sampled_run(ws, config, ws.env(), children=children)
    assert ws.documents()["run_secret"]["status"] == "encrypted"

    key = ws.run_key("run_secret")
    assert len(key) == 64
    raw = bytes.fromhex(key.decode())
    assert sampler.holding(key, raw) == []  # no process's argv or environment, ever
    assert key.decode() not in output
    assert files_holding([tmp_path], key, raw) == []  # incl. TMPDIR, state, log, keyring
    assert ws.log.stat().st_size > 0 and key not in ws.log.read_bytes()
    assert list(ws.tmpdir.iterdir()) == []  # nothing left in TMPDIR either


def test_the_couchdb_password_is_never_in_children_argv_environment_or_logs(
    tmp_path: Path, keyring: GnupgHome, couchdb_server, couchdb_database: str
) -> None:
    ws = Workspace(tmp_path, keyring)
    slow_run(ws, "run_couch")
    config = ws.config(
        engine="gpg",
        log_level="DEBUG",
        statusdb={
            "url": couchdb_server.url,
            "database": couchdb_database,
            "username": couchdb_server.username,
        },
    )
    password = couchdb_server.password.encode()
    env = ws.env(**{PASSWORD_ENV: password.decode()})
    sampler, output = sampled_run(ws, config, env, children={b"tar", b"gpg"})
    # the command itself was given the password in its environment, and the test
    # server holds it as its admin password; no other process may have it
    given = {sampler.root}
    server = getattr(couchdb_server, "_process", None)
    if server is not None:
        given.add(server.pid)
    others = set(sampler.texts) - given
    assert sampler.holding(password, among=others) == []
    assert sampler.descendant_pids & others  # its children (tar, gpg) were among them
    assert password.decode() not in output
    assert password not in ws.log.read_bytes()
    assert files_holding([tmp_path], password) == []
    assert couchdb_server.username in config.read_text()  # the config names the user only


# -- modes of what is written, whatever the umask -------------------------------------------


@pytest.fixture
def umask(request) -> Iterator[int]:
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


@pytest.mark.parametrize("umask", [0o000, 0o077, 0o022], indirect=True)
def test_outputs_never_have_wider_modes_than_their_final_ones(
    tmp_path: Path, keyring: GnupgHome, umask: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GNUPGHOME", keyring.home)
    ws = Workspace(tmp_path, keyring)
    run = ws.make_run("seqA", "run_modes")
    (run / "data.bin").write_bytes(bytes(32 << 20))  # tar still busy at the first report
    seen: dict[str, int] = {}

    def mode(path: Path) -> int:
        return stat.S_IMODE(os.lstat(path).st_mode)

    real_archive_run = attempt_module.archive_run

    def archive_run(*args, progress=None, **kwargs):
        def report(done: int, total: int) -> None:
            partial = ws.archives / "run_modes.tar.gpg.partial"
            seen.setdefault("archive while written", mode(partial))
            if progress is not None:
                progress(done, total)

        return real_archive_run(*args, progress=report, **kwargs)

    real_wrap_key = pipeline.wrap_key

    def wrap_key(*args, **kwargs):  # called once the key's partial file exists, empty
        seen["key when created"] = mode(ws.keys / "run_modes.key.gpg.partial")
        return real_wrap_key(*args, **kwargs)

    monkeypatch.setattr(attempt_module, "archive_run", archive_run)
    monkeypatch.setattr(pipeline, "wrap_key", wrap_key)
    settings = load_config(ws.config()).archive_settings()
    recipient = resolve_recipient(keyring.fingerprint, gnupg_home=keyring.home)
    with SqliteStore(ws.state) as store:
        store.setup()
        store.register_many([NewRun("run_modes", str(run), "seqA")], worker_id="s:1")
        outcome = attempt_run(
            store,
            "run_modes",
            worker_id="w:1",
            settings=settings,
            recipient=recipient,
            sequencing_path=ws.seq,
        )
    assert outcome is AttemptOutcome.ENCRYPTED
    seen["archive"] = mode(ws.archives / "run_modes.tar.gpg")
    seen["key"] = mode(ws.keys / "run_modes.key.gpg")
    assert seen == {
        "archive while written": 0o640,
        "key when created": 0o600,
        "archive": 0o640,
        "key": 0o600,
    }


@pytest.mark.parametrize("umask", [0o000], indirect=True)
def test_keys_path_is_created_0700_even_with_umask_0(
    tmp_path: Path, keyring: GnupgHome, umask: int
) -> None:
    ws = Workspace(tmp_path, keyring)
    keys = tmp_path / "new" / "run_keys"
    config = ws.config(keys_path=str(keys))
    result = subprocess.run(
        [str(BIN / "dfarchive"), "init", "-c", str(config)],
        env=ws.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )  # inherits umask 0
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700


# -- core dumps ------------------------------------------------------------------------------


def core_limit(pid: int) -> str:
    """A process's core file size limits, soft and hard, e.g. ``"0 0"``."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max core file size"):
            return " ".join(line.split()[4:6])
    raise AssertionError(f"no core file size in /proc/{pid}/limits")


def allow_core_dumps() -> None:
    """In the child before exec: core files allowed, as a shell may have left them."""
    hard = resource.getrlimit(resource.RLIMIT_CORE)[1]
    resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))


def children_of(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


def test_dataflow_archive_holding_a_run_key_cannot_dump_core(
    tmp_path: Path, keyring: GnupgHome
) -> None:
    ws = Workspace(tmp_path, keyring)
    slow_run(ws, "run_secret")
    argv = [str(BIN / "dataflow_archive"), "-c", str(ws.config())]
    process = subprocess.Popen(
        argv, env=ws.env(), cwd=ws.base, preexec_fn=allow_core_dumps, stderr=subprocess.PIPE
    )
    try:
        def archiving() -> bool:  # the key is held
            assert process.poll() is None, process.stderr.read()
            return bool(ws.partials() and children_of(process.pid))

        wait_until(archiving, 60, "the run to start")
        limits = {pid: core_limit(pid) for pid in [process.pid, *children_of(process.pid)]}
    finally:
        process.kill()
        process.communicate(timeout=30)
    assert len(limits) >= 2, limits  # dataflow_archive and its tar at least
    assert set(limits.values()) == {"0 0"}, limits


def test_every_command_turns_core_dumps_off_first() -> None:
    """``dataflow_archive`` and every ``dfarchive`` command (``restore``, ``verify
    --deep``) start in :func:`run_main`."""
    script = (
        "from pathlib import Path; from dfarchive.cli.common import run_main; "
        "limits = lambda: [l for l in Path('/proc/self/limits').read_text().splitlines() "
        "if l.startswith('Max core')][0].split()[4:6]; "
        "print(*limits()); run_main('t', lambda: print(*limits()) or 0)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        preexec_fn=allow_core_dumps,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    before, after = done.stdout.splitlines()
    assert before != "0 0"
    assert after == "0 0"


def test_a_dramatiq_worker_process_turns_core_dumps_off_when_it_loads_the_actors(
    tmp_path: Path, keyring: GnupgHome
) -> None:
    """``dramatiq dfarchive.actors`` imports the module in each worker process: the
    limit is set there, before any message (and run key) can arrive."""
    ws = Workspace(tmp_path, keyring)
    config = ws.config(broker_url="amqp://guest:guest@127.0.0.1:5672/%2F")
    script = (
        "from pathlib import Path; import dfarchive.actors; "
        "print(*[l for l in Path('/proc/self/limits').read_text().splitlines() "
        "if l.startswith('Max core')][0].split()[4:6])"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**ws.env(), "ARCHIVE_CONFIG": str(config)},
        preexec_fn=allow_core_dumps,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0 0"
