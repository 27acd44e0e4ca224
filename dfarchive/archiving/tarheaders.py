"""Incremental tar header walker: a cheap fingerprint of a tar stream's structure.

A :class:`TarHeaderWalker` is fed consecutive chunks of a tar stream, cut anywhere. It reads
only the 512-byte header blocks (and the data of GNU long-name / long-link and pax
extended headers, which describe the next member); member data is skipped by
arithmetic and never copied. :meth:`TarHeaderWalker.summary` then says how many members the
stream holds, a SHA-256 over their names in order, whether the end-of-archive marker
(two zero blocks) was seen, and how many bytes were fed. Along the way it collects every
name the stream mentions (members, and the targets of hard links, which name earlier
members), so that the archive can be checked to hold exactly the run folder.

A :class:`TarStreamTally` is the walker with what every reader of a plaintext tar
stream also takes of it: its length and, if asked, its SHA-256. The archiving engines
tally the plaintext on its way into the encryptor; validation, verification and
restore tally the decrypted stream; the summaries must be equal.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from dfarchive.errors import ValidationError
from dfarchive.plumbing.threadhash import ThreadedHash, Ticket

BLOCK = 512
"""A tar block: headers are one block, member data is padded to whole blocks."""

_ZERO_BLOCK = bytes(BLOCK)

# Header field offsets (POSIX ustar / GNU).
_NAME = slice(0, 100)
_SIZE = slice(124, 136)
_CHKSUM = slice(148, 156)
_TYPEFLAG = 156
_LINKNAME = slice(157, 257)
_MAGIC = slice(257, 263)
_PREFIX = slice(345, 500)
_USTAR_MAGIC = b"ustar\x00"  # POSIX: the prefix field extends the name
_GNU_OLDSPARSE_ISEXTENDED = 482  # in a GNU 'S' header: sparse extension blocks follow
_SPARSE_EXT_ISEXTENDED = 504  # in a sparse extension block: another one follows

# Type flags of headers that describe the next member instead of being one.
_GNU_LONGNAME = ord("L")
_GNU_LONGLINK = ord("K")
_PAX_HEADER = ord("x")
_PAX_GLOBAL = ord("g")
_SOLARIS_PAX = ord("X")
_GNU_OLDSPARSE = ord("S")
_DEVICE_TYPES = frozenset({ord("3"), ord("4")})  # character and block devices
_DIRECTORY = ord("5")
_HARD_LINK = ord("1")
_REGULAR_TYPES = frozenset({ord("0"), 0, ord("7"), _GNU_OLDSPARSE})  # old "\0", contiguous
_META_TYPES = frozenset({_GNU_LONGNAME, _GNU_LONGLINK, _PAX_HEADER, _PAX_GLOBAL, _SOLARIS_PAX})

MAX_META_SIZE = 16 << 20
"""Largest long-name or pax header data kept in memory; larger is treated as corrupt."""

_NAME_SEPARATOR = b"\x00"  # names never contain NUL, so the digest input is unambiguous


@dataclass(frozen=True, kw_only=True)
class TarSummary:
    """What a tar stream looked like.

    Attributes:
        members: entries in the archive (files, directories, links, ...), not counting
            the long-name and pax headers that describe them.
        members_sha256: hex SHA-256 over the member names, raw bytes, each followed by
            a NUL byte, in stream order.
        end_of_archive: two consecutive zero blocks were seen at a header position.
        size: bytes fed, including the end-of-archive marker and record padding.
    """

    members: int
    members_sha256: str
    end_of_archive: bool
    size: int


class TarHeaderWalker:
    """Walks tar headers across chunks fed in order; see the module docstring.

    Raises :class:`~dfarchive.errors.ValidationError` from :meth:`feed` at the first
    header whose checksum or size field is invalid.
    """

    def __init__(self) -> None:
        self._offset = 0  # bytes fed so far
        self._members = 0
        self._names = hashlib.sha256()
        self._skip = 0  # bytes of member data (and padding) still to pass over
        self._header = bytearray()  # a header block split across chunks
        self._meta_type: int | None = None  # collecting the data of this meta header
        self._meta = bytearray()
        self._meta_left = 0
        self._meta_padding = 0
        self._long_name: bytes | None = None
        self._long_link: bytes | None = None
        self._pax_path: bytes | None = None
        self._pax_linkpath: bytes | None = None
        self._sparse_ext = False  # the next block is a GNU sparse extension block
        self._sparse_data = 0  # member data (and padding) after the extension blocks
        self._zero_blocks = 0
        self._ended = False
        self.device_members: list[bytes] = []
        """Names of the character and block device members seen, in stream order."""
        self.archived_names: set[bytes] = set()
        """Names of the directory and regular-file members seen (no trailing slash)."""
        self.other_names: set[bytes] = set()
        """Names of the other members seen (links, FIFOs, ...) and of the targets of
        hard links (no trailing slash)."""

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Account for the next ``data`` bytes of the stream.

        Raises:
            ValidationError: a header block is corrupt (bad checksum, bad size field).
        """
        view = memoryview(data).cast("B")
        end = len(view)
        self._offset += end
        if self._ended:
            return
        pos = 0
        while pos < end:
            if self._skip:
                step = min(self._skip, end - pos)
                self._skip -= step
                pos += step
            elif self._meta_left:
                step = min(self._meta_left, end - pos)
                self._meta += view[pos : pos + step]
                self._meta_left -= step
                pos += step
                if not self._meta_left:
                    self._end_meta()
            elif self._header or end - pos < BLOCK:
                step = min(BLOCK - len(self._header), end - pos)
                self._header += view[pos : pos + step]
                pos += step
                if len(self._header) == BLOCK:
                    block = bytes(self._header)
                    self._header.clear()
                    self._block(block, self._offset - end + pos - BLOCK)
            else:
                self._block(view[pos : pos + BLOCK], self._offset - end + pos)
                pos += BLOCK
            if self._ended:
                return

    def summary(self) -> TarSummary:
        """The summary of everything fed so far."""
        return TarSummary(
            members=self._members,
            members_sha256=self._names.hexdigest(),
            end_of_archive=self._ended,
            size=self._offset,
        )

    # -- header handling --------------------------------------------------------------

    def _block(self, block: bytes | memoryview, offset: int) -> None:
        """Handle one block found at a header position, starting at stream ``offset``."""
        if self._sparse_ext:
            self._sparse_ext = bool(block[_SPARSE_EXT_ISEXTENDED])
            if not self._sparse_ext:
                self._skip = self._sparse_data
            return
        if block == _ZERO_BLOCK:
            self._zero_blocks += 1
            self._ended = self._zero_blocks == 2
            return
        self._zero_blocks = 0
        _check_checksum(block, offset)
        size = _parse_number(block[_SIZE], offset, "size")
        typeflag = block[_TYPEFLAG]
        if typeflag in _META_TYPES:
            if size > MAX_META_SIZE:
                raise ValidationError(
                    f"tar header at offset {offset}: extended header of {size} bytes "
                    f"exceeds {MAX_META_SIZE}"
                )
            self._meta_type = typeflag
            self._meta.clear()
            self._meta_left = size
            self._meta_padding = _padding(size)
            if not size:
                self._end_meta()
            return
        self._members += 1
        name = self._member_name(block)
        self._names.update(name)
        self._names.update(_NAME_SEPARATOR)
        if typeflag == _DIRECTORY or typeflag in _REGULAR_TYPES:
            self.archived_names.add(name.rstrip(b"/"))
        else:
            self.other_names.add(name.rstrip(b"/"))
        if typeflag in _DEVICE_TYPES:
            self.device_members.append(name)
        elif typeflag == _HARD_LINK:
            self.other_names.add(self._link_name(block).rstrip(b"/"))
        self._long_name = self._long_link = self._pax_path = self._pax_linkpath = None
        if typeflag == _GNU_OLDSPARSE and block[_GNU_OLDSPARSE_ISEXTENDED]:
            self._sparse_ext = True  # extension blocks come before the data
            self._sparse_data = size + _padding(size)
        else:
            self._skip = size + _padding(size)

    def _member_name(self, block: bytes | memoryview) -> bytes:
        if self._pax_path is not None:
            return self._pax_path
        if self._long_name is not None:
            return self._long_name
        name = _cstring(block[_NAME])
        if bytes(block[_MAGIC]) == _USTAR_MAGIC:
            prefix = _cstring(block[_PREFIX])
            if prefix:
                return prefix + b"/" + name
        return name

    def _link_name(self, block: bytes | memoryview) -> bytes:
        if self._pax_linkpath is not None:
            return self._pax_linkpath
        if self._long_link is not None:
            return self._long_link
        return _cstring(block[_LINKNAME])

    def _end_meta(self) -> None:
        """The data of a meta header is complete: remember what it says."""
        data = bytes(self._meta)
        self._meta.clear()
        if self._meta_type == _GNU_LONGNAME:
            self._long_name = _cstring(data)
        elif self._meta_type == _GNU_LONGLINK:
            self._long_link = _cstring(data)
        elif self._meta_type in (_PAX_HEADER, _SOLARIS_PAX):
            path = _pax_record(data, b"path")
            if path is not None:
                self._pax_path = path
            linkpath = _pax_record(data, b"linkpath")
            if linkpath is not None:
                self._pax_linkpath = linkpath
        self._meta_type = None
        self._skip = self._meta_padding


