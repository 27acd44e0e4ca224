"""Measuring the two streams an engine produces while they flow.

:class:`PlaintextTap` watches the tar stream (length, SHA-256, tar headers, progress);
:class:`ArchiveOutput` writes the encrypted bytes to the output file descriptor while
counting and hashing them.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable

from dfarchive.childproc import write_all
from dfarchive.errors import ToolError, ValidationError
from dfarchive.tarindex import TarIndex, TarSummary

PROGRESS_INTERVAL = 1.0
"""Least number of seconds between two progress reports."""


class PlaintextTap:
    """Length, SHA-256 and :class:`TarIndex` of the tar stream; throttled progress.

    ``progress`` is called with the bytes so far on the first chunk, then at most once
    every ``PROGRESS_INTERVAL`` seconds, and once more by :meth:`finish`.
    """

    def __init__(self, what: str, progress: Callable[[int], None] | None = None) -> None:
        self.what = what  # names the run in error messages
        self.size = 0
        self._sha256 = hashlib.sha256()
        self._index = TarIndex()
        self._progress = progress
        self._next_report = 0.0  # the first chunk is reported at once

    def update(self, chunk: bytes | memoryview) -> None:
        """Account for the next chunk of the tar stream.

        Raises:
            ToolError: tar wrote a corrupt header, or a device file's.
        """
        self.size += len(chunk)
        self._sha256.update(chunk)
        try:
            self._index.feed(chunk)
        except ValidationError as exc:
            raise ToolError(f"{self.what}: tar wrote an invalid stream: {exc}") from None
        if self._index.device_members:
            name = os.fsdecode(self._index.device_members[0])
            raise ToolError(
                f"{self.what}: {name!r} is a device file; device files are not archived "
                "(a restore refuses them): remove it or add it to tar_exclusions"
            )
        if self._progress is not None and time.monotonic() >= self._next_report:
            self._next_report = time.monotonic() + PROGRESS_INTERVAL
            self._progress(self.size)

    @property
    def directories(self) -> frozenset[bytes]:
        """The directory members seen so far (names without the trailing slash)."""
        return frozenset(self._index.directory_members)

    def finish(self) -> tuple[str, TarSummary]:
        """Report final progress; return the hex SHA-256 and the tar summary.

        Raises:
            ToolError: the stream ended without tar's end-of-archive marker.
        """
        if self._progress is not None:
            self._progress(self.size)
        summary = self._index.summary()
        if not summary.end_of_archive:
            raise ToolError(f"{self.what}: tar output ended without the end-of-archive marker")
        return self._sha256.hexdigest(), summary


class ArchiveOutput:
    """Writes encrypted bytes to ``out_fd``, counting and hashing them.

    Usable directly as the ``sink`` of :class:`~dfarchive.openpgp.SymmetricWriter`.
    """

    def __init__(self, out_fd: int) -> None:
        self.size = 0
        self._fd = out_fd
        self._sha256 = hashlib.sha256()

    def __call__(self, data: bytes | memoryview) -> None:
        """Write all of ``data``. Raises OSError if the file cannot take it."""
        self._sha256.update(data)
        write_all(self._fd, data)
        self.size += len(data)

    def hexdigest(self) -> str:
        return self._sha256.hexdigest()
