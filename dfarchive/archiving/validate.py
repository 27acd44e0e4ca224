"""Read a written archive back and prove it holds exactly what was archived.

:func:`validate_archive` reads ``<run>.tar.gpg`` once, hashing it (SHA-256, the
checksum the run document records) and decrypting it (with dfarchive's OpenPGP reader
or with ``gpg --decrypt``), and checks, against the
:class:`~dfarchive.archiving.engines.base.EncryptResult` taken while writing:

* the archive's size;
* the OpenPGP integrity code (MDC), which proves the decrypted bytes are the ones that
  were encrypted — with gpg, from its ``--status-fd`` lines, never its exit code alone;
* the plaintext length;
* the tar headers of the decrypted stream (:class:`~dfarchive.archiving.tarheaders.TarHeaderWalker`:
  member count, member names, end-of-archive marker).

The archive's SHA-256 is taken here rather than while writing, so the recorded checksum
is that of the bytes that were read back and passed. The plaintext SHA-256 taken while
writing is not recomputed: the MDC already ties the decrypted bytes to the encrypted
ones, and hashing them again would cost a full pass.

The in-process method reads with direct I/O when asked (:mod:`dfarchive.plumbing.directio`):
the bytes then come from the device, and reading them costs no page-cache CPU; a
read-ahead thread keeps the device busy and a helper takes the SHA-256 meanwhile.

:class:`TrailingValidation` does the same reading, decrypting and hashing while the
archive is being written, on a thread of its own that reads only what the writer has
written (:mod:`dfarchive.plumbing.writeprogress`); the checks against the
:class:`~dfarchive.archiving.engines.base.EncryptResult` are made once both are done.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dfarchive.archiving.engines.base import EncryptResult
from dfarchive.archiving.gpgcli import (
    GPG_EXIT_TIMEOUT,
    status_keywords,
    symmetric_decrypt_command,
)
from dfarchive.archiving.tarheaders import TarStreamTally
from dfarchive.errors import Cancelled, CryptoError, ValidationError
from dfarchive.openpgp import decrypt
from dfarchive.plumbing.childproc import (
    POLL_SECONDS,
    Child,
    LinkedEvent,
    prepare_pipe,
    pump,
    secret_pipe,
    write_all,
)
from dfarchive.plumbing.directio import open_direct
from dfarchive.plumbing.readahead import ReadAhead
from dfarchive.plumbing.writeprogress import WriteProgress

VALIDATION_METHODS = ("inprocess", "gpg")
#: When the archive is read back: by a reader trailing the writer, or once it is written.
VALIDATE_MODES = ("overlapped", "after")

# 2 MiB, a core's L2 cache on the benchmark host: with two runs at once (hashes on
# helper threads), 4 MiB read-backs took 4.6-4.8 CPU s/GiB end to end and 2 MiB ones
# 4.4-4.6, for 3-4 % more throughput; one run alone was unchanged.
READ_SIZE = 2 << 20
"""Bytes read from the archive per step (a multiple of ``DIRECT_ALIGNMENT``)."""

GPG_REQUIRED_STATUS = frozenset({"DECRYPTION_OKAY", "GOODMDC", "END_DECRYPTION"})
GPG_FATAL_STATUS = frozenset({"BADMDC", "DECRYPTION_FAILED", "NO_SECKEY", "ERROR", "FAILURE"})

PROGRESS_INTERVAL = 1.0
"""Least number of seconds between two reports of the plaintext bytes validated."""

Progress = Callable[[int], None]
"""Called with the plaintext bytes validated so far (throttled)."""


def validate_archive(
    archive_path: Path,
    passphrase: bytes,
    expected: EncryptResult,
    *,
    method: str = "inprocess",
    from_device: bool = False,
    direct: bool = True,
    cancel: threading.Event | None = None,
    progress: Progress | None = None,
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
        progress: called with the plaintext bytes validated, on the first chunk and
            then at most every ``PROGRESS_INTERVAL`` seconds.

    Returns:
        The hex SHA-256 of the archive as it was read back.

    Raises:
        ValidationError: any check failed; the message names the file and the check.
        ToolError: gpg could not be run (method ``"gpg"``).
        Cancelled: ``cancel`` was set.
        OSError: the archive could not be opened or read.
        ValueError: unknown ``method``.
    """
    _check_method(method)
    where = str(archive_path)
    fd = open_direct(
        Path(archive_path), os.O_RDONLY | os.O_CLOEXEC, 0, direct=direct and method == "inprocess"
    )
    try:
        size = os.fstat(fd).st_size
        if size != expected.archive_size:
            raise ValidationError(
                f"{where}: archive is {size} bytes, {expected.archive_size} were written"
            )
        if from_device:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        found = _read_back(fd, passphrase, method, where, cancel, progress)
    finally:
        os.close(fd)
    return _check(found, expected)


