"""Restore a run archive into a directory: decrypt, verify, extract safely.

:func:`restore_archive` decrypts ``<run>.tar.gpg`` with dfarchive's OpenPGP reader and
extracts the tar stream as it comes out (:class:`TarExtraction`: headers parsed by
:mod:`tarfile`, member data written straight from the decrypted buffer, no pipe and no
copy) into a private work folder inside the destination (:class:`SafeExtractor`). Only
once the whole message was read, its integrity code (MDC) checked and the plaintext
matched the recorded size and SHA-256 (when known) is the run folder renamed into the
destination, in one step. Any failure removes the work folder: a damaged or tampered
archive never leaves a half-restored tree behind. A work folder left by a restore that
was killed is removed by the next restore into the same destination (each restore holds
a lock on its own, so one running beside it is never touched).

The parts live apart: the decrypting thread and its hand-off buffers in
:mod:`dfarchive.ops.decryptpipe`, the extraction and what it refuses in
:mod:`dfarchive.ops.safeextract`; this module holds the work folder and the order of
the steps.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from dfarchive.archiving.keys import gpg_passphrase
from dfarchive.archiving.partialfile import fsync_directory
from dfarchive.errors import (
    DestinationExists,
    RestoreError,
    RestoreIntegrityError,
    UnsafeMember,
)
from dfarchive.ops.decryptpipe import Decryption
from dfarchive.ops.safeextract import SafeExtractor, TarExtraction, join_raw, run_folder_name

log = logging.getLogger(__name__)

TEMP_PREFIX = ".dfarchive-restore-"
"""Name prefix of the work folder made inside the destination."""
WORK_TREE = b"tree"
"""The folder inside a work folder that the archive is extracted into; made only once
the work folder is locked, so a work folder holding it and not locked is stale."""


@dataclass(frozen=True, kw_only=True)
class RestoreResult:
    """What :func:`restore_archive` restored and verified.

    Attributes:
      restored: what was created in the destination: the run folder.
      members: tar members extracted.
      plaintext_size, plaintext_sha256: of the decrypted tar stream.
      checked_against_record: the plaintext was compared with a recorded SHA-256.
    """

    restored: tuple[Path, ...]
    members: int
    plaintext_size: int
    plaintext_sha256: str
    checked_against_record: bool


def restore_archive(
    archive: Path,
    passphrase: bytes,
    destination: Path,
    *,
    run_id: str,
    plaintext_size: int | None = None,
    plaintext_sha256: str | None = None,
    preserve_owner: bool | None = None,
) -> RestoreResult:
    """Decrypt ``archive`` with ``passphrase`` and extract it into ``destination``.

    Parameters:
      archive: the ``.tar.gpg`` file.
      passphrase: the run key as unwrapped from ``<run>.key.gpg``; used as gpg uses a
        ``--passphrase-file`` (:func:`dfarchive.archiving.keys.gpg_passphrase`), so the original
        tool's binary keys work as well as dfarchive's hex ones.
      destination: the directory to restore into (created if missing).
      run_id: the run folder, the archive's one top-level entry: restored as
        ``destination/run_id``, which must not exist yet.
      plaintext_size, plaintext_sha256: the values recorded when archiving, if known.
      preserve_owner: restore owners and groups (default: when running as root).

    Returns: a :class:`RestoreResult`.

    Raises:
      UnsafeMember: a member outside ``run_id/``, or one that would escape
        ``destination`` or write through a link.
      RestoreIntegrityError: MDC failure, wrong key, truncation, or a plaintext that
        differs from the recorded size or SHA-256.
      DestinationExists: ``destination/run_id`` already exists.
      RestoreError: any other problem reading or extracting the archive.
      OSError: the archive can't be opened, or ``destination`` can't be created.
    In every error case nothing is left in ``destination``.
    """
    destination = Path(destination)
    folder = run_folder_name(run_id)
    if os.path.lexists(join_raw(destination, folder)):
        raise DestinationExists(f"{destination / run_id} already exists; restore elsewhere")
    destination.mkdir(parents=True, exist_ok=True)
    remove_stale_work_folders(destination)
    if preserve_owner is None:
        preserve_owner = os.geteuid() == 0
    with open(archive, "rb", buffering=0) as source:
        with contextlib.suppress(OSError):  # read ahead further; a hint only
            os.posix_fadvise(source.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        work = _WorkFolder(destination)
        try:
            extractor = SafeExtractor(work.tree, run_id=run_id, preserve_owner=preserve_owner)
            plaintext = _extract_verified(
                source, gpg_passphrase(passphrase), extractor, where=str(archive)
            )
            _check_plaintext(plaintext, archive, plaintext_size, plaintext_sha256)
            restored = _move_into_place(extractor, work.tree, destination, archive)
        finally:
            work.remove()
    return RestoreResult(
        restored=(restored,),
        members=plaintext.members,
        plaintext_size=plaintext.size,
        plaintext_sha256=plaintext.sha256,
        checked_against_record=plaintext_sha256 is not None,
    )


@dataclass(frozen=True)
class _Plaintext:
    """The decrypted tar stream, once its MDC verified: size, SHA-256, members."""

    size: int
    sha256: str
    members: int


def _extract_verified(
    source: BinaryIO, passphrase: bytes, extractor: SafeExtractor, *, where: str
) -> _Plaintext:
    """Decrypt ``source`` on a thread and extract its tar stream on this one as it is
    decrypted, so that decryption overlaps the creating and writing of files. Returns
    once the MDC verified and the stream proved whole.

    Raises: RestoreIntegrityError (decryption failed: damage, tampering, wrong key),
    UnsafeMember, RestoreError.
    """
    tar = TarExtraction(extractor)
    decryption = Decryption(source, passphrase, where=where)
    try:
        while (piece := decryption.pieces.get()) is not None:
            try:
                tar.feed(piece.view)
            finally:
                decryption.pieces.release(piece)
        decryption.join()
        tar.finish()
    except BaseException as error:
        decryption.stop()
        cause = decryption.failure()
        explained = isinstance(error, RestoreError) and not isinstance(error, UnsafeMember)
        if cause is not None and explained:
            raise cause from None  # the damage explains the broken tar stream
        raise
    finally:
        tar.close()
    summary = decryption.plaintext.summary()
    if not summary.end_of_archive or summary.members != tar.members:
        raise RestoreError(
            f"{where}: the tar stream is incomplete or unreadable after "
            f"{tar.members} members (it lists {summary.members}; "
            f"end-of-archive marker {'seen' if summary.end_of_archive else 'missing'})"
        )
    return _Plaintext(
        size=decryption.plaintext.size,
        sha256=decryption.plaintext.hexdigest(),
        members=tar.members,
    )


def _check_plaintext(
    plaintext: _Plaintext, archive: Path, size: int | None, sha256: str | None
) -> None:
    if size is not None and plaintext.size != size:
        raise RestoreIntegrityError(
            f"{archive}: decrypts to {plaintext.size} bytes, the record says {size}"
        )
    digest = plaintext.sha256
    if sha256 is not None and digest != sha256.lower():
        raise RestoreIntegrityError(
            f"{archive}: plaintext SHA-256 is {digest}, the record says {sha256}"
        )


def _move_into_place(
    extractor: SafeExtractor, tree: Path, destination: Path, archive: Path
) -> Path:
    """Rename the extracted run folder into ``destination`` in one step.

    The name is claimed first with an empty directory (``mkdir`` fails if anything took
    it meanwhile), which the rename then replaces. Directory attributes are set before
    the rename, except on the run folder itself: a directory that is not writable can't
    be moved to another parent, and a move may touch its times.
    """
    folder = extractor.run_folder
    source = join_raw(tree, folder)
    if not os.path.lexists(source):
        raise RestoreError(f"{archive}: holds nothing under {os.fsdecode(folder)}/")
    extractor.apply_directory_attributes(tree, levels="inner")
    target = join_raw(destination, folder)
    try:
        os.mkdir(target, 0o700)
    except FileExistsError:
        raise DestinationExists(
            f"{os.fsdecode(target)} already exists; restore elsewhere"
        ) from None
    try:
        os.rename(source, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.rmdir(target)
        raise
    try:
        extractor.apply_directory_attributes(destination, levels="top")
    except BaseException:
        remove_tree(Path(os.fsdecode(target)))
        raise
    with contextlib.suppress(OSError):
        fsync_directory(destination)
    return Path(os.fsdecode(target))


class _WorkFolder:
    """A restore's private work folder in the destination, locked while it is in use.

    The folder is ``flock``ed from just after it is made until it is removed; the
    ``tree`` inside it, where the archive is extracted, is made only once the lock is
    held. So a work folder that holds ``tree`` and whose lock can be taken belongs to a
    restore that is gone (:func:`remove_stale_work_folders`).
    """

    def __init__(self, destination: Path) -> None:
        self.path = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=destination))
        self.tree = self.path / os.fsdecode(WORK_TREE)
        self._fd = -1
        try:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            # blocking: a restore looking for stale work folders may hold the lock for
            # a moment (it finds no tree here and leaves the folder alone)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            os.mkdir(self.tree, 0o700)
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        """Remove the folder and everything in it, then release the lock."""
        try:
            remove_tree(self.path)
        finally:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def remove_stale_work_folders(destination: Path) -> None:
    """Remove the work folders that restores killed before they cleaned up left in
    ``destination``. Folders of restores still running (locked) are left alone."""
    with os.scandir(destination) as entries:
        candidates = [
            entry.path
            for entry in entries
            if entry.name.startswith(TEMP_PREFIX) and entry.is_dir(follow_symlinks=False)
        ]
    for path in candidates:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue  # gone meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue  # a restore is working there
        try:
            if os.path.lexists(os.path.join(os.fsencode(path), WORK_TREE)):
                log.warning("removing %s, left by an interrupted restore", path)
                remove_tree(Path(path))
        finally:
            os.close(fd)


def remove_tree(path: Path) -> None:
    """Remove a (partly) extracted tree, even one holding read-only directories.

    Never follows symbolic links. Logs a warning if something could not be removed.
    """
    shutil.rmtree(path, ignore_errors=True)
    if not os.path.lexists(path):
        return
    for directory, dirnames, _ in os.walk(path):
        for name in dirnames:
            with contextlib.suppress(OSError):
                fd = os.open(
                    os.path.join(directory, name), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                )
                try:
                    os.fchmod(fd, 0o700)
                finally:
                    os.close(fd)
    shutil.rmtree(path, ignore_errors=True)
    if os.path.lexists(path):
        log.warning("could not remove the temporary directory %s", path)
