"""SignalSafeEvent, and Ctrl+C handlers that can't deadlock the process they stop."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time

from dfarchive.plumbing.sigsafe import SignalSafeEvent


def test_event_semantics_match_threading_event():
    event = SignalSafeEvent()
    assert not event.is_set()
    assert event.wait(0.01) is False
    event.set()
    event.set()  # idempotent
    assert event.is_set() and event.wait() is True and event.wait(0) is True
    event.clear()
    assert not event.is_set()
    assert event.wait(0.01) is False  # no wake-up left over from the earlier sets


def test_set_from_another_thread_wakes_a_waiter_at_once():
    event = SignalSafeEvent()
    timer = threading.Timer(0.05, event.set)
    timer.start()
    started = time.monotonic()
    assert event.wait(30) is True
    assert time.monotonic() - started < 10  # woken, not timed out
    timer.join()


def test_set_in_a_signal_handler_wakes_the_main_thread():
    event = SignalSafeEvent()
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: event.set())
    try:
        timer = threading.Timer(
            0.05, signal.pthread_kill, (threading.main_thread().ident, signal.SIGUSR1)
        )
        timer.start()
        assert event.wait(30) is True
        timer.join()
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_many_set_before_a_wait_do_not_block_the_setter():
    event = SignalSafeEvent()
    for _ in range(200_000):  # far more than a pipe holds: set() must never block
        event.set()
    event.clear()
    assert event.wait(0.01) is False


# A second Ctrl+C can arrive while the first one's handler is still running: Python runs
# the second handler nested inside the first, on the same thread. This makes the second
# signal arrive at every call the first handler makes, one scenario per call. With
# threading.Event in the archiver this hung for good (the second handler waited for the
# Event's lock held by the first), as it once did in CI.
NESTED_CTRL_C = textwrap.dedent(
    """
    import signal, sys
    from types import SimpleNamespace
    from dfarchive.cli.dataflow_archive import install_signal_handlers
    from dfarchive.service.localloop import LocalArchiver

    def scenario(second_at):
        archiver = LocalArchiver(SimpleNamespace(config=SimpleNamespace(concurrency=1)))
        install_signal_handlers(archiver.stop, archiver.stop_now)
        calls = 0
        def profile(frame, event, arg):
            nonlocal calls
            calls += 1
            if calls == second_at:
                signal.raise_signal(signal.SIGINT)
        sys.setprofile(profile)
        signal.raise_signal(signal.SIGINT)
        sys.setprofile(None)
        assert archiver.stopping.is_set(), second_at
        assert archiver.immediate.is_set() == (second_at > 0), second_at
        assert archiver._wakeup.wait(0), second_at
        return calls

    calls = scenario(0)
    for second_at in range(1, calls + 1):
        scenario(second_at)
    print("scenarios", calls)
    """
)


def test_second_ctrl_c_inside_the_first_handler_never_deadlocks():
    result = subprocess.run(
        [sys.executable, "-c", NESTED_CTRL_C], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.split()[-1]) >= 3  # the handler's calls were all tried
