"""Reading one OpenPGP symmetrically encrypted message (what our writer and gpg write).

Outer packets: markers and public-key session keys are skipped, SKESK v4 packets give
the candidate keys, then one SEIPD v1 packet must end the input. A message with a
session-key packet over 64 KiB or of indeterminate length, more than 16 of them, or
SKESKs asking for more S2K hashing than :data:`MAX_S2K_WORK` is refused (as gpg and
Sequoia refuse the first; the others bound the work a hostile message can demand). Inside: optional
compressed data (ZIP, ZLIB, BZip2) around one literal data packet, then the MDC packet.
Unprotected (tag 9) and AEAD (tag 20) data are refused.
"""

from __future__ import annotations

import hmac
import io
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from dfarchive.errors import Cancelled, CryptoError, IntegrityError, UnsupportedMessage
from dfarchive.openpgp import packets as p
from dfarchive.openpgp.buffers import grown
from dfarchive.openpgp.ciphers import CIPHERS, CipherSpec, cfb_decrypt, cfb_decryptor, cipher_spec
from dfarchive.openpgp.s2k import S2K
from dfarchive.openpgp.streams import (
    EMPTY,
    BodyStream,
    Buffered,
    ByteSource,
    FileStream,
    InflateStream,
    next_header,
    read_header,
    read_small_body,
)
from dfarchive.plumbing.threadhash import ThreadedHash

DEFAULT_READ_SIZE = 1 << 22
PIECE_SIZE = 1 << 20
"""Largest piece decrypted, hashed and handed on at once, whatever ``read_size``: pieces
that stay in the CPU caches between decryption, hashing and the sink are read faster
than larger ones (``benchmarks/results``)."""
MAX_SESSION_PACKET = 1 << 16
"""Largest SKESK/PKESK/marker body accepted (real ones are well under 1 KiB)."""
MAX_SESSION_PACKETS = 16
"""Most SKESK/PKESK/marker packets accepted before the encrypted data (ours write one)."""
MAX_S2K_WORK = 1 << 28
"""Most octets all SKESKs of a message together may ask to hash (about 0.5 s of CPU):
two of the costliest one can ask for an AES-256 key (count 65011712, two passes of
SHA-1), checked before any key is derived."""
PEEK_SIZE = 18
"""Ciphertext octets read before choosing a key: the largest prefix (16 + 2)."""

Sink = Callable[[memoryview | bytes], object]


@dataclass(frozen=True)
class DecryptResult:
    """What :func:`decrypt` verified.

    ``plaintext_size`` counts the literal data bytes handed to the sink; ``filename``,
    ``mtime`` and ``literal_format`` come from the literal packet; ``compression`` is 0
    when the data was not compressed; ``message_size`` is the bytes read from the source.
    """

    plaintext_size: int
    filename: bytes
    mtime: int = 0
    literal_format: str = "b"
    cipher: str = ""
    s2k_type: int = 0
    s2k_hash: int = 0
    s2k_count: int = 0
    compression: int = 0
    message_size: int = 0


@dataclass(frozen=True)
class _SessionKey:
    """One SKESK v4 packet: how to turn the passphrase into the session key."""

    cipher: int
    s2k: S2K
    encrypted_key: bytes


@dataclass
class _Literal:
    filename: bytes = b""
    mtime: int = 0
    literal_format: str = "b"
    size: int = 0
    compression: int = 0
    seen: bool = False


@dataclass
class _Output:
    """Where literal data goes, and what the parse learned about it."""

    literal: _Literal
    sink: Sink | None
    cancel: threading.Event | None

    def deliver(self, view: memoryview) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("decryption cancelled")
        if self.sink is not None:
            self.sink(view)
        self.literal.size += len(view)


