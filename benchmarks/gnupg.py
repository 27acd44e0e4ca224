"""A throwaway ``GNUPGHOME`` with one recipient key (ed25519 + cv25519: made instantly)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

UID = "dfarchive benchmark <bench@dfarchive.invalid>"
GPG_TIMEOUT = 60


@dataclass(frozen=True)
class GnupgHome:
    """A keyring directory and the fingerprint of its recipient key."""

    home: str
    fingerprint: str


def _gpg(home: str, *args: str) -> str:
    return subprocess.run(
        ["gpg", "--batch", "--homedir", home, *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=GPG_TIMEOUT,
    ).stdout


@contextlib.contextmanager
def throwaway_gnupg_home() -> Iterator[GnupgHome]:
    """A fresh home (short path under the temp dir: agent sockets have a length limit)
    with a recipient key; its gpg-agent is stopped and the home removed afterwards."""
    home = tempfile.mkdtemp(prefix="dfab-gpg-")
    os.chmod(home, 0o700)
    try:
        _gpg(home, "--passphrase", "", "--quick-gen-key", UID, "ed25519", "sign", "never")
        listing = _gpg(home, "--with-colons", "--list-keys", "--", UID)
        fingerprint = next(
            line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:")
        )
        _gpg(home, "--passphrase", "", "--quick-add-key", fingerprint, "cv25519", "encr", "never")
        yield GnupgHome(home=home, fingerprint=fingerprint)
    finally:
        subprocess.run(
            ["gpgconf", "--homedir", home, "--kill", "all"],
            capture_output=True,
            check=False,
            timeout=GPG_TIMEOUT,
        )
        shutil.rmtree(home, ignore_errors=True)
