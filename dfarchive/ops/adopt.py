"""Taking over what the original ``dataflow_archive`` tool left: its archives, its keys,
its crash leftovers.

The original tool wrote ``destination_path/<run>.tar.gpg`` (``tar -cf - | gpg
--symmetric --cipher-algo AES256 --compress-algo none --passphrase-file <run>.key``,
the key being ``gpg --gen-random 1 256``), wrapped the key into
``~/run_keys/<run>.key.gpg`` with ``gpg --encrypt -r <gpg_receiver>``, deleted the
plaintext ``<run>.key`` and marked the run ``encrypted`` with no record of what it made.

:func:`adoption_record` checks such a pair of files without any key (the archive is a
well-formed OpenPGP symmetric message: SKESK then one SEIPD packet filling the file; the
key file is addressed to the configured recipient) and builds the ``archive`` record
dfarchive keeps for its own runs, marked ``format: "dataflow_archive"``. With an
unwrapper (``--deep``) it also decrypts the archive, checks its integrity code (MDC) and
tar stream, and records the plaintext SHA-256 and member count.

The original tool's crash leftovers (plaintext ``<run>.key``) are handled by
:mod:`dfarchive.coordination.leftovers`.
"""

from __future__ import annotations

import io
import logging
import os
import socket
import stat
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dfarchive.archiving.gpgcli import END_OF_OPTIONS, LIST_KEYS
from dfarchive.archiving.keys import (
    Recipient,
    _parse_colons,
    _run_gpg,
    gpg_passphrase,
)
from dfarchive.archiving.pipeline import ARCHIVE_SUFFIX, KEY_SUFFIX
from dfarchive.archiving.tarheaders import TarStreamTally
from dfarchive.coordination.scan import run_id_problem
from dfarchive.errors import AdoptionError, CryptoError, DfArchiveError, IntegrityError
from dfarchive.openpgp import ByteSource, decrypt
from dfarchive.openpgp import packets as p
from dfarchive.openpgp.s2k import S2K
from dfarchive.openpgp.streams import (
    BodyStream,
    Buffered,
    FileStream,
    next_header,
    read_header,
    read_small_body,
)
from dfarchive.ops.verify import READ_SIZE, _HashingReader

log = logging.getLogger(__name__)

LEGACY_FORMAT = "dataflow_archive"
"""``archive.format`` of an adopted run: its key is a ``gpg --gen-random 1 256`` binary
passphrase, of which gpg used the bytes before the first newline or NUL."""

MAX_SESSION_PACKET = 1 << 16
"""Largest SKESK/PKESK/marker body accepted (real ones are well under 1 KiB)."""
MAX_KEY_FILE = 1 << 20
"""Largest wrapped key file read (a wrapped 256-byte key is well under 2 KiB)."""
MIN_SEIPD_BODY = 1 + 18 + p.MDC_PACKET_SIZE
"""Version octet, AES random prefix (16 + 2), MDC packet: an empty message's SEIPD."""
WILDCARD_KEY_ID = "0" * 16

KeyUnwrapper = Callable[[Path], bytes]


@dataclass(frozen=True)
class LegacyFiles:
    """Where the original tool put one run's archive and wrapped key."""

    archive: Path
    key_file: Path

    @classmethod
    def of(cls, run_id: str, *, destination_path: Path, keys_path: Path) -> LegacyFiles:
        """Raises AdoptionError for a run id that is not one file name component."""
        problem = run_id_problem(run_id)
        if problem is not None:
            raise AdoptionError(f"run id {run_id!r} can't name a file: {problem}")
        return cls(
            archive=destination_path / f"{run_id}{ARCHIVE_SUFFIX}",
            key_file=keys_path / f"{run_id}{KEY_SUFFIX}",
        )


# -- the archive --------------------------------------------------------------------------


@dataclass(frozen=True)
class ArchiveShape:
    """What the packet headers of a symmetric message say (no key needed)."""

    session_keys: int
    cipher: int