def decrypt(
    source: ByteSource,
    passphrase: bytes,
    sink: Sink | None = None,
    *,
    read_size: int = DEFAULT_READ_SIZE,
    cancel: threading.Event | None = None,
) -> DecryptResult:
    """Read one symmetrically encrypted message from ``source`` and verify it.

    Parameters:
        source: a file object, or anything with ``read(n)`` (see :class:`ByteSource`),
            positioned at the message.
        passphrase: the passphrase bytes.
        sink: receives the literal data in order (None: discard, only verify). A
            memoryview passed to it is valid only during the call. What reached the sink
            is unverified until this function returns.
        read_size: bytes read from ``source`` at a time. Memory stays below
            ``read_size`` plus a few times ``min(read_size, PIECE_SIZE)``; the sink gets
            pieces of at most that size.
        cancel: when set, the next read raises Cancelled.

    Returns:
        A :class:`DecryptResult`.

    Raises:
        IntegrityError: wrong passphrase, MDC mismatch, truncation, trailing data, any
            damage.
        UnsupportedMessage: unknown algorithms or packets, unprotected (tag 9) or AEAD
            data, signed messages.
        Cancelled: ``cancel`` was set.
    """
    if read_size < PEEK_SIZE:
        raise ValueError(f"read_size too small: {read_size}")
    file = FileStream(source, read_size, cancel)
    src = Buffered(file, read_size)
    header, candidates = _read_session_keys(src)
    piece = min(read_size, PIECE_SIZE)
    body = Buffered(BodyStream(src, header, piece), piece)
    if body.read_exact(1, "the encrypted data packet")[0] != p.SEIPD_VERSION:
        raise UnsupportedMessage("unsupported encrypted data packet version")
    first = body.read_exact(PEEK_SIZE, "the encrypted data packet")
    chosen, spec, key = _choose_key(candidates, bytes(passphrase), first)
    literal = _Literal()
    with ThreadedHash("sha1") as mdc:
        plaintext = _PlaintextStream(body, spec, key, first, mdc, piece)
        _read_verified(plaintext, _Output(literal, sink, cancel), piece)
    if not src.at_end():
        raise IntegrityError("trailing data after the encrypted message")
    return DecryptResult(
        plaintext_size=literal.size,
        filename=literal.filename,
        mtime=literal.mtime,
        literal_format=literal.literal_format,
        cipher=spec.name,
        s2k_type=chosen.s2k.type,
        s2k_hash=chosen.s2k.hash_algo,
        s2k_count=chosen.s2k.count,
        compression=literal.compression,
        message_size=file.bytes_read,
    )


def decrypt_bytes(blob: bytes | bytearray | memoryview, passphrase: bytes) -> bytes:
    """The literal data of the message in ``blob`` (see :func:`decrypt`)."""
    out = bytearray()
    decrypt(io.BytesIO(bytes(blob)), passphrase, out.extend)
    return bytes(out)


# -- outer packets ------------------------------------------------------------------------


def _read_session_keys(src: Buffered) -> tuple[p.PacketHeader, list[_SessionKey]]:
    """Skip to the encrypted data packet; return its header and the SKESK candidates.

    Raises:
        UnsupportedMessage: a session-key packet too long or of indeterminate length,
            more than MAX_SESSION_PACKETS of them, or SKESKs asking for more than
            MAX_S2K_WORK octets of S2K hashing (checked before any key is derived).
    """
    candidates: list[_SessionKey] = []
    unsupported: UnsupportedMessage | None = None
    seen = 0
    while True:
        header = next_header(
            src, "message truncated before the encrypted data" if seen else "empty input"
        )
        if header.tag == p.TAG_SEIPD:
            if not candidates:
                raise unsupported or UnsupportedMessage("no passphrase-encrypted session key")
            _check_s2k_work(candidates)
            return header, candidates
        if header.tag not in (p.TAG_SKESK, p.TAG_PKESK, p.TAG_MARKER):
            raise _unexpected_outer(header.tag)
        seen += 1
        if seen > MAX_SESSION_PACKETS:
            raise UnsupportedMessage(
                f"more than {MAX_SESSION_PACKETS} session key and marker packets before "
                "the encrypted data; refusing the message"
            )
        body = read_small_body(src, header, MAX_SESSION_PACKET)
        if header.tag == p.TAG_SKESK:
            try:
                candidates.append(_parse_skesk(body))
            except UnsupportedMessage as err:
                unsupported = err


def _check_s2k_work(candidates: list[_SessionKey]) -> None:
    """Refuse a message whose SKESKs together ask for more than MAX_S2K_WORK octets."""
    work = 0
    for candidate in candidates:
        spec = CIPHERS.get(candidate.cipher)
        if spec is not None:  # unknown ciphers are skipped, never derived
            work += candidate.s2k.work(spec.key_size)
    if work > MAX_S2K_WORK:
        raise UnsupportedMessage(
            f"the session key packets ask for {work} octets of S2K hashing, more than "
            f"the {MAX_S2K_WORK} allowed; refusing the message"
        )


