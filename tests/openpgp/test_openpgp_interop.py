"""dfarchive.openpgp against the real GnuPG, both directions.

Each test has its own ``GNUPGHOME`` (mode 0700) and stops its gpg-agent afterwards. The
passphrase always travels through a pipe (``--passphrase-fd``), never on argv; gpg's
status lines come through ``--status-fd``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from dfarchive.errors import IntegrityError, UnsupportedMessage
from dfarchive.openpgp import SymmetricWriter, decrypt, encrypt_bytes
from dfarchive.openpgp import packets as p

GPG = shutil.which("gpg")
GPGCONF = shutil.which("gpgconf")
GPG_COMMON = ("--batch", "--no-tty", "--pinentry-mode", "loopback", "--no-symkey-cache")
FAST_GPG_S2K = ("--s2k-count", "65536")
"""A small iteration count for tests that run gpg many times (gpg ignores counts <= 1024)."""
MIB = 1 << 20


def _require_gpg() -> str:
    if GPG is None or GPGCONF is None:
        pytest.fail("gpg and gpgconf (GnuPG 2.2) must be installed: apt-get install gnupg")
    return GPG


@dataclass
class GpgRun:
    returncode: int
    stdout: bytes
    stderr: str
    status: str


class Gpg:
    """Runs the real gpg in one GNUPGHOME with the passphrase on a pipe."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.gpg = _require_gpg()
        self._status_count = 0

    def _env(self) -> dict[str, str]:
        return {**os.environ, "GNUPGHOME": str(self.home), "LC_ALL": "C"}

    def start(
        self, args: list[str], passphrase: bytes, **popen: object
    ) -> tuple[subprocess.Popen[bytes], Path]:
        """Start gpg; returns the process and the path its status lines go to."""
        self._status_count += 1
        status_path = self.home / f"status-{self._status_count}"
        status_fd = os.open(status_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        read_end, write_end = os.pipe()
        try:
            os.write(write_end, passphrase)
            os.close(write_end)
            command = [
                self.gpg,
                *GPG_COMMON,
                "--passphrase-fd",
                str(read_end),
                "--status-fd",
                str(status_fd),
                *args,
            ]
            proc = subprocess.Popen(
                command, env=self._env(), pass_fds=(read_end, status_fd), **popen
            )  # type: ignore[call-overload]
        finally:
            os.close(read_end)
            os.close(status_fd)
        return proc, status_path

    def run(self, args: list[str], passphrase: bytes, stdin: bytes = b"") -> GpgRun:
        proc, status_path = self.start(
            args,
            passphrase,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = proc.communicate(stdin, timeout=120)
        return GpgRun(proc.returncode, out, err.decode(errors="replace"), status_path.read_text())

    def stop_agent(self) -> None:
        subprocess.run(
            [GPGCONF or "gpgconf", "--kill", "gpg-agent"],
            env=self._env(),
            check=False,
            capture_output=True,
            timeout=30,
        )


@pytest.fixture
def gpg(tmp_path: Path) -> Iterator[Gpg]:
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    runner = Gpg(home)
    try:
        yield runner
    finally:
        runner.stop_agent()


@pytest.fixture
def passphrase() -> bytes:
    return secrets.token_hex(32).encode()


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic incompressible bytes (AES-CTR key stream)."""
    key = hashlib.sha256(seed.to_bytes(8, "big")).digest()
    return Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(bytes(size))


def payload_chunks(total: int, seed: int, chunk: int = 4 * MIB) -> Iterator[bytes]:
    """``total`` deterministic incompressible bytes in chunks, without holding them all."""
    key = hashlib.sha256(seed.to_bytes(8, "big")).digest()
    stream = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    zeros = bytes(chunk)
    for start in range(0, total, chunk):
        yield stream.update(zeros[: min(chunk, total - start)])


def compressible_chunks(total: int, chunk: int = 4 * MIB) -> Iterator[bytes]:
    """FASTQ-like text: compresses well but differs from chunk to chunk."""
    line = b"@read ACGTTGCAACGGTTAACCGGTTAAGGCCTTAA + IIIIIIIIIIIIHHHHHHHGGGGGFFFF\n"
    block = line * (chunk // len(line) + 1)
    for index, start in enumerate(range(0, total, chunk)):
        yield (b"%012d" % index + block)[: min(chunk, total - start)]


def assert_clean_decryption(run: GpgRun) -> None:
    assert run.returncode == 0, run.stderr
    assert "[GNUPG:] DECRYPTION_OKAY" in run.status
    assert "[GNUPG:] GOODMDC" in run.status
    for bad in ("DECRYPTION_FAILED", "BADMDC", "FAILURE", "ERROR"):
        assert bad not in run.status, run.status
    assert "WARNING" not in run.stderr, run.stderr


def _feed(
    write: Callable[[bytes], object],
    chunks: Iterator[bytes],
    finish: Callable[[], object],
    pipe: BinaryIO,
    errors: list[BaseException],
) -> None:
    """Thread body: write ``chunks``, ``finish()``, and always close ``pipe`` (gpg's stdin)."""
    try:
        for chunk in chunks:
            write(chunk)
        finish()
    except BaseException as err:  # handed to the main thread, which re-raises it
        errors.append(err)
    finally:
        with contextlib.suppress(OSError):
            pipe.close()


# -- our writer -> gpg --decrypt ----------------------------------------------------------

WRITER_CASES = [
    (chunk, size)
    for chunk in (512, 1024)
    for size in sorted({0, 1, 511, 512, 513, chunk - 1, chunk, chunk + 1, 3 * chunk + 7})
]


@pytest.mark.parametrize(("chunk_size", "size"), WRITER_CASES)
def test_gpg_decrypts_our_messages_around_part_boundaries(
    gpg: Gpg, passphrase: bytes, chunk_size: int, size: int
) -> None:
    data = payload(size, size)
    blob = encrypt_bytes(data, passphrase, chunk_size=chunk_size, s2k_count_byte=0)
    run = gpg.run(["--decrypt"], passphrase, blob)
    assert_clean_decryption(run)
    assert run.stdout == data


def test_gpg_decrypts_our_messages_around_the_default_chunk_size(
    gpg: Gpg, passphrase: bytes
) -> None:
    chunk = 1 << 22
    base = payload(chunk + 1, 1)
    for size in (chunk - 1, chunk, chunk + 1):
        run = gpg.run(["--decrypt"], passphrase, encrypt_bytes(base[:size], passphrase))
        assert_clean_decryption(run)
        assert hashlib.sha256(run.stdout).digest() == hashlib.sha256(base[:size]).digest()


def test_gpg_reports_our_literal_filename_and_date(gpg: Gpg, passphrase: bytes) -> None:
    blob = encrypt_bytes(b"x" * 10, passphrase, filename=b"run42.tar", mtime=1_700_000_000)
    run = gpg.run(["--decrypt"], passphrase, blob)
    assert_clean_decryption(run)
    assert "[GNUPG:] PLAINTEXT 62 1700000000 run42.tar" in run.status
    assert "[GNUPG:] NEED_PASSPHRASE_SYM 9 3 8" in run.status  # AES-256, S2K 3, SHA-256


def test_gpg_decrypts_a_250_mib_stream_from_our_writer(gpg: Gpg, passphrase: bytes) -> None:
    total = 250 * MIB
    expected = hashlib.sha256()

    def chunks() -> Iterator[bytes]:
        for chunk in payload_chunks(total, seed=250):
            expected.update(chunk)
            yield chunk

    proc, status_path = gpg.start(
        ["--decrypt"],
        passphrase,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    errors: list[BaseException] = []
    got = hashlib.sha256()
    size = 0
    with proc:
        stdin: BinaryIO = proc.stdin  # type: ignore[assignment]
        writer = SymmetricWriter(stdin.write, passphrase)
        feeder = threading.Thread(
            target=_feed, args=(writer.write, chunks(), writer.close, stdin, errors)
        )
        feeder.start()
        try:
            while block := proc.stdout.read(MIB):  # type: ignore[union-attr]
                got.update(block)
                size += len(block)
        finally:
            feeder.join()
    assert proc.returncode == 0
    assert not errors, errors
    assert size == total and writer.bytes_in == total
    assert got.hexdigest() == expected.hexdigest()
    status = status_path.read_text()
    assert "GOODMDC" in status and "DECRYPTION_OKAY" in status and "BADMDC" not in status


# -- gpg --symmetric -> our reader ----------------------------------------------------------

READER_SIZES = [0, 1, 511, 512, 513, 8191, 8192, 8193, 100_000]


def _gpg_encrypt(gpg: Gpg, passphrase: bytes, data: bytes, options: list[str], via: str) -> bytes:
    if via == "file":  # gpg knows the size: definite lengths
        source = gpg.home / "plain.bin"
        source.write_bytes(data)
        run = gpg.run([*options, "--symmetric", "--output", "-", str(source)], passphrase)
    else:  # streaming: partial body lengths
        run = gpg.run([*options, "--symmetric"], passphrase, data)
    assert run.returncode == 0, run.stderr
    return run.stdout


def _our_decrypt(blob: bytes, passphrase: bytes, **kw: object):
    import io

    out = bytearray()
    result = decrypt(io.BytesIO(blob), passphrase, out.extend, **kw)  # type: ignore[arg-type]
    return bytes(out), result


@pytest.mark.parametrize("via", ["file", "stdin"])
@pytest.mark.parametrize("compression", ["none", "zip"])
def test_we_read_gpg_messages_of_all_boundary_sizes(
    gpg: Gpg, passphrase: bytes, compression: str, via: str
) -> None:
    options = [*FAST_GPG_S2K, "--compress-algo", compression]
    for size in READER_SIZES:
        data = payload(size, size)
        blob = _gpg_encrypt(gpg, passphrase, data, options, via)
        plain, result = _our_decrypt(blob, passphrase)
        assert plain == data, size
        assert result.plaintext_size == size
        assert result.compression == (p.COMPRESS_ZIP if compression == "zip" else 0)


GPG_VARIANTS = {
    "gpg-defaults": ([], {"cipher": "AES256", "s2k_type": 3, "s2k_hash": p.HASH_SHA1}),
    "no-compression": (["--compress-algo", "none"], {"compression": 0}),
    "zlib": (["--compress-algo", "zlib"], {"compression": p.COMPRESS_ZLIB}),
    "bzip2": (["--compress-algo", "bzip2"], {"compression": p.COMPRESS_BZIP2}),
    "s2k-mode-0": (["--s2k-mode", "0"], {"s2k_type": 0}),
    "s2k-mode-1": (["--s2k-mode", "1"], {"s2k_type": 1}),
    "s2k-mode-3": (["--s2k-mode", "3", *FAST_GPG_S2K], {"s2k_type": 3, "s2k_count": 65536}),
    "aes128": (["--cipher-algo", "AES128"], {"cipher": "AES128"}),
    "aes192": (["--cipher-algo", "AES192"], {"cipher": "AES192"}),
    "aes256": (["--cipher-algo", "AES256"], {"cipher": "AES256"}),
    "camellia256": (["--cipher-algo", "CAMELLIA256"], {"cipher": "CAMELLIA256"}),
    "cast5": (["--cipher-algo", "CAST5"], {"cipher": "CAST5"}),
    "3des": (["--cipher-algo", "3DES"], {"cipher": "3DES"}),
    "sha1": (["--s2k-digest-algo", "SHA1"], {"s2k_hash": p.HASH_SHA1}),
    "sha256": (["--s2k-digest-algo", "SHA256"], {"s2k_hash": p.HASH_SHA256}),
    "sha512": (["--s2k-digest-algo", "SHA512"], {"s2k_hash": p.HASH_SHA512}),
    "sha224": (["--s2k-digest-algo", "SHA224"], {"s2k_hash": p.HASH_SHA224}),
}


@pytest.mark.parametrize("variant", sorted(GPG_VARIANTS))
def test_we_read_gpg_algorithm_variants(gpg: Gpg, passphrase: bytes, variant: str) -> None:
    options, expected = GPG_VARIANTS[variant]
    if variant != "gpg-defaults" and "--s2k-mode" not in options:
        options = [*options, *FAST_GPG_S2K]
    data = payload(70_000, 3) + b"ACGT" * 20_000
    plain, result = _our_decrypt(_gpg_encrypt(gpg, passphrase, data, options, "stdin"), passphrase)
    assert plain == data
    for field, value in expected.items():
        assert getattr(result, field) == value, (field, result)


def test_we_read_a_message_gpg_encrypted_to_a_key_and_a_passphrase(
    gpg: Gpg, passphrase: bytes
) -> None:
    uid = "dfarchive test <test@example.invalid>"
    keygen = gpg.run(
        ["--passphrase", "", "--quick-generate-key", uid, "future-default", "default", "never"],
        b"",
    )
    assert keygen.returncode == 0, keygen.stderr
    data = payload(5000, 5)
    options = [*FAST_GPG_S2K, "--trust-model", "always", "--encrypt", "-r", "test@example.invalid"]
    blob = _gpg_encrypt(gpg, passphrase, data, options, "stdin")
    assert blob[0] & 0x3C == p.TAG_PKESK << 2  # a public-key session key packet comes first
    plain, _ = _our_decrypt(blob, passphrase)
    assert plain == data
    with pytest.raises(IntegrityError, match="wrong passphrase"):
        _our_decrypt(blob, b"not it")


def test_we_refuse_gpg_messages_without_integrity_protection(gpg: Gpg, passphrase: bytes) -> None:
    blob = _gpg_encrypt(gpg, passphrase, b"secret", ["--rfc2440", *FAST_GPG_S2K], "stdin")
    with pytest.raises(UnsupportedMessage, match="tag 9"):
        _our_decrypt(blob, passphrase)


def test_damaged_gpg_messages_raise_integrity_error(gpg: Gpg, passphrase: bytes) -> None:
    data = payload(50_000, 6)
    for options in (["--compress-algo", "none"], []):
        blob = _gpg_encrypt(gpg, passphrase, data, [*FAST_GPG_S2K, *options], "stdin")
        for cut in (16, 40, len(blob) // 2, len(blob) - 21, len(blob) - 1):
            with pytest.raises(IntegrityError):
                _our_decrypt(blob[:cut], passphrase)
        for pos in (40, len(blob) // 2, len(blob) - 10):
            damaged = bytearray(blob)
            damaged[pos] ^= 0x10
            with pytest.raises(IntegrityError):
                _our_decrypt(bytes(damaged), passphrase)
        with pytest.raises(IntegrityError, match="wrong passphrase"):
            _our_decrypt(blob, passphrase + b"x")


def _stream_through_gpg(
    gpg: Gpg, passphrase: bytes, options: list[str], chunks: Iterator[bytes]
) -> tuple[str, str, int]:
    """Pipe ``chunks`` into ``gpg --symmetric`` and decrypt its stdout as it comes.

    Returns the SHA-256 of what went in, of what we decrypted, and the plaintext size.
    """
    proc, _ = gpg.start(
        [*options, "--symmetric"],
        passphrase,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    stdin: BinaryIO = proc.stdin  # type: ignore[assignment]
    expected = hashlib.sha256()

    def hashed() -> Iterator[bytes]:
        for chunk in chunks:
            expected.update(chunk)
            yield chunk

    errors: list[BaseException] = []
    got = hashlib.sha256()
    with proc:
        feeder = threading.Thread(
            target=_feed, args=(stdin.write, hashed(), stdin.flush, stdin, errors)
        )
        feeder.start()
        try:
            result = decrypt(proc.stdout, passphrase, got.update)  # type: ignore[arg-type]
        except BaseException:
            proc.kill()  # unblocks the feeder
            raise
        finally:
            feeder.join()
    assert proc.returncode == 0 and not errors, errors
    return expected.hexdigest(), got.hexdigest(), result.plaintext_size


def test_we_read_a_200_mib_incompressible_gpg_stream(gpg: Gpg, passphrase: bytes) -> None:
    total = 200 * MIB
    options = ["--compress-algo", "none", *FAST_GPG_S2K]
    sent, got, size = _stream_through_gpg(gpg, passphrase, options, payload_chunks(total, 200))
    assert size == total
    assert got == sent


def test_we_read_a_64_mib_compressed_gpg_stream(gpg: Gpg, passphrase: bytes) -> None:
    total = 64 * MIB
    sent, got, size = _stream_through_gpg(
        gpg, passphrase, list(FAST_GPG_S2K), compressible_chunks(total)
    )
    assert size == total
    assert got == sent