def check_symmetric_message(source: ByteSource, *, whole: bool = True) -> ArchiveShape:
    """Check ``source`` is one OpenPGP symmetric message as ``gpg --symmetric`` writes it.

    One or more SKESK v4 packets (markers allowed), then one SEIPD v1 packet; with
    ``whole``, that packet's body (across its partial lengths) ends exactly at the end
    of ``source``. The ciphertext itself is not decrypted.

    Raises: CryptoError saying what is wrong.
    """
    src = Buffered(FileStream(source, READ_SIZE, None), READ_SIZE)
    ciphers: list[int] = []
    while True:
        header = next_header(
            src, "truncated before the encrypted data" if ciphers else "empty file"
        )
        if header.tag == p.TAG_SKESK:
            ciphers.append(_parse_skesk(read_small_body(src, header, MAX_SESSION_PACKET)))
        elif header.tag == p.TAG_MARKER:
            read_small_body(src, header, MAX_SESSION_PACKET)
        elif header.tag == p.TAG_SEIPD and ciphers:
            break
        elif header.tag == p.TAG_SEIPD:
            raise IntegrityError("no passphrase-encrypted session key (SKESK) packet")
        else:
            raise IntegrityError(
                f"packet tag {header.tag} where a symmetric message has SKESK or SEIPD"
            )
    body = Buffered(BodyStream(src, header, READ_SIZE), READ_SIZE)
    if body.read_exact(1, "the encrypted data packet")[0] != p.SEIPD_VERSION:
        raise IntegrityError("the encrypted data packet is not SEIPD version 1")
    if whole:
        length = 1
        while chunk := body.read(READ_SIZE):
            length += len(chunk)
        if length < MIN_SEIPD_BODY:
            raise IntegrityError(f"the encrypted data packet is too short ({length} bytes)")
        if not src.at_end():
            raise IntegrityError("data after the end of the encrypted data packet")
    return ArchiveShape(session_keys=len(ciphers), cipher=ciphers[0])


def _parse_skesk(body: bytes) -> int:
    """The cipher of a SKESK v4 packet, after checking its S2K specifier parses."""
    if len(body) < 2 or body[0] != p.SKESK_VERSION:
        raise IntegrityError(
            f"symmetric-key session key packet version {body[:1].hex() or 'missing'}, not 4"
        )
    S2K.parse(body[2:])
    return body[1]


@dataclass(frozen=True)
class _Read:
    """An archive read once: its size and SHA-256 (and the plaintext's, when decrypted)."""

    size: int
    sha256: str
    plaintext: dict[str, Any]


def _open_archive(path: Path) -> int:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise AdoptionError(f"archive {path} is missing") from None
    except OSError as error:
        raise AdoptionError(f"archive {path} cannot be opened: {error.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise AdoptionError(f"archive {path} is not a regular file")
    return fd


def read_archive(path: Path, passphrase: bytes | None = None) -> _Read:
    """Check the archive's structure and hash it in one pass; with ``passphrase``, also
    decrypt it (MDC, tar stream) in that same pass.

    Raises: AdoptionError naming the file.
    """
    fd = _open_archive(path)
    try:
        if passphrase is None:
            reader = _HashingReader(fd, None)
            _checked(path, lambda: check_symmetric_message(reader))
            plaintext: dict[str, Any] = {}
        else:
            with open(path, "rb", buffering=0) as head:
                _checked(path, lambda: check_symmetric_message(head, whole=False))
            reader = _HashingReader(fd, None)
            plaintext = _decrypted(path, reader, passphrase)
        reader.read_to_end()
    except OSError as error:
        raise AdoptionError(f"archive {path} cannot be read: {error.strerror}") from None
    finally:
        os.close(fd)
    return _Read(size=reader.size, sha256=reader.sha256.hexdigest(), plaintext=plaintext)


def _checked(path: Path, check: Callable[[], object]) -> None:
    try:
        check()
    except CryptoError as error:
        raise AdoptionError(
            f"archive {path} is not a well-formed OpenPGP symmetric message: {error}"
        ) from None


def _decrypted(path: Path, reader: _HashingReader, passphrase: bytes) -> dict[str, Any]:
    plaintext = TarStreamTally(sha256=True, keep_going=True)
    try:
        decrypt(reader, passphrase, plaintext.feed, read_size=READ_SIZE)
    except CryptoError as error:
        raise AdoptionError(f"archive {path} does not decrypt with its key: {error}") from None
    summary = plaintext.summary()
    if plaintext.error is not None:
        raise AdoptionError(f"archive {path}: the tar stream is corrupt: {plaintext.error}")
    if not summary.end_of_archive:
        raise AdoptionError(f"archive {path}: the tar stream has no end-of-archive marker")
    return {
        "plaintext_size": plaintext.size,
        "plaintext_sha256": plaintext.hexdigest(),
        "members": summary.members,
        "members_sha256": summary.members_sha256,
        "validated_with": "inprocess",
    }


# -- the wrapped key ----------------------------------------------------------------------


def recipient_key_ids(recipient: Recipient, *, gnupg_home: str | None = None) -> frozenset[str]:
    """Every key id of the recipient's key (primary and subkeys, expired ones too: a
    legacy key file may be addressed to a subkey that has since expired).

    Raises: ToolError.
    """
    result = _run_gpg(
        [*LIST_KEYS, END_OF_OPTIONS, recipient.fingerprint],
        what=f"--list-keys {recipient.fingerprint}",
        gnupg_home=gnupg_home,
    )
    keys = _parse_colons(result.stdout.decode(errors="replace"))
    return frozenset(key.key_id for public in keys for key in public.keys)


def key_file_recipients(path: Path) -> list[str]:
    """The key ids a wrapped key file is encrypted to (its PKESK packets).

    Raises: AdoptionError if it is missing, unreadable or not a public-key encrypted
    OpenPGP message.
    """
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_KEY_FILE + 1)
    except FileNotFoundError:
        raise AdoptionError(f"key file {path} is missing") from None
    except OSError as error:
        raise AdoptionError(f"key file {path} cannot be read: {error.strerror}") from None
    if len(data) > MAX_KEY_FILE:
        raise AdoptionError(f"key file {path} is larger than {MAX_KEY_FILE} bytes")
    try:
        return _parse_key_file(data)
    except CryptoError as error:
        raise AdoptionError(f"key file {path} is not a wrapped key: {error}") from None


