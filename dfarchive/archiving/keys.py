"""Run keys and the GPG recipient they are wrapped to.

A run key is 64 random hex characters (:func:`new_run_key`); it is the passphrase of the
run's symmetric archive. :func:`wrap_key` encrypts exactly that text to the configured
recipient with ``gpg --encrypt``, so a restore needs only stock tools (the README's
script: ``gpg -d run.key.gpg | gpg --passphrase-fd 0 -d run.tar.gpg | tar -x`` into a
temporary folder, kept only if gpg reports no damage at the end).

The recipient is resolved once to a fingerprint (:func:`resolve_recipient`) and pinned.
Keys go to gpg on stdin and come back on stdout: never argv, files or logs.

The original tool (``dataflow_archive``) made each run key with ``gpg --gen-random 1 256``
(256 binary bytes) and encrypted with ``--passphrase-file``: gpg used only the bytes
before the first newline or NUL as the passphrase. :func:`gpg_passphrase` applies that
rule; dfarchive's hex keys pass through it unchanged.
"""

from __future__ import annotations

import re
import secrets
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from dfarchive.archiving.gpgcli import (
    BATCH,
    DECRYPT_WITH_STATUS,
    ENCRYPT_TO,
    END_OF_OPTIONS,
    GPG,
    LIST_KEYS,
    LIST_RECIPIENTS,
    OUTPUT_STDOUT,
    status_keywords,
)
from dfarchive.errors import KeyFileError, RecipientError, ToolError
from dfarchive.plumbing.childproc import child_environment

RUN_KEY_BYTES = 32
"""Random bytes in a run key (hex-encoded to 64 characters)."""

GPG_KEY_OP_TIMEOUT = 60.0
"""Seconds a gpg key operation (list, encrypt, decrypt a key) may take."""

PASSPHRASE_ENDS = (b"\n", b"\0")
"""gpg stops reading a --passphrase-file/--passphrase-fd at a newline; a NUL ends the
C string it then hashes (gnupg g10/passphrase.c: read_passphrase_from_fd, strlen)."""

_UNUSABLE_VALIDITY = frozenset("rei")  # revoked, expired, invalid
_DISABLED = "D"  # in the capabilities field of a primary key
_ENCRYPT_CAPABLE = "e"


@dataclass(frozen=True, kw_only=True)
class Recipient:
    """A resolved GPG recipient, pinned by fingerprint.

    Attributes:
        fingerprint: the primary key's fingerprint (40 hex digits, upper case).
        uid: its first user ID.
        expires: when the primary key expires (UTC), or None if never.
        encryption_key_ids: the 16-hex-digit key IDs of its usable encryption-capable
            keys (primary or subkeys); gpg encrypts to one of these.
    """

    fingerprint: str
    uid: str
    expires: datetime | None
    encryption_key_ids: tuple[str, ...] = ()


def new_run_key() -> bytes:
    """A fresh run key: 32 bytes from :mod:`secrets` as 64 lower-case hex ASCII bytes."""
    return secrets.token_bytes(RUN_KEY_BYTES).hex().encode()


def resolve_recipient(name: str, *, gnupg_home: str | None = None) -> Recipient:
    """Find the one public key ``name`` designates and check it can be encrypted to.

    ``name`` is anything ``gpg --list-keys`` accepts (fingerprint, key ID, e-mail, part
    of a user ID).

    Raises:
        RecipientError: no key or several keys match; the key is revoked, expired,
            disabled or invalid; or it has no usable encryption-capable key or subkey.
            The message names ``name``.
        ToolError: gpg could not be run.
    """
    result = _run_gpg(
        [*LIST_KEYS, END_OF_OPTIONS, name],
        what=f"--list-keys {name!r}",
        gnupg_home=gnupg_home,
        check=False,  # exit status 2 when nothing matches
    )
    keys = _parse_colons(result.stdout.decode(errors="replace"))
    if not keys:
        raise RecipientError(
            f"GPG recipient {name!r}: no public key found "
            f"({_messages(result.stderr.decode(errors='replace'))})"
        )
    if len(keys) > 1:
        fingerprints = ", ".join(key.fingerprint for key in keys)
        raise RecipientError(
            f"GPG recipient {name!r} is ambiguous: {len(keys)} keys match ({fingerprints})"
        )
    key = keys[0]
    now = datetime.now(UTC)
    if key.validity in _UNUSABLE_VALIDITY or _DISABLED in key.capabilities:
        state = {"r": "revoked", "e": "expired", "i": "invalid"}.get(key.validity, "disabled")
        raise RecipientError(f"GPG recipient {name!r} ({key.fingerprint}) is {state}")
    if key.expires is not None and key.expires <= now:
        raise RecipientError(f"GPG recipient {name!r} ({key.fingerprint}) is expired")
    usable = tuple(
        sub.key_id
        for sub in key.keys
        if _ENCRYPT_CAPABLE in sub.capabilities
        and sub.validity not in _UNUSABLE_VALIDITY
        and (sub.expires is None or sub.expires > now)
    )
    if not usable:
        raise RecipientError(
            f"GPG recipient {name!r} ({key.fingerprint}) has no usable encryption key "
            "(sign-only, or its encryption subkeys are expired or revoked)"
        )
    return Recipient(
        fingerprint=key.fingerprint, uid=key.uid, expires=key.expires, encryption_key_ids=usable
    )


