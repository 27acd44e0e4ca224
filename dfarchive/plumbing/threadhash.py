"""A hashlib hash fed on one helper thread, so hashing overlaps the caller's own work.

hashlib releases the GIL on large buffers, so hashing a piece on a helper thread while
the caller's thread encrypts, decrypts or parses it roughly hides the cost of the hash
(the OpenPGP MDC's SHA-1, the tar stream's SHA-256). Pieces are hashed strictly in
submission order (one worker, FIFO). A caller must keep a submitted buffer unchanged
until :meth:`ThreadedHash.wait` for its ticket returns.

That pays only where a core is free to take the helper. With two cores, a run's
pipeline (tar, the cipher, validation reading back) already keeps both busy, and two
runs at once more than that: there each hand-off costs a wake-up and each piece
crosses to the other core's cache, so hashing on the caller's thread right after its
own pass over the piece took less CPU and ran faster (one run 486-502 MB/s against
428-466, two at once 495-500 against 404-411, on a 3 GiB run; benchmarks/README.md).
Helpers are therefore used by default only with :data:`HELPER_MIN_CORES` usable cores.

``cryptography`` keeps the GIL during ``update``, so a helper woken just before such a
call starts hashing only after it. :meth:`ThreadedHash.submit` still does not wait until
the helper is inside ``update``: with several helpers (the MDC, the tar stream's
SHA-256, the writer) the caller would then also wait whenever a helper is still busy
with the previous piece, which costs more than it saves (``benchmarks/results``).
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

THREAD_THRESHOLD = 1 << 16
"""Pieces smaller than this are hashed inline (a thread hand-off costs more)."""

HELPER_MIN_CORES = 3
"""Usable cores from which a :class:`ThreadedHash` uses a helper thread by default."""

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
"""cgroup v2's CPU limit of this process's group, as a container sees it."""


def helpers_pay() -> bool:
    """Whether this process has the cores for hashing helpers."""
    return usable_cores() >= HELPER_MIN_CORES


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), fewer if a cgroup v2 CPU
    limit allows less time than that (a container started with ``--cpus 2``)."""
    cores = len(os.sched_getaffinity(0))
    try:
        limit = quota_cores(CGROUP_CPU_MAX.read_text())
    except OSError:  # no cgroup v2 here
        limit = None
    return min(cores, limit) if limit else cores


def quota_cores(cpu_max: str) -> int | None:
    """Whole cores of CPU time a cgroup v2 ``cpu.max`` (``"QUOTA PERIOD"``) allows,
    rounded up; None for ``"max ..."`` (no limit) or a line it does not know."""
    fields = cpu_max.split()
    if len(fields) != 2 or not all(field.isdigit() for field in fields) or fields[1] == "0":
        return None
    quota, period = int(fields[0]), int(fields[1])
    return max(1, -(-quota // period))


Ticket = Future[None] | None
"""What :meth:`ThreadedHash.submit` returns: None when the piece was hashed inline."""


class ThreadedHash:
    """One hashlib hash over a stream of pieces. Use as a context manager or :meth:`close`."""

    def __init__(self, algorithm: str, *, threaded: bool | None = None) -> None:
        """``threaded``: use a helper thread for large pieces (default:
        :func:`helpers_pay`)."""
        self._hash = hashlib.new(algorithm, usedforsecurity=False)
        self._name = f"dfarchive-{algorithm}"
        self._threaded = helpers_pay() if threaded is None else threaded
        self._pool: ThreadPoolExecutor | None = None
        self._last: Future[None] | None = None

    def submit(self, piece: bytes | bytearray | memoryview) -> Ticket:
        """Hash ``piece`` after everything submitted before; return a ticket to wait on."""
        busy = self._last is not None and not self._last.done()
        if not busy and (not self._threaded or len(piece) < THREAD_THRESHOLD):
            self._hash.update(piece)
            return None
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._name)
        self._last = self._pool.submit(self._hash.update, piece)
        return self._last

    @staticmethod
    def wait(ticket: Ticket) -> None:
        """Return once the piece behind ``ticket`` has been hashed."""
        if ticket is not None:
            ticket.result()

    def digest(self) -> bytes:
        """The hash of everything submitted so far (waits for pending pieces)."""
        self.wait(self._last)
        return self._hash.digest()

    def hexdigest(self) -> str:
        """:meth:`digest` in hex."""
        return self.digest().hex()

    def close(self) -> None:
        """Wait for pending pieces and stop the helper thread. Idempotent."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def __enter__(self) -> ThreadedHash:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
