"""The archive file's writer: the encrypted stream, written on a thread of its own.

The engine's thread copies the stream into a few page-aligned blocks; one writer
thread writes each full block while the engine fills the next, so disk writes overlap
encryption. Memory stays at ``BLOCKS`` blocks.

When the file descriptor is open with ``O_DIRECT`` (:mod:`dfarchive.plumbing.directio`), blocks go
from these buffers to the device without passing through the page cache. On virtual
machines that give freed memory back to their host, filling fresh page-cache pages
costs about as much kernel time as the AES encryption itself, and a direct write a
small fraction of that (figures in ``benchmarks/results``). It also keeps archiving
terabytes from evicting everything else from the cache. Direct
writes need aligned offsets and lengths: every block but the last is full, and the
last block's aligned part is written directly before ``O_DIRECT`` is turned off for
the unaligned tail. A filesystem that accepts the flag but refuses a direct write
(``EINVAL``), or a short direct write, turns ``O_DIRECT`` off for the rest of the file:
the bytes written are the same either way, only the cost differs.

Given a :class:`~dfarchive.plumbing.writeprogress.WriteProgress`, the writer thread publishes
each block once its write has completed, so validation can read the archive back while
it is being written; the progress is closed once every byte is written, and failed as
soon as a write fails or the output is aborted.
"""

from __future__ import annotations

import errno
import mmap
import os
import queue
import threading

from dfarchive.plumbing.childproc import write_all
from dfarchive.plumbing.closeorabort import CloseOrAbort
from dfarchive.plumbing.directio import (
    DIRECT_ALIGNMENT,
    check_block_layout,
    clear_direct,
    is_direct,
)
from dfarchive.plumbing.writeprogress import WriteProgress

BLOCK_SIZE = 4 << 20
"""Bytes per write; a multiple of :data:`DIRECT_ALIGNMENT`."""

BLOCKS = 3
"""Blocks in flight: one being filled, up to two queued for or in the writer thread."""


class ArchiveOutput(CloseOrAbort):
    """Writes the bytes it is called with to ``out_fd``, counting them.

    Usable as the ``sink`` of :class:`~dfarchive.openpgp.SymmetricWriter` and as a
    relay's output callback: each call copies its data, so the caller may reuse its
    buffer at once. Use as a context manager: leaving the block normally writes what is
    left and waits for the writer (:meth:`close`); leaving it with an exception drops
    what is not written yet (:meth:`abort`). Either way the writer thread has stopped
    touching ``out_fd`` when the block is left.

    An error writing (``ENOSPC``, ``EIO``, ...) is raised, unchanged, by the next call
    or by :meth:`close`.
    """

    def __init__(
        self,
        out_fd: int,
        *,
        block_size: int = BLOCK_SIZE,
        blocks: int = BLOCKS,
        written: WriteProgress | None = None,
    ) -> None:
        check_block_layout(block_size, blocks)
        self.size = 0
        self._fd = out_fd
        self._written = written
        self._direct = is_direct(out_fd)
        self._error: BaseException | None = None
        self._dropping = False
        # anonymous mmaps are page-aligned, as direct I/O needs; bytearrays are not
        self._free: queue.SimpleQueue[mmap.mmap] = queue.SimpleQueue()
        for _ in range(blocks - 1):
            self._free.put(mmap.mmap(-1, block_size))
        self._full: queue.SimpleQueue[tuple[mmap.mmap, int] | None] = queue.SimpleQueue()
        self._block = mmap.mmap(-1, block_size)
        self._fill = 0
        self._closed = False
        self._thread = threading.Thread(
            target=self._write_blocks, name="dfarchive-write", daemon=True
        )
        self._thread.start()

    def __call__(self, data: bytes | memoryview) -> None:
        """Take ``data`` (copied). Raises the writer's error, if it had one."""
        view = memoryview(data).cast("B")
        block_size = len(self._block)
        while view:
            self._raise_error()
            take = min(len(view), block_size - self._fill)
            self._block[self._fill : self._fill + take] = view[:take]
            self._fill += take
            self.size += take
            view = view[take:]
            if self._fill == block_size:
                self._full.put((self._block, block_size))
                self._block, self._fill = self._free.get(), 0

    def close(self) -> None:
        """Write what is left and wait for the writer thread. Idempotent.

        Raises:
            OSError: a write failed (the first error, unchanged).
        """
        if not self._closed:
            self._closed = True
            if self._fill:
                self._full.put((self._block, self._fill))
            self._full.put(None)
            self._thread.join()
        self._raise_error()
        if self._written is not None:
            self._written.close()

    def abort(self) -> None:
        """Drop whatever is not written yet and wait for the writer thread. Idempotent."""
        if not self._closed:
            self._closed = True
            self._dropping = True
            self._full.put(None)
            self._thread.join()
        if self._written is not None:
            self._written.fail()

    # -- the writer thread ---------------------------------------------------------------

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _write_blocks(self) -> None:
        while (item := self._full.get()) is not None:
            block, n = item
            if self._error is None and not self._dropping:
                try:
                    with memoryview(block) as view:
                        self._write(view[:n])
                except BaseException as error:  # handed to the engine's thread
                    self._error = error
                    if self._written is not None:
                        self._written.fail()
                else:
                    if self._written is not None:
                        self._written.advance(n)
            self._free.put(block)

    def _write(self, view: memoryview) -> None:
        """Write all of ``view``: at most one direct write, then :func:`write_all` for
        what is left once ``O_DIRECT`` is off."""
        if self._direct and len(view) % DIRECT_ALIGNMENT:
            aligned = len(view) - len(view) % DIRECT_ALIGNMENT
            self._write(view[:aligned])
            self._stop_direct()
            view = view[aligned:]
        if self._direct and view:
            try:
                n = os.write(self._fd, view)
            except OSError as error:
                if error.errno != errno.EINVAL:
                    raise
                n = 0  # the filesystem accepted O_DIRECT but refuses it
            if n < len(view):
                self._stop_direct()  # refused, or the next offset is no longer aligned
            view = view[n:]
        write_all(self._fd, view)

    def _stop_direct(self) -> None:
        if self._direct:
            clear_direct(self._fd)
            self._direct = False
