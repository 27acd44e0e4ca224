"""Pull-based byte streams for the reader: file, packet bodies, decompression.

Every stream offers ``read(n) -> memoryview``: some bytes (at most about ``n``), an
empty view only at the end. A returned view is valid until the next ``read`` on the
same stream, so data flows from the file to the sink without copies wherever packet
parts are large. Truncation anywhere raises IntegrityError.
"""

from __future__ import annotations

import bz2
import threading
import zlib
from collections.abc import Callable
from typing import Protocol

from dfarchive.errors import Cancelled, IntegrityError, UnsupportedMessage
from dfarchive.openpgp import packets as p
from dfarchive.openpgp.buffers import FIRST_READ, grown

EMPTY = memoryview(b"")

SMALL_PART = 1 << 18
"""Parts shorter than this are copied together into one read of up to ``read_size``:
gpg writes 8 KiB parts, and passing each through the stack separately costs more than
copying them. Larger parts pass through without a copy."""


class Stream(Protocol):
    """A source of bytes: ``read(n)`` returns a view of some bytes, empty at the end."""

    def read(self, n: int) -> memoryview: ...


class ByteSource(Protocol):
    """What :func:`~dfarchive.openpgp.decrypt` reads a message from: a file object, or
    anything with ``read(n)`` (a read-ahead or hashing reader). When the object also has
    ``readinto(buffer) -> int | None``, that is used instead, to reuse one buffer."""

    def read(self, n: int, /) -> bytes | bytearray | memoryview: ...


class FileStream:
    """Reads a :class:`ByteSource` (``readinto`` or ``read``) into one reused buffer."""

    def __init__(self, source: ByteSource, read_size: int, cancel: threading.Event | None) -> None:
        self._source = source
        self._readinto: Callable[[memoryview], int | None] | None = getattr(
            source, "readinto", None
        )
        self._buffer: memoryview | None = None
        self._read_size = read_size
        self._capacity = min(read_size, FIRST_READ)
        self._cancel = cancel
        self.bytes_read = 0

    def read(self, n: int) -> memoryview:
        if self._cancel is not None and self._cancel.is_set():
            raise Cancelled("decryption cancelled")
        n = min(n, self._capacity)
        if self._readinto is not None:
            self._buffer = grown(self._buffer, n, self._read_size)
            got = self._readinto(self._buffer[:n])
            if got is None:
                raise IntegrityError("source returned no data (non-blocking file?)")
            view = self._buffer[:got]
        else:
            view = memoryview(self._source.read(n))
        if len(view) == n:
            self._capacity = self._read_size
        self.bytes_read += len(view)
        return view


class Buffered:
    """Adds small exact reads (headers) and end checks on top of a :class:`Stream`."""

    def __init__(self, stream: Stream, read_size: int) -> None:
        self._stream = stream
        self._read_size = read_size
        self._current = EMPTY
        self._ended = False

    def read(self, n: int) -> memoryview:
        if not self._current and not self._fill():
            return EMPTY
        view = self._current[:n]
        self._current = self._current[n:]
        return view

    def read_byte(self, what: str) -> int:
        """One byte. Raises IntegrityError naming ``what`` if the data ends."""
        if not self._current and not self._fill():
            raise IntegrityError(f"message truncated in {what}")
        octet = self._current[0]
        self._current = self._current[1:]
        return octet

    def read_exact(self, n: int, what: str) -> bytes:
        """Exactly ``n`` bytes. Raises IntegrityError naming ``what`` if the data ends."""
        parts = []
        missing = n
        while missing:
            view = self.read(missing)
            if not view:
                raise IntegrityError(f"message truncated in {what}")
            parts.append(bytes(view))
            missing -= len(view)
        return b"".join(parts)

    def at_end(self) -> bool:
        """True when no byte is left."""
        return not self._current and not self._fill()

    def drain(self) -> None:
        """Read and drop everything left."""
        while self.read(self._read_size):
            pass

    def _fill(self) -> bool:
        if self._ended:
            return False
        self._current = self._stream.read(self._read_size)
        if not self._current:
            self._ended = True
        return bool(self._current)


def read_header(src: Buffered) -> p.PacketHeader | None:
    """The next packet header, or None at a clean end of ``src``."""
    first = src.read(1)
    if not first:
        return None
    octet = first[0]
    p.check_header_octet(octet)
    if octet & 0x40:
        length, partial = read_new_length(src)
        tag = octet & 0x3F
        if partial and tag not in p.DATA_TAGS:
            raise IntegrityError(f"packet tag {tag} cannot have a partial body length")
        return p.PacketHeader(tag, length, partial)
    tag = (octet >> 2) & 0x0F
    size = p.OLD_LENGTH_SIZES[octet & 0x03]
    if not size:
        return p.PacketHeader(tag, None)
    return p.PacketHeader(tag, int.from_bytes(src.read_exact(size, "a packet header"), "big"))


def next_header(src: Buffered, truncated: str) -> p.PacketHeader:
    """The next packet header; at the end of ``src``, IntegrityError(``truncated``)."""
    header = read_header(src)
    if header is None:
        raise IntegrityError(truncated)
    return header