class TarStreamTally:
    """Length, SHA-256 (with ``sha256``) and :class:`TarHeaderWalker` of a tar stream fed
    in chunks.

    ``threaded`` hashes on a helper thread (see
    :class:`~dfarchive.plumbing.threadhash.ThreadedHash`; :meth:`close` it then).

    With ``keep_going``, a corrupt header does not raise: it is kept in :attr:`error`,
    and the walk stops there while counting and hashing go on.
    """

    def __init__(
        self,
        *,
        sha256: bool = False,
        threaded: bool | None = False,
        keep_going: bool = False,
    ) -> None:
        self.size = 0
        """Bytes fed so far."""
        self.walker = TarHeaderWalker()
        self.error: ValidationError | None = None
        """The corrupt header that stopped the walk, if one did."""
        self._sha256 = ThreadedHash("sha256", threaded=threaded) if sha256 else None
        self._keep_going = keep_going

    def feed(self, chunk: bytes | bytearray | memoryview) -> Ticket:
        """Count, hash and walk the next ``chunk`` of the stream.

        Returns the hash's ticket (see :meth:`ThreadedHash.submit`): ``chunk`` must stay
        unchanged until it is waited for.

        Raises:
            ValidationError: a header is corrupt (unless ``keep_going``).
        """
        self.size += len(chunk)
        ticket = None if self._sha256 is None else self._sha256.submit(chunk)
        if self.error is None:
            try:
                self.walker.feed(chunk)
            except ValidationError as error:
                self.error = error
                if not self._keep_going:
                    raise
        return ticket

    def summary(self) -> TarSummary:
        """The walker's summary of everything fed so far."""
        return self.walker.summary()

    def hexdigest(self) -> str:
        """The SHA-256 of everything fed so far (waits for pending pieces)."""
        if self._sha256 is None:
            raise ValueError("no SHA-256 was asked for")
        return self._sha256.hexdigest()

    def close(self) -> None:
        """Stop the hashing thread, if any (waits for it). Idempotent."""
        if self._sha256 is not None:
            self._sha256.close()