def _unexpected_outer(tag: int) -> CryptoError:
    if tag == p.TAG_SED:
        return UnsupportedMessage(
            "symmetrically encrypted data without integrity protection (tag 9) is refused"
        )
    if tag == p.TAG_AEAD:
        return UnsupportedMessage("AEAD encrypted data (tag 20) is not supported")
    if tag in (p.TAG_LITERAL, p.TAG_COMPRESSED, p.TAG_ONE_PASS_SIGNATURE, p.TAG_SIGNATURE):
        return UnsupportedMessage("not an encrypted message")
    return UnsupportedMessage(f"unexpected packet tag {tag} before the encrypted data")


def _parse_skesk(body: bytes) -> _SessionKey:
    if len(body) < 2:
        raise IntegrityError("truncated symmetric-key session key packet")
    if body[0] != p.SKESK_VERSION:
        raise UnsupportedMessage(f"unsupported SKESK version {body[0]}")
    s2k, rest = S2K.parse(body[2:])
    return _SessionKey(body[1], s2k, rest)


def _choose_key(
    candidates: list[_SessionKey], passphrase: bytes, first: bytes
) -> tuple[_SessionKey, CipherSpec, bytes]:
    """The first candidate whose key passes the quick check on the encrypted prefix.

    Raises:
        IntegrityError: no key passes (wrong passphrase or damaged message).
        UnsupportedMessage: every candidate uses something unsupported.
    """
    unsupported: UnsupportedMessage | None = None
    tried = False
    for candidate in candidates:
        try:
            found = _session_key(candidate, passphrase)
        except UnsupportedMessage as err:
            unsupported = err
            continue
        tried = True
        if found is not None and _quick_check(*found, first):
            return (candidate, *found)
    if not tried and unsupported is not None:
        raise unsupported
    raise IntegrityError("wrong passphrase or damaged message (quick check failed)")


def _session_key(candidate: _SessionKey, passphrase: bytes) -> tuple[CipherSpec, bytes] | None:
    """The data cipher and key for ``candidate``, None if its encrypted key is garbage."""
    spec = cipher_spec(candidate.cipher)
    key = candidate.s2k.derive(passphrase, spec.key_size)
    if not candidate.encrypted_key:
        return spec, key
    plain = cfb_decrypt(spec, key, candidate.encrypted_key)
    inner = CIPHERS.get(plain[0]) if plain else None
    if inner is None or len(plain) - 1 != inner.key_size:
        return None
    return inner, plain[1:]


def _quick_check(spec: CipherSpec, key: bytes, first: bytes) -> bool:
    size = spec.block_size + 2
    prefix = cfb_decrypt(spec, key, first[:size])
    return prefix[size - 4 : size - 2] == prefix[size - 2 : size]


# -- the decrypted stream -----------------------------------------------------------------


