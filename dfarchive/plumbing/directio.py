"""Direct I/O (``O_DIRECT``): file data moved between our buffers and the device.

Used for the archive, which is written once, read back once to validate it, and not
read again for months: passing it through the page cache only costs CPU (much of it
on virtual machines, see :mod:`dfarchive.archiving.engines.output`) and evicts what the host
has cached. Direct transfers need buffers, offsets and lengths aligned to the device's
block size: :data:`DIRECT_ALIGNMENT` covers every common one, and page-aligned
buffers (anonymous ``mmap``) satisfy the buffer rule.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

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


def check_block_layout(block_size: int, blocks: int) -> None:
    """Raise ValueError unless ``blocks`` buffers of ``block_size`` bytes can take turns
    in direct transfers (two or more, of a multiple of :data:`DIRECT_ALIGNMENT`)."""
    if block_size % DIRECT_ALIGNMENT or blocks < 2:
        raise ValueError(f"bad block layout: {blocks} blocks of {block_size} bytes")


def is_direct(fd: int) -> bool:
    """Whether ``fd`` is open with ``O_DIRECT``."""
    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)


def clear_direct(fd: int) -> None:
    """Turn ``O_DIRECT`` off on ``fd`` (a no-op if it is off)."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    if flags & os.O_DIRECT:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)
