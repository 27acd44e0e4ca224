"""Check an archived run for bit rot, with or without its key.

:func:`verify_run` takes a run document and checks what its ``archive`` record says:

* always: the archive file exists and has the recorded ``size`` and ``sha256``
  (streamed in large reads), and the wrapped key file exists; with ``recipient_keys``,
  the key file is also read and must be addressed (PKESK) to the recorded recipient;
* ``deep``: additionally unwraps the run key (needs the recipient's private key in
  the keyring) and decrypts the archive in the same pass with dfarchive's OpenPGP reader
  (the key used as gpg uses a passphrase file: the original tool's binary keys work),
  checking the integrity code (MDC), the recorded ``plaintext_size`` and
  ``plaintext_sha256``, and the tar stream's member count and names (``members``,
  ``members_sha256``) when recorded.

A mismatch is not an exception: it is listed in :attr:`VerifyReport.problems`; an
archive file that is gone altogether also sets :attr:`VerifyReport.missing` (fixity
audits record that apart from damage: archives may be moved to tape by other tools).

An ``encrypted`` run without an archive record was archived by the original tool
(``dataflow_archive``): ``dfarchive adopt`` gives it one. Adopted records
(``format: "dataflow_archive"``) have no plaintext checksums unless adopted deeply;
what is not recorded is not compared.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

from dfarchive.archiving.keys import gpg_passphrase
from dfarchive.archiving.tarheaders import TarStreamTally
from dfarchive.coordination.runstate import ENCRYPTED
from dfarchive.errors import (
    AdoptionError,
    Cancelled,
    CryptoError,
    DfArchiveError,
    KeyFileError,
    NotVerifiable,
)
from dfarchive.openpgp import decrypt

READ_SIZE = 8 << 20
"""Bytes read from the archive per step."""

KeyUnwrapper = Callable[[Path], bytes]
#: Called with the number of bytes just read from the archive (a rate limiter may sleep).
ReadObserver = Callable[[int], None]
#: A recipient's fingerprint → all its key ids (primary and subkeys).
RecipientKeys = Callable[[str], Collection[str]]


@dataclass(frozen=True, kw_only=True)
class ArchiveRecord:
    """The parts of a run document's ``archive`` record that verification uses."""

    file: Path
    size: int
    sha256: str
    key_file: Path | None = None
    recipient_fingerprint: str | None = None
    plaintext_size: int | None = None
    plaintext_sha256: str | None = None
    members: int | None = None
    members_sha256: str | None = None


