"""A file or pipe read front to back by a helper thread, a few blocks ahead of its user.

The helper's reads (and a digest of what is read, if asked, on a second helper) release
the GIL, so they run on the other core while the user's thread decrypts or encrypts.
Used to read archives back with direct I/O, which has no kernel read-ahead of its own,
and tar's output, whose many small pipe reads would otherwise take the encrypting
thread's time.
"""

from __future__ import annotations

import mmap
import os
import queue
import select
import threading

from dfarchive.plumbing.childproc import check_cancel, wait_fd
from dfarchive.plumbing.directio import (
    DIRECT_ALIGNMENT,
    check_block_layout,
    clear_direct,
    is_direct,
)
from dfarchive.plumbing.threadhash import ThreadedHash, Ticket
from dfarchive.plumbing.writeprogress import WriteProgress


class ReadAhead:
    """Reads ``fd`` on a helper thread into ``blocks`` page-aligned blocks.

    Each block is filled completely (several reads from a pipe) except at the end. The
    blocks are page-aligned (anonymous ``mmap``) and ``block_size`` long, so ``fd`` may be
    ``O_DIRECT``; the unaligned end of the file turns ``O_DIRECT`` off. ``fd`` may be a
    non-blocking pipe.

    :meth:`read` returns views of the blocks; a view is valid until the next call. Use as
    a context manager (or :meth:`close`) to stop the helper: it stops within
    ``childproc.POLL_SECONDS`` even if it waits on a silent pipe.

    With ``digest`` (a hashlib name), each block is hashed on a
    :class:`~dfarchive.plumbing.threadhash.ThreadedHash` helper while the caller works on it (a
    block is handed back for reuse only once hashed): hashing on the reading helper
    would leave the device idle while it hashes.

    With ``trail`` (a file being written), each block is read only once the writer has
    written all of it, and the file's end only once the writer has closed: the reads
    trail the writer (:mod:`dfarchive.plumbing.writeprogress`). A failed writer ends the reading
    with Cancelled.
    """

    def __init__(
        self,
        fd: int,
        *,
        block_size: int = 4 << 20,
        blocks: int = 3,
        digest: str | None = None,
        cancel: threading.Event | None = None,
        trail: WriteProgress | None = None,
    ) -> None:
        check_block_layout(block_size, blocks)
        self.size = 0
        """Bytes returned by :meth:`read` so far."""
        self._fd = fd
        self._direct = is_direct(fd)
        self._cancel = cancel
        self._trail = trail
        self._offset = 0  # bytes the helper has read
        self._hash = ThreadedHash(digest) if digest else None
        self._hashed: Ticket = None
        self._free: queue.SimpleQueue[mmap.mmap | None] = queue.SimpleQueue()
        for _ in range(blocks):
            self._free.put(mmap.mmap(-1, block_size))
        self._full: queue.SimpleQueue[tuple[mmap.mmap, int] | BaseException] = (
            queue.SimpleQueue()
        )
        self._block: mmap.mmap | None = None
        self._pending = memoryview(b"")
        self._ended = False
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._read_blocks, name="dfarchive-read", daemon=True
        )
        self._thread.start()

    def read(self, size: int | None = -1) -> memoryview:
        """Up to ``size`` bytes (a whole block's worth if None or negative); empty at the end.

        Raises:
            OSError: reading failed.
            Cancelled: the cancel event was set.
        """
        if not self._pending and not self._ended:
            self._next_block()
        if size is None or size < 0:
            size = len(self._pending)
        view, self._pending = self._pending[:size], self._pending[size:]
        self.size += len(view)
        return view

    def hexdigest(self) -> str:
        """The ``digest`` of everything, once :meth:`read` has returned the end."""
        if self._hash is None or not self._ended:
            raise ValueError("no digest: none was asked for, or the file was not read to its end")
        return self._hash.hexdigest()

    def close(self) -> None:
        """Stop the helper threads and wait for them. Idempotent."""
        self._stop.set()
        self._free.put(None)  # wakes the helper if it waits for a free block
        self._thread.join()
        if self._hash is not None:
            self._hash.close()

    def __enter__(self) -> ReadAhead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _next_block(self) -> None:
        check_cancel(self._cancel)
        if self._block is not None:
            ThreadedHash.wait(self._hashed)
            self._free.put(self._block)
            self._block = None
        if self._error is not None:
            raise self._error  # the helper has stopped: nothing more will come
        item = self._full.get()
        if isinstance(item, BaseException):
            self._error = item
            raise item
        self._block, n = item
        self._ended = n == 0
        self._pending = memoryview(self._block)[:n]
        if self._hash is not None:
            self._hashed = self._hash.submit(self._pending)

    # -- the helper thread ---------------------------------------------------------------

    def _read_blocks(self) -> None:
        while not self._stop.is_set() and (block := self._free.get()) is not None:
            try:
                with memoryview(block) as view:
                    n = self._fill(view)
            except BaseException as error:  # handed to the reading thread
                self._full.put(error)
                return
            self._full.put((block, n))
            if n == 0:
                return

    def _fill(self, view: memoryview) -> int:
        """Fill ``view`` but at the end; the count read."""
        if self._trail is not None:
            self._trail.wait_for(self._offset + len(view), self._stop, self._cancel)
        filled = 0
        while filled < len(view):
            try:
                n = os.readv(self._fd, [view[filled:]])
            except BlockingIOError:
                wait_fd(self._fd, select.POLLIN, self._stop)
                continue
            if n == 0:
                break
            filled += n
            self._offset += n
            if self._direct and filled % DIRECT_ALIGNMENT:
                clear_direct(self._fd)  # the end of the file, or a short read
                self._direct = False
        return filled
