"""String-to-key specifiers (RFC 4880 3.7): parse, encode, derive a key from a passphrase."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

from dfarchive.errors import IntegrityError, UnsupportedMessage
from dfarchive.openpgp import packets as p

S2K_SIMPLE = 0
S2K_SALTED = 1
S2K_ITERATED = 3
S2K_GNU = 101

SALT_SIZE = 8

HASH_NAMES = {
    p.HASH_MD5: "md5",
    p.HASH_SHA1: "sha1",
    p.HASH_RIPEMD160: "ripemd160",
    p.HASH_SHA256: "sha256",
    p.HASH_SHA384: "sha384",
    p.HASH_SHA512: "sha512",
    p.HASH_SHA224: "sha224",
}

DIGEST_SIZES = {
    p.HASH_MD5: 16,
    p.HASH_SHA1: 20,
    p.HASH_RIPEMD160: 20,
    p.HASH_SHA256: 32,
    p.HASH_SHA384: 48,
    p.HASH_SHA512: 64,
    p.HASH_SHA224: 28,
}

_FEED_SIZE = 1 << 20
"""Bytes handed to the hash per update while iterating (large: hashlib drops the GIL)."""


class HashObject(Protocol):
    """What a hashlib object offers that we use."""

    def update(self, data: bytes | bytearray | memoryview, /) -> None: ...

    def digest(self) -> bytes: ...


def decode_count(count_byte: int) -> int:
    """Number of octets an iterated S2K hashes for its coded count octet."""
    return (16 + (count_byte & 15)) << ((count_byte >> 4) + 6)


def new_hash(hash_algo: int) -> HashObject:
    """A fresh hashlib object for an OpenPGP hash id.

    Raises:
        UnsupportedMessage: the id is unknown or this Python's hashlib lacks it.
    """
    name = HASH_NAMES.get(hash_algo)
    if name is None:
        raise UnsupportedMessage(f"unsupported S2K hash algorithm {hash_algo}")
    try:
        return hashlib.new(name, usedforsecurity=False)
    except ValueError:
        raise UnsupportedMessage(f"hash {name} is not available in this Python") from None


@dataclass(frozen=True)
class S2K:
    """One string-to-key specifier. ``count_byte`` is used by type 3 only."""

    type: int
    hash_algo: int
    salt: bytes = b""
    count_byte: int = 0

    @property
    def count(self) -> int:
        """Octets hashed per key part (type 3), otherwise 0."""
        return decode_count(self.count_byte) if self.type == S2K_ITERATED else 0

    def encode(self) -> bytes:
        """The specifier's wire form."""
        out = bytes((self.type, self.hash_algo))
        if self.type in (S2K_SALTED, S2K_ITERATED):
            out += self.salt
        if self.type == S2K_ITERATED:
            out += bytes((self.count_byte,))
        return out

    @classmethod
    def parse(cls, data: bytes) -> tuple[S2K, bytes]:
        """Parse a specifier at the start of ``data``; return it and the rest.

        Raises:
            UnsupportedMessage: unknown S2K type (including GnuPG's 101 extensions).
            IntegrityError: ``data`` is too short.
        """
        if len(data) < 2:
            raise IntegrityError("truncated S2K specifier")
        s2k_type, hash_algo = data[0], data[1]
        if s2k_type == S2K_SIMPLE:
            return cls(s2k_type, hash_algo), data[2:]
        if s2k_type == S2K_SALTED:
            end = 2 + SALT_SIZE
            if len(data) < end:
                raise IntegrityError("truncated S2K specifier")
            return cls(s2k_type, hash_algo, data[2:end]), data[end:]
        if s2k_type == S2K_ITERATED:
            end = 3 + SALT_SIZE
            if len(data) < end:
                raise IntegrityError("truncated S2K specifier")
            return cls(s2k_type, hash_algo, data[2 : end - 1], data[end - 1]), data[end:]
        raise UnsupportedMessage(f"unsupported S2K type {s2k_type}")

    def work(self, key_size: int) -> int:
        """Octets :meth:`derive` hashes for a ``key_size``-byte key, beyond the
        passphrase itself: the iteration count once per digest-sized part of the key
        (0 for unknown hashes, which are never derived)."""
        digest_size = DIGEST_SIZES.get(self.hash_algo)
        if digest_size is None:
            return 0
        return -(-key_size // digest_size) * self.count

    def derive(self, passphrase: bytes, key_size: int) -> bytes:
        """The ``key_size``-byte key for ``passphrase`` (RFC 4880 3.7.1).

        Raises:
            UnsupportedMessage: the hash algorithm is not available.
        """
        unit = self.salt + bytes(passphrase)
        total = max(self.count, len(unit))
        key = b""
        preload = 0
        while len(key) < key_size:
            h = new_hash(self.hash_algo)
            h.update(bytes(preload))
            _feed_repeated(h, unit, total)
            key += h.digest()
            preload += 1
        return key[:key_size]


def _feed_repeated(h: HashObject, unit: bytes, total: int) -> None:
    """Hash the first ``total`` octets of ``unit`` repeated without end."""
    if not unit or total <= len(unit):
        h.update(unit[:total])
        return
    block = unit * max(1, _FEED_SIZE // len(unit))
    full, rest = divmod(total, len(block))
    for _ in range(full):
        h.update(block)
    h.update(block[:rest])
