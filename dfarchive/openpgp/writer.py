"""Streaming writer of one OpenPGP symmetrically encrypted message.

Layout (DESIGN.md, "OpenPGP facts")::

    SKESK v4  (tag 3: AES-256, S2K type 3, SHA-256, 8-byte salt; no encrypted session key)
    SEIPD v1  (tag 18, partial body lengths) = 0x01 || CFB(
        16 random octets, the last 2 repeated,
        literal data packet (tag 11, format 'b', partial body lengths),
        MDC packet 0xD3 0x14 || SHA-1(all plaintext before it, including 0xD3 0x14))

Both partial-length layers use ``chunk_size`` parts; each last part has a definite
length (possibly 0). Memory stays bounded by a few ``chunk_size`` buffers whatever the
size of a :meth:`SymmetricWriter.write` call.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import TypedDict, Unpack

from dfarchive.errors import CryptoError
from dfarchive.openpgp import packets as p
from dfarchive.openpgp.ciphers import cfb_encryptor, cipher_spec
from dfarchive.openpgp.s2k import S2K, S2K_ITERATED
from dfarchive.plumbing.closeorabort import CloseOrAbort
from dfarchive.plumbing.threadhash import ThreadedHash

PASSPHRASE_TYPE = bytes

DEFAULT_CHUNK_SIZE = 1 << 22
WRITER_CIPHER = p.CIPHER_AES256
WRITER_S2K_HASH = p.HASH_SHA256

Sink = Callable[[bytes | memoryview], object]


class WriterOptions(TypedDict, total=False):
    """The keyword arguments of :class:`SymmetricWriter`, for :func:`encrypt_bytes`."""

    filename: bytes
    chunk_size: int
    s2k_count_byte: int
    mtime: int


def _byte_view(data: bytes | bytearray | memoryview) -> memoryview:
    view = memoryview(data)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


class SymmetricWriter(CloseOrAbort):
    """Streaming writer of one OpenPGP message: SKESK v4 (AES-256, S2K type 3 iterated +
    salted, SHA-256, 8-byte salt) followed by SEIPD v1 (tag 18) with MDC, containing one
    literal data packet (tag 11, format 'b').

    Parameters:
        sink: called with each piece of the message in order. A memoryview passed to it
            is only valid during the call (its buffer is reused): copy it to keep it.
        passphrase: any bytes; the S2K output is the AES-256 session key.
        filename: stored in the literal packet (at most 255 bytes).
        chunk_size: partial body part size, a power of two from 512 to 2**30.
        s2k_count_byte: RFC 4880 coded iteration count (0xFF: 65011712 octets).
        mtime: literal packet date (seconds since the epoch, 0 = unknown).

    Raises:
        ValueError: invalid arguments.

    Attributes ``bytes_in`` (plaintext accepted) and ``bytes_out`` (bytes handed to the
    sink) are updated as the writer goes. Exceptions from ``sink`` propagate unchanged and
    leave the writer failed: :meth:`close` then raises instead of completing a message.
    """

    def __init__(
        self,
        sink: Sink,
        passphrase: bytes,
        *,
        filename: bytes = b"",
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        s2k_count_byte: int = 0xFF,
        mtime: int = 0,
    ) -> None:
        _check_arguments(passphrase, filename, chunk_size, s2k_count_byte, mtime)
        self.bytes_in = 0
        self.bytes_out = 0
        self._sink = sink
        self._chunk_size = chunk_size
        self._state = "open"
        spec = cipher_spec(WRITER_CIPHER)
        s2k = S2K(S2K_ITERATED, WRITER_S2K_HASH, secrets.token_bytes(8), s2k_count_byte)
        key = s2k.derive(bytes(passphrase), spec.key_size)
        skesk = bytes((p.SKESK_VERSION, WRITER_CIPHER)) + s2k.encode()
        self._message_header: bytes | None = p.new_packet(p.TAG_SKESK, skesk) + bytes(
            (p.new_format_tag(p.TAG_SEIPD),)
        )
        self._mdc = ThreadedHash("sha1")
        self._cfb = cfb_encryptor(spec, key, max_piece=chunk_size + 1)
        # outer layer: [partial length octet][SEIPD body part][room for one block more];
        # the body starts with 0x01
        self._part_capacity = 1 + chunk_size
        self._part = memoryview(bytearray(self._part_capacity + 2 * spec.block_size))
        self._part[0] = p.partial_length_octet(chunk_size)
        self._part[1] = p.SEIPD_VERSION
        self._part_fill = 2
        # inner layer: [partial length octet][literal body part]
        self._literal = bytearray(1 + chunk_size)
        self._literal_view = memoryview(self._literal)
        self._literal[0] = p.partial_length_octet(chunk_size)
        literal_header = (
            bytes((p.LITERAL_BINARY, len(filename))) + filename + mtime.to_bytes(4, "big")
        )
        self._literal[1 : 1 + len(literal_header)] = literal_header
        self._literal_fill = 1 + len(literal_header)
        prefix = secrets.token_bytes(spec.block_size)
        self._encrypt(prefix + prefix[-2:] + bytes((p.new_format_tag(p.TAG_LITERAL),)))

    # -- public API ----------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt ``data`` (any size); hands complete parts to the sink as they fill.

        ``data`` is not referenced after the call returns.
        """
        self._require_open()
        view = _byte_view(data)
        try:
            self._write_literal(view)
        except BaseException:
            self._fail()
            raise
        self.bytes_in += len(view)

    def close(self) -> None:
        """Write the last literal part, the MDC packet and the last SEIPD part. Idempotent.

        Raises:
            CryptoError: the writer failed or was aborted earlier; no valid message exists.
        """
        if self._state == "closed":
            return
        if self._state != "open":
            raise CryptoError(f"OpenPGP writer cannot be closed: it was {self._state}")
        try:
            self._finish()
        except BaseException:
            self._fail()
            raise
        self._state = "closed"
        self._mdc.close()

    def abort(self) -> None:
        """Stop without writing a valid end; release the helper thread. Idempotent."""
        if self._state == "open":
            self._state = "aborted"
        self._mdc.close()

    # -- literal layer -------------------------------------------------------------------

    def _write_literal(self, view: memoryview) -> None:
        """Frame ``view`` into literal parts; complete parts go out without a copy."""
        capacity = 1 + self._chunk_size
        pos = 0
        while len(view) - pos >= capacity - self._literal_fill:
            take = capacity - self._literal_fill
            self._encrypt(self._literal_view[: self._literal_fill])
            self._encrypt(view[pos : pos + take])
            self._literal_fill = 1
            pos += take
        rest = len(view) - pos
        if rest:
            self._literal[self._literal_fill : self._literal_fill + rest] = view[pos:]
            self._literal_fill += rest

    def _finish(self) -> None:
        body = self._literal_view[1 : self._literal_fill]
        self._encrypt(p.encode_length(len(body)))
        self._encrypt(body)
        self._encrypt(p.MDC_HEADER)
        self._encrypt(self._mdc.digest(), hashed=False)
        tail = self._cfb.finalize()
        self._part[self._part_fill : self._part_fill + len(tail)] = tail
        self._part_fill += len(tail)
        self._flush_part()
        body = self._part[1 : self._part_fill]
        self._send(p.encode_length(len(body)) + body)

    # -- encryption and the SEIPD layer --------------------------------------------------

    def _encrypt(self, piece: bytes | memoryview, *, hashed: bool = True) -> None:
        """Hash (on the helper thread when large) and encrypt ``piece`` into SEIPD parts."""
        ticket = self._mdc.submit(piece) if hashed else None
        try:
            piece = memoryview(piece)
            while piece:
                room = self._part_capacity - self._part_fill
                out = self._part[self._part_fill :]
                self._part_fill += self._cfb.update_into(piece[:room], out)
                self._flush_part()
                piece = piece[room:]
        finally:
            self._mdc.wait(ticket)

    def _flush_part(self) -> None:
        """Send the part if it is full; keep the octets encrypted beyond it."""
        capacity = self._part_capacity
        if self._part_fill < capacity:
            return
        self._send(self._part[:capacity])
        overflow = self._part_fill - capacity
        self._part[1 : 1 + overflow] = self._part[capacity : self._part_fill]
        self._part_fill = 1 + overflow

    def _send(self, data: bytes | memoryview) -> None:
        if self._message_header is not None:
            header, self._message_header = self._message_header, None
            self._sink(header)
            self.bytes_out += len(header)
        self._sink(data)
        self.bytes_out += len(data)

    # -- state -----------------------------------------------------------------------------

    def _require_open(self) -> None:
        if self._state != "open":
            raise ValueError(f"write to an OpenPGP writer that is {self._state}")

    def _fail(self) -> None:
        self._state = "failed"
        self._mdc.close()