@dataclass(kw_only=True)
class VerifyReport:
    """The outcome: what was checked and found right, and what did not match."""

    archive: Path
    deep: bool
    passed: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    missing: bool = False  # the archive file does not exist
    bytes_read: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def archive_record(doc: Mapping[str, Any]) -> ArchiveRecord:
    """The verifiable archive record of an encrypted run.

    Raises: NotVerifiable naming the run and what is missing.
    """
    run_id = doc.get("_id")
    if doc.get("status") != ENCRYPTED:
        raise NotVerifiable(f"run {run_id!r} is {doc.get('status')!r}, not encrypted")
    record = doc.get("archive")
    if not isinstance(record, Mapping):
        raise NotVerifiable(
            f"run {run_id!r} has no archive record: it was archived by the original tool "
            f"(dataflow_archive) and must be adopted first: dfarchive adopt {run_id}"
        )
    file, size, sha256 = record.get("file"), record.get("size"), record.get("sha256")
    if not isinstance(file, str) or not _is_int(size) or not isinstance(sha256, str):
        raise NotVerifiable(f"run {run_id!r}: the archive record lacks file, size or sha256")

    def optional_int(key: str) -> int | None:
        value = record.get(key)
        return value if _is_int(value) else None

    def optional_str(key: str) -> str | None:
        value = record.get(key)
        return value if isinstance(value, str) and value else None

    key_file = optional_str("key_file")
    return ArchiveRecord(
        file=Path(file),
        size=size,
        sha256=sha256.lower(),
        key_file=Path(key_file) if key_file else None,
        recipient_fingerprint=optional_str("recipient_fingerprint"),
        plaintext_size=optional_int("plaintext_size"),
        plaintext_sha256=optional_str("plaintext_sha256"),
        members=optional_int("members"),
        members_sha256=optional_str("members_sha256"),
    )


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def verify_run(
    doc: Mapping[str, Any],
    *,
    deep: bool = False,
    unwrap: KeyUnwrapper | None = None,
    cancel: threading.Event | None = None,
    on_read: ReadObserver | None = None,
    recipient_keys: RecipientKeys | None = None,
) -> VerifyReport:
    """Verify the archive a run document records.

    Parameters:
      doc: the run document.
      deep: also decrypt and check the plaintext (needs ``unwrap``).
      unwrap: turns the key file into the run key (e.g.
        :func:`dfarchive.archiving.keys.unwrap_key`).
      cancel: when set, verification stops (Cancelled).
      on_read: called after every read with its size (rate limiting, progress).
      recipient_keys: resolves the recorded ``recipient_fingerprint`` to its key ids,
        to check the key file is addressed to it (skipped without it, or when the
        record names no recipient).

    Returns: the report; ``report.ok`` is False when anything did not match.

    Raises:
      NotVerifiable: the run is not encrypted or has no usable archive record.
      ToolError / other DfArchiveError from ``unwrap``: the key could not be unwrapped
        (a key file that is not a run key, KeyFileError, is a problem in the report).
      Cancelled.
    """
    record = archive_record(doc)
    if deep and unwrap is None:
        raise ValueError("deep verification needs a key unwrapper")
    report = VerifyReport(archive=record.file, deep=deep)
    key_present = _check_key_file(record, report, recipient_keys)
    try:
        fd = os.open(record.file, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        report.problems.append(f"archive {record.file} is missing")
        report.missing = True
        return report
    except OSError as error:
        report.problems.append(f"archive {record.file} cannot be opened: {error}")
        return report
    reader = _HashingReader(fd, cancel, on_read)
    try:
        size = os.fstat(fd).st_size
        size_ok = size == record.size
        if size_ok:
            report.passed.append(f"size {size} bytes")
        else:
            report.problems.append(
                f"archive {record.file} is {size} bytes, the record says {record.size}"
            )
        if deep and unwrap is not None and key_present:
            assert record.key_file is not None
            try:
                passphrase = gpg_passphrase(unwrap(record.key_file))
            except KeyFileError as error:
                report.problems.append(str(error))
                _hash_pass(fd, record, report, reader)
            else:
                _deep_pass(fd, passphrase, record, report, reader)
        elif size_ok:
            _hash_pass(fd, record, report, reader)
        else:
            report.problems.append("SHA-256 not computed: the size already differs")
    finally:
        os.close(fd)
        report.bytes_read = reader.size
    return report


def _check_key_file(
    record: ArchiveRecord, report: VerifyReport, recipient_keys: RecipientKeys | None
) -> bool:
    if record.key_file is None:
        report.problems.append("the archive record names no key file")
        return False
    if not record.key_file.is_file() or record.key_file.stat().st_size == 0:
        report.problems.append(f"key file {record.key_file} is missing or empty")
        return False
    report.passed.append(f"key file {record.key_file} present")
    if recipient_keys is not None and record.recipient_fingerprint is not None:
        _check_addressee(record.key_file, record.recipient_fingerprint, report, recipient_keys)
    return True


def _check_addressee(
    path: Path, fingerprint: str, report: VerifyReport, recipient_keys: RecipientKeys
) -> None:
    """The key file is readable and addressed to one of the recipient's key ids."""
    from dfarchive.ops.adopt import key_file_recipients  # adopt imports this module

    try:
        addressed = key_file_recipients(path)
    except AdoptionError as error:
        report.problems.append(str(error))
        return
    try:
        key_ids = set(recipient_keys(fingerprint))
    except DfArchiveError as error:
        report.problems.append(
            f"key file {path}: cannot list the recorded recipient {fingerprint}'s keys: {error}"
        )
        return
    if set(addressed) & key_ids:
        report.passed.append(f"key file {path} addressed to {fingerprint}")
    else:
        report.problems.append(
            f"key file {path} is encrypted to {', '.join(addressed)}, not to the recorded "
            f"recipient {fingerprint} (key ids {', '.join(sorted(key_ids))})"
        )


def recipient_key_lister(gnupg_home: str | None) -> RecipientKeys:
    """A :data:`RecipientKeys` asking gpg (``--list-keys``; the public key is enough),
    remembering each answer."""
    from dfarchive.archiving.keys import Recipient
    from dfarchive.ops.adopt import recipient_key_ids

    known: dict[str, frozenset[str]] = {}

    def lookup(fingerprint: str) -> frozenset[str]:
        if fingerprint not in known:
            recipient = Recipient(fingerprint=fingerprint, uid="", expires=None)
            known[fingerprint] = recipient_key_ids(recipient, gnupg_home=gnupg_home)
        return known[fingerprint]

    return lookup


class _HashingReader:
    """A raw readable file over ``fd`` that hashes every byte read."""

    def __init__(
        self, fd: int, cancel: threading.Event | None, on_read: ReadObserver | None = None
    ) -> None:
        self.fd = fd
        self.cancel = cancel
        self.on_read = on_read
        self.sha256 = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("verification was cancelled")
        view = memoryview(buffer).cast("B")
        n = os.readv(self.fd, [view])
        self.sha256.update(view[:n])
        self.size += n
        if self.on_read is not None and n:
            self.on_read(n)
        return n

    def read(self, size: int = -1) -> bytes:
        buffer = bytearray(READ_SIZE if size is None or size < 0 else size)
        return bytes(buffer[: self.readinto(buffer)])

    def read_to_end(self) -> None:
        buffer = memoryview(bytearray(READ_SIZE))
        while self.readinto(buffer):
            pass


def _hash_pass(
    fd: int, record: ArchiveRecord, report: VerifyReport, reader: _HashingReader
) -> None:
    _advise_sequential(fd)
    reader.read_to_end()
    _compare_archive_hash(reader, record, report)


def _compare_archive_hash(
    reader: _HashingReader, record: ArchiveRecord, report: VerifyReport
) -> None:
    digest = reader.sha256.hexdigest()
    if digest == record.sha256:
        report.passed.append(f"SHA-256 {digest}")
    else:
        report.problems.append(
            f"archive {record.file} SHA-256 is {digest}, the record says {record.sha256}"
        )


def _deep_pass(
    fd: int,
    passphrase: bytes,
    record: ArchiveRecord,
    report: VerifyReport,
    reader: _HashingReader,
) -> None:
    plaintext = TarStreamTally(sha256=True, keep_going=True)
    _advise_sequential(fd)
    try:
        decrypt(reader, passphrase, plaintext.feed, read_size=READ_SIZE, cancel=reader.cancel)
        decrypted = True
    except CryptoError as error:
        decrypted = False
        report.problems.append(f"archive {record.file} does not decrypt: {error}")
    reader.read_to_end()
    _compare_archive_hash(reader, record, report)
    if not decrypted:
        return
    report.passed.append("decrypts; integrity code (MDC) correct")
    _compare(report, "plaintext size", plaintext.size, record.plaintext_size)
    _compare(report, "plaintext SHA-256", plaintext.hexdigest(), record.plaintext_sha256)
    summary = plaintext.summary()
    if plaintext.error is not None:
        report.problems.append(f"the decrypted tar stream is corrupt: {plaintext.error}")
    elif not summary.end_of_archive:
        report.problems.append("the decrypted tar stream has no end-of-archive marker")
    else:
        _compare(report, "tar members", summary.members, record.members)
        _compare(report, "tar member names SHA-256", summary.members_sha256, record.members_sha256)


def _compare(report: VerifyReport, what: str, found: Any, recorded: Any) -> None:
    if recorded is None:
        return  # not recorded by the tool that archived this run
    if found == recorded:
        report.passed.append(f"{what} {found}")
    else:
        report.problems.append(f"{what} is {found}, the record says {recorded}")


def _advise_sequential(fd: int) -> None:
    """Tell the kernel ``fd`` will be read once from start to end (best effort)."""
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
