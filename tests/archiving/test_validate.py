"""validate_archive and TrailingValidation (the same checks while the archive is being
written): a good archive passes both methods; every kind of damage fails both."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import threading
from pathlib import Path

import pytest

from dfarchive.archiving.engines import EncryptResult
from dfarchive.archiving.keys import new_run_key
from dfarchive.archiving.validate import VALIDATION_METHODS, TrailingValidation, validate_archive
from dfarchive.errors import Cancelled, ValidationError
from dfarchive.openpgp import encrypt_bytes
from dfarchive.plumbing.directio import open_direct
from dfarchive.plumbing.writeprogress import WriteProgress
from tests.support.gpg import build_run_folder, encrypt_to_file, stock_decrypt

KEY = new_run_key()


@pytest.fixture(scope="module", params=["inprocess", "gpg"])
def archive(request, tmp_path_factory, symmetric_gnupg_home) -> tuple[Path, EncryptResult]:
    """A small run archived by each engine once for the whole module."""
    root = tmp_path_factory.mktemp("val")
    spec = build_run_folder(root, small_files=40, big_files=1, big_size=1 << 20)
    out = root / "run.tar.gpg"
    return out, encrypt_to_file(request.param, spec.path, out, KEY)


def damaged(
    tmp_path: Path, source: Path, data: bytes, expected: EncryptResult, *, consistent: bool
) -> tuple[Path, EncryptResult]:
    """Write ``data`` as a damaged copy; with ``consistent``, the expected record claims
    those very bytes were written, so only decryption and tar checks can catch it."""
    path = tmp_path / source.name
    path.write_bytes(data)
    if consistent:
        expected = dataclasses.replace(expected, archive_size=len(data))
    return path, expected


def first_packet_length(data: bytes) -> int:
    """Total length of the first OpenPGP packet (old or new format, definite length)."""
    ctb = data[0]
    if ctb & 0x40:  # new format
        first = data[1]
        if first < 192:
            return 2 + first
        if first < 224:
            return 3 + ((first - 192) << 8) + data[2] + 192
        raise AssertionError("SKESK with a partial or 5-octet length")
    length_type = ctb & 0x03
    size = {0: 1, 1: 2, 2: 4}[length_type]
    return 1 + size + int.from_bytes(data[1 : 1 + size], "big")


@pytest.mark.parametrize("method", VALIDATION_METHODS)
@pytest.mark.parametrize("from_device", [False, True])
@pytest.mark.parametrize("direct", [True, False], ids=["direct", "buffered"])
def test_good_archive_passes_and_its_sha256_is_returned(archive, method, from_device, direct):
    path, result = archive
    sha256 = validate_archive(
        path, KEY, result, method=method, from_device=from_device, direct=direct
    )
    assert sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


DAMAGE = {
    "flipped byte in the middle": lambda d: (
        d[: len(d) // 2] + bytes([d[len(d) // 2] ^ 1]) + d[len(d) // 2 + 1 :]
    ),
    "flipped last byte": lambda d: d[:-1] + bytes([d[-1] ^ 0x80]),
    "truncated by one byte": lambda d: d[:-1],
    "truncated in the middle": lambda d: d[: len(d) // 2],
    "appended zero bytes": lambda d: d + b"\x00" * 10,
    "appended garbage": lambda d: d + b"garbage",
}


DAMAGE_CASES = [
    pytest.param(method, damage, consistent, id=f"{method}-{damage}-{label}")
    for method in VALIDATION_METHODS
    for damage in DAMAGE
    for consistent, label in ((False, "vs-written"), (True, "decrypt-only"))
    # gpg decrypts a message followed by zero bytes without complaint; only the size
    # check (the "vs-written" case) catches those.
    if not (method == "gpg" and damage == "appended zero bytes" and consistent)
]


@pytest.mark.parametrize(("method", "damage", "consistent"), DAMAGE_CASES)
def test_damaged_archive_fails(archive, tmp_path, method, damage, consistent):
    path, result = archive
    bad, expected = damaged(
        tmp_path, path, DAMAGE[damage](path.read_bytes()), result, consistent=consistent
    )
    with pytest.raises(ValidationError, match=str(bad)):
        validate_archive(bad, KEY, expected, method=method)


def test_gpg_exit_status_alone_would_miss_a_file_cut_after_the_skesk(archive, tmp_path):
    path, result = archive
    data = path.read_bytes()
    cut = data[: first_packet_length(data)]
    bad, expected = damaged(tmp_path, path, cut, result, consistent=True)
    plain_gpg = stock_decrypt(bad, KEY)
    if plain_gpg.returncode == 0:  # the trap the validator must not fall into
        assert plain_gpg.stdout == b""
    for method in VALIDATION_METHODS:
        with pytest.raises(ValidationError):
            validate_archive(bad, KEY, expected, method=method)


@pytest.mark.parametrize("method", VALIDATION_METHODS)
def test_wrong_passphrase_fails(archive, method):
    path, result = archive
    with pytest.raises(ValidationError, match="decrypt"):
        validate_archive(path, new_run_key(), result, method=method)


MISMATCH_MESSAGES = {
    "plaintext_size": "decrypts to",
    "members": "members",
    "members_sha256": "names SHA-256",
    "archive_size": "were written",
}


@pytest.mark.parametrize("method", VALIDATION_METHODS)
@pytest.mark.parametrize(
    "change",
    [
        {"plaintext_size": 1},
        {"members": 1},
        {"members_sha256": "0" * 64},
        {"archive_size": 1},
    ],
    ids=lambda c: next(iter(c)),
)
def test_mismatch_with_what_was_written_fails(archive, method, change):
    path, result = archive
    ((field, delta),) = change.items()
    value = getattr(result, field)
    expected = dataclasses.replace(
        result, **{field: value + delta if isinstance(value, int) else delta}
    )
    with pytest.raises(ValidationError, match=MISMATCH_MESSAGES[field]):
        validate_archive(path, KEY, expected, method=method)


def encrypted_plaintext(tmp_path: Path, plaintext: bytes) -> tuple[Path, EncryptResult]:
    """An archive of ``plaintext`` (intact MDC) and a record matching it byte for byte;
    the member fields are those of a well-formed one-member stream."""
    data = encrypt_bytes(plaintext, KEY)
    path = tmp_path / "odd.tar.gpg"
    path.write_bytes(data)
    return path, EncryptResult(
        engine="inprocess",
        plaintext_size=len(plaintext),
        plaintext_sha256=hashlib.sha256(plaintext).hexdigest(),
        archive_size=len(data),
        members=1,
        members_sha256=hashlib.sha256(b"a\x00").hexdigest(),
        seconds=0.0,
    )


def one_member_tar(tmp_path: Path) -> bytes:
    (tmp_path / "a").write_bytes(b"x" * 100)
    return subprocess.run(
        ["tar", "--format=gnu", "-cf", "-", "--", "a"],
        cwd=tmp_path,
        capture_output=True,
        check=True,
    ).stdout


@pytest.mark.parametrize("method", VALIDATION_METHODS)
def test_plaintext_without_end_of_archive_fails(tmp_path, method):
    plaintext = one_member_tar(tmp_path)[: 2 * 512]  # header and data of "a", no end
    path, expected = encrypted_plaintext(tmp_path, plaintext)
    with pytest.raises(ValidationError, match="no end-of-archive marker"):
        validate_archive(path, KEY, expected, method=method)


@pytest.mark.parametrize("method", VALIDATION_METHODS)
def test_plaintext_with_a_corrupt_tar_header_fails(tmp_path, method):
    plaintext = bytearray(one_member_tar(tmp_path))
    plaintext[10] ^= 0x01  # inside the name field of the first header
    path, expected = encrypted_plaintext(tmp_path, bytes(plaintext))
    with pytest.raises(ValidationError, match=f"{path}: decrypted tar stream: .*checksum"):
        validate_archive(path, KEY, expected, method=method)


@pytest.mark.parametrize("method", VALIDATION_METHODS)
def test_cancel_stops_validation(archive, method):
    path, result = archive
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        validate_archive(path, KEY, result, method=method, cancel=cancel)


def test_unknown_method_is_refused(archive):
    path, result = archive
    with pytest.raises(ValueError, match="unknown validation method"):
        validate_archive(path, KEY, result, method="md5")


# -- validating while the archive is being written (TrailingValidation) ---------------


def validate_while_writing(
    data: bytes,
    dest: Path,
    expected: EncryptResult,
    *,
    method: str,
    direct: bool = True,
    piece: int = 100_000,
    stop: threading.Event | None = None,
    fail_at: int | None = None,
) -> str:
    """Write ``data`` to ``dest`` piece by piece on a thread, publishing each piece to a
    WriteProgress, while a TrailingValidation reads it back; its finish(expected). The
    writer fails at offset ``fail_at``, or when ``stop`` is set."""
    written = WriteProgress()
    stop = stop or threading.Event()
    fd = open_direct(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, direct=False)

    def write() -> None:
        for start in range(0, len(data), piece):
            if stop.is_set() or start == fail_at:
                return written.fail()
            os.write(fd, data[start : start + piece])
            written.advance(len(data[start : start + piece]))
        written.close()

    writer = threading.Thread(target=write)
    try:
        with TrailingValidation(
            dest, fd, KEY, written, method=method, direct=direct, stop=stop
        ) as validation:
            writer.start()
            try:
                return validation.finish(expected)
            finally:
                writer.join()  # a failing reader sets stop: the writer stops too
    finally:
        os.close(fd)


@pytest.mark.parametrize("method", VALIDATION_METHODS)
@pytest.mark.parametrize("direct", [True, False], ids=["direct", "buffered"])
def test_a_good_archive_passes_while_it_is_written(archive, tmp_path, method, direct):
    path, result = archive
    data = path.read_bytes()
    sha256 = validate_while_writing(data, tmp_path / "out", result, method=method, direct=direct)
    assert sha256 == hashlib.sha256(data).hexdigest()
    assert not [t for t in threading.enumerate() if t.name.startswith("dfarchive-")]


@pytest.mark.parametrize(("method", "damage", "consistent"), DAMAGE_CASES)
def test_a_damaged_archive_fails_while_it_is_written_as_it_does_after(
    archive, tmp_path, method, damage, consistent
):
    path, result = archive
    data = DAMAGE[damage](path.read_bytes())
    _, expected = damaged(tmp_path, path, data, result, consistent=consistent)
    out = tmp_path / "out"
    with pytest.raises(ValidationError, match=str(out)):
        validate_while_writing(data, out, expected, method=method)


@pytest.mark.parametrize("method", VALIDATION_METHODS)
def test_a_reader_failure_stops_the_writer(archive, tmp_path, method):
    path, result = archive
    data = bytearray(path.read_bytes())
    data[300:1300] = bytes(1000)  # the first tar header is gone: fails at once
    stop = threading.Event()
    with pytest.raises(ValidationError, match="out"):
        validate_while_writing(bytes(data), tmp_path / "out", result, method=method, stop=stop)
    assert stop.is_set()


@pytest.mark.parametrize("method", VALIDATION_METHODS)
def test_a_failed_writer_ends_the_validation_with_cancelled(archive, tmp_path, method):
    path, result = archive
    stop = threading.Event()
    stop.set()  # the writer stops before its first piece (and fails its progress)
    with pytest.raises(Cancelled):
        validate_while_writing(
            path.read_bytes(), tmp_path / "out", result, method=method, stop=stop
        )
    assert not [t for t in threading.enumerate() if t.name.startswith("dfarchive-")]


def test_the_trailing_reader_must_open_the_file_being_written(archive, tmp_path):
    path, _ = archive
    other = tmp_path / "other"
    other.write_bytes(b"")
    fd = os.open(other, os.O_RDONLY)
    try:
        with pytest.raises(ValidationError, match=f"{path}: is not the file being written"):
            TrailingValidation(path, fd, KEY, WriteProgress(), stop=threading.Event())
    finally:
        os.close(fd)


@pytest.mark.parametrize("method", VALIDATION_METHODS)
def test_a_writer_failure_does_not_stop_the_writer_in_the_readers_name(archive, tmp_path, method):
    """The writer raises its own error (ENOSPC, say): the reader must not set stop, or
    the writer could see "cancelled" before its own error."""
    path, result = archive
    stop = threading.Event()
    data = path.read_bytes()
    with pytest.raises(Cancelled, match="writer stopped"):
        validate_while_writing(data, tmp_path / "out", result, method=method, stop=stop, fail_at=0)
    assert not stop.is_set()
