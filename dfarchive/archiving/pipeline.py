"""Archive one run folder end to end.

pre-flight (stamping the folder's entries) → tar + encrypt to ``<run>.tar.gpg.partial``,
validated (decrypt, MDC, length, tar headers) by a reader trailing the writer → fsync →
the validation's last checks → wrap the run key to the
recipient into ``<run>.key.gpg.partial`` → last checks that we may publish (the archive
holds exactly the folder's entries, the folder is as tar saw it, the claim is still
ours) → rename the key into place, fsync its directory → rename the archive into place,
fsync its directory → the archive record.

Any failure or cancellation removes every partial file; a file under its final name
is always complete and validated, and an archive under its final name always has its
key beside it (the key is published first, durably). The run key exists only in this
process's memory and in the pipes to tar/gpg children; the source folder is only read.

With ``validate: after`` (or ``validate_from_device``, which reads cold media), the
archive is validated only once it is written and fsynced, as one more step. Either
way the same checks are made and the same record is returned: overlapping changes only
when the archive is read back. Progress is one figure for the whole run: the mean of
the plaintext bytes written and the plaintext bytes validated.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dfarchive.archiving.engines import EncryptResult, Engine, get_engine
from dfarchive.archiving.folderstamps import Stamps, check_unchanged, stamp_folder
from dfarchive.archiving.keys import Recipient, new_run_key, wrap_key
from dfarchive.archiving.partialfile import PartialFile, fsync_directory
from dfarchive.archiving.validate import TrailingValidation, validate_archive
from dfarchive.errors import Cancelled, OutOfSpace, PreflightError
from dfarchive.plumbing.childproc import LinkedEvent
from dfarchive.plumbing.writeprogress import WriteProgress

log = logging.getLogger(__name__)

ARCHIVE_SUFFIX = ".tar.gpg"
KEY_SUFFIX = ".key.gpg"
ARCHIVE_MODE = 0o640
KEY_MODE = 0o600
#: Free space demanded beyond the run's own size: OpenPGP framing is tiny, but a
#: nearly full archive volume is an operator problem to raise before hours of work.
FREE_SPACE_MARGIN = 256 * 1024 * 1024
#: Rough tar overhead per entry (header block + padding), for the size estimate.
TAR_ENTRY_OVERHEAD = 1024

#: The file whose presence marks a run folder complete (the sequencer's copy is done).
SENTINEL = ".metadata_rsync_exitcode"

Progress = Callable[[int, int], None]


@dataclass(frozen=True, kw_only=True)
class ArchiveSettings:
    """What the pipeline needs from the configuration (its defaults are the config's)."""

    destination_path: Path
    keys_path: Path
    sentinel: str = SENTINEL
    tar_exclusions: tuple[str, ...] = ()
    engine: str = "inprocess"
    validate_with: str = "inprocess"
    validate: str = "overlapped"
    validate_from_device: bool = False
    direct_io: bool = True
    gnupg_home: Path | None = None



def archive_path(settings: ArchiveSettings, run_id: str) -> Path:
    return settings.destination_path / f"{run_id}{ARCHIVE_SUFFIX}"


def key_path(settings: ArchiveSettings, run_id: str) -> Path:
    return settings.keys_path / f"{run_id}{KEY_SUFFIX}"


def estimate_tar_size(stamps: Stamps) -> int:
    """Bytes tar will roughly produce for the stamped entries (sizes + per-entry overhead).

    Exclusions are not applied: an upper bound is what the space check wants.
    """
    return sum(
        TAR_ENTRY_OVERHEAD + (0 if stat.S_ISDIR(file_type) else size)
        for file_type, _, size, _, _ in stamps.values()
    )


def preflight(run_path: Path, settings: ArchiveSettings) -> tuple[Stamps, int]:
    """Check that the run can be archived now; return its entries' stamps (see
    :mod:`dfarchive.archiving.folderstamps`) and the estimated tar size.

    Raises: PreflightError naming the folder or path at fault.
    """
    if run_path.is_symlink():  # tar would archive the link alone, not the folder
        raise PreflightError(
            f"run folder {run_path} is now a symbolic link (to {os.readlink(run_path)!r}); "
            "only real directories are archived"
        )
    if not run_path.is_dir():
        raise PreflightError(f"run folder {run_path} does not exist (moved or deleted?)")
    if not os.path.lexists(run_path / settings.sentinel):
        raise PreflightError(f"run folder {run_path} has no sentinel {settings.sentinel}")
    for directory in (settings.destination_path, settings.keys_path):
        if not directory.is_dir():
            raise PreflightError(f"output directory {directory} does not exist")
        if not os.access(directory, os.W_OK | os.X_OK):
            raise PreflightError(f"output directory {directory} is not writable")

    def unreadable(error: OSError) -> None:
        raise PreflightError(f"cannot read run folder {run_path}: {error}")

    stamps = stamp_folder(run_path, onerror=unreadable)
    estimate = estimate_tar_size(stamps)
    free = shutil.disk_usage(settings.destination_path).free
    if free < estimate + FREE_SPACE_MARGIN:
        raise OutOfSpace(
            f"not enough space in {settings.destination_path} for {run_path.name}: "
            f"{free / 2**30:.1f} GiB free, need about "
            f"{(estimate + FREE_SPACE_MARGIN) / 2**30:.1f} GiB"
        )
    return stamps, estimate


class RunProgress:
    """One progress figure for a run: the mean of the plaintext bytes written (the
    engine's reports) and validated, out of the estimated total (or more once passed).

    Both sides report from their own threads; reports go out one at a time, and each
    side's last one (every byte) always does.
    """

    def __init__(self, progress: Progress | None, total: int) -> None:
        self._progress = progress
        self._total = total
        self._written = self._validated = 0
        self._lock = threading.Lock()

    def written(self, done: int) -> None:
        with self._lock:
            self._written = done
            self._report()

    def validated(self, done: int) -> None:
        with self._lock:
            self._validated = done
            self._report()

    def _report(self) -> None:
        if self._progress is not None:
            done = (self._written + self._validated) // 2
            self._progress(done, max(self._total, self._written))


def archive_run(
    run_id: str,
    run_path: Path,
    settings: ArchiveSettings,
    recipient: Recipient,
    *,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    before_publish: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Archive, validate and publish one run; return the record for its document.

    Parameters:
      progress: called with (plaintext bytes done, estimated total) on the first chunk,
        about once a second, once more when tar's output ended, and once when
        validation ended (every byte counted); "done" is the mean of the bytes written
        and validated (:class:`RunProgress`), from the engine's and the validation's
        threads in turn.
      cancel: when set, children are stopped, partial files removed, Cancelled raised.
      before_publish: last check before the renames (e.g. "do we still hold the
        claim?"); raising from it aborts and cleans up like any other failure.

    Raises: PreflightError, ToolError, ValidationError, RecipientError (all leave no
    partial file), Cancelled.
    """
    started = time.monotonic()
    stamps, estimate = preflight(run_path, settings)
    log.info("[%s] archiving %s (about %.1f GiB)", run_id, run_path, estimate / 2**30)
    engine = get_engine(settings.engine)
    passphrase = new_run_key()
    archive = PartialFile(archive_path(settings, run_id), ARCHIVE_MODE)
    key = PartialFile(key_path(settings, run_id), KEY_MODE)
    run_progress = RunProgress(progress, estimate)
    write_and_validate = _overlapped if overlaps(settings) else _one_after_the_other
    with archive, key:
        job = _Job(run_id, run_path, settings, engine, archive, run_progress, cancel)
        result, archive_sha256 = write_and_validate(job, passphrase)
        run_progress.validated(result.plaintext_size)
        _check(cancel)
        key.open()
        key.write_all(
            wrap_key(
                passphrase,
                recipient,
                gnupg_home=str(settings.gnupg_home) if settings.gnupg_home else None,
            )
        )
        del passphrase
        check_unchanged(run_path, stamps, result.archived_names, others=result.other_names)
        if before_publish is not None:
            before_publish()
        _check(cancel)
        final_key = key.publish()
        fsync_directory(settings.keys_path)  # durable before the archive can be
        final_archive = archive.publish()
        fsync_directory(settings.destination_path)
    seconds = time.monotonic() - started
    log.info(
        "[%s] archived: %s (%.0f MB/s end to end)",
        run_id,
        final_archive,
        result.plaintext_size / max(seconds, 1e-6) / 1e6,
    )
    return {
        "file": str(final_archive),
        "size": result.archive_size,
        "sha256": archive_sha256,
        "plaintext_size": result.plaintext_size,
        "plaintext_sha256": result.plaintext_sha256,
        "members": result.members,
        "members_sha256": result.members_sha256,
        "key_file": str(final_key),
        "recipient_fingerprint": recipient.fingerprint,
        "engine": result.engine,
        "validated_with": settings.validate_with,
        "host": socket.gethostname(),
        "seconds": round(seconds, 3),
    }


def overlaps(settings: ArchiveSettings) -> bool:
    """Whether validation trails the writer (``validate: overlapped``) rather than
    following it; ``validate_from_device`` always follows (it reads cold media)."""
    return settings.validate == "overlapped" and not settings.validate_from_device


@dataclass(frozen=True)
class _Job:
    """The archive to write and validate, and for which run (the run key goes apart, so
    that it is dropped as soon as it is wrapped)."""

    run_id: str
    run_path: Path
    settings: ArchiveSettings
    engine: Engine
    archive: PartialFile
    progress: RunProgress
    cancel: threading.Event | None


def _one_after_the_other(job: _Job, passphrase: bytes) -> tuple[EncryptResult, str]:
    """Write the archive, fsync it, then validate it; the result and its SHA-256."""
    result = job.engine.encrypt(
        job.run_path,
        job.archive.open(direct=job.settings.direct_io),
        passphrase,
        exclusions=job.settings.tar_exclusions,
        progress=job.progress.written,
        cancel=job.cancel,
    )
    job.archive.sync()
    _check(job.cancel)
    log.info(
        "[%s] wrote %s bytes in %.0f s; validating",
        job.run_id,
        result.archive_size,
        result.seconds,
    )
    archive_sha256 = validate_archive(
        job.archive.path,
        passphrase,
        result,
        method=job.settings.validate_with,
        from_device=job.settings.validate_from_device,
        direct=job.settings.direct_io,
        cancel=job.cancel,
        progress=job.progress.validated,
    )
    return result, archive_sha256


def _overlapped(job: _Job, passphrase: bytes) -> tuple[EncryptResult, str]:
    """Write the archive while a reader trailing the writer validates it; fsync it;
    return the result and its SHA-256. A failure of either side stops the other."""
    out_fd = job.archive.open(direct=job.settings.direct_io)
    written = WriteProgress()
    stop = LinkedEvent(job.cancel)  # set by the reader when it fails: the writer stops
    with TrailingValidation(
        job.archive.path,
        out_fd,
        passphrase,
        written,
        method=job.settings.validate_with,
        direct=job.settings.direct_io,
        stop=stop,
        progress=job.progress.validated,
    ) as validation:
        try:
            result = job.engine.encrypt(
                job.run_path,
                out_fd,
                passphrase,
                exclusions=job.settings.tar_exclusions,
                progress=job.progress.written,
                cancel=stop,
                written=written,
            )
        except Cancelled:
            validation.raise_error()  # the reader failed and stopped the writer: the cause
            raise
        job.archive.sync()
        log.info(
            "[%s] wrote %s bytes in %.0f s; validating the rest",
            job.run_id,
            result.archive_size,
            result.seconds,
        )
        archive_sha256 = validation.finish(result)
    return result, archive_sha256


def _check(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("archiving was cancelled")
