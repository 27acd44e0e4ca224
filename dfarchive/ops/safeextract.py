"""Safe extraction of a run archive's tar stream into a directory.

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
import grp
import io
import logging
import os
import pwd
import stat
import tarfile
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Literal, NoReturn, Self

from dfarchive.archiving.tarheaders import BLOCK, MAX_META_SIZE
from dfarchive.errors import RestoreError, UnsafeMember
from dfarchive.plumbing.childproc import write_all

if TYPE_CHECKING:  # tarfile internals used below, which typeshed does not declare

    def nti(s: bytes) -> int: ...

    class EmptyHeaderError(tarfile.HeaderError): ...

    class SubsequentHeaderError(tarfile.HeaderError): ...

else:
    from tarfile import EmptyHeaderError, SubsequentHeaderError, nti

log = logging.getLogger(__name__)

COPY_SIZE = 1 << 20
"""Bytes read per step by :func:`extract_stream`."""

FILE_MODE_BITS = 0o777
DIRECTORY_MODE_BITS = 0o3777  # keeps set-group-ID and sticky on directories
TAR_ENCODING, TAR_ERRORS = "utf-8", "surrogateescape"  # names round-trip as raw bytes


def run_folder_name(run_id: str) -> bytes:
    """``run_id`` as the raw name of a folder in the destination.

    Raises: RestoreError unless it is one path component (no ``/``, not ``.``/``..``,
    no NUL byte).
    """
    raw = run_id.encode(TAR_ENCODING, TAR_ERRORS)
    if raw in (b"", b".", b"..") or b"/" in raw or b"\0" in raw:
        raise RestoreError(f"run id {run_id!r} is not a folder name")
    return raw


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


def join_raw(base: Path | bytes, *parts: bytes) -> bytes:
    return b"/".join((os.fsencode(base), *parts))


def _mtime_ns(member: tarfile.TarInfo) -> int:
    mtime = member.mtime
    return mtime * 1_000_000_000 if isinstance(mtime, int) else round(mtime * 1e9)


@cache
def _owner(uname: str, uid: int, gname: str, gid: int) -> tuple[int, int]:
    """The local uid and gid of a member's owner and group names (its numeric ids for
    a name that is empty or unknown here)."""
    with contextlib.suppress(KeyError):
        uid = pwd.getpwnam(uname).pw_uid if uname else uid
    with contextlib.suppress(KeyError):
        gid = grp.getgrnam(gname).gr_gid if gname else gid
    return uid, gid


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
            path = join_raw(self.root, *parts)
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
            path = join_raw(path, part)
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
            path = join_raw(path, part)
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
        uid, gid = _owner(member.uname, member.uid, member.gname, member.gid)
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
                join_raw(root, *parts), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
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
            write_all(self.fd, data)
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
