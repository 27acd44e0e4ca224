"""A throwaway ``GNUPGHOME`` with one recipient key, outside pytest.

The keyring is the tests' :class:`tests.support.gpg.GnupgHome` (ed25519 + cv25519:
made instantly); what the ``gnupg_home`` fixture gets from pytest (a temporary folder,
stopping the agent afterwards) is done here for a run of the benchmarks.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import replace

from tests.support.gpg import GnupgHome

UID = "dfarchive benchmark <bench@dfarchive.invalid>"
GPG_TIMEOUT = 60


@contextlib.contextmanager
def throwaway_gnupg_home() -> Iterator[GnupgHome]:
    """A fresh home (short path under the temp dir: agent sockets have a length limit)
    with a recipient key; its gpg-agent is stopped and the home removed afterwards."""
    home = tempfile.mkdtemp(prefix="dfab-gpg-")
    os.chmod(home, 0o700)
    keyring = GnupgHome(home=home, fingerprint="", uid=UID)
    try:
        yield replace(keyring, fingerprint=keyring.make_key(UID))
    finally:
        subprocess.run(
            ["gpgconf", "--kill", "all"],
            env=keyring.env,
            capture_output=True,
            check=False,
            timeout=GPG_TIMEOUT,
        )
        shutil.rmtree(home, ignore_errors=True)
