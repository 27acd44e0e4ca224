"""Direct I/O (``O_DIRECT``): file data moved between our buffers and the device.

Used for the archive, which is written once, read back once to validate it, and not
read again for months: passing it through the page cache only costs CPU (much of it
on virtual machines, see :mod:`dfarchive.engines.output`) and evicts what the host
has cached. Direct transfers need buffers, offsets and lengths aligned to the device's
block size: :data:`DIRECT_ALIGNMENT` covers every common one, and page-aligned
buffers (anonymous ``mmap``) satisfy the buffer rule.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import mmap
import os
import queue
import threading
from pathlib import Path

from dfarchive.childproc import check_cancel

DIRECT_ALIGNMENT = 4096
"""Offset and length alignment of direct transfers (the largest common block size)."""


def open_direct(path: Path, flags: int, mode: int, *, direct: bool = True) -> int:
    """``os.open`` with ``O_DIRECT`` added when ``direct`` and the filesystem allows it.

    Filesystems without direct I/O refuse the flag with ``EINVAL``; the file is then
    opened without it.
    """
    if direct:
        try:
            return os.open(path, flags | os.O_DIRECT, mode)
        except OSError as error:
            if error.errno != errno.EINVAL:
                raise
    return os.open(path, flags, mode)


def clear_direct(fd: int) -> None:
    """Turn ``O_DIRECT`` off on ``fd`` (a no-op if it is off)."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    if flags & os.O_DIRECT:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)


class ReadAhead:
    """A file read front to back by a helper thread, a few blocks ahead of its reader.

    Direct reads are synchronous (no kernel read-ahead), so the helper keeps the device
    busy while the caller works on the previous block. Blocks are page-aligned (anonymous
    ``mmap``) and ``block_size`` long, so ``fd`` may be ``O_DIRECT``; the unaligned end
    of the file turns ``O_DIRECT`` off.

    :meth:`read` returns views of the blocks: a view is valid until the next call. With
    ``digest`` (a hashlib name), the helper also hashes every block it reads: the hash
    costs the caller's thread nothing (hashlib releases the GIL). Use as a context
    manager (or :meth:`close`) to stop the helper.
    """

    def __init__(
        self,
        fd: int,
        *,
        block_size: int = 4 << 20,
        blocks: int = 3,
        digest: str | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        if block_size % DIRECT_ALIGNMENT or blocks < 2:
            raise ValueError(f"bad block layout: {blocks} blocks of {block_size} bytes")
        self.size = 0
        """Bytes returned by :meth:`read` so far."""
        self._fd = fd
        self._cancel = cancel
        self._hash = hashlib.new(digest) if digest else None
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
        self._stopping = False
        self._thread = threading.Thread(
            target=self._read_blocks, name="dfarchive-read", daemon=True
        )
        self._thread.start()

    def read(self, size: int | None = -1) -> memoryview:
        """Up to ``size`` bytes (a whole block's worth if None or negative); empty at the end.

        Raises:
            OSError: reading the file failed.
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
        """The ``digest`` of the whole file, once :meth:`read` returned its end."""
        if self._hash is None or not self._ended:
            raise ValueError("no digest: none was asked for, or the file was not read to its end")
        return self._hash.hexdigest()

    def close(self) -> None:
        """Stop the helper thread and wait for it. Idempotent."""
        self._stopping = True
        self._free.put(None)  # wakes the helper if it waits for a free block
        self._thread.join()

    def __enter__(self) -> ReadAhead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _next_block(self) -> None:
        check_cancel(self._cancel)
        if self._block is not None:
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

    def _read_blocks(self) -> None:
        while not self._stopping and (block := self._free.get()) is not None:
            try:
                with memoryview(block) as view:
                    n = os.readv(self._fd, [view])
                    if self._hash is not None:
                        self._hash.update(view[:n])
                if n % DIRECT_ALIGNMENT:
                    clear_direct(self._fd)  # the end of the file, or a short read
            except BaseException as error:  # handed to the reading thread
                self._full.put(error)
                return
            self._full.put((block, n))
            if n == 0:
                return