class TrailingValidation:
    """:func:`validate_archive` of an archive while it is being written, on a thread.

    Started on ``archive_path`` (opened now, and checked to be the file behind
    ``writer_fd``), it reads the archive as ``written`` says it was written, decrypting
    and hashing it; :meth:`finish` then makes the checks against what the writer
    reports. If the reading fails, it sets ``stop`` (the writer's cancel event: the
    writer stops) and :meth:`finish` or :meth:`raise_error` raise its error; if the
    writer fails (``written`` is failed), the reader ends with Cancelled and leaves
    ``stop`` alone, so that the writer raises its own error (e.g. ``ENOSPC``), not
    Cancelled. Use as a
    context manager around the writing: leaving the block stops the reader (setting
    ``stop`` and failing ``written``) unless it finished, and waits for it.

    Parameters are those of :func:`validate_archive`; ``stop`` is its ``cancel``.
    """

    def __init__(
        self,
        archive_path: Path,
        writer_fd: int,
        passphrase: bytes,
        written: WriteProgress,
        *,
        method: str = "inprocess",
        direct: bool = True,
        stop: threading.Event,
        progress: Progress | None = None,
    ) -> None:
        _check_method(method)
        self.where = str(archive_path)
        self._written = written
        self._stop = stop
        self._found: _ReadBack | None = None
        self._error: BaseException | None = None
        self._fd = open_direct(
            Path(archive_path),
            os.O_RDONLY | os.O_CLOEXEC,
            0,
            direct=direct and method == "inprocess",
        )
        try:
            ours, writers = os.fstat(self._fd), os.fstat(writer_fd)
            if (ours.st_dev, ours.st_ino) != (writers.st_dev, writers.st_ino):
                raise ValidationError(f"{self.where}: is not the file being written")
            os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except BaseException:
            os.close(self._fd)
            raise
        self._thread = threading.Thread(
            target=self._run,
            args=(passphrase, method, progress),
            name="dfarchive-validate",
            daemon=True,
        )
        self._thread.start()

    def _run(self, passphrase: bytes, method: str, progress: Progress | None) -> None:
        try:
            self._found = _read_back(
                self._fd, passphrase, method, self.where, self._stop, progress, self._written
            )
        except BaseException as error:  # handed to finish()
            self._error = error
            if not isinstance(error, Cancelled):  # a failed writer raises its own error
                self._stop.set()  # the writer stops

    def raise_error(self) -> None:
        """Raise the reader's error, if it failed (other than by being stopped)."""
        if self._error is not None and not isinstance(self._error, Cancelled):
            raise self._error

    def finish(self, expected: EncryptResult) -> str:
        """Wait for the reader to read the end (the writer has closed) and check what it
        found against ``expected``; return the archive's hex SHA-256.

        Raises: as :func:`validate_archive`.
        """
        self._join()
        if self._error is not None:
            raise self._error
        assert self._found is not None
        return _check(self._found, expected)

    def _join(self) -> None:
        while self._thread.is_alive():  # bounded waits: asynchronous exceptions land
            self._thread.join(POLL_SECONDS)

    def close(self) -> None:
        """Stop the reader unless it is done, wait for it, close the file. Idempotent."""
        if self._thread.is_alive():
            self._stop.set()
            self._written.fail()
            self._join()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> TrailingValidation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class _ReadBack:
    """What reading an archive back found."""

    where: str
    size: int
    sha256: str
    plaintext: _PlaintextCheck


@dataclass(frozen=True)
class _Reading:
    """Reading an archive back: its file descriptor and name, the event that stops the
    reading, and the writer the reading trails (if it does)."""

    fd: int
    where: str
    cancel: threading.Event | None
    trail: WriteProgress | None


def _check_method(method: str) -> None:
    if method not in VALIDATION_METHODS:
        raise ValueError(f"unknown validation method {method!r}")


def _read_back(
    fd: int,
    passphrase: bytes,
    method: str,
    where: str,
    cancel: threading.Event | None,
    progress: Progress | None,
    trail: WriteProgress | None = None,
) -> _ReadBack:
    """Read the archive behind ``fd`` (trailing its writer, with ``trail``), decrypting
    it with ``method``."""
    plaintext = _PlaintextCheck(where, progress)
    decrypt_with = _decrypt_with_gpg if method == "gpg" else _decrypt_in_process
    size, sha256 = decrypt_with(_Reading(fd, where, cancel, trail), passphrase, plaintext)
    return _ReadBack(where, size, sha256, plaintext)