def wrap_key(passphrase: bytes, recipient: Recipient, *, gnupg_home: str | None = None) -> bytes:
    """Encrypt ``passphrase`` (exactly those bytes) to ``recipient``; return binary OpenPGP.

    The result is checked to be addressed to one of the recipient's encryption keys
    (``ENC_TO`` from ``gpg --list-only``).

    Raises:
        RecipientError: gpg refuses the key (e.g. expired since it was resolved), or
            the result is addressed to another key.
        ToolError: gpg failed otherwise.
    """
    result = _run_gpg(
        [*ENCRYPT_TO, recipient.fingerprint, *OUTPUT_STDOUT],
        what=f"--encrypt to {recipient.fingerprint}",
        gnupg_home=gnupg_home,
        stdin=passphrase,
        check=False,
    )
    if result.returncode != 0 or not result.stdout:
        stderr = result.stderr.decode(errors="replace")
        if any(keyword == "INV_RECP" for keyword, _ in status_keywords(result.stderr)):
            raise RecipientError(
                f"GPG recipient {recipient.fingerprint} is not usable: {_messages(stderr)}"
            )
        raise ToolError(
            f"gpg --encrypt to {recipient.fingerprint} failed with exit status "
            f"{result.returncode}: {_messages(stderr)}"
        )
    wrapped = result.stdout
    listing = _run_gpg(
        LIST_RECIPIENTS, what="--list-only of the wrapped key", gnupg_home=gnupg_home, stdin=wrapped
    )
    addressed = {
        args[0].upper() for keyword, args in status_keywords(listing.stdout) if keyword == "ENC_TO"
    }
    key_ids = set(
        recipient.encryption_key_ids
        or resolve_recipient(recipient.fingerprint, gnupg_home=gnupg_home).encryption_key_ids
    )
    if not addressed or not addressed <= key_ids:
        raise RecipientError(
            f"wrapped key is addressed to {sorted(addressed) or 'nobody'}, not to "
            f"{recipient.fingerprint} (encryption keys {sorted(key_ids)})"
        )
    return wrapped


def gpg_passphrase(key: bytes) -> bytes:
    """The passphrase gpg derives from a ``--passphrase-file`` holding ``key``.

    The bytes before the first newline or NUL byte, whichever comes first (a carriage
    return is kept); all of ``key`` when it has neither. A dfarchive key (64 hex
    characters) is returned unchanged.
    """
    end = len(key)
    for stop in PASSPHRASE_ENDS:
        found = key.find(stop, 0, end)
        if found >= 0:
            end = found
    return key[:end]


def unwrap_key(path: Path, *, gnupg_home: str | None = None) -> bytes:
    """Decrypt a wrapped run key (needs the recipient's private key); return the key.

    The file must be a message encrypted to a public key whose secret key is in the
    keyring (what ``gpg --encrypt -r RECIPIENT`` writes), holding a non-empty passphrase
    as gpg reads one (:func:`gpg_passphrase`). The key is returned as decrypted.

    Raises:
        KeyFileError: the file is not encrypted to a public key (e.g. ``gpg --store``
            or ``gpg --symmetric`` output), or holds no passphrase.
        ToolError: gpg could not decrypt it (no private key, damaged file, ...).
    """
    with open(path, "rb") as source:
        wrapped = source.read()
    listing = _run_gpg(
        LIST_RECIPIENTS,
        what=f"--list-only {str(path)!r}",
        gnupg_home=gnupg_home,
        stdin=wrapped,
        check=False,
    )
    if not _has_status(listing.stdout, "ENC_TO"):
        raise KeyFileError(
            f"key file {path} is not a message encrypted to a public key (a run key file "
            "is written by gpg --encrypt -r RECIPIENT); refusing it"
        )
    result = _run_gpg(
        [*DECRYPT_WITH_STATUS, *OUTPUT_STDOUT],
        what=f"--decrypt {str(path)!r}",
        gnupg_home=gnupg_home,
        stdin=wrapped,
    )
    if not (
        _has_status(result.stderr, "DECRYPTION_KEY")
        and _has_status(result.stderr, "DECRYPTION_OKAY")
    ):
        raise KeyFileError(
            f"key file {path} was not decrypted with a secret key of the keyring; refusing it"
        )
    if not gpg_passphrase(result.stdout):
        raise KeyFileError(
            f"key file {path} holds no passphrase (gpg stops a passphrase at the first "
            "newline or NUL byte); refusing it"
        )
    return result.stdout