def read_new_length(src: Buffered) -> tuple[int, bool]:
    """A new-format length (``(length, partial)``) read from ``src``."""
    first = src.read_byte("a packet length")
    if 224 <= first < 255:
        return 1 << (first & 0x1F), True
    extra = src.read_exact(p.new_length_extra(first), "a packet length")
    return p.decode_new_length(first, extra)


def read_small_body(src: Buffered, header: p.PacketHeader, limit: int) -> bytes:
    """The body of a non-data packet (SKESK, marker, ...), at most ``limit`` bytes.

    Raises:
        UnsupportedMessage: the body has an indeterminate length or is over ``limit``
            (the message is refused: its end can't be found safely).
    """
    if header.length is None:
        raise UnsupportedMessage(
            f"packet tag {header.tag} before the encrypted data has an indeterminate "
            "length; refusing the message"
        )
    if header.length > limit:
        raise UnsupportedMessage(
            f"packet tag {header.tag} before the encrypted data is {header.length} bytes, "
            f"over the {limit}-byte limit; refusing the message"
        )
    return src.read_exact(header.length, f"packet tag {header.tag}")


class BodyStream:
    """The body of one packet, across partial body parts, read from its parent stream."""

    def __init__(self, parent: Buffered, header: p.PacketHeader, read_size: int) -> None:
        self._parent = parent
        self._left = header.length
        self._part_size = header.length
        self._last_part = not header.partial
        self._read_size = read_size
        self._joined: memoryview | None = None
        self.tag = header.tag

    def read(self, n: int) -> memoryview:
        n = min(n, self._read_size)
        if not self._next_part():
            return EMPTY
        if self._in_small_parts():
            return self._join_parts(n)
        return self._take(n)

    def _in_small_parts(self) -> bool:
        return (
            not self._last_part and self._part_size is not None and (self._part_size < SMALL_PART)
        )

    def _next_part(self) -> bool:
        """Move to a part with bytes left; False at the end of the body."""
        while self._left == 0:
            if self._last_part:
                return False
            self._left, partial = read_new_length(self._parent)
            self._part_size = self._left
            self._last_part = not partial
        return True

    def _take(self, n: int) -> memoryview:
        """Up to ``n`` bytes of the current part, without a copy."""
        if self._left is None:
            return self._parent.read(n)
        view = self._parent.read(min(n, self._left))
        if not view:
            raise IntegrityError(f"message truncated in the body of packet tag {self.tag}")
        self._left -= len(view)
        return view

    def _join_parts(self, n: int) -> memoryview:
        """Copy small parts together into one view of up to ``n`` bytes; stop before a
        large part (returned by the next read without a copy)."""
        self._joined = out = grown(self._joined, n, self._read_size)
        fill = 0
        while fill < n and self._next_part():
            if fill and not self._in_small_parts():
                break
            view = self._take(n - fill)
            out[fill : fill + len(view)] = view
            fill += len(view)
        return out[:fill]


class _Decompressor(Protocol):
    @property
    def eof(self) -> bool: ...
    @property
    def unused_data(self) -> bytes: ...

    def decompress(self, data: bytes | memoryview, max_length: int = ..., /) -> bytes: ...


class InflateStream:
    """The decompressed contents of a compressed data packet body (RFC 4880 5.6)."""

    def __init__(self, body: Buffered, algo: int, read_size: int) -> None:
        self._body = body
        self._read_size = read_size
        self._pending: bytes | memoryview = b""
        self.algo = algo
        if algo == p.COMPRESS_ZIP:
            self._inflater: _Decompressor | None = zlib.decompressobj(-zlib.MAX_WBITS)
        elif algo == p.COMPRESS_ZLIB:
            self._inflater = zlib.decompressobj(zlib.MAX_WBITS)
        elif algo == p.COMPRESS_BZIP2:
            self._inflater = bz2.BZ2Decompressor()
        elif algo == p.COMPRESS_NONE:
            self._inflater = None
        else:
            raise UnsupportedMessage(f"unsupported compression algorithm {algo}")

    def read(self, n: int) -> memoryview:
        if self._inflater is None:
            return self._body.read(n)
        return self._inflate(self._inflater, min(n, self._read_size))

    def _inflate(self, inflater: _Decompressor, n: int) -> memoryview:
        while not inflater.eof:
            data = self._pending or self._next_input(inflater)
            try:
                out = inflater.decompress(data, n)
            except (zlib.error, OSError, EOFError) as err:  # bz2 reports bad data as OSError
                raise IntegrityError(f"compressed data is corrupt: {err}") from None
            tail = getattr(inflater, "unconsumed_tail", b"")
            self._pending = tail
            if out:
                return memoryview(out)
            if not data and not tail and not inflater.eof:
                raise IntegrityError("message truncated in compressed data")
        if inflater.unused_data or not self._body.at_end():
            raise IntegrityError("data after the end of the compressed stream")
        return EMPTY

    def _next_input(self, inflater: _Decompressor) -> bytes | memoryview:
        if not getattr(inflater, "needs_input", True):
            return b""
        return self._body.read(self._read_size)