def _check_arguments(
    passphrase: bytes, filename: bytes, chunk_size: int, s2k_count_byte: int, mtime: int
) -> None:
    if not isinstance(passphrase, bytes | bytearray | memoryview):
        raise TypeError("passphrase must be bytes")
    if not isinstance(filename, bytes) or len(filename) > p.MAX_FILENAME:
        raise ValueError("filename must be bytes of at most 255 octets")
    if (
        chunk_size < p.MIN_FIRST_PARTIAL
        or chunk_size > p.MAX_PARTIAL
        or chunk_size & (chunk_size - 1)
    ):
        raise ValueError(f"chunk_size must be a power of two from 512 to 2**30: {chunk_size}")
    if not 0 <= s2k_count_byte <= 0xFF:
        raise ValueError(f"s2k_count_byte must be 0..255: {s2k_count_byte}")
    if not 0 <= mtime <= 0xFFFFFFFF:
        raise ValueError(f"mtime must fit in 32 bits: {mtime}")


def encrypt_bytes(
    data: bytes | bytearray | memoryview, passphrase: bytes, **kwargs: Unpack[WriterOptions]
) -> bytes:
    """The whole message for ``data``; keyword arguments as for :class:`SymmetricWriter`."""
    out = bytearray()
    with SymmetricWriter(out.extend, passphrase, **kwargs) as writer:
        writer.write(data)
    return bytes(out)
