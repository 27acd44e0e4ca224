"""OpenPGP packet framing (RFC 4880 section 4): tags, algorithm ids, headers, lengths.

Pure functions and constants; no I/O. The reader's streaming side lives in
:mod:`dfarchive.openpgp.streams`.
"""

from __future__ import annotations

from dataclasses import dataclass

from dfarchive.errors import IntegrityError

# -- packet tags (RFC 4880 4.3, RFC 9580 for AEAD) ---------------------------------------

TAG_PKESK = 1
TAG_SIGNATURE = 2
TAG_SKESK = 3
TAG_ONE_PASS_SIGNATURE = 4
TAG_COMPRESSED = 8
TAG_SED = 9
TAG_MARKER = 10
TAG_LITERAL = 11
TAG_SEIPD = 18
TAG_MDC = 19
TAG_AEAD = 20

DATA_TAGS = frozenset({TAG_COMPRESSED, TAG_SED, TAG_LITERAL, TAG_SEIPD, TAG_AEAD})
"""Packets whose body may use partial body lengths (RFC 4880 4.2.2.4)."""

# -- algorithm ids ----------------------------------------------------------------------

CIPHER_IDEA = 1
CIPHER_3DES = 2
CIPHER_CAST5 = 3
CIPHER_BLOWFISH = 4
CIPHER_AES128 = 7
CIPHER_AES192 = 8
CIPHER_AES256 = 9
CIPHER_TWOFISH = 10
CIPHER_CAMELLIA128 = 11
CIPHER_CAMELLIA192 = 12
CIPHER_CAMELLIA256 = 13

HASH_MD5 = 1
HASH_SHA1 = 2
HASH_RIPEMD160 = 3
HASH_SHA256 = 8
HASH_SHA384 = 9
HASH_SHA512 = 10
HASH_SHA224 = 11

COMPRESS_NONE = 0
COMPRESS_ZIP = 1
COMPRESS_ZLIB = 2
COMPRESS_BZIP2 = 3

# -- fixed values -----------------------------------------------------------------------

SKESK_VERSION = 4
SEIPD_VERSION = 1
MDC_HEADER = b"\xd3\x14"
"""New-format header of the MDC packet (tag 19, length 20) that ends a SEIPD v1 plaintext."""
MDC_PACKET_SIZE = len(MDC_HEADER) + 20
LITERAL_BINARY = ord("b")
MARKER_BODY = b"PGP"

MIN_FIRST_PARTIAL = 512
MAX_PARTIAL = 1 << 30
MAX_FILENAME = 255


@dataclass(frozen=True)
class PacketHeader:
    """One parsed packet header.

    ``length`` is the whole body length, or the first part's length when ``partial``,
    or None when the body runs to the end of the enclosing stream (old-format length
    type 3).
    """

    tag: int
    length: int | None
    partial: bool = False

    @property
    def indeterminate(self) -> bool:
        return self.length is None


def new_format_tag(tag: int) -> int:
    """The first octet of a new-format header for ``tag``."""
    return 0xC0 | tag


def encode_length(length: int) -> bytes:
    """New-format definite body length octets (1, 2 or 5 of them)."""
    if length < 0 or length > 0xFFFFFFFF:
        raise ValueError(f"packet length out of range: {length}")
    if length < 192:
        return bytes((length,))
    if length < 8384:
        length -= 192
        return bytes(((length >> 8) + 192, length & 0xFF))
    return b"\xff" + length.to_bytes(4, "big")


def partial_length_octet(size: int) -> int:
    """The octet announcing a partial body part of ``size`` bytes (a power of two)."""
    if size < 1 or size > MAX_PARTIAL or size & (size - 1):
        raise ValueError(f"partial body length must be a power of two up to 2**30: {size}")
    return 224 + size.bit_length() - 1


def new_packet(tag: int, body: bytes) -> bytes:
    """A complete new-format packet with a definite length."""
    return bytes((new_format_tag(tag),)) + encode_length(len(body)) + body


def decode_new_length(first: int, more: bytes) -> tuple[int, bool]:
    """Decode a new-format length from its first octet and the following ones.

    Returns ``(length, partial)``. ``more`` must hold :func:`new_length_extra` octets.
    """
    if first < 192:
        return first, False
    if first < 224:
        return ((first - 192) << 8) + more[0] + 192, False
    if first < 255:
        return 1 << (first & 0x1F), True
    return int.from_bytes(more[:4], "big"), False


def new_length_extra(first: int) -> int:
    """How many octets follow ``first`` in a new-format length."""
    if first < 192 or 224 <= first < 255:
        return 0
    return 1 if first < 224 else 4


OLD_LENGTH_SIZES = (1, 2, 4, 0)
"""Old-format length octets by length type; type 3 is indeterminate."""


def check_header_octet(octet: int) -> None:
    """Raise IntegrityError unless ``octet`` can start a packet header."""
    if not octet & 0x80:
        raise IntegrityError(f"not an OpenPGP packet header (octet 0x{octet:02x})")
