"""The original tool's command as a real process: --once, and its signal semantics."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dfarchive.coordination.store import NewRun, SqliteStore
from tests.support.localrun import documents, make_config, sparse_run
from tests.support.waiting import wait_until

BIN = Path(sys.executable).parent


def start(config: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / "dataflow_archive"), "-c", str(config), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_until_processing(tmp_path: Path, proc: subprocess.Popen, count: int) -> None:
    def in_flight() -> bool:
        assert proc.poll() is None, proc.stdout.read()
        if not (tmp_path / "runs.sqlite3").exists():
            return False
        docs = documents(tmp_path)
        busy = [d for d in docs.values() if d["status"] == "processing"]
        return len(busy) >= count and any(
            p.name.endswith(".partial") for p in (tmp_path / "archives").iterdir()
        )

    wait_until(in_flight, 60, "runs in flight")


def read_until(proc: subprocess.Popen, text: str) -> str:
    """Read the process's output until a line contains ``text`` (it must, or EOF)."""
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if text in line:
            return "".join(seen)
    raise AssertionError(f"{text!r} never printed:\n{''.join(seen)}")


def partials(tmp_path: Path) -> list[Path]:
    return [
        p
        for d in ("archives", "keys")
        for p in (tmp_path / d).iterdir()
        if p.name.endswith(".partial")
    ]


