"""Write-then-rename: a file under its final name is always complete.

Outputs are written to ``<final>.partial`` (created exclusively, with their final
mode), fsynced, and renamed into place only once validated; the directory is fsynced
after the rename. Anything that goes wrong before that removes the partial file.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from dfarchive.errors import ClaimLost
from dfarchive.plumbing.childproc import write_all
from dfarchive.plumbing.directio import open_direct

PARTIAL_SUFFIX = ".partial"


def fsync_directory(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PartialFile:
    """One output file in the making.

    ``open()`` creates ``<final>.partial`` with ``mode`` (never wider, whatever the
    umask: created with the mode, then set to exactly it); a partial left by an earlier
    holder of the run is removed first. ``publish()`` fsyncs, closes and renames it to
    the final name; ``discard()`` removes it. Use as a context manager: leaving the
    block without ``publish()`` discards.

    The earlier holder may still be alive: a worker paused past its lease, or one an
    operator released the run from, goes on until its next heartbeat. So both
    ``publish()`` and ``discard()`` act on the name only while it is still this
    object's file (same inode): the earlier holder never renames or removes the new
    holder's partial file.
    """

    def __init__(self, final: Path, mode: int) -> None:
        self.final = final
        self.path = final.with_name(final.name + PARTIAL_SUFFIX)
        self.mode = mode
        self.fd: int | None = None
        self.published = False
        self._identity: tuple[int, int] | None = None  # (device, inode) once created

    def open(self, *, direct: bool = False) -> int:
        """Create the partial file and return its fd (write-only).

        ``direct``: open it ``O_DIRECT`` if the filesystem allows (see
        :mod:`dfarchive.plumbing.directio`); the caller then writes aligned blocks.
        """
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # only the claim holder writes this name: any copy is stale
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        self.fd = open_direct(self.path, flags, self.mode, direct=direct)
        os.fchmod(self.fd, self.mode)  # the umask may have narrowed it; never widens past mode
        st = os.fstat(self.fd)
        self._identity = (st.st_dev, st.st_ino)
        return self.fd

    def write_all(self, data: bytes) -> None:
        assert self.fd is not None
        write_all(self.fd, data)

    def sync(self) -> None:
        """Flush the data to the device (before reading it back to validate)."""
        assert self.fd is not None
        os.fsync(self.fd)

    def publish(self) -> Path:
        """fsync, close and rename to the final name (replacing an older file).

        Raises:
            ClaimLost: the partial name holds another worker's file now.
        """
        if self.fd is not None:
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = None
        if not self._is_ours():
            raise ClaimLost(f"{self.path} was replaced by another worker's file")
        os.rename(self.path, self.final)
        self.published = True
        return self.final

    def discard(self) -> None:
        """Close and remove the partial file; safe to call more than once."""
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None
        if not self.published and self._is_ours():
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def _is_ours(self) -> bool:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) == self._identity

    def __enter__(self) -> PartialFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()
