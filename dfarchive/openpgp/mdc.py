"""The SHA-1 modification detection code, optionally computed on one helper thread.

hashlib releases the GIL on large buffers, so hashing a piece on a helper thread while
the caller's thread encrypts or decrypts it roughly hides the cost of SHA-1. Pieces are
hashed strictly in submission order (one worker, FIFO). A caller must keep a submitted
buffer unchanged until :meth:`MdcHash.wait` for its ticket returns.

``cryptography`` keeps the GIL during ``update``: a helper woken just before such a call
would only start hashing after it. So :meth:`MdcHash.submit` waits (GIL released) until
the helper is inside ``sha1.update`` (GIL released too) before returning.
"""

from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor

THREAD_THRESHOLD = 1 << 16
"""Pieces smaller than this are hashed inline (a thread hand-off costs more)."""


class MdcHash:
    """SHA-1 over a stream of pieces. Use as a context manager or call :meth:`close`."""

    def __init__(self, *, threaded: bool | None = None) -> None:
        """``threaded``: use a helper thread for large pieces (default: if 2+ CPUs)."""
        self._sha1 = hashlib.sha1(usedforsecurity=False)
        self._threaded = (os.cpu_count() or 1) > 1 if threaded is None else threaded
        self._pool: ThreadPoolExecutor | None = None
        self._last: Future[None] | None = None

    def submit(self, piece: bytes | bytearray | memoryview) -> Future[None] | None:
        """Hash ``piece`` after everything submitted before; return a ticket to wait on."""
        busy = self._last is not None and not self._last.done()
        if not busy and (not self._threaded or len(piece) < THREAD_THRESHOLD):
            self._sha1.update(piece)
            return None
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dfarchive-mdc")
        started = threading.Event()
        self._last = self._pool.submit(self._hash, piece, started)
        started.wait()
        return self._last

    def _hash(self, piece: bytes | bytearray | memoryview, started: threading.Event) -> None:
        started.set()
        self._sha1.update(piece)

    @staticmethod
    def wait(ticket: Future[None] | None) -> None:
        """Return once the piece behind ``ticket`` has been hashed."""
        if ticket is not None:
            ticket.result()

    def digest(self) -> bytes:
        """SHA-1 of everything submitted so far (waits for pending pieces)."""
        self.wait(self._last)
        return self._sha1.digest()

    def close(self) -> None:
        """Wait for pending pieces and stop the helper thread. Idempotent."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def __enter__(self) -> MdcHash:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
