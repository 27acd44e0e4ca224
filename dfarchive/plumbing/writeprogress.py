"""How far the archive's writer has got, for a reader that trails it (overlapped validation).

The writer (:class:`~dfarchive.archiving.engines.output.ArchiveOutput`) publishes each write once
it has completed: with ``O_DIRECT`` the bytes are then on the device, without it in the
page cache, and either way a read of that range returns them. The reader
(:class:`~dfarchive.plumbing.readahead.ReadAhead` with ``trail``) reads only below the published
offset, and the rest once the writer has closed. It sleeps on a condition the writer
notifies; its waits are bounded only so that it looks at its cancel events, as every
wait in dfarchive does (:data:`~dfarchive.plumbing.childproc.POLL_SECONDS`).
"""

from __future__ import annotations

import threading

from dfarchive.errors import Cancelled
from dfarchive.plumbing.childproc import POLL_SECONDS


class WriteProgress:
    """Bytes durably written so far, and whether the writer closed or failed."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._written = 0
        self._closed = False
        self._failed = False

    @property
    def written(self) -> int:
        return self._written

    def advance(self, count: int) -> None:
        """The next ``count`` bytes' writes have completed."""
        with self._changed:
            self._written += count
            self._changed.notify_all()

    def close(self) -> None:
        """Every byte is written: a reader may read to the end of the file."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def fail(self) -> None:
        """The writer stopped without finishing: a waiting reader gives up."""
        with self._changed:
            self._failed = True
            self._changed.notify_all()

    def wait_for(self, offset: int, *stops: threading.Event | None) -> bool:
        """Wait until ``offset`` bytes are written or the writer closed.

        Returns True if the writer closed (read to the end of the file), False if
        ``offset`` bytes are written (read exactly up to ``offset``).

        Raises:
            Cancelled: the writer failed, or one of ``stops`` was set.
        """
        with self._changed:
            while True:
                if self._failed:
                    raise Cancelled("the archive's writer stopped")
                if any(stop is not None and stop.is_set() for stop in stops):
                    raise Cancelled("cancelled")
                if self._closed or self._written >= offset:
                    return self._closed
                self._changed.wait(POLL_SECONDS)