class _PlaintextStream:
    """Decrypted SEIPD contents between the random prefix and the MDC packet.

    Holds back the last 22 octets (the MDC packet) until the ciphertext ends, hashes
    everything else, and verifies the MDC when the end is read: the final ``read``
    returns empty only after a good MDC. Two output buffers alternate so the helper
    thread can hash one while the caller uses the other.
    """

    def __init__(
        self,
        body: Buffered,
        spec: CipherSpec,
        key: bytes,
        first: bytes,
        mdc: ThreadedHash,
        piece_size: int,
    ) -> None:
        self._body = body
        self._cfb = cfb_decryptor(spec, key, max_piece=piece_size)
        self._pending: bytes | None = first
        self._skip = spec.block_size + 2
        self._held = b""
        self._mdc = mdc
        self._piece_size = piece_size
        self._slack = p.MDC_PACKET_SIZE + 2 * spec.block_size
        self._buffers: list[memoryview | None] = [None, None]
        self._tickets: list[Future[None] | None] = [None, None]
        self._turn = 0
        self.verified = False

    def read(self, n: int) -> memoryview:
        while not self.verified:
            view = self._step(min(n, self._piece_size))
            if view:
                return view
        return EMPTY

    def drain(self) -> None:
        """Read to the end, verifying the MDC; raises IntegrityError if it is bad."""
        while self.read(self._piece_size):
            pass

    def _step(self, n: int) -> memoryview:
        """Decrypt the next ciphertext piece; return the plaintext it releases."""
        if self._pending is not None:
            ciphertext: bytes | memoryview = self._pending
            self._pending = None
        else:
            ciphertext = self._body.read(n)
        self._mdc.wait(self._tickets[self._turn])
        size = len(ciphertext) + self._slack
        out = grown(self._buffers[self._turn], size, self._piece_size + self._slack)
        self._buffers[self._turn] = out
        held = len(self._held)
        out[:held] = self._held
        if ciphertext:
            total = held + self._cfb.update_into(ciphertext, out[held:])
        else:
            tail = self._cfb.finalize()
            out[held : held + len(tail)] = tail
            total = held + len(tail)
        release = max(0, total - p.MDC_PACKET_SIZE)
        self._held = bytes(out[release:total])
        view = out[:release]
        self._tickets[self._turn] = self._mdc.submit(view)
        self._turn ^= 1
        skip = min(self._skip, release)
        self._skip -= skip
        if not ciphertext:
            self._verify()
        return view[skip:]

    def _verify(self) -> None:
        if len(self._held) < p.MDC_PACKET_SIZE or self._skip:
            raise IntegrityError("message truncated: encrypted data too short")
        if self._held[:2] != p.MDC_HEADER:
            raise IntegrityError("modification detection code packet missing or damaged")
        self._mdc.submit(p.MDC_HEADER)
        if not hmac.compare_digest(self._mdc.digest(), self._held[2:]):
            raise IntegrityError("modification detection code mismatch: message damaged")
        self.verified = True


def _read_verified(plaintext: _PlaintextStream, out: _Output, piece_size: int) -> None:
    """Parse the decrypted packets into ``out`` and verify the MDC.

    A parse error inside the encrypted data is most likely damage: the rest is read
    and the MDC checked first, so damage reports as IntegrityError.
    """
    try:
        _read_packets(Buffered(plaintext, piece_size), out, piece_size, nested=False)
        plaintext.drain()
    except UnsupportedMessage as err:
        if not plaintext.verified:
            try:
                plaintext.drain()
            except IntegrityError as damage:
                raise damage from err
        raise
    if not out.literal.seen:
        raise UnsupportedMessage("encrypted message holds no literal data packet")


def _read_packets(src: Buffered, out: _Output, piece_size: int, *, nested: bool) -> None:
    literal = out.literal
    while (header := read_header(src)) is not None:
        if header.tag == p.TAG_LITERAL and not literal.seen:
            body = Buffered(BodyStream(src, header, piece_size), piece_size)
            _read_literal(body, out, piece_size)
        elif header.tag == p.TAG_COMPRESSED and not nested and not literal.seen:
            body = Buffered(BodyStream(src, header, piece_size), piece_size)
            algo = body.read_exact(1, "a compressed data packet")[0]
            literal.compression = algo
            inflated = InflateStream(body, algo, piece_size)
            _read_packets(Buffered(inflated, piece_size), out, piece_size, nested=True)
        elif header.tag == p.TAG_MARKER:
            Buffered(BodyStream(src, header, piece_size), piece_size).drain()
        else:
            raise _unexpected_inner(header.tag, literal.seen)


def _unexpected_inner(tag: int, literal_seen: bool) -> CryptoError:
    if tag in (p.TAG_ONE_PASS_SIGNATURE, p.TAG_SIGNATURE):
        return UnsupportedMessage("signed messages are not supported")
    if tag in (p.TAG_LITERAL, p.TAG_COMPRESSED) and literal_seen:
        return UnsupportedMessage("more than one literal data packet")
    if tag == p.TAG_COMPRESSED:
        return UnsupportedMessage("nested compressed data packets")
    return UnsupportedMessage(f"unexpected packet tag {tag} in the encrypted data")


def _read_literal(body: Buffered, out: _Output, piece_size: int) -> None:
    literal = out.literal
    literal.seen = True
    head = body.read_exact(2, "a literal data packet")
    literal.literal_format = chr(head[0])
    literal.filename = body.read_exact(head[1], "a literal data packet")
    literal.mtime = int.from_bytes(body.read_exact(4, "a literal data packet"), "big")
    while view := body.read(piece_size):
        out.deliver(view)
