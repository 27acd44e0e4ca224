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

Extraction is safe against hostile archives. Refused, naming the member:

* anything but the run folder ``RUN_ID/`` and what is in it (a run's archive holds one
  top-level entry, its run folder, and it must be a directory);
* absolute names and names with a ``..`` component (for members and hard-link targets),
  and names or link targets holding a NUL byte;
* any member whose path goes through a symbolic link (so ``link -> /tmp/x`` followed
  by ``link/evil`` never writes outside), or through something not a directory;
* hard links to anything outside the tree, to directories or to names not extracted yet
  (links are made to the name itself, never following a symbolic link);
* device files, sparse files (tar writes them only when asked to, and dfarchive never
  asks) and member types tar itself does not write for a run folder.

Symbolic links are restored as they are (relative, absolute or dangling targets): a run
folder contains them. A later member of the same name replaces an earlier file or link
(as tar does) without ever opening through it. Names are kept as raw bytes (non-UTF-8
names survive); contents, permission bits and modification times are restored, and
ownership when running as root. Set-user/group-ID bits are dropped from files (kept
on directories, where set-group-ID means "inherit the group").
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import hashlib
import io
import logging
import os
import pwd
import shutil
import stat
import tarfile
import tempfile
import threading
from collections import deque
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Literal, NoReturn, Self

from dfarchive.archiving.keys import gpg_passphrase
from dfarchive.archiving.partialfile import fsync_directory
from dfarchive.archiving.tarheaders import BLOCK, MAX_META_SIZE, TarHeaderWalker
from dfarchive.errors import Cancelled, CryptoError, DfArchiveError, ValidationError
from dfarchive.openpgp import decrypt
from dfarchive.openpgp.reader import PIECE_SIZE

if TYPE_CHECKING:  # tarfile internals used below, which typeshed does not declare

    def nti(s: bytes) -> int: ...

    class EmptyHeaderError(tarfile.HeaderError): ...

    class SubsequentHeaderError(tarfile.HeaderError): ...

else:
    from tarfile import EmptyHeaderError, SubsequentHeaderError, nti

log = logging.getLogger(__name__)

READ_SIZE = 4 << 20
"""Bytes read from the archive per step."""
PIECES_IN_FLIGHT = 16
"""Decrypted pieces (of up to ``PIECE_SIZE``) handed over to extraction at a time: room
for decryption to run ahead while many small files are created (4, 16, 32 alternated on
an 800 MB run: 16 was 5% faster than 4, 32 no faster than 4)."""
COPY_SIZE = 1 << 20
"""Bytes read per step by :func:`extract_stream`."""
TEMP_PREFIX = ".dfarchive-restore-"
"""Name prefix of the work folder made inside the destination."""
WORK_TREE = b"tree"
"""The folder inside a work folder that the archive is extracted into; made only once
the work folder is locked, so a work folder holding it and not locked is stale."""

FILE_MODE_BITS = 0o777
DIRECTORY_MODE_BITS = 0o3777  # keeps set-group-ID and sticky on directories
TAR_ENCODING, TAR_ERRORS = "utf-8", "surrogateescape"  # names round-trip as raw bytes


class RestoreError(DfArchiveError):
    """The archive could not be restored; nothing was left in the destination."""