def _check(found: _ReadBack, expected: EncryptResult) -> str:
    """Compare what was read back with what was written; return the archive's SHA-256."""
    where, plaintext = found.where, found.plaintext
    if found.size != expected.archive_size:
        raise ValidationError(
            f"{where}: {found.size} bytes were read back, {expected.archive_size} were written"
        )
    if plaintext.size != expected.plaintext_size:
        raise ValidationError(
            f"{where}: decrypts to {plaintext.size} bytes, {expected.plaintext_size} were archived"
        )
    summary = plaintext.summary()
    if not summary.end_of_archive:
        raise ValidationError(f"{where}: decrypted tar stream has no end-of-archive marker")
    if (summary.members, summary.members_sha256) != (expected.members, expected.members_sha256):
        raise ValidationError(
            f"{where}: decrypted tar stream lists {summary.members} members "
            f"(names SHA-256 {summary.members_sha256}), expected {expected.members} "
            f"(names SHA-256 {expected.members_sha256})"
        )
    return found.sha256


class _PlaintextCheck(TarStreamTally):
    """Tallies the decrypted stream (no SHA-256: the MDC vouches for it); reports the
    count on the first chunk, then at most every ``PROGRESS_INTERVAL`` seconds."""

    def __init__(self, where: str, progress: Progress | None = None) -> None:
        super().__init__()
        self.where = where
        self._progress = progress
        self._next_report = 0.0

    def __call__(self, chunk: bytes | memoryview) -> None:
        try:
            self.feed(chunk)
        except ValidationError as exc:
            raise ValidationError(f"{self.where}: decrypted tar stream: {exc}") from None
        if self._progress is not None and time.monotonic() >= self._next_report:
            self._next_report = time.monotonic() + PROGRESS_INTERVAL
            self._progress(self.size)


def _decrypt_in_process(
    reading: _Reading, passphrase: bytes, plaintext: _PlaintextCheck
) -> tuple[int, str]:
    """Decrypt the archive into ``plaintext``; return its size and SHA-256."""
    fd, where, cancel, trail = reading.fd, reading.where, reading.cancel, reading.trail
    with ReadAhead(
        fd, block_size=READ_SIZE, digest="sha256", cancel=cancel, trail=trail
    ) as archive:
        try:
            decrypt(archive, passphrase, plaintext, read_size=READ_SIZE, cancel=cancel)
        except CryptoError as exc:
            raise ValidationError(f"{where}: does not decrypt: {exc}") from None
        while archive.read():  # only counts: decrypt() refuses trailing data
            pass
        return archive.size, archive.hexdigest()


def _decrypt_with_gpg(
    reading: _Reading, passphrase: bytes, plaintext: _PlaintextCheck
) -> tuple[int, str]:
    """Decrypt the archive with gpg into ``plaintext``; return its size and SHA-256.
    When it trails a writer, gpg is fed by a :class:`_TrailingPipe`."""
    fd, where, cancel, trail = reading.fd, reading.where, reading.cancel, reading.trail
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
            with _TrailingPipe(fd, trail, cancel) if trail else contextlib.nullcontext() as feed:
                source = fd if feed is None else feed.fd
                complete = pump(gpg, source, on_input=count, on_output=plaintext, cancel=cancel)
                if feed is not None:
                    feed.raise_error()  # a stopped writer, not gpg, ended gpg's input early
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


class _TrailingPipe:
    """The archive behind ``fd``, read as it is written (a trailing
    :class:`~dfarchive.plumbing.readahead.ReadAhead`) and relayed by a thread into a pipe whose
    non-blocking read end, :attr:`fd`, feeds gpg. Use as a context manager."""

    def __init__(self, fd: int, trail: WriteProgress, cancel: threading.Event | None) -> None:
        self.fd, self._write_fd = os.pipe()
        os.set_blocking(self.fd, False)
        prepare_pipe(self._write_fd)
        self._stop = LinkedEvent(cancel)
        self._closing = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._relay, args=(fd, trail), name="dfarchive-feed", daemon=True
        )
        self._thread.start()

    def _relay(self, fd: int, trail: WriteProgress) -> None:
        try:
            with ReadAhead(fd, block_size=READ_SIZE, cancel=self._stop, trail=trail) as source:
                while chunk := source.read():
                    write_all(self._write_fd, chunk, self._stop)
        except BaseException as error:  # gpg's input ends early; raise_error() tells why
            if not self._closing:
                self._error = error
        finally:
            os.close(self._write_fd)

    def raise_error(self) -> None:
        """Raise what stopped the relay before the end of the archive, if anything did."""
        if self._error is not None:
            raise self._error

    def __enter__(self) -> _TrailingPipe:
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing = True
        self._stop.set()
        while self._thread.is_alive():
            self._thread.join(POLL_SECONDS)
        os.close(self.fd)


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