def _parse_key_file(data: bytes) -> list[str]:
    src = Buffered(FileStream(io.BytesIO(data), READ_SIZE, None), READ_SIZE)
    key_ids: list[str] = []
    while (header := read_header(src)) is not None:
        if header.tag == p.TAG_PKESK:
            body = read_small_body(src, header, MAX_SESSION_PACKET)
            if len(body) < 10 or body[0] != 3:
                raise IntegrityError("public-key session key packet is not version 3")
            key_ids.append(body[1:9].hex().upper())
        elif header.tag == p.TAG_MARKER:
            read_small_body(src, header, MAX_SESSION_PACKET)
        elif header.tag in (p.TAG_SEIPD, p.TAG_SED, p.TAG_AEAD) and key_ids:
            Buffered(BodyStream(src, header, READ_SIZE), READ_SIZE).drain()
            if not src.at_end():
                raise IntegrityError("data after the encrypted data packet")
            return key_ids
        else:
            raise IntegrityError(
                f"packet tag {header.tag} where a wrapped key has public-key session keys"
            )
    raise IntegrityError("no public-key session key and encrypted data packets")


def check_key_file(path: Path, recipient: Recipient, key_ids: Collection[str]) -> None:
    """Raise AdoptionError unless ``path`` is encrypted to one of ``key_ids`` (the
    recipient's, from :func:`recipient_key_ids`)."""
    addressed = key_file_recipients(path)
    if not set(addressed) & set(key_ids):
        hidden = " (hidden recipient)" if WILDCARD_KEY_ID in addressed else ""
        raise AdoptionError(
            f"key file {path} is encrypted to {', '.join(addressed)}{hidden}, not to "
            f"gpg_receiver {recipient.fingerprint} (key ids {', '.join(sorted(key_ids))})"
        )


# -- adoption -----------------------------------------------------------------------------


def adoption_record(
    run_id: str,
    *,
    destination_path: Path,
    keys_path: Path,
    recipient: Recipient,
    recipient_keys: Collection[str],
    unwrap: KeyUnwrapper | None = None,
) -> dict[str, Any]:
    """The ``archive`` record of a run the original tool archived, after checking its
    files (see the module docstring); with ``unwrap`` (deep), after decrypting it too.

    Raises: AdoptionError naming the file and what is wrong (nothing is written).
    """
    files = LegacyFiles.of(run_id, destination_path=destination_path, keys_path=keys_path)
    check_key_file(files.key_file, recipient, recipient_keys)
    passphrase = None
    if unwrap is not None:
        try:
            passphrase = gpg_passphrase(unwrap(files.key_file))
        except (DfArchiveError, OSError) as error:
            raise AdoptionError(f"key file {files.key_file} cannot be unwrapped: {error}") from None
        if not passphrase:
            raise AdoptionError(
                f"key file {files.key_file} holds a key that is empty before its first "
                "newline or NUL: gpg could not have encrypted with it"
            )
    read = read_archive(files.archive, passphrase)
    return {
        "file": str(files.archive),
        "size": read.size,
        "sha256": read.sha256,
        **read.plaintext,
        "key_file": str(files.key_file),
        "recipient_fingerprint": recipient.fingerprint,
        "format": LEGACY_FORMAT,
        "host": socket.gethostname(),
    }


# -- crash leftovers ----------------------------------------------------------------------
