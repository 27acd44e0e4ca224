"""File sizes around the direct-I/O alignment, for the tests of what reads and writes
whole files (direct I/O, read-ahead)."""

from __future__ import annotations

from dfarchive.plumbing.directio import DIRECT_ALIGNMENT

BLOCK = 4 * DIRECT_ALIGNMENT
SIZES = [0, 1, DIRECT_ALIGNMENT - 1, DIRECT_ALIGNMENT, BLOCK - 1, BLOCK, BLOCK + 1,
         3 * BLOCK, 5 * BLOCK + DIRECT_ALIGNMENT + 17]  # fmt: skip
