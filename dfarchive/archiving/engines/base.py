"""What an archiving engine is: the :class:`Engine` base class and its result record."""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dfarchive.archiving.engines.meter import PlaintextMeter
from dfarchive.archiving.engines.output import ArchiveOutput
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


class Engine(ABC):
    """Turns a run folder into an OpenPGP-encrypted tar stream (AES-256, MDC).

    :meth:`encrypt` is the same for every engine: it measures the tar stream
    (:class:`~dfarchive.archiving.engines.meter.PlaintextMeter`) and writes the archive
    (:class:`~dfarchive.archiving.engines.output.ArchiveOutput`); an engine says only
    how tar's output becomes OpenPGP, in :meth:`_encrypt`.
    """

    name: str
    """The engine's name in the configuration and the run record."""
    doing: str
    """What the engine does, for error messages (``"gpg encryption"``)."""
    threaded_hash: bool | None = False
    """Whether the tar stream's SHA-256 is taken on a helper thread (None: where
    :func:`~dfarchive.plumbing.threadhash.helpers_pay`)."""

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
        started = time.monotonic()
        run_path = Path(run_path)
        what = f"{self.doing} of run folder {str(run_path)!r}"
        # exits run bottom-up: the engine completes the message, then the output is flushed
        with (
            PlaintextMeter(what, progress, threaded=self.threaded_hash) as plaintext,
            ArchiveOutput(out_fd, written=written) as archive,
        ):
            self._encrypt(
                Encryption(
                    run_path=run_path,
                    passphrase=passphrase,
                    exclusions=exclusions,
                    cancel=cancel,
                    what=what,
                    plaintext=plaintext,
                    archive=archive,
                )
            )
        plaintext_sha256, summary = plaintext.finish()
        return EncryptResult(
            engine=self.name,
            plaintext_size=plaintext.size,
            plaintext_sha256=plaintext_sha256,
            archive_size=archive.size,
            members=summary.members,
            members_sha256=summary.members_sha256,
            seconds=time.monotonic() - started,
            archived_names=plaintext.archived_names,
            other_names=plaintext.other_names,
        )

    @abstractmethod
    def _encrypt(self, job: Encryption) -> None:
        """Run tar on ``job.run_path``, pass its output to ``job.plaintext.update`` and
        encrypt it into ``job.archive``; raise as :meth:`encrypt` says."""


@dataclass(frozen=True)
class Encryption:
    """One :meth:`Engine.encrypt` call, as the engine's own part sees it."""

    run_path: Path
    passphrase: bytes = field(repr=False)
    exclusions: Sequence[str]
    cancel: threading.Event | None
    what: str
    """Names the work in error messages."""
    plaintext: PlaintextMeter
    """Gets tar's output."""
    archive: ArchiveOutput
    """Gets the OpenPGP message."""
