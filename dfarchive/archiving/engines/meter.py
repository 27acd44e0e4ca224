"""Measuring the tar stream while it flows to the encryption: :class:`PlaintextMeter`.

(The encrypted stream is measured by :class:`~dfarchive.archiving.engines.output.ArchiveOutput`
as it writes it.)
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from dfarchive.archiving.tarheaders import TarStreamTally, TarSummary
from dfarchive.errors import ToolError, ValidationError
from dfarchive.plumbing.threadhash import ThreadedHash, Ticket

PROGRESS_INTERVAL = 1.0
"""Least number of seconds between two progress reports."""


class PlaintextMeter:
    """Length, SHA-256 and headers of tar's output (a :class:`TarStreamTally`); throttled
    progress; tar's errors as :class:`ToolError`.

    ``progress`` is called with the bytes so far on the first chunk, then at most once
    every ``PROGRESS_INTERVAL`` seconds, and once more by :meth:`finish`.

    With ``threaded`` (None: where helpers pay, see
    :class:`~dfarchive.plumbing.threadhash.ThreadedHash`), SHA-256 runs on a helper
    thread while the caller goes on (the caller keeps each chunk unchanged until its
    ticket is waited for, see :meth:`update`); use the meter as a context manager then,
    to stop the helper.
    """

    def __init__(
        self,
        what: str,
        progress: Callable[[int], None] | None = None,
        *,
        threaded: bool | None = False,
    ) -> None:
        self.what = what  # names the run in error messages
        self._tally = TarStreamTally(sha256=True, threaded=threaded)
        self._index = self._tally.walker
        self._progress = progress
        self._next_report = 0.0  # the first chunk is reported at once

    def update(self, chunk: bytes | memoryview) -> Ticket:
        """Account for the next chunk of the tar stream.

        Returns a ticket for :meth:`wait`; until then ``chunk`` may still be being hashed
        (always None, done, when not ``threaded``).

        Raises:
            ToolError: tar wrote a corrupt header, or a device file's.
        """
        try:
            ticket = self._tally.feed(chunk)
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
        return ticket

    wait = staticmethod(ThreadedHash.wait)

    @property
    def size(self) -> int:
        """Bytes of the tar stream so far."""
        return self._tally.size

    @property
    def archived_names(self) -> frozenset[bytes]:
        """The directory and regular-file members seen so far (no trailing slash)."""
        return frozenset(self._index.archived_names)

    @property
    def other_names(self) -> frozenset[bytes]:
        """The other members and hard links' targets seen so far (no trailing slash)."""
        return frozenset(self._index.other_names)

    def finish(self) -> tuple[str, TarSummary]:
        """Report final progress; return the hex SHA-256 and the tar summary.

        Raises:
            ToolError: the stream ended without tar's end-of-archive marker.
        """
        if self._progress is not None:
            self._progress(self.size)
        summary = self._tally.summary()
        if not summary.end_of_archive:
            raise ToolError(f"{self.what}: tar output ended without the end-of-archive marker")
        return self._tally.hexdigest(), summary

    def close(self) -> None:
        """Stop the hashing thread (waits for it). Idempotent."""
        self._tally.close()

    def __enter__(self) -> PlaintextMeter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