def _padding(size: int) -> int:
    return -size % BLOCK


def _cstring(field: bytes | memoryview) -> bytes:
    raw = bytes(field)
    nul = raw.find(b"\x00")
    return raw if nul < 0 else raw[:nul]


def _check_checksum(block: bytes | memoryview, offset: int) -> None:
    """Raise ValidationError unless the header's checksum field matches its bytes."""
    raw = bytes(block)
    field = raw[_CHKSUM]
    try:
        stored = int(field.replace(b"\x00", b" ").strip() or b"-1", 8)
    except ValueError:
        raise ValidationError(
            f"tar header at offset {offset}: unreadable checksum field {field!r}"
        ) from None
    unsigned = sum(raw) - sum(field) + 8 * 0x20
    if stored == unsigned:
        return
    # Some old tars summed signed chars.
    signed = unsigned - 256 * sum(1 for b in raw[:148] + raw[156:] if b > 127)
    if stored != signed:
        raise ValidationError(
            f"tar header at offset {offset}: checksum mismatch "
            f"(stored {stored}, computed {unsigned})"
        )


def _parse_number(field: bytes | memoryview, offset: int, what: str) -> int:
    """Parse a numeric header field: NUL/space terminated octal, or GNU base-256."""
    raw = bytes(field)
    if raw[0] & 0x80:
        if raw[0] == 0xFF:
            raise ValidationError(f"tar header at offset {offset}: negative {what}")
        return int.from_bytes(bytes([raw[0] & 0x7F]) + raw[1:], "big")
    text = raw.split(b"\x00", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise ValidationError(
            f"tar header at offset {offset}: unreadable {what} field {raw!r}"
        ) from None


def _pax_record(data: bytes, key: bytes) -> bytes | None:
    """The last value of ``key`` in pax extended header data, if any.

    Records are ``"<length> <key>=<value>\\n"``; a malformed record ends the parse.
    """
    found = None
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            break
        try:
            length = int(data[pos:space])
        except ValueError:
            break
        if length <= 0 or pos + length > len(data):
            break
        record = data[space + 1 : pos + length - 1]  # without the trailing newline
        name, sep, value = record.partition(b"=")
        if sep and name == key:
            found = value
        pos += length
    return found
