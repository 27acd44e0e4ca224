"""What an archiving engine is: the :class:`Engine` protocol and its result record."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from dfarchive.plumbing.writeprogress import WriteProgress


@dataclass(frozen=True, kw_only=True)
class EncryptResult:
    """What an engine wrote, as measured while writing it.

    Attributes:
        engine: the engine's name (``"inprocess"`` or ``"gpg"``).
        plaintext_size, plaintext_sha256: length and hex SHA-256 of the tar stream.
        archive_size: length of the ``.tar.gpg`` bytes (their SHA-256 is taken when
            validation reads them back: :func:`~dfarchive.archiving.validate.validate_archive`).
        members, members_sha256: the :class:`~dfarchive.archiving.tarheaders.TarSummary` of the tar
            stream (member count, hex SHA-256 of the ordered member names).
        seconds: wall-clock time the engine took.
        archived_names: names of the directory and regular-file members (raw bytes, no
            trailing slash), to check they did not change (:mod:`dfarchive.archiving.folderstamps`).
        other_names: names of the other members and of hard links' targets (raw bytes,
            no trailing slash), to check they, too, are entries of the run folder.
    """

    engine: str
    plaintext_size: int
    plaintext_sha256: str
    archive_size: int
    members: int
    members_sha256: str
    seconds: float
    archived_names: frozenset[bytes] = frozenset()
    other_names: frozenset[bytes] = frozenset()


class Engine(Protocol):
    """Turns a run folder into an OpenPGP-encrypted tar stream (AES-256, MDC)."""

    name: str

    def encrypt(
        self,
        run_path: Path,
        out_fd: int,
        passphrase: bytes,
        *,
        exclusions: Sequence[str] = (),
        progress: Callable[[int], None] | None = None,
        cancel: threading.Event | None = None,
        written: WriteProgress | None = None,
    ) -> EncryptResult:
        """Write the encrypted tar of ``run_path`` to ``out_fd`` (left open).

        Parameters:
            run_path: the run folder; members are named ``<run name>/...``.
            out_fd: an open writable file descriptor; only written to.
            passphrase: the run key as passed to the OpenPGP S2K (64 hex characters).
            exclusions: tar ``--exclude`` patterns, verbatim.
            progress: called with the plaintext bytes done: on the first chunk, then
                at most about once a second, and once at the end.
            cancel: when set, the engine stops within about a second.
            written: told of each write to ``out_fd`` once it has completed, and of
                the end (see :mod:`dfarchive.plumbing.writeprogress`), for a reader trailing it.

        Returns:
            What was written (:class:`EncryptResult`).

        Raises:
            ToolError: tar or gpg failed (the message names the run and quotes stderr).
            Cancelled: ``cancel`` was set; no child process is left running.
            OSError: writing to ``out_fd`` failed (e.g. ``ENOSPC``).
        """
        ...
