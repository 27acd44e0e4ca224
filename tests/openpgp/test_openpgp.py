"""dfarchive.openpgp without gpg: round trips, framing, damage, limits, threads, memory.

The gpg interoperability tests (both directions) are in ``test_openpgp_interop.py``.
"""

from __future__ import annotations

import bz2
import functools
import hashlib
import io
import itertools
import os
import random
import secrets
import threading
import tracemalloc
import zlib
from collections.abc import Callable

import pytest
from cryptography.hazmat.decrepit.ciphers.modes import CFB
from cryptography.hazmat.primitives.ciphers import Cipher
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dfarchive.errors import Cancelled, CryptoError, IntegrityError, UnsupportedMessage
from dfarchive.openpgp import (
    DecryptResult,
    SymmetricWriter,
    ciphers,
    decrypt,
    decrypt_bytes,
    encrypt_bytes,
)
from dfarchive.openpgp import packets as p
from dfarchive.openpgp.ciphers import CIPHERS, cfb_encrypt
from dfarchive.openpgp.s2k import S2K, S2K_ITERATED, S2K_SALTED, S2K_SIMPLE, decode_count

PASSPHRASE = b"0123456789abcdef" * 4
FAST = {"s2k_count_byte": 0}
"""Writer options for tests that make many messages: the smallest S2K count."""
MIB = 1 << 20


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def sha256(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def mdc_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("dfarchive-sha1")]


# -- hand-made messages (what gpg or a broken writer could send) ---------------------------


def skesk(
    passphrase: bytes = PASSPHRASE,
    *,
    cipher: int = p.CIPHER_AES256,
    s2k: S2K | None = None,
    session_key: bytes | None = None,
) -> tuple[bytes, bytes]:
    """A SKESK packet and the data key it yields (``session_key`` makes it carry an ESK)."""
    s2k = s2k or S2K(S2K_ITERATED, p.HASH_SHA256, os.urandom(8), 0)
    spec = CIPHERS[cipher]
    key = s2k.derive(passphrase, spec.key_size)
    body = bytes((p.SKESK_VERSION, cipher)) + s2k.encode()
    if session_key is None:
        return p.new_packet(p.TAG_SKESK, body), key
    esk = cfb_encrypt(spec, key, bytes((cipher,)) + session_key)
    return p.new_packet(p.TAG_SKESK, body + esk), session_key


def seipd(key: bytes, inner: bytes, *, cipher: int = p.CIPHER_AES256, mdc_ok: bool = True) -> bytes:
    """A SEIPD v1 packet (definite length) around the plaintext packets ``inner``."""
    spec = CIPHERS[cipher]
    prefix = os.urandom(spec.block_size)
    plain = prefix + prefix[-2:] + inner + p.MDC_HEADER
    digest = hashlib.sha1(plain).digest()
    if not mdc_ok:
        digest = bytes((digest[0] ^ 1,)) + digest[1:]
    body = bytes((p.SEIPD_VERSION,)) + cfb_encrypt(spec, key, plain + digest)
    return p.new_packet(p.TAG_SEIPD, body)


def literal(data: bytes, *, filename: bytes = b"", old_format: bool = False) -> bytes:
    body = b"b" + bytes((len(filename),)) + filename + bytes(4) + data
    if old_format:  # old-format header, length type 3: to the end of the enclosing data
        return bytes((0x80 | (p.TAG_LITERAL << 2) | 3,)) + body
    return p.new_packet(p.TAG_LITERAL, body)


def message(inner: bytes, **kw: object) -> bytes:
    head, key = skesk()
    return head + seipd(key, inner, **kw)  # type: ignore[arg-type]


def split_partial(body: bytes, part: int) -> bytes:
    """``body`` framed with partial body lengths of ``part`` octets and a final definite one."""
    octet = bytes((p.partial_length_octet(part),))
    out = bytearray()
    while len(body) > part:
        out += octet + body[:part]
        body = body[part:]
    return bytes(out + p.encode_length(len(body)) + body)


class ReadOnly:
    """A source with only ``read`` (no ``readinto``), returning short reads."""

    def __init__(self, data: bytes) -> None:
        self._io = io.BytesIO(data)

    def read(self, n: int) -> bytes:
        return self._io.read(min(n, 777))


# -- CFB ---------------------------------------------------------------------------------


