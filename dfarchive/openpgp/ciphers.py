"""Block ciphers by OpenPGP id, and OpenPGP CFB mode (RFC 4880 13.9, no resync) streaming.

How fast OpenSSL's own CFB runs depends on the build: OpenSSL 3.0 runs it one block
at a time both ways (slower than CBC, much slower than CBC decryption), while the
OpenSSL 4 in ``cryptography``'s wheels encrypts as fast as CBC and decrypts faster
still (figures in ``benchmarks/results``). So for AES each direction is
measured once per process (:func:`_native_is_faster`) and the faster of OpenSSL's CFB
and the construction below is used; the other ciphers (read only, from old gpg
messages) always use the construction.

The construction computes CFB from two modes OpenSSL runs fast in every build; with
``E`` the block cipher, CFB encryption is ``C[i] = P[i] ^ E(C[i-1])``. Then:

* encryption: CBC-encrypting ``P`` with IV ``E(IV)`` yields ``E(C[i])`` for each block
  (``E(P[i] ^ E(C[i-1]))``); ECB-decrypting that gives ``C``.
* decryption: ECB-encrypting ``C`` gives ``E(C[i])``; CBC-decrypting that with IV
  ``E(IV)`` gives ``D(E(C[i])) ^ E(C[i-1]) = P[i]``.

A final partial block is XORed with the next key-stream block by hand. Tests compare
both ways, in both directions, with ``cryptography``'s own CFB on random lengths and
split points.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.decrepit.ciphers import algorithms as decrepit
from cryptography.hazmat.decrepit.ciphers.modes import CFB
from cryptography.hazmat.primitives.ciphers import (
    BlockCipherAlgorithm,
    Cipher,
    CipherContext,
    algorithms,
    modes,
)

from dfarchive.errors import UnsupportedMessage
from dfarchive.openpgp import packets as p
from dfarchive.openpgp.buffers import grown

CALIBRATION_BYTES = 1 << 18
"""Bytes per timing pass when choosing between OpenSSL's CFB and the construction."""


@dataclass(frozen=True)
class CipherSpec:
    """An OpenPGP symmetric algorithm: id, name, key and block sizes, and its factory."""

    algo: int
    name: str
    key_size: int
    block_size: int
    factory: Callable[[bytes], BlockCipherAlgorithm]


CIPHERS: dict[int, CipherSpec] = {
    spec.algo: spec
    for spec in (
        CipherSpec(p.CIPHER_IDEA, "IDEA", 16, 8, decrepit.IDEA),
        CipherSpec(p.CIPHER_3DES, "3DES", 24, 8, decrepit.TripleDES),
        CipherSpec(p.CIPHER_CAST5, "CAST5", 16, 8, decrepit.CAST5),
        CipherSpec(p.CIPHER_BLOWFISH, "BLOWFISH", 16, 8, decrepit.Blowfish),
        CipherSpec(p.CIPHER_AES128, "AES128", 16, 16, algorithms.AES),
        CipherSpec(p.CIPHER_AES192, "AES192", 24, 16, algorithms.AES),
        CipherSpec(p.CIPHER_AES256, "AES256", 32, 16, algorithms.AES),
        CipherSpec(p.CIPHER_CAMELLIA128, "CAMELLIA128", 16, 16, decrepit.Camellia),
        CipherSpec(p.CIPHER_CAMELLIA192, "CAMELLIA192", 24, 16, decrepit.Camellia),
        CipherSpec(p.CIPHER_CAMELLIA256, "CAMELLIA256", 32, 16, decrepit.Camellia),
    )
}


def cipher_spec(algo: int) -> CipherSpec:
    """The spec for an OpenPGP cipher id. Raises UnsupportedMessage for unknown ids."""
    spec = CIPHERS.get(algo)
    if spec is None:
        raise UnsupportedMessage(f"unsupported symmetric cipher algorithm {algo}")
    return spec


