"""Reusable byte buffers that start small and grow to their working size once."""

from __future__ import annotations

FIRST_READ = 1 << 16
"""The first read from a file; once one comes back full, reads are ``read_size``. Small
messages then never allocate (and zero) full-size buffers."""


def grown(buffer: memoryview | None, size: int, full_size: int) -> memoryview:
    """``buffer`` if it holds ``size`` bytes, else a new one: of ``size`` bytes while that
    is small, of ``full_size`` (at least ``size``) bytes after."""
    if buffer is not None and len(buffer) >= size:
        return buffer
    if size > 2 * FIRST_READ:
        size = max(size, full_size)
    return memoryview(bytearray(size))