class UnsafeMember(RestoreError):
    """A member would be extracted outside the destination, or through a link."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(f"refusing archive member {name!r}: {reason}")


class RestoreIntegrityError(RestoreError):
    """The archive is damaged, tampered with, or not the one recorded for the run."""


class DestinationExists(RestoreError):
    """The run folder already exists in the destination directory."""


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
    if os.path.lexists(_join(destination, folder)):
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


def run_folder_name(run_id: str) -> bytes:
    """``run_id`` as the raw name of a folder in the destination.

    Raises: RestoreError unless it is one path component (no ``/``, not ``.``/``..``,
    no NUL byte).
    """
    raw = run_id.encode(TAR_ENCODING, TAR_ERRORS)
    if raw in (b"", b".", b"..") or b"/" in raw or b"\0" in raw:
        raise RestoreError(f"run id {run_id!r} is not a folder name")
    return raw


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
    decryption = _Decryption(source, passphrase, where=where)
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
    summary = decryption.index.summary()
    if not summary.end_of_archive or summary.members != tar.members:
        raise RestoreError(
            f"{where}: the tar stream is incomplete or unreadable after "
            f"{tar.members} members (it lists {summary.members}; "
            f"end-of-archive marker {'seen' if summary.end_of_archive else 'missing'})"
        )
    return _Plaintext(
        size=decryption.size, sha256=decryption.sha256.hexdigest(), members=tar.members
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
    source = _join(tree, folder)
    if not os.path.lexists(source):
        raise RestoreError(f"{archive}: holds nothing under {os.fsdecode(folder)}/")
    extractor.apply_directory_attributes(tree, levels="inner")
    target = _join(destination, folder)
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


# -- decryption on a thread, handing pieces over ----------------------------------------


@dataclass
class _Piece:
    """A decrypted piece in one of the hand-off buffers."""

    buffer: bytearray
    view: memoryview


class _Pieces:
    """Decrypted pieces handed from the decrypting thread to the extracting one through
    a few buffers reused all along: one copy per piece, no pipe, no new memory."""

    def __init__(self, buffers: int, size: int) -> None:
        self._free = [bytearray(size) for _ in range(buffers)]
        self._ready: deque[_Piece] = deque()
        self._changed = threading.Condition()
        self._closed = False  # no more pieces will come
        self._stopped = False  # the extracting side gave up

    def put(self, chunk: memoryview) -> memoryview:
        """Copy ``chunk`` into a free buffer (waiting for one) and queue it; return a view
        of the copy for the caller (only the caller's next call reuses the buffer).

        Raises: Cancelled once :meth:`stop` was called.
        """
        with self._changed:
            while not self._free and not self._stopped:
                self._changed.wait()
            if self._stopped:
                raise Cancelled("restore stopped")
            buffer = self._free.pop()
        size = len(chunk)
        buffer[:size] = chunk  # same length: copied in place, never resized
        with self._changed:
            self._ready.append(_Piece(buffer, memoryview(buffer)[:size]))
            self._changed.notify_all()
        return memoryview(buffer)[:size]

    def get(self) -> _Piece | None:
        """The next piece, waiting for it; None once the decryption ended."""
        with self._changed:
            while not self._ready and not self._closed:
                self._changed.wait()
            return self._ready.popleft() if self._ready else None

    def release(self, piece: _Piece) -> None:
        """Hand a piece's buffer back for reuse."""
        piece.view.release()
        with self._changed:
            self._free.append(piece.buffer)
            self._changed.notify_all()

    def close(self) -> None:
        """No more pieces (the decrypting side ended)."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def stop(self) -> None:
        """The extracting side gives up: a waiting :meth:`put` raises Cancelled."""
        with self._changed:
            self._stopped = True
            self._changed.notify_all()


class _Decryption:
    """Decrypts ``source`` on a thread into :attr:`pieces`, counting, hashing and walking
    the tar headers of the plaintext on the way. Nothing handed over is verified until
    :meth:`join` returned without error.

    The SHA-256 is taken on this thread, after a piece is handed over: it waits for the
    extracting thread most of the time (creating files is most of a restore's work), and
    a hash on a helper of its own made the extracting thread wait for that helper
    whenever the machine was busy (a restore took twice as long at load 4 on 2 cores).
    """

    def __init__(self, source: BinaryIO, passphrase: bytes, *, where: str) -> None:
        self.where = where
        self.size = 0
        self.sha256 = hashlib.sha256()
        self.index = TarHeaderWalker()
        self.pieces = _Pieces(PIECES_IN_FLIGHT, PIECE_SIZE)
        self.error: Exception | None = None
        self._source = source
        self._passphrase = passphrase
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, name="restore-decrypt", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            decrypt(
                self._source,
                self._passphrase,
                self._sink,
                read_size=READ_SIZE,
                cancel=self._cancel,
            )
        except Exception as error:  # handed to the extracting thread by join()/failure()
            self.error = error
        finally:
            self._passphrase = b""
            self.pieces.close()

    def _sink(self, chunk: bytes | memoryview) -> None:
        view = memoryview(chunk).cast("B")
        while view:
            copy = self.pieces.put(view[:PIECE_SIZE])
            self.size += len(copy)
            self.sha256.update(copy)
            self.index.feed(copy)
            view = view[PIECE_SIZE:]

    def stop(self) -> None:
        """Stop decrypting and wait for the thread; safe to call more than once."""
        self._cancel.set()
        self.pieces.stop()
        self._thread.join()

    def failure(self) -> RestoreError | None:
        """Why decryption failed (after :meth:`stop` or the thread's end), if it did
        for a reason of its own rather than being stopped."""
        error = self.error
        if isinstance(error, CryptoError):
            return RestoreIntegrityError(
                f"{self.where}: fails the integrity check ({error}); the archive is damaged "
                "or tampered with, or the key is not this archive's"
            )
        if isinstance(error, ValidationError):
            return RestoreError(f"{self.where}: the decrypted tar stream is corrupt: {error}")
        return None

    def join(self) -> None:
        """Wait for the end of decryption; raise if it did not verify."""
        self._thread.join()
        failure = self.failure()
        if failure is not None:
            raise failure
        if self.error is not None:
            raise RestoreError(f"{self.where}: cannot decrypt: {self.error}")


# -- safe extraction ------------------------------------------------------------------


def extract_stream(stream: BinaryIO, extractor: SafeExtractor) -> int:
    """Extract the tar stream read from ``stream`` with ``extractor``; return the count.

    Directory attributes are left for :meth:`SafeExtractor.apply_directory_attributes`.

    Raises: UnsafeMember, RestoreError (unreadable stream, or extraction failed).
    """
    tar = TarExtraction(extractor)
    try:
        while chunk := stream.read(COPY_SIZE):
            tar.feed(chunk)
        tar.finish()
    finally:
        tar.close()
    return tar.members


_META_TYPES = frozenset(
    {
        tarfile.GNUTYPE_LONGNAME,
        tarfile.GNUTYPE_LONGLINK,
        tarfile.XHDTYPE,
        tarfile.XGLTYPE,
        tarfile.SOLARIS_XHDTYPE,
    }
)
"""Header types that describe the member after them (long names, pax records)."""
_TYPEFLAG = slice(156, 157)
_SIZE = slice(124, 136)
_ZERO_BLOCK = bytes(BLOCK)
_SPARSE = "sparse files are not restored"


def _blocks(size: int) -> int:
    """``size`` rounded up to whole tar blocks."""
    return size + -size % BLOCK


class _Header(tarfile.TarInfo):
    """:mod:`tarfile`'s own header parsing, refusing sparse files: their map would be
    read from the member data, which :class:`TarExtraction` never hands to tarfile."""

    def _proc_sparse(self, *args: object) -> NoReturn:
        raise UnsafeMember(self.name, _SPARSE)

    def _proc_gnusparse_00(self, member: tarfile.TarInfo, *args: object) -> NoReturn:
        raise UnsafeMember(member.name, _SPARSE)

    _proc_gnusparse_01 = _proc_gnusparse_10 = _proc_gnusparse_00

    if TYPE_CHECKING:  # tarfile reads only what a _HeaderSource has from its "TarFile"

        @classmethod
        def fromtarfile(cls, tarfile: tarfile.TarFile | _HeaderSource) -> Self: ...


class _HeaderSource:
    """What :meth:`tarfile.TarInfo.fromtarfile` reads one member's header blocks from
    (its ``TarFile``, as far as header parsing goes). Global pax records apply to every
    later member, so they are kept from one member to the next."""

    def __init__(self) -> None:
        self.encoding = TAR_ENCODING
        self.errors = TAR_ERRORS
        self.pax_headers: dict[str, str] = {}
        self.fileobj = io.BytesIO()
        self.offset = 0

    def member(self, blocks: bytes) -> tarfile.TarInfo:
        """The member described by ``blocks`` (its header, after any long-name and pax
        headers with their data). Raises tarfile.HeaderError, UnsafeMember."""
        self.fileobj = io.BytesIO(blocks)
        return _Header.fromtarfile(self)


class TarExtraction:
    """Extracts a tar stream fed in consecutive chunks cut anywhere, with a
    :class:`SafeExtractor`.

    Header blocks are collected (with the long-name and pax headers before a member and
    their data) and parsed by :mod:`tarfile`; member data is written to its file straight
    from the chunk fed. The stream ends, as for ``tarfile``'s streaming mode, at the first
    zero block, or silently at an unreadable header after the first member (the caller
    compares the count with
    :class:`~dfarchive.archiving.tarheaders.TarHeaderWalker`'s). Call :meth:`finish` after
    the last chunk and :meth:`close` in any case.
    """

    def __init__(self, extractor: SafeExtractor) -> None:
        self.extractor = extractor
        self.members = 0
        self._source = _HeaderSource()
        self._blocks = bytearray()  # header blocks of the next member, so far
        self._need = BLOCK  # bytes _blocks must hold before the next look at them
        self._file: _MemberFile | None = None  # receiving member data
        self._data = 0  # bytes of member data still to write
        self._skip = 0  # bytes of padding still to pass over
        self._ended = False

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        """Extract what ``chunk`` completes.

        Raises: UnsafeMember, RestoreError (naming the member or the stream position).
        """
        view = memoryview(chunk).cast("B")
        pos, end = 0, len(view)
        while pos < end and not self._ended:
            if self._data:
                step = min(self._data, end - pos)
                assert self._file is not None
                self._file.write(view[pos : pos + step])
                self._data -= step
                if not self._data:
                    self._end_file()
            elif self._skip:
                step = min(self._skip, end - pos)
                self._skip -= step
            else:
                step = min(self._need - len(self._blocks), end - pos)
                self._blocks += view[pos : pos + step]
                if len(self._blocks) == self._need:
                    self._next_block()
            pos += step

    def finish(self) -> None:
        """The stream ended. Raises RestoreError if it ended inside a member."""
        if self._ended:
            return
        if self._data or self._skip:
            raise self._unreadable("unexpected end of data")
        if self._blocks or not self.members:
            self._header_end()  # what tarfile says of the partial header (or empty file)
        self._ended = True

    def close(self) -> None:
        """Close the file being written, if any (after an error)."""
        if self._file is not None:
            self._file.abandon()
            self._file = None

    def _unreadable(self, reason: object) -> RestoreError:
        return RestoreError(f"cannot read the tar stream after {self.members} members: {reason}")

    def _next_block(self) -> None:
        """A header block is complete: collect what it announces, or extract the member."""
        block = bytes(self._blocks[-BLOCK:])
        if len(self._blocks) == BLOCK and block == _ZERO_BLOCK:
            self._ended = True  # end-of-archive marker
            return
        if block[_TYPEFLAG] not in _META_TYPES:
            self._header_end()
            return
        try:  # the checksum is checked when tarfile parses the whole
            size = nti(block[_SIZE])
        except tarfile.HeaderError:
            self._header_end()
            return
        if size > MAX_META_SIZE:
            raise self._unreadable(f"an extended header of {size} bytes")
        self._need += _blocks(size) + BLOCK  # its data, then the next header

    def _header_end(self) -> None:
        """Parse the blocks collected as tarfile would, and extract the member."""
        blocks = bytes(self._blocks)
        self._blocks.clear()
        self._need = BLOCK
        try:
            member = self._source.member(blocks)
        except SubsequentHeaderError as error:
            raise self._unreadable(error) from None
        except tarfile.HeaderError as error:
            if not self.members:
                empty = isinstance(error, EmptyHeaderError)
                raise self._unreadable("empty file" if empty else error) from None
            self._ended = True  # tarfile ends the stream here; the count tells
            return
        self._file = self.extractor.extract(member)
        if self._file is None:  # no data follows (tarfile's rule: files and unknown types)
            self.members += 1
            return
        self._data = member.size
        self._skip = _blocks(member.size) - member.size
        if not self._data:
            self._end_file()

    def _end_file(self) -> None:
        assert self._file is not None
        file, self._file = self._file, None
        file.complete()
        self.members += 1


def member_parts(name: str) -> tuple[bytes, ...]:
    """The path components of a member name as raw bytes (``.`` and empty ones dropped).

    Raises: UnsafeMember for an absolute name, a ``..`` component or a NUL byte.
    """
    raw = name.encode(TAR_ENCODING, TAR_ERRORS)
    if b"\0" in raw:
        raise UnsafeMember(name, "a NUL byte in the name")
    if raw.startswith(b"/"):
        raise UnsafeMember(name, "absolute path")
    parts = tuple(part for part in raw.split(b"/") if part not in (b"", b"."))
    if b".." in parts:
        raise UnsafeMember(name, "'..' in the path would leave the destination")
    return parts


def _join(base: Path | bytes, *parts: bytes) -> bytes:
    return b"/".join((os.fsencode(base), *parts))


def _mtime_ns(member: tarfile.TarInfo) -> int:
    mtime = member.mtime
    return mtime * 1_000_000_000 if isinstance(mtime, int) else round(mtime * 1e9)


@cache
def _uid(name: str, fallback: int) -> int:
    try:
        return pwd.getpwnam(name).pw_uid if name else fallback
    except KeyError:
        return fallback


@cache
def _gid(name: str, fallback: int) -> int:
    try:
        return grp.getgrnam(name).gr_gid if name else fallback
    except KeyError:
        return fallback


class SafeExtractor:
    """Extracts the tar members under ``run_id/`` into ``root``, refusing any other
    member and anything that would leave ``root``.

    Use :meth:`extract` for each member in stream order, then
    :meth:`apply_directory_attributes` (directories get their modes and times last,
    deepest first, so restoring their contents can't change or be blocked by them).
    """

    def __init__(self, root: Path, *, run_id: str, preserve_owner: bool = False) -> None:
        self.root = os.fsencode(root)
        self.run_id = run_id
        self.run_folder = run_folder_name(run_id)
        self.preserve_owner = preserve_owner
        self._directories: list[tuple[tuple[bytes, ...], tarfile.TarInfo]] = []
        self._real_directories: set[bytes] = set()
        """Paths known to be real directories: nothing extracted ever replaces a
        directory (see :meth:`_clear`), so they are looked at once."""

    def extract(self, member: tarfile.TarInfo) -> _MemberFile | None:
        """Extract one member, in stream order. A regular file is returned open, for its
        data to be written to it (the caller then completes it, or abandons it).

        Raises: UnsafeMember, RestoreError (naming the member).
        """
        name = member.name
        parts = member_parts(name)
        if not parts:
            if member.isdir():
                return None  # "./": the destination itself; its attributes are not ours
            raise UnsafeMember(name, "names the destination directory itself")
        self._check_in_run_folder(parts, member)
        try:
            self._prepare_parents(parts, name)
            path = _join(self.root, *parts)
            if member.isdir():
                self._make_directory(path, parts, member)
            elif member.issym():
                self._make_symlink(path, member)
            elif member.islnk():
                self._make_hard_link(path, member)
            elif member.isreg():
                return self._make_file(path, member)
            elif member.isfifo():
                self._make_fifo(path, member)
            elif member.isdev():
                raise UnsafeMember(name, "device files are not restored")
            else:
                raise UnsafeMember(name, f"unsupported member type {member.type!r}")
        except OSError as error:
            raise _member_error(member, error) from None
        return None

    def _check_in_run_folder(self, parts: tuple[bytes, ...], member: tarfile.TarInfo) -> None:
        if parts[0] != self.run_folder:
            raise UnsafeMember(
                member.name,
                f"outside the run folder: only {self.run_id}/ may come out of this archive",
            )
        if len(parts) == 1 and not member.isdir():
            raise UnsafeMember(member.name, "the run folder must be a directory")

    # -- paths ----------------------------------------------------------------------

    def _prepare_parents(self, parts: tuple[bytes, ...], name: str) -> None:
        """Make sure every parent is a real directory (creating missing ones)."""
        path = self.root
        for part in parts[:-1]:
            path = _join(path, part)
            if path in self._real_directories:
                continue
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                os.mkdir(path)  # not in the archive: default mode, as tar does
                self._real_directories.add(path)
                continue
            if stat.S_ISLNK(st.st_mode):
                raise UnsafeMember(
                    name,
                    f"{os.fsdecode(part)!r} on its path is a symbolic link; "
                    "extracting would write through it",
                )
            if not stat.S_ISDIR(st.st_mode):
                raise UnsafeMember(name, f"{os.fsdecode(part)!r} on its path is not a directory")
            self._real_directories.add(path)

    def _existing_target(self, member: tarfile.TarInfo) -> bytes:
        """The path of an already extracted hard-link target inside the tree."""
        name, target = member.name, member.linkname
        try:
            parts = member_parts(target)
        except UnsafeMember as error:
            raise UnsafeMember(name, f"hard link to {target!r}: {error.reason}") from None
        if not parts:
            raise UnsafeMember(name, f"hard link to {target!r}, the destination itself")
        path = self.root
        for index, part in enumerate(parts):
            path = _join(path, part)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                raise UnsafeMember(
                    name, f"hard link to {target!r}, which is not in the archive before it"
                ) from None
            last = index == len(parts) - 1
            if not last and not stat.S_ISDIR(st.st_mode):
                raise UnsafeMember(name, f"hard link to {target!r} goes through a link or file")
            if last and stat.S_ISDIR(st.st_mode):
                raise UnsafeMember(name, f"hard link to the directory {target!r}")
        return path

    def _clear(self, path: bytes, name: str, *, keep_directory: bool) -> bool:
        """Remove an earlier non-directory entry at ``path`` (a later member replaces
        it, as with tar). True if ``path`` is a directory that stays."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            if keep_directory:
                return True
            raise UnsafeMember(name, "would replace a directory extracted before it")
        os.unlink(path)
        return False

    # -- member types -----------------------------------------------------------------

    def _make_directory(
        self, path: bytes, parts: tuple[bytes, ...], member: tarfile.TarInfo
    ) -> None:
        if not self._clear(path, member.name, keep_directory=True):
            os.mkdir(path, 0o700)
        self._real_directories.add(path)
        self._directories.append((parts, member))

    def _make_file(self, path: bytes, member: tarfile.TarInfo) -> _MemberFile:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(path, flags, 0o600)
        except FileExistsError:  # an earlier member of that name (O_EXCL: never followed)
            self._clear(path, member.name, keep_directory=False)
            fd = os.open(path, flags, 0o600)
        return _MemberFile(fd, member, self)

    def complete_file(self, fd: int, member: tarfile.TarInfo) -> None:
        """Give a file whose data is written its owner, mode and times."""
        self._set_owner(fd, member)
        os.fchmod(fd, member.mode & FILE_MODE_BITS)
        os.utime(fd, ns=(_mtime_ns(member), _mtime_ns(member)))

    def _make_symlink(self, path: bytes, member: tarfile.TarInfo) -> None:
        if "\0" in member.linkname:
            raise UnsafeMember(member.name, "a NUL byte in its link target")
        self._clear(path, member.name, keep_directory=False)
        os.symlink(member.linkname.encode(TAR_ENCODING, TAR_ERRORS), path)
        self._set_owner(path, member)
        os.utime(path, ns=(_mtime_ns(member), _mtime_ns(member)), follow_symlinks=False)

    def _make_hard_link(self, path: bytes, member: tarfile.TarInfo) -> None:
        target = self._existing_target(member)
        self._clear(path, member.name, keep_directory=False)
        os.link(target, path, follow_symlinks=False)

    def _make_fifo(self, path: bytes, member: tarfile.TarInfo) -> None:
        self._clear(path, member.name, keep_directory=False)
        os.mkfifo(path, 0o600)
        self._set_owner(path, member)
        os.chmod(path, member.mode & FILE_MODE_BITS, follow_symlinks=False)
        os.utime(path, ns=(_mtime_ns(member), _mtime_ns(member)), follow_symlinks=False)

    # -- attributes -----------------------------------------------------------------

    def _set_owner(self, target: int | bytes, member: tarfile.TarInfo) -> None:
        if not self.preserve_owner:
            return
        uid, gid = _uid(member.uname, member.uid), _gid(member.gname, member.gid)
        try:
            if isinstance(target, int):
                os.fchown(target, uid, gid)
            else:
                os.chown(target, uid, gid, follow_symlinks=False)
        except PermissionError as error:  # e.g. root squashed on NFS: keep going
            log.warning("cannot restore the owner of %r: %s", member.name, error)

    def apply_directory_attributes(
        self, base: Path | None = None, *, levels: Literal["all", "inner", "top"] = "all"
    ) -> None:
        """Set the extracted directories' owners, modes and times, deepest first.

        Parameters:
          base: where the tree is now (default: the extraction root), for a tree
            renamed into place after extraction.
          levels: ``"top"`` only the top-level directories, ``"inner"`` all others.
        """
        root = self.root if base is None else os.fsencode(base)
        ordered = sorted(self._directories, key=lambda item: len(item[0]), reverse=True)
        for parts, member in ordered:
            if (levels == "top" and len(parts) > 1) or (levels == "inner" and len(parts) == 1):
                continue
            fd = os.open(
                _join(root, *parts), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
            )
            try:
                self._set_owner(fd, member)
                os.fchmod(fd, member.mode & DIRECTORY_MODE_BITS)
                os.utime(fd, ns=(_mtime_ns(member), _mtime_ns(member)))
            finally:
                os.close(fd)


def _member_error(member: tarfile.TarInfo, error: OSError) -> RestoreError:
    return RestoreError(f"cannot extract archive member {member.name!r}: {error}")


class _MemberFile:
    """A regular file being extracted: its data is written as it is decrypted (whole
    pieces at once, straight from the decrypted buffer), then its attributes set."""

    def __init__(self, fd: int, member: tarfile.TarInfo, extractor: SafeExtractor) -> None:
        self.fd = fd
        self.member = member
        self._extractor = extractor

    def write(self, data: memoryview) -> None:
        """Append ``data``. Raises RestoreError naming the member."""
        try:
            while data:
                data = data[os.write(self.fd, data) :]
        except OSError as error:
            raise _member_error(self.member, error) from None

    def complete(self) -> None:
        """All data written: set the attributes and close. Raises RestoreError."""
        try:
            self._extractor.complete_file(self.fd, self.member)
        except OSError as error:
            raise _member_error(self.member, error) from None
        finally:
            self.abandon()

    def abandon(self) -> None:
        """Close the file, whatever its state (safe to call more than once)."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)
