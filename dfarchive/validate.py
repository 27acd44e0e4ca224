"""Read a written archive back and prove it holds exactly what was archived.

:func:`validate_archive` reads ``<run>.tar.gpg`` once, hashing it (SHA-256, the
checksum the run document records) and decrypting it (with dfarchive's OpenPGP reader
or with ``gpg --decrypt``), and checks, against the
:class:`~dfarchive.engines.base.EncryptResult` taken while writing:

* the archive's size;
* the OpenPGP integrity code (MDC), which proves the decrypted bytes are the ones that
  were encrypted — with gpg, from its ``--status-fd`` lines, never its exit code alone;
* the plaintext length;
* the tar headers of the decrypted stream (:class:`~dfarchive.tarindex.TarIndex`:
  member count, member names, end-of-archive marker).

The archive's SHA-256 is taken here rather than while writing, so the recorded checksum
is that of the bytes that were read back and passed. The plaintext SHA-256 taken while
writing is not recomputed: the MDC already ties the decrypted bytes to the encrypted
ones, and hashing them again would cost a full pass.

The in-process method reads with direct I/O when asked (:mod:`dfarchive.directio`):
the bytes then come from the device, and reading them costs no page-cache CPU; a
read-ahead thread keeps the device busy and a helper takes the SHA-256 meanwhile.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
from pathlib import Path

from dfarchive.childproc import Child, pump, secret_pipe
from dfarchive.directio import open_direct
from dfarchive.engines.base import EncryptResult
from dfarchive.errors import CryptoError, ValidationError
from dfarchive.gpgcli import status_keywords, symmetric_decrypt_command
from dfarchive.openpgp import decrypt
from dfarchive.readahead import ReadAhead
from dfarchive.tarindex import TarIndex

VALIDATION_METHODS = ("inprocess", "gpg")

READ_SIZE = 4 << 20
"""Bytes read from the archive per step (a multiple of ``DIRECT_ALIGNMENT``)."""

GPG_EXIT_TIMEOUT = 60.0
"""Seconds gpg may take to exit once its output ended."""

GPG_REQUIRED_STATUS = frozenset({"DECRYPTION_OKAY", "GOODMDC", "END_DECRYPTION"})
GPG_FATAL_STATUS = frozenset({"BADMDC", "DECRYPTION_FAILED", "NO_SECKEY", "ERROR", "FAILURE"})


def validate_archive(
    archive_path: Path,
    passphrase: bytes,
    expected: EncryptResult,
    *,
    method: str = "inprocess",
    from_device: bool = False,
    direct: bool = True,
    cancel: threading.Event | None = None,
) -> str:
    """Check that ``archive_path`` reads back as exactly what ``expected`` describes.

    Parameters:
        archive_path: the written archive (already fsynced by the caller).
        passphrase: the run key it was encrypted with.
        expected: what the engine reported while writing it.
        method: ``"inprocess"`` (dfarchive's OpenPGP reader) or ``"gpg"``.
        from_device: drop the file's cached pages first, so the bytes come from the
            storage device rather than the page cache.
        direct: read with direct I/O where the filesystem allows it (method
            ``"inprocess"`` only: gpg is fed through an ordinary pipe relay).
        cancel: when set, validation stops within about a second.

    Returns:
        The hex SHA-256 of the archive as it was read back.

    Raises:
        ValidationError: any check failed; the message names the file and the check.
        ToolError: gpg could not be run (method ``"gpg"``).
        Cancelled: ``cancel`` was set.
        OSError: the archive could not be opened or read.
        ValueError: unknown ``method``.
    """
    if method not in VALIDATION_METHODS:
        raise ValueError(f"unknown validation method {method!r}")
    archive_path = Path(archive_path)
    where = str(archive_path)
    direct = direct and method == "inprocess"
    fd = open_direct(archive_path, os.O_RDONLY | os.O_CLOEXEC, 0, direct=direct)
    try:
        size = os.fstat(fd).st_size
        if size != expected.archive_size:
            raise ValidationError(
                f"{where}: archive is {size} bytes, {expected.archive_size} were written"
            )
        if from_device:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        plaintext = _PlaintextCheck(where)
        if method == "gpg":
            read_back, sha256 = _decrypt_with_gpg(fd, passphrase, plaintext, where, cancel)
        else:
            read_back, sha256 = _decrypt_in_process(fd, passphrase, plaintext, where, cancel)
    finally:
        os.close(fd)
    if read_back != expected.archive_size:
        raise ValidationError(
            f"{where}: {read_back} bytes were read back, {expected.archive_size} were written"
        )
    if plaintext.size != expected.plaintext_size:
        raise ValidationError(
            f"{where}: decrypts to {plaintext.size} bytes, {expected.plaintext_size} were archived"
        )
    summary = plaintext.index.summary()
    if not summary.end_of_archive:
        raise ValidationError(f"{where}: decrypted tar stream has no end-of-archive marker")
    if (summary.members, summary.members_sha256) != (expected.members, expected.members_sha256):
        raise ValidationError(
            f"{where}: decrypted tar stream lists {summary.members} members "
            f"(names SHA-256 {summary.members_sha256}), expected {expected.members} "
            f"(names SHA-256 {expected.members_sha256})"
        )
    return sha256


class _PlaintextCheck:
    """Counts the decrypted bytes and walks their tar headers."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.size = 0
        self.index = TarIndex()

    def __call__(self, chunk: bytes | memoryview) -> None:
        self.size += len(chunk)
        try:
            self.index.feed(chunk)
        except ValidationError as exc:
            raise ValidationError(f"{self.where}: decrypted tar stream: {exc}") from None


def _decrypt_in_process(
    fd: int,
    passphrase: bytes,
    plaintext: _PlaintextCheck,
    where: str,
    cancel: threading.Event | None,
) -> tuple[int, str]:
    """Decrypt the file behind ``fd`` into ``plaintext``; return its size and SHA-256."""
    with ReadAhead(fd, block_size=READ_SIZE, digest="sha256", cancel=cancel) as archive:
        try:
            decrypt(archive, passphrase, plaintext, read_size=READ_SIZE, cancel=cancel)  # type: ignore[arg-type]
        except CryptoError as exc:
            raise ValidationError(f"{where}: does not decrypt: {exc}") from None
        while archive.read():  # only counts: decrypt() refuses trailing data
            pass
        return archive.size, archive.hexdigest()


def _decrypt_with_gpg(
    fd: int,
    passphrase: bytes,
    plaintext: _PlaintextCheck,
    where: str,
    cancel: threading.Event | None,
) -> tuple[int, str]:
    """Decrypt the file behind ``fd`` with gpg into ``plaintext``; return its size and
    SHA-256."""
    read_back = 0
    sha256 = hashlib.sha256()

    def count(chunk: memoryview) -> None:
        nonlocal read_back
        read_back += len(chunk)
        sha256.update(chunk)

    status_read, status_write = os.pipe()
    try:
        with (
            secret_pipe(passphrase + b"\n") as passphrase_fd,
            Child(
                symmetric_decrypt_command(passphrase_fd, status_write),
                what=f"gpg --decrypt of {where!r}",
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                pass_fds=(passphrase_fd, status_write),
            ) as gpg,
        ):
            os.close(status_write)
            status_write = -1
            complete = pump(
                gpg,
                fd,
                on_input=count,
                on_output=plaintext,
                cancel=cancel,
            )
            returncode = gpg.wait(cancel=cancel, timeout=GPG_EXIT_TIMEOUT)
            status = _read_available(status_read)
            stderr = gpg.stderr_text()
    finally:
        os.close(status_read)
        if status_write >= 0:
            os.close(status_write)
    keywords = {keyword for keyword, _ in status_keywords(status)}
    fatal = sorted(keywords & GPG_FATAL_STATUS)
    missing = sorted(GPG_REQUIRED_STATUS - keywords)
    if fatal or missing or returncode != 0 or not complete:
        problems = [f"exit status {returncode}"]
        if fatal:
            problems.append("gpg reported " + ", ".join(fatal))
        if missing:
            problems.append("no " + ", ".join(missing))
        if not complete:
            problems.append("gpg stopped reading early")
        raise ValidationError(f"{where}: gpg does not decrypt it ({'; '.join(problems)}): {stderr}")
    return read_back, sha256.hexdigest()


def _read_available(fd: int) -> bytes:
    """Everything a pipe whose writers are gone holds."""
    os.set_blocking(fd, False)
    data = bytearray()
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    return bytes(data)