def test_once_archives_every_complete_run_and_exits_0(tmp_path, gnupg_home):
    config = make_config(tmp_path, gnupg_home)
    for n in range(3):
        sparse_run(tmp_path, f"run_{n}", 1 << 20)
    (tmp_path / "seq" / "seqA" / "incomplete").mkdir()
    result = subprocess.run(
        [str(BIN / "dataflow_archive"), "-c", str(config), "--once"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    docs = documents(tmp_path)
    assert sorted(docs) == ["run_0", "run_1", "run_2"]
    assert {d["status"] for d in docs.values()} == {"encrypted"}
    for n in range(3):
        assert (tmp_path / "archives" / f"run_{n}.tar.gpg").is_file()
        assert (tmp_path / "keys" / f"run_{n}.key.gpg").is_file()
    assert "[run_1]" in result.stderr  # log lines carry the run id


def test_once_exits_1_when_a_run_fails(tmp_path, gnupg_home):
    config = make_config(tmp_path, gnupg_home)
    sparse_run(tmp_path, "run_ok", 1 << 16)
    with SqliteStore(tmp_path / "runs.sqlite3") as store:  # registered, then deleted
        store.setup()
        gone = tmp_path / "seq" / "seqA" / "run_gone"
        store.register_many([NewRun("run_gone", str(gone), "seqA")], worker_id="s")
    result = subprocess.run(
        [str(BIN / "dataflow_archive"), "-c", str(config), "--once"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    docs = documents(tmp_path)
    assert docs["run_ok"]["status"] == "encrypted"
    assert docs["run_gone"]["status"] == "pending"
    assert docs["run_gone"]["failure_count"] == 1
    assert "does not exist" in docs["run_gone"]["last_error"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_first_signal_finishes_runs_in_progress_and_exits_0(tmp_path, gnupg_home, sig):
    config = make_config(tmp_path, gnupg_home)
    sparse_run(tmp_path, "run_a", 512 << 20)
    sparse_run(tmp_path, "run_b", 512 << 20)
    proc = start(config)
    try:
        wait_until_processing(tmp_path, proc, 2)
        sparse_run(tmp_path, "run_late", 1 << 16)  # must not be started after the signal
        proc.send_signal(sig)
        output, _ = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == 0, output
    docs = documents(tmp_path)
    assert docs["run_a"]["status"] == docs["run_b"]["status"] == "encrypted"
    assert docs.get("run_late", {}).get("status", "pending") == "pending"
    assert partials(tmp_path) == []


def test_second_ctrl_c_stops_now_and_releases_runs_uncounted(tmp_path, gnupg_home):
    config = make_config(tmp_path, gnupg_home)
    sparse_run(tmp_path, "run_a", 8 << 30)
    sparse_run(tmp_path, "run_b", 8 << 30)
    proc = start(config)
    try:
        wait_until_processing(tmp_path, proc, 2)
        proc.send_signal(signal.SIGINT)
        seen = read_until(proc, "Ctrl+C again")  # two signals at once would coalesce
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
        output = seen + output
    finally:
        proc.kill()
    assert proc.returncode == 130, output
    docs = documents(tmp_path)
    for run in ("run_a", "run_b"):
        assert docs[run]["status"] == "pending"
        assert docs[run]["failure_count"] == 0
        assert docs[run]["attempts"][-1]["outcome"] == "released"
    assert partials(tmp_path) == []
    assert list((tmp_path / "archives").iterdir()) == []


def test_a_run_released_by_an_operator_is_dropped_by_its_worker_then_archived_once(
    tmp_path, gnupg_home
):
    """``dfarchive release`` on a run a live worker holds: the worker stops at its next
    heartbeat (removing its partial files), and a later pass archives the run anew."""
    # a heartbeat every 2 s; long enough that a loaded machine does not fence the attempt
    config = make_config(tmp_path, gnupg_home, lease_seconds=6)
    sparse_run(tmp_path, "run_a", 2 << 30)
    proc = start(config)
    try:
        wait_until_processing(tmp_path, proc, 1)
        released = subprocess.run(
            [str(BIN / "dfarchive"), "release", "run_a", "-c", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert released.returncode == 0, released.stderr
        assert released.stdout.startswith("run_a: processing -> pending")
        seen = read_until(proc, "abandoning this attempt")
        seen += read_until(proc, "[run_a] archived:")
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, seen + output
    doc = documents(tmp_path)["run_a"]
    assert (doc["status"], doc["failure_count"]) == ("encrypted", 0)
    assert [a["outcome"] for a in doc["attempts"]] == ["released", "encrypted"]
    assert "released by an operator" in doc["attempts"][0]["error"]
    assert partials(tmp_path) == []
    assert sorted(p.name for p in (tmp_path / "archives").iterdir()) == ["run_a.tar.gpg"]


@pytest.fixture
def silent_server() -> Iterator[tuple[int, threading.Event]]:
    """A TCP port that accepts connections and never answers (a hung CouchDB); the
    event is set once a client connected."""
    connected = threading.Event()
    held: list[socket.socket] = []
    listener = socket.create_server(("127.0.0.1", 0))

    def accept() -> None:
        with contextlib.suppress(OSError):  # the listener closed: the test is over
            while True:
                held.append(listener.accept()[0])
                connected.set()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1], connected
    listener.close()
    for conn in held:
        conn.close()


def test_second_ctrl_c_while_scheduling_exits_130_at_once(tmp_path, gnupg_home, silent_server):
    """With ``broker_url`` set, a pass waiting on the status database: the first Ctrl+C
    waits for it (graceful), the second exits 130 at once, as without a broker."""
    port, connected = silent_server
    config = make_config(
        tmp_path,
        gnupg_home,
        statusdb={"url": f"http://127.0.0.1:{port}", "database": "runs"},
        broker_url="amqp://guest:guest@127.0.0.1:5672/%2F",
    )
    proc = start(config)
    try:
        assert connected.wait(60), "dataflow_archive never reached the status database"
        proc.send_signal(signal.SIGINT)
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=1)  # graceful: the pass in progress goes on
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=10)  # the store's own timeout is 30 s
    finally:
        proc.kill()
    assert proc.returncode == 130, output
    assert "Traceback" not in output


def test_a_store_error_that_ends_the_loop_still_lets_a_second_ctrl_c_cancel(
    tmp_path, gnupg_home, monkeypatch
):
    """A store error that is not transient ends the loop; it used to skip the shutdown
    step, so a second Ctrl+C no longer cancelled the runs in progress."""
    import threading

    from dfarchive.coordination.attempt import AttemptOutcome
    from dfarchive.errors import StoreError
    from dfarchive.service import localloop as localrun
    from dfarchive.service.config import load_config
    from dfarchive.service.startup import prepare

    sparse_run(tmp_path, "run_a", 1 << 16)
    runtime = prepare(load_config(make_config(tmp_path, gnupg_home, scan_interval=0.1)))
    started, broken, cancelled = threading.Event(), threading.Event(), threading.Event()

    def long_attempt(store, run_id, *, cancel, **kwargs):  # hours of work, until cancelled
        started.set()
        if cancel.wait(60):
            cancelled.set()
            return AttemptOutcome.RELEASED
        return AttemptOutcome.ENCRYPTED

    real_runs = runtime.store.runs

    def runs(status=None):
        if started.is_set():
            broken.set()
            raise StoreError("SQLite store: database disk image is malformed")
        return real_runs(status)

    monkeypatch.setattr(localrun, "attempt_run", long_attempt)
    monkeypatch.setattr(runtime.store, "runs", runs)
    archiver = localrun.LocalArchiver(runtime)
    raised: list[BaseException] = []

    def loop() -> None:
        try:
            archiver.run()
        except BaseException as error:  # checked below
            raised.append(error)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        assert started.wait(30) and broken.wait(30)
        assert archiver.stopping.wait(10)  # the error stops it like a first Ctrl+C
        archiver.stop_now()  # the second Ctrl+C
        thread.join(15)
        assert not thread.is_alive(), "the second Ctrl+C did not cancel the run in progress"
        assert cancelled.is_set()
        assert [str(error) for error in raised] == [
            "SQLite store: database disk image is malformed"
        ]
    finally:
        for active in list(archiver.active.values()):
            active.cancel.set()
        thread.join(70)
        runtime.store.close()