def _context(
    spec: CipherSpec,
    key: bytes,
    mode: modes.ECB | modes.ModeWithInitializationVector,
    encrypt: bool,
) -> CipherContext:
    try:
        cipher = Cipher(spec.factory(key), mode)
        return cipher.encryptor() if encrypt else cipher.decryptor()
    except (UnsupportedAlgorithm, ValueError) as err:
        raise UnsupportedMessage(f"cipher {spec.name} is not available: {err}") from None


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=False))


class _CfbBase:
    """CFB from two OpenSSL stages (see the module docstring): a subclass sets
    ``_first`` and ``_second`` (CBC then ECB to encrypt, ECB then CBC to decrypt). Keeps
    the next key-stream block and the partial tail."""

    _first: CipherContext
    _second: CipherContext

    def __init__(self, spec: CipherSpec, key: bytes, max_piece: int) -> None:
        if len(key) != spec.key_size:
            raise ValueError(f"{spec.name} needs a {spec.key_size}-byte key, got {len(key)}")
        bs = spec.block_size
        self.block_size = bs
        first_keystream = _context(spec, key, modes.ECB(), True).update(bytes(bs))
        self._next_keystream = first_keystream
        self._tail = b""
        self._finished = False
        self.max_piece = max_piece
        self._scratch: memoryview | None = None
        self._cbc_iv = first_keystream
        self._total = 0

    def _track_tail(self, piece: memoryview, total_before: int) -> None:
        """Remember the input octets that do not yet fill a block."""
        rest = (total_before + len(piece)) % self.block_size
        self._tail = (self._tail + bytes(piece[-self.block_size :]))[-rest:] if rest else b""

    def _tmp_for(self, piece: memoryview) -> memoryview:
        """Scratch space for one piece (grown on demand, at most ``max_piece`` based)."""
        if self._finished:
            raise ValueError("CFB stream already finalized")
        if len(piece) > self.max_piece:
            raise ValueError(f"piece of {len(piece)} bytes exceeds {self.max_piece}")
        self._scratch = grown(
            self._scratch, len(piece) + 2 * self.block_size, self.max_piece + 2 * self.block_size
        )
        return self._scratch

    def update_into(self, piece: memoryview | bytes, out: memoryview) -> int:
        """Encrypt (or decrypt) every block completed by ``piece`` into ``out``; return
        the byte count.

        ``out`` must hold ``len(piece) + 2 * block_size`` bytes.
        """
        piece = memoryview(piece)
        tmp = self._tmp_for(piece)
        n = self._first.update_into(piece, tmp)
        self._track_tail(piece, self._total)
        self._total += len(piece)
        if not n:
            return 0
        self._next_keystream = bytes(tmp[n - self.block_size : n])
        return self._second.update_into(tmp[:n], out)

    def finalize(self) -> bytes:
        """Output of the last partial block (may be empty). Ends the stream."""
        self._finished = True
        return _xor(self._tail, self._next_keystream)


class _ConstructedCfbEncryptor(_CfbBase):
    """OpenPGP CFB encryption with a zero IV, fed in pieces of at most ``max_piece`` bytes."""

    def __init__(self, spec: CipherSpec, key: bytes, max_piece: int) -> None:
        super().__init__(spec, key, max_piece)
        self._first = _context(spec, key, modes.CBC(self._cbc_iv), True)
        self._second = _context(spec, key, modes.ECB(), False)


class _ConstructedCfbDecryptor(_CfbBase):
    """OpenPGP CFB decryption with a zero IV, fed in pieces of at most ``max_piece`` bytes."""

    def __init__(self, spec: CipherSpec, key: bytes, max_piece: int) -> None:
        super().__init__(spec, key, max_piece)
        self._first = _context(spec, key, modes.ECB(), True)
        self._second = _context(spec, key, modes.CBC(self._cbc_iv), False)