CFB_IMPLEMENTATIONS = {
    "constructed": (ciphers._ConstructedCfbEncryptor, ciphers._ConstructedCfbDecryptor),
    "native": (
        functools.partial(ciphers._NativeCfb, encrypt=True),
        functools.partial(ciphers._NativeCfb, encrypt=False),
    ),
    "chosen": (ciphers.cfb_encryptor, ciphers.cfb_decryptor),
}


@settings(max_examples=40, deadline=None)
@given(
    algo=st.sampled_from(sorted(CIPHERS)),
    size=st.integers(0, 700),
    cuts=st.lists(st.integers(0, 700), max_size=6),
    seed=st.integers(0, 2**32),
)
@pytest.mark.parametrize("implementation", sorted(CFB_IMPLEMENTATIONS))
def test_cfb_matches_cryptography_cfb_for_any_split(
    implementation: str, algo: int, size: int, cuts: list[int], seed: int
) -> None:
    spec = CIPHERS[algo]
    rng = random.Random(seed)
    key, data = rng.randbytes(spec.key_size), rng.randbytes(size)
    expected = Cipher(spec.factory(key), CFB(bytes(spec.block_size))).encryptor().update(data)
    bounds = [0, *sorted(c for c in cuts if c <= size), size]
    pieces = [data[a:b] for a, b in itertools.pairwise(bounds)]
    encryptor, decryptor = CFB_IMPLEMENTATIONS[implementation]
    enc = encryptor(spec, key, max_piece=size)
    dec = decryptor(spec, key, max_piece=size)
    scratch = memoryview(bytearray(size + 2 * spec.block_size))
    ciphertext, plaintext = bytearray(), bytearray()
    for piece in pieces:
        ciphertext += scratch[: enc.update_into(piece, scratch)]
    ciphertext += enc.finalize()
    assert bytes(ciphertext) == expected
    pos = 0
    for piece in pieces:
        plaintext += scratch[: dec.update_into(expected[pos : pos + len(piece)], scratch)]
        pos += len(piece)
    plaintext += dec.finalize()
    assert bytes(plaintext) == data


def test_the_chosen_cfb_is_the_faster_one_and_chosen_once() -> None:
    """Only AES may use OpenSSL's CFB, and each direction is measured once per process."""
    aes, cast5 = CIPHERS[p.CIPHER_AES256], CIPHERS[p.CIPHER_CAST5]
    for encrypt, factory in ((True, ciphers.cfb_encryptor), (False, ciphers.cfb_decryptor)):
        native = ciphers._native_is_faster(encrypt)
        chosen = factory(aes, bytes(32), 16)
        assert isinstance(chosen, ciphers._NativeCfb) == native
        assert not isinstance(factory(cast5, bytes(16), 16), ciphers._NativeCfb)
    assert ciphers._native_is_faster.cache_info().currsize == 2


# -- S2K ---------------------------------------------------------------------------------


def test_s2k_count_decoding_matches_rfc4880() -> None:
    assert decode_count(0) == 1024
    assert decode_count(0x60) == 65536
    assert decode_count(0xFF) == 65011712


