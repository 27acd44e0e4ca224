"""An event a signal handler may set: the stop flags of the loops on the main thread.

A Python signal handler runs on the main thread, between two bytecodes of whatever the
main thread was doing, and that may be another handler (a second Ctrl+C that arrives
while the first one's handler is still running). ``threading.Event.set`` takes the
event's lock, which is not re-entrant. If the interrupted code holds that lock (it was
inside ``set``, ``clear`` or ``wait`` of the same event), the handler waits for itself
forever. A CI run once hung this way on Ctrl+C, Ctrl+C (CPython issue 126434 describes
the same thing for ``multiprocessing.Event``).

:class:`SignalSafeEvent` has ``threading.Event``'s interface. Its :meth:`~SignalSafeEvent.set`
takes no lock: it sets a flag and writes one byte to a pipe that :meth:`~SignalSafeEvent.wait`
polls. Code called from a signal handler should do only that kind of thing (set such
events, append to a list) and leave the rest, logging included, to the main loop.
"""

from __future__ import annotations

import contextlib
import os
import select
import time
import weakref


class SignalSafeEvent:
    """``threading.Event`` whose :meth:`set` is safe in a signal handler (self-pipe)."""

    def __init__(self) -> None:
        self._flag = False
        self._read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        weakref.finalize(self, _close_both, self._read_fd, self._write_fd)

    def set(self) -> None:
        """Set the flag and wake the waiters: no lock, so callable from a signal handler."""
        self._flag = True
        with contextlib.suppress(BlockingIOError):  # the pipe is full of wake-ups already
            os.write(self._write_fd, b"\0")

    def is_set(self) -> bool:
        return self._flag

    def clear(self) -> None:
        # flag first: a set() between the two lines leaves the flag set
        self._flag = False
        self._drain()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until set or ``timeout`` seconds have passed; return the flag."""
        deadline = None if timeout is None else time.monotonic() + timeout
        poll = select.poll()  # one per call: a poll object refuses concurrent waiters
        poll.register(self._read_fd, select.POLLIN)
        while not self._flag:
            if deadline is None:
                ready = poll.poll()
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                ready = poll.poll(max(1, round(remaining * 1000)))
            if ready and not self._flag:
                self._drain()  # a wake-up left over from a set() that a clear() undid
        return self._flag

    def _drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._read_fd, 4096):
                pass


def _close_both(read_fd: int, write_fd: int) -> None:
    os.close(read_fd)
    os.close(write_fd)
