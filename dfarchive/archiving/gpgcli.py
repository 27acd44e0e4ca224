"""gpg command lines, as named constants, and reading gpg's ``--status-fd`` output.

Secrets never appear here: passphrases go to gpg through a pipe whose descriptor is
named with ``--passphrase-fd``; data to encrypt goes on stdin.
"""

from __future__ import annotations

from collections.abc import Iterable

GPG = "gpg"
BATCH = ("--batch", "--no-tty")
LOOPBACK_PINENTRY = ("--pinentry-mode", "loopback")
NO_SYMKEY_CACHE = "--no-symkey-cache"  # don't leave the run key in gpg-agent's cache
NO_AUTOSTART = "--no-autostart"  # decrypting a symmetric message needs no gpg-agent
PASSPHRASE_FD = "--passphrase-fd"
STATUS_FD = "--status-fd"
OUTPUT_STDOUT = ("--output", "-")
SYMMETRIC_AES256 = (
    "--symmetric",
    "--cipher-algo",
    "AES256",
    "--s2k-digest-algo",
    "SHA256",
    "--compress-algo",
    "none",
)
DECRYPT = "--decrypt"
END_OF_OPTIONS = "--"
LIST_KEYS = (
    "--with-colons",
    "--fixed-list-mode",
    "--with-subkey-fingerprints",
    "--no-auto-check-trustdb",
    "--list-keys",
)
ENCRYPT_TO = ("--trust-model", "always", STATUS_FD, "2", "--encrypt", "--recipient")
LIST_RECIPIENTS = (STATUS_FD, "1", "--list-only", DECRYPT)
DECRYPT_WITH_STATUS = (STATUS_FD, "2", DECRYPT)

GPG_EXIT_TIMEOUT = 60.0
"""Seconds gpg may take to exit once its output ended."""

STATUS_PREFIX = b"[GNUPG:] "


def symmetric_encrypt_command(passphrase_fd: int) -> list[str]:
    """gpg encrypting stdin to stdout with AES-256 (MDC, no compression)."""
    return [
        GPG,
        *BATCH,
        *LOOPBACK_PINENTRY,
        NO_SYMKEY_CACHE,
        PASSPHRASE_FD,
        str(passphrase_fd),
        *SYMMETRIC_AES256,
        *OUTPUT_STDOUT,
    ]


def symmetric_decrypt_command(passphrase_fd: int, status_fd: int) -> list[str]:
    """gpg decrypting a symmetric message from stdin to stdout, status lines on a fd."""
    return [
        GPG,
        *BATCH,
        *LOOPBACK_PINENTRY,
        NO_SYMKEY_CACHE,
        NO_AUTOSTART,
        PASSPHRASE_FD,
        str(passphrase_fd),
        STATUS_FD,
        str(status_fd),
        *OUTPUT_STDOUT,
        DECRYPT,
    ]


def status_keywords(status: bytes) -> list[tuple[str, list[str]]]:
    """Parse ``--status-fd`` output into ``(KEYWORD, [args])`` in order.

    Lines without the ``[GNUPG:]`` prefix are ignored.
    """
    return list(_parse(status.splitlines()))


def _parse(lines: Iterable[bytes]) -> Iterable[tuple[str, list[str]]]:
    for line in lines:
        if line.startswith(STATUS_PREFIX):
            fields = line[len(STATUS_PREFIX) :].decode(errors="replace").split()
            if fields:
                yield fields[0], fields[1:]