class _NativeCfb:
    """OpenSSL's own CFB, behind the interface of the constructed one."""

    def __init__(self, spec: CipherSpec, key: bytes, max_piece: int, *, encrypt: bool) -> None:
        self.block_size = spec.block_size
        self.max_piece = max_piece
        self._context = _context(spec, key, CFB(bytes(spec.block_size)), encrypt)

    def update_into(self, piece: memoryview | bytes, out: memoryview) -> int:
        """Transform all of ``piece`` into ``out``; return the byte count.

        ``out`` must hold ``len(piece) + 2 * block_size`` bytes.
        """
        if len(piece) > self.max_piece:
            raise ValueError(f"piece of {len(piece)} bytes exceeds {self.max_piece}")
        return self._context.update_into(piece, out)

    def finalize(self) -> bytes:
        """Nothing is held back: always empty. Ends the stream."""
        return self._context.finalize()


Cfb = _ConstructedCfbEncryptor | _ConstructedCfbDecryptor | _NativeCfb


@functools.cache
def _native_is_faster(encrypt: bool) -> bool:
    """Whether OpenSSL's own AES-256 CFB beats the construction in this process's
    OpenSSL, in one direction: best of three passes over 256 KiB each (a few ms)."""
    spec, key = CIPHERS[p.CIPHER_AES256], bytes(32)
    data = bytes(CALIBRATION_BYTES)
    out = memoryview(bytearray(CALIBRATION_BYTES + 2 * spec.block_size))
    constructed = _ConstructedCfbEncryptor if encrypt else _ConstructedCfbDecryptor

    def best(make: Callable[[], Cfb]) -> float:
        times = []
        for _ in range(3):
            cfb = make()
            started = time.perf_counter()
            cfb.update_into(data, out)
            times.append(time.perf_counter() - started)
        return min(times)

    native = best(lambda: _NativeCfb(spec, key, CALIBRATION_BYTES, encrypt=encrypt))
    return native < best(lambda: constructed(spec, key, CALIBRATION_BYTES))


def _use_native(spec: CipherSpec, encrypt: bool) -> bool:
    return spec.factory is algorithms.AES and _native_is_faster(encrypt)


def cfb_encryptor(spec: CipherSpec, key: bytes, max_piece: int) -> Cfb:
    """OpenPGP CFB encryption with a zero IV, fed in pieces of at most ``max_piece`` bytes:
    ``update_into(piece, out) -> int`` (``out`` holds ``len(piece) + 2 * block_size``
    bytes; the count may be less than ``len(piece)``), then ``finalize() -> bytes``."""
    if _use_native(spec, encrypt=True):
        return _NativeCfb(spec, key, max_piece, encrypt=True)
    return _ConstructedCfbEncryptor(spec, key, max_piece)


def cfb_decryptor(spec: CipherSpec, key: bytes, max_piece: int) -> Cfb:
    """OpenPGP CFB decryption with a zero IV; the interface of :func:`cfb_encryptor`."""
    if _use_native(spec, encrypt=False):
        return _NativeCfb(spec, key, max_piece, encrypt=False)
    return _ConstructedCfbDecryptor(spec, key, max_piece)


def cfb_decrypt(spec: CipherSpec, key: bytes, data: bytes) -> bytes:
    """Decrypt a short OpenPGP CFB message (zero IV) in one go."""
    dec = cfb_decryptor(spec, key, len(data))
    out = memoryview(bytearray(len(data) + 2 * spec.block_size))
    n = dec.update_into(data, out)
    return bytes(out[:n]) + dec.finalize()


def cfb_encrypt(spec: CipherSpec, key: bytes, data: bytes) -> bytes:
    """Encrypt a short OpenPGP CFB message (zero IV) in one go."""
    enc = cfb_encryptor(spec, key, len(data))
    out = memoryview(bytearray(len(data) + 2 * spec.block_size))
    n = enc.update_into(data, out)
    return bytes(out[:n]) + enc.finalize()