def test_s2k_derivation_follows_rfc4880_definitions() -> None:
    salt, pw = bytes(range(8)), b"passphrase"
    assert S2K(S2K_SIMPLE, p.HASH_SHA256).derive(pw, 32) == hashlib.sha256(pw).digest()
    assert (
        S2K(S2K_SALTED, p.HASH_SHA256, salt).derive(pw, 16)
        == (hashlib.sha256(salt + pw).digest()[:16])
    )
    count = decode_count(0x10)  # 2048 octets of salt+passphrase repeated
    stream = ((salt + pw) * (count // len(salt + pw) + 1))[:count]
    iterated = S2K(S2K_ITERATED, p.HASH_SHA1, salt, 0x10)
    # SHA-1 gives 20 octets; AES-256 needs a second context preloaded with one zero octet
    expected = hashlib.sha1(stream).digest() + hashlib.sha1(b"\0" + stream).digest()[:12]
    assert iterated.derive(pw, 32) == expected
    # a count shorter than salt+passphrase still hashes the whole of it once
    long_pw = b"x" * 5000
    assert S2K(S2K_ITERATED, p.HASH_SHA256, salt, 0).derive(long_pw, 32) == (
        hashlib.sha256(salt + long_pw).digest()
    )


def test_s2k_parse_round_trips_and_rejects_unknown_types() -> None:
    spec = S2K(S2K_ITERATED, p.HASH_SHA512, bytes(range(8)), 0xEE)
    assert S2K.parse(spec.encode() + b"rest") == (spec, b"rest")
    with pytest.raises(UnsupportedMessage):
        S2K.parse(bytes((101, 2)) + b"GNU\x01")
    with pytest.raises(IntegrityError):
        S2K.parse(bytes((3, 8, 1, 2)))


# -- writer layout -----------------------------------------------------------------------


def test_writer_emits_skesk_v4_aes256_sha256_then_seipd_with_partial_parts() -> None:
    blob = encrypt_bytes(payload(5000), PASSPHRASE, chunk_size=1024, s2k_count_byte=0x60)
    assert blob[:2] == bytes((0xC0 | p.TAG_SKESK, 13))
    assert blob[2:6] == bytes((4, p.CIPHER_AES256, S2K_ITERATED, p.HASH_SHA256))
    assert blob[14] == 0x60  # coded count after the 8-byte salt
    assert blob[15] == 0xC0 | p.TAG_SEIPD
    assert blob[16] == p.partial_length_octet(1024)
    assert blob[17] == p.SEIPD_VERSION
    # parts: 5000 + 19 prefix/tag + framing + 22 MDC octets of plaintext, 1024 per part
    pos, parts = 16, []
    while blob[pos] >= 224 and blob[pos] != 255:
        parts.append(1 << (blob[pos] & 0x1F))
        pos += 1 + parts[-1]
    last, extra = p.decode_new_length(blob[pos], blob[pos + 1 : pos + 5])
    assert not extra and pos + p.new_length_extra(blob[pos]) + 1 + last == len(blob)
    assert set(parts) == {1024} and last < 1024


def test_writer_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        SymmetricWriter(print, PASSPHRASE, chunk_size=256)
    with pytest.raises(ValueError):
        SymmetricWriter(print, PASSPHRASE, chunk_size=1000)
    with pytest.raises(ValueError):
        SymmetricWriter(print, PASSPHRASE, filename=b"x" * 256)
    with pytest.raises(TypeError):
        SymmetricWriter(print, "text passphrase")  # type: ignore[arg-type]


def test_two_messages_of_the_same_data_differ_completely() -> None:
    data = payload(1000)
    one, two = (encrypt_bytes(data, PASSPHRASE, **FAST) for _ in range(2))
    assert one[6:14] != two[6:14]  # fresh salt
    assert one[30:] != two[30:]
    assert decrypt_bytes(one, PASSPHRASE) == decrypt_bytes(two, PASSPHRASE) == data


# -- round trips -------------------------------------------------------------------------

SIZES = [0, 1, 15, 16, 17, 511, 512, 513, 1023, 1024, 1025, 2047, 2048, 2049, 10_000]


@pytest.mark.parametrize("chunk_size", [512, 1024])
@pytest.mark.parametrize("size", SIZES)
def test_round_trip_around_part_boundaries(chunk_size: int, size: int) -> None:
    data = payload(size, size)
    blob = encrypt_bytes(data, PASSPHRASE, chunk_size=chunk_size, **FAST)
    out = bytearray()
    result = decrypt(io.BytesIO(blob), PASSPHRASE, out.extend)
    assert bytes(out) == data
    assert result.plaintext_size == size
    assert result.message_size == len(blob)


def test_round_trip_with_default_chunk_size_around_its_boundaries() -> None:
    chunk = 1 << 22
    base = payload(chunk + 1, 7)
    for size in (chunk - 1, chunk, chunk + 1):
        assert (
            decrypt_bytes(encrypt_bytes(base[:size], PASSPHRASE, **FAST), PASSPHRASE)
            == (base[:size])
        )


def test_result_reports_literal_and_algorithm_details() -> None:
    blob = encrypt_bytes(
        b"abc", PASSPHRASE, filename=b"run.tar", mtime=1_700_000_000, s2k_count_byte=0x10
    )
    result = decrypt(io.BytesIO(blob), PASSPHRASE)
    assert result == DecryptResult(
        plaintext_size=3,
        filename=b"run.tar",
        mtime=1_700_000_000,
        literal_format="b",
        cipher="AES256",
        s2k_type=S2K_ITERATED,
        s2k_hash=p.HASH_SHA256,
        s2k_count=2048,
        compression=0,
        message_size=len(blob),
    )


write_pattern = st.lists(
    st.one_of(st.integers(0, 3), st.integers(0, 600), st.integers(500, 5000)), max_size=40
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pattern=write_pattern,
    chunk_size=st.sampled_from([512, 1024, 4096]),
    read_size=st.sampled_from([18, 100, 4096, 1 << 20]),
    seed=st.integers(0, 2**32),
    as_type=st.sampled_from([bytes, bytearray, memoryview]),
)
def test_any_write_pattern_round_trips(
    pattern: list[int], chunk_size: int, read_size: int, seed: int, as_type: type
) -> None:
    rng = random.Random(seed)
    pieces = [rng.randbytes(n) for n in pattern]
    sent = bytearray()
    writer = SymmetricWriter(sent.extend, PASSPHRASE, chunk_size=chunk_size, **FAST)
    for piece in pieces:
        writer.write(as_type(piece))
    writer.close()
    writer.close()  # idempotent
    data = b"".join(pieces)
    assert writer.bytes_in == len(data)
    assert writer.bytes_out == len(sent)
    got = bytearray()
    source: io.BytesIO | ReadOnly = io.BytesIO(bytes(sent)) if seed % 2 else ReadOnly(bytes(sent))
    result = decrypt(source, PASSPHRASE, got.extend, read_size=read_size)
    assert bytes(got) == data and result.plaintext_size == len(data)


def test_one_big_write_and_many_small_writes_give_the_same_plaintext() -> None:
    data = payload(3 * MIB + 12345, 3)
    big = encrypt_bytes(data, PASSPHRASE, chunk_size=1 << 16, **FAST)
    sent = bytearray()
    with SymmetricWriter(sent.extend, PASSPHRASE, chunk_size=1 << 16, **FAST) as writer:
        for i in range(0, len(data), 1000):
            writer.write(data[i : i + 1000])
    assert decrypt_bytes(big, PASSPHRASE) == decrypt_bytes(bytes(sent), PASSPHRASE) == data


def test_writer_does_not_keep_the_callers_buffer() -> None:
    buf = bytearray(payload(100_000, 1))
    expected = bytes(buf)
    sent = bytearray()
    with SymmetricWriter(sent.extend, PASSPHRASE, chunk_size=1 << 16, **FAST) as writer:
        writer.write(buf)
        buf[:] = bytes(len(buf))  # the caller reuses its buffer
        buf.extend(b"resizable: no export is left behind")
    assert decrypt_bytes(bytes(sent), PASSPHRASE) == expected


def test_non_byte_memoryview_formats_are_written_as_their_bytes() -> None:
    import array

    numbers = array.array("I", range(1000))
    blob = encrypt_bytes(memoryview(numbers), PASSPHRASE, **FAST)
    assert decrypt_bytes(blob, PASSPHRASE) == numbers.tobytes()


# -- reading packet variants -----------------------------------------------------------


def test_reads_old_format_indeterminate_literal_inside_seipd() -> None:
    data = payload(3000)
    assert decrypt_bytes(message(literal(data, old_format=True)), PASSPHRASE) == data


def test_reads_marker_packets_and_skips_public_key_session_keys() -> None:
    data = payload(100)
    marker = p.new_packet(p.TAG_MARKER, p.MARKER_BODY)
    pkesk = p.new_packet(p.TAG_PKESK, bytes((3,)) + os.urandom(40))
    head, key = skesk()
    blob = marker + pkesk + head + seipd(key, marker + literal(data))
    assert decrypt_bytes(blob, PASSPHRASE) == data


def test_tries_each_skesk_until_the_quick_check_passes() -> None:
    data = payload(200)
    other, _ = skesk(b"another passphrase")
    head, key = skesk()
    assert decrypt_bytes(other + head + seipd(key, literal(data)), PASSPHRASE) == data


@pytest.mark.parametrize("cipher", sorted(CIPHERS))
def test_reads_session_keys_encrypted_in_the_skesk_for_every_cipher(cipher: int) -> None:
    data = payload(300)
    session_key = os.urandom(CIPHERS[cipher].key_size)
    head, key = skesk(cipher=cipher, session_key=session_key)
    blob = head + seipd(key, literal(data), cipher=cipher)
    assert decrypt_bytes(blob, PASSPHRASE) == data
    with pytest.raises(IntegrityError, match="wrong passphrase"):
        decrypt_bytes(blob, b"wrong")


@pytest.mark.parametrize(
    ("algo", "compress"),
    [
        (p.COMPRESS_NONE, lambda d: d),
        (p.COMPRESS_ZIP, lambda d: _deflate(d, -15)),
        (p.COMPRESS_ZLIB, lambda d: _deflate(d, 15)),
        (p.COMPRESS_BZIP2, bz2.compress),
    ],
)
def test_reads_compressed_data_with_partial_lengths(algo: int, compress: Callable) -> None:
    data = b"ACGT" * 300_000 + payload(5000)
    packed = compress(literal(data))
    inner = bytes((0xC0 | p.TAG_COMPRESSED,)) + split_partial(bytes((algo,)) + packed, 512)
    got = bytearray()
    result = decrypt(io.BytesIO(message(inner)), PASSPHRASE, got.extend, read_size=1 << 16)
    assert bytes(got) == data
    assert result.compression == algo


def _deflate(data: bytes, wbits: int) -> bytes:
    packer = zlib.compressobj(6, zlib.DEFLATED, wbits)
    return packer.compress(data) + packer.flush()


def test_decompression_output_is_bounded_by_read_size() -> None:
    bomb = _deflate(literal(bytes(64 * MIB)), -15)  # 64 KiB that inflate to 64 MiB
    inner = bytes((0xA3, p.COMPRESS_ZIP)) + bomb
    sizes: list[int] = []
    result = decrypt(
        io.BytesIO(message(inner)), PASSPHRASE, lambda v: sizes.append(len(v)), read_size=1 << 16
    )
    assert result.plaintext_size == 64 * MIB
    assert max(sizes) <= 1 << 16


# -- refusals and damage -----------------------------------------------------------------


def test_unprotected_sed_packet_is_refused() -> None:
    head, key = skesk()
    body = cfb_encrypt(CIPHERS[p.CIPHER_AES256], key, os.urandom(18) + literal(b"secret"))
    with pytest.raises(UnsupportedMessage, match="tag 9"):
        decrypt_bytes(head + p.new_packet(p.TAG_SED, body), PASSPHRASE)


def test_aead_packet_is_refused() -> None:
    head, _ = skesk()
    with pytest.raises(UnsupportedMessage, match="AEAD"):
        decrypt_bytes(head + p.new_packet(p.TAG_AEAD, bytes((1, 9, 1, 10)) + bytes(64)), PASSPHRASE)


@pytest.mark.parametrize(
    ("inner", "match"),
    [
        (p.new_packet(p.TAG_ONE_PASS_SIGNATURE, bytes(13)) + literal(b"x"), "signed"),
        (literal(b"one") + literal(b"two"), "more than one literal"),
        (p.new_packet(p.TAG_COMPRESSED, bytes((99,)) + b"xyz"), "compression algorithm 99"),
        (p.new_packet(p.TAG_MARKER, p.MARKER_BODY), "no literal data"),
    ],
)
def test_intact_but_unsupported_contents_raise_unsupported(inner: bytes, match: str) -> None:
    with pytest.raises(UnsupportedMessage, match=match):
        decrypt_bytes(message(inner), PASSPHRASE)


@pytest.mark.parametrize(
    "inner",
    [
        p.new_packet(p.TAG_ONE_PASS_SIGNATURE, bytes(13)) + literal(b"x"),
        p.new_packet(p.TAG_COMPRESSED, bytes((99,)) + b"xyz"),
    ],
)
def test_unsupported_contents_with_a_bad_mdc_report_damage(inner: bytes) -> None:
    with pytest.raises(IntegrityError, match="modification detection code"):
        decrypt_bytes(message(inner, mdc_ok=False), PASSPHRASE)


@pytest.mark.parametrize(
    ("inner", "match"),
    [
        (literal(b"abc")[:-1], "truncated"),  # literal says 1 octet more than there is
        (bytes((0xA3, p.COMPRESS_ZIP)) + _deflate(literal(b"abc" * 100), -15)[:-3], "truncated"),
        (bytes((0xA3, p.COMPRESS_ZLIB)) + _deflate(literal(b"abc"), 15) + b"junk", "after the end"),
        (bytes((0xA3, p.COMPRESS_ZIP)) + b"\xff" * 40, "corrupt"),
    ],
)
def test_malformed_contents_with_a_good_mdc_raise_integrity_error(inner: bytes, match: str) -> None:
    with pytest.raises(IntegrityError, match=match):
        decrypt_bytes(message(inner), PASSPHRASE)


def _wrapped_in_session_key_packet(inner: bytes, *, indeterminate: bool) -> bytes:
    """``inner`` (a whole message) as the body of an SKESK header: a reader that skips
    the SKESK without consuming its body would go on to decrypt ``inner``."""
    if indeterminate:  # old-format header, length type 3
        return bytes((0x80 | (p.TAG_SKESK << 2) | 3,)) + inner
    return bytes((p.new_format_tag(p.TAG_SKESK),)) + p.encode_length(len(inner)) + inner


@pytest.mark.parametrize(
    ("indeterminate", "match"),
    [
        (False, r"packet tag 3 before the encrypted data is \d+ bytes, over the 65536-byte"),
        (True, "packet tag 3 before the encrypted data has an indeterminate length"),
    ],
    ids=["over_64KiB", "indeterminate"],
)
def test_an_oversized_or_unbounded_skesk_refuses_the_message(
    indeterminate: bool, match: str
) -> None:
    inner = message(literal(payload(70_000)))
    assert decrypt_bytes(inner, PASSPHRASE)  # on its own it decrypts
    blob = _wrapped_in_session_key_packet(inner, indeterminate=indeterminate)
    with pytest.raises(UnsupportedMessage, match=match + ".*refusing the message"):
        decrypt_bytes(blob, PASSPHRASE)


class _DeriveCounter:
    """Counts S2K derivations (patched over S2K.derive)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = S2K.derive

        def counting(s2k: S2K, passphrase: bytes, key_size: int) -> bytes:
            self.calls += 1
            return real(s2k, passphrase, key_size)

        monkeypatch.setattr(S2K, "derive", counting)


def _decoys(count: int, count_byte: int = 0) -> bytes:
    """``count`` SKESKs for other passphrases, each asking ``count_byte`` S2K work."""
    s2k = S2K(S2K_ITERATED, p.HASH_SHA256, bytes(8), count_byte)
    body = bytes((p.SKESK_VERSION, p.CIPHER_AES256)) + s2k.encode()
    return p.new_packet(p.TAG_SKESK, body) * count


def test_at_most_16_session_key_packets(monkeypatch: pytest.MonkeyPatch) -> None:
    data = payload(100)
    head, key = skesk()
    assert decrypt_bytes(_decoys(15) + head + seipd(key, literal(data)), PASSPHRASE) == data
    derived = _DeriveCounter(monkeypatch)
    blob = _decoys(16) + head + seipd(key, literal(data))
    with pytest.raises(UnsupportedMessage, match="more than 16 session key and marker packets"):
        decrypt_bytes(blob, PASSPHRASE)
    assert derived.calls == 0
    with pytest.raises(UnsupportedMessage, match="more than 16"):  # markers count too
        decrypt_bytes(p.new_packet(p.TAG_MARKER, p.MARKER_BODY) * 17 + blob[-200:], PASSPHRASE)


def test_s2k_work_is_capped_before_any_key_is_derived(monkeypatch: pytest.MonkeyPatch) -> None:
    head, key = skesk(s2k=S2K(S2K_ITERATED, p.HASH_SHA256, bytes(8), 0xFF))
    blob = _decoys(4, count_byte=0xFF) + head + seipd(key, literal(b"x"))
    derived = _DeriveCounter(monkeypatch)
    with pytest.raises(UnsupportedMessage, match=r"ask for 325058560 octets of S2K hashing"):
        decrypt_bytes(blob, PASSPHRASE)  # 5 x 65011712 octets: 1.6 s of CPU if derived
    assert derived.calls == 0


def test_s2k_work_counts_every_hash_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """SHA-1 needs two passes for an AES-256 key: twice the work of SHA-256."""
    from dfarchive.openpgp import reader

    monkeypatch.setattr(reader, "MAX_S2K_WORK", 4 * decode_count(0))
    data = payload(10)
    sha1 = S2K(S2K_ITERATED, p.HASH_SHA1, bytes(8), 0)
    head, key = skesk(s2k=sha1)
    assert decrypt_bytes(_decoys(2) + head + seipd(key, literal(data)), PASSPHRASE) == data
    derived = _DeriveCounter(monkeypatch)
    with pytest.raises(UnsupportedMessage, match="ask for 5120 octets"):
        decrypt_bytes(_decoys(3) + head + seipd(key, literal(data)), PASSPHRASE)
    assert derived.calls == 0


def test_bad_mdc_raises_integrity_error() -> None:
    with pytest.raises(IntegrityError, match="modification detection code mismatch"):
        decrypt_bytes(message(literal(b"data"), mdc_ok=False), PASSPHRASE)


def test_wrong_passphrase_raises_integrity_error() -> None:
    blob = encrypt_bytes(b"data", PASSPHRASE, **FAST)
    with pytest.raises(IntegrityError, match="wrong passphrase"):
        decrypt_bytes(blob, PASSPHRASE[:-1] + b"0")


@pytest.mark.parametrize("junk", [b"\0", b"\xc3", b"more data"])
def test_trailing_data_raises_integrity_error(junk: bytes) -> None:
    blob = encrypt_bytes(b"data", PASSPHRASE, **FAST)
    for tail in (junk, blob):
        with pytest.raises(IntegrityError, match="trailing"):
            decrypt_bytes(blob + tail, PASSPHRASE)


@pytest.mark.parametrize("blob", [b"", b"\x00\x01", b"plain text"])
def test_non_messages_raise_integrity_error(blob: bytes) -> None:
    with pytest.raises(IntegrityError):
        decrypt_bytes(blob, PASSPHRASE)


def _tamper_message() -> bytes:
    """A small message with several parts in both layers (chunk size 512)."""
    return encrypt_bytes(payload(1500, 9), PASSPHRASE, chunk_size=512, filename=b"f", **FAST)


def test_truncation_at_every_length_raises_integrity_error() -> None:
    blob = _tamper_message()
    for length in range(len(blob)):
        with pytest.raises(IntegrityError):
            decrypt_bytes(blob[:length], PASSPHRASE)


def test_truncation_of_a_large_message_at_part_boundaries_and_mid_part() -> None:
    blob = encrypt_bytes(payload(200_000, 4), PASSPHRASE, chunk_size=1 << 14, **FAST)
    header = 16  # SKESK (15 octets) + SEIPD tag
    stride = 1 + (1 << 14)
    cuts = {header + k * stride + d for k in range(12) for d in (-1, 0, 1, 2, 8000)}
    cuts |= {len(blob) - d for d in range(1, 30)}
    for length in sorted(c for c in cuts if 0 <= c < len(blob)):
        with pytest.raises(IntegrityError):
            decrypt(io.BytesIO(blob[:length]), PASSPHRASE, read_size=4096)


def test_any_flipped_byte_raises_a_crypto_error() -> None:
    blob = _tamper_message()
    salt = range(6, 14)
    algorithm_ids = {3, 4, 5, 17}  # SKESK version, cipher, S2K type, SEIPD version
    for pos in range(len(blob)):
        for mask in (0x01, 0x80):
            damaged = bytearray(blob)
            damaged[pos] ^= mask
            with pytest.raises(CryptoError) as caught:
                decrypt_bytes(damaged, PASSPHRASE)
            if pos >= 18 or pos in salt:  # ciphertext, MDC, part lengths, salt
                assert isinstance(caught.value, IntegrityError), (pos, mask, caught.value)
            elif pos not in algorithm_ids:
                assert isinstance(caught.value, IntegrityError | UnsupportedMessage)


# -- cancel, sink errors, writer states, threads -----------------------------------------


def test_cancel_before_start_raises_cancelled() -> None:
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        decrypt(io.BytesIO(encrypt_bytes(b"x", PASSPHRASE, **FAST)), PASSPHRASE, cancel=cancel)


def test_cancel_during_decryption_stops_at_the_next_read() -> None:
    blob = encrypt_bytes(payload(MIB), PASSPHRASE, chunk_size=1 << 14, **FAST)
    cancel = threading.Event()
    received: list[int] = []

    def sink(view: memoryview | bytes) -> None:
        received.append(len(view))
        cancel.set()

    with pytest.raises(Cancelled):
        decrypt(io.BytesIO(blob), PASSPHRASE, sink, read_size=1 << 16, cancel=cancel)
    assert 0 < sum(received) <= 1 << 17
    assert not mdc_threads()


class FailingSource(io.BytesIO):
    """Fails with an I/O error after ``good`` bytes."""

    def __init__(self, data: bytes, good: int) -> None:
        super().__init__(data)
        self._good = good

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def, override]
        if self.tell() >= self._good:
            raise OSError(5, "Input/output error")
        view = memoryview(buffer)
        return super().readinto(view[: self._good - self.tell()])


@pytest.mark.parametrize("compressed", [False, True])
def test_source_io_errors_propagate_unchanged(compressed: bool) -> None:
    data = b"ACGT" * 100_000
    if compressed:
        blob = message(bytes((0xA3, p.COMPRESS_ZLIB)) + _deflate(literal(data), 15))
    else:
        blob = encrypt_bytes(data, PASSPHRASE, chunk_size=1024, **FAST)
    with pytest.raises(OSError, match="Input/output error") as caught:
        decrypt(FailingSource(blob, len(blob) // 2), PASSPHRASE, read_size=4096)
    assert not isinstance(caught.value, CryptoError)


def test_sink_errors_propagate_from_decrypt_and_leave_no_thread() -> None:
    blob = encrypt_bytes(payload(4 * MIB), PASSPHRASE, **FAST)

    def sink(view: memoryview | bytes) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        decrypt(io.BytesIO(blob), PASSPHRASE, sink)
    assert not mdc_threads()


def test_sink_error_fails_the_writer_and_leaves_no_thread() -> None:
    calls = 0

    def sink(data: bytes | memoryview) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise OSError("disk full")

    writer = SymmetricWriter(sink, PASSPHRASE, chunk_size=1 << 16, **FAST)
    with pytest.raises(OSError, match="disk full"):
        writer.write(payload(MIB))
    with pytest.raises(CryptoError, match="failed"):
        writer.close()
    with pytest.raises(ValueError):
        writer.write(b"more")
    assert not mdc_threads()


def test_exception_inside_with_block_writes_no_valid_end() -> None:
    sent = bytearray()
    with (
        pytest.raises(RuntimeError),
        SymmetricWriter(sent.extend, PASSPHRASE, chunk_size=512, **FAST) as writer,
    ):
        writer.write(payload(2 * MIB))
        raise RuntimeError("tar failed")
    assert len(sent) > 2 * MIB
    with pytest.raises(IntegrityError, match="truncated"):
        decrypt_bytes(bytes(sent), PASSPHRASE)
    assert not mdc_threads()


def test_close_is_idempotent_and_write_after_close_is_refused() -> None:
    sent = bytearray()
    writer = SymmetricWriter(sent.extend, PASSPHRASE, **FAST)
    writer.write(b"abc")
    writer.close()
    size = len(sent)
    writer.close()
    assert len(sent) == size == writer.bytes_out
    with pytest.raises(ValueError):
        writer.write(b"x")
    assert decrypt_bytes(bytes(sent), PASSPHRASE) == b"abc"


def test_writer_calls_the_sink_only_with_whole_parts_until_close() -> None:
    sizes: list[int] = []
    writer = SymmetricWriter(lambda b: sizes.append(len(b)), PASSPHRASE, chunk_size=1024, **FAST)
    writer.write(payload(1000))
    assert sizes == []  # less than one part so far
    writer.write(payload(5000))
    assert sizes[0] == 15 + 1  # SKESK + SEIPD tag
    assert set(sizes[1:]) == {1 + 1024}
    writer.close()
    assert sizes[-1] < 1024 + 2


# -- memory ------------------------------------------------------------------------------


def test_writing_200_mib_keeps_memory_bounded_by_a_few_chunks() -> None:
    chunk = 1 << 20
    block = bytearray(payload(chunk, 5))
    digest = hashlib.sha256()
    tracemalloc.start()
    try:
        writer = SymmetricWriter(digest.update, PASSPHRASE, chunk_size=chunk, **FAST)
        for i in range(200):
            block[:8] = i.to_bytes(8, "big")
            writer.write(block)
        writer.close()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert writer.bytes_in == 200 * MIB
    assert writer.bytes_out > 200 * MIB
    assert peak < 4 * chunk, peak


@pytest.mark.parametrize(
    ("part_size", "bound"),
    [(1 << 20, 5), (1 << 13, 7)],  # our parts; gpg-sized parts (joined by a copy)
)
def test_reading_64_mib_keeps_memory_bounded_by_a_few_read_sizes(
    tmp_path, part_size: int, bound: int
) -> None:
    read_size = 1 << 20
    path = tmp_path / "m.gpg"
    block = bytearray(payload(MIB, 6))
    expected = hashlib.sha256()
    with (
        open(path, "wb") as out,
        SymmetricWriter(out.write, PASSPHRASE, chunk_size=part_size, **FAST) as writer,
    ):
        for i in range(64):
            block[:8] = i.to_bytes(8, "big")
            writer.write(block)
            expected.update(block)
    got = hashlib.sha256()
    tracemalloc.start()
    try:
        with open(path, "rb") as source:
            result = decrypt(source, PASSPHRASE, got.update, read_size=read_size)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.plaintext_size == 64 * MIB
    assert got.hexdigest() == expected.hexdigest()
    assert peak < bound * read_size, peak


def test_passphrase_of_random_hex_like_the_pipeline_uses() -> None:
    passphrase = secrets.token_hex(32).encode()
    data = payload(70_000)
    assert sha256(decrypt_bytes(encrypt_bytes(data, passphrase, **FAST), passphrase)) == sha256(
        data
    )