def _has_status(status: bytes, keyword: str) -> bool:
    return any(found == keyword for found, _ in status_keywords(status))


# -- gpg plumbing ---------------------------------------------------------------------


def _run_gpg(
    args: Sequence[str],
    *,
    what: str,
    gnupg_home: str | None,
    stdin: bytes = b"",
    check: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``gpg --batch --no-tty <args>`` with ``stdin``; bounded by GPG_KEY_OP_TIMEOUT.

    ``what`` names the operation in error messages.

    Raises:
        ToolError: gpg could not be started, timed out, or (with ``check``) exited
            non-zero. The message quotes gpg's stderr, never stdin or stdout.
    """
    argv = [GPG, *BATCH, *args]
    try:
        result = subprocess.run(
            argv,
            input=stdin,
            capture_output=True,
            env=_environment(gnupg_home),
            timeout=GPG_KEY_OP_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ToolError(f"gpg {what} timed out after {GPG_KEY_OP_TIMEOUT} s") from None
    except OSError as exc:
        raise ToolError(f"cannot start {GPG}: {exc}") from None
    if check and result.returncode != 0:
        raise ToolError(
            f"gpg {what} failed with exit status {result.returncode}: "
            f"{_messages(result.stderr.decode(errors='replace'))}"
        )
    return result


def _environment(gnupg_home: str | None) -> Mapping[str, str]:
    return child_environment(None if gnupg_home is None else {"GNUPGHOME": str(gnupg_home)})


def _messages(stderr: str) -> str:
    """gpg's human-readable stderr lines, without ``--status-fd 2`` lines."""
    lines = [line for line in stderr.splitlines() if not line.startswith("[GNUPG:]")]
    return "\n".join(lines).strip() or "(no message)"


@dataclass
class _Key:
    """One key (primary or subkey) from a ``--with-colons`` listing."""

    validity: str
    key_id: str
    expires: datetime | None
    capabilities: str
    fingerprint: str = ""


@dataclass
class _PublicKey:
    """A primary key with its subkeys (``keys[0]`` is the primary itself)."""

    keys: list[_Key]
    uid: str = ""

    @property
    def primary(self) -> _Key:
        return self.keys[0]

    @property
    def fingerprint(self) -> str:
        return self.primary.fingerprint

    @property
    def validity(self) -> str:
        return self.primary.validity

    @property
    def expires(self) -> datetime | None:
        return self.primary.expires

    @property
    def capabilities(self) -> str:
        return self.primary.capabilities


def _parse_colons(listing: str) -> list[_PublicKey]:
    """Parse ``gpg --with-colons --fixed-list-mode --list-keys`` output."""
    found: list[_PublicKey] = []
    for line in listing.splitlines():
        fields = line.split(":")
        record = fields[0]
        if record in ("pub", "sub") and len(fields) > 11:
            key = _Key(
                validity=fields[1],
                key_id=fields[4].upper(),
                expires=_timestamp(fields[6]),
                capabilities=fields[11],
            )
            if record == "pub":
                found.append(_PublicKey(keys=[key]))
            elif found:
                found[-1].keys.append(key)
        elif record == "fpr" and found and len(fields) > 9 and not found[-1].keys[-1].fingerprint:
            found[-1].keys[-1].fingerprint = fields[9].upper()
        elif record == "uid" and found and not found[-1].uid and len(fields) > 9:
            found[-1].uid = _unescape(fields[9])
    return found


def _timestamp(field: str) -> datetime | None:
    """A colon-listing date: seconds since the epoch (or ISO 8601 basic), empty = none."""
    if not field:
        return None
    if "T" in field:
        return datetime.strptime(field, "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
    return datetime.fromtimestamp(int(field), UTC)


def _unescape(text: str) -> str:
    r"""Undo the ``\xHH`` escaping gpg applies to user IDs in colon listings."""
    if "\\x" not in text:
        return text
    raw = re.sub(rb"\\x([0-9a-fA-F]{2})", lambda m: bytes([int(m[1], 16)]), text.encode())
    return raw.decode(errors="replace")


def check_recipient(recipient: Recipient, *, gnupg_home: str | None = None) -> None:
    """Check that the pinned recipient can still be encrypted to; one ``gpg --list-keys``.

    For use before each run: since start-up, the key may have been revoked, may have
    expired, or been removed from the keyring.

    Raises:
        RecipientError: it can't be encrypted to any more (the message says why).
        ToolError: gpg could not be run.
    """
    resolve_recipient(recipient.fingerprint, gnupg_home=gnupg_home)
