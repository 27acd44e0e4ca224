"""What cases need beyond Python and the package: checked before the first case runs,
and provided while they run.

A case (or the scan benchmark, or the chart) whose requirement is missing is skipped
with one line saying how to enable it; the others run and their results are written.

What is provided comes from the tests' helpers, used outside pytest:

* a throwaway ``GNUPGHOME`` with one recipient key: the tests'
  :class:`tests.support.gpg.GnupgHome` (ed25519 + cv25519: made instantly); what the
  ``gnupg_home`` fixture gets from pytest (a temporary folder, stopping the agent
  afterwards) is done here for a run of the benchmarks;
* the CouchDB-compatible test server for the scan benchmark: the tests'
  :class:`tests.support.couchdb.NodeCouchServer` (``tests/couchdb/server.js``: in
  memory, on a free loopback port, with a random admin password), or the real Apache
  CouchDB that ``DFARCHIVE_TEST_COUCHDB_URL`` (``http://admin:pw@127.0.0.1:5984``)
  names. Those helpers fail a test when a server does not start; here that becomes
  :class:`ServerError`, and the scan is skipped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from tests.support import couchdb
from tests.support.couchdb import CouchServer, ExternalCouchServer, NodeCouchServer
from tests.support.gpg import GnupgHome

UID = "dfarchive benchmark <bench@dfarchive.invalid>"


@dataclass(frozen=True)
class Requirement:
    """Something a case needs: ``missing()`` returns how to enable it, or None."""

    name: str
    missing: Callable[[], str | None]


def _gpg_missing() -> str | None:
    if shutil.which("gpg") and shutil.which("gpgconf"):
        return None
    return "needs GnuPG: install it (Debian/Ubuntu: `apt-get install gnupg`)"


def _matplotlib_missing() -> str | None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "needs matplotlib: `pip install -e '.[bench]'`"
    return None


def server_missing() -> str | None:
    """How to make a server available, or None if :func:`couch_server` can start one
    (or ``DFARCHIVE_TEST_COUCHDB_URL`` names one)."""
    if os.environ.get(couchdb.URL_VARIABLE):
        return None
    if shutil.which("node") and (couchdb.SERVER_DIR / "node_modules" / "express-pouchdb").is_dir():
        return None
    return (
        "needs the CouchDB-compatible test server: install Node.js and run "
        f"`npm ci --prefix tests/couchdb`, or set {couchdb.URL_VARIABLE}="
        "http://admin:PASSWORD@127.0.0.1:5984"
    )


REQUIREMENTS = {
    requirement.name: requirement
    for requirement in (
        Requirement("gpg", _gpg_missing),
        Requirement("couchdb", server_missing),
        Requirement("matplotlib", _matplotlib_missing),
    )
}


def unmet(needs: Iterable[str]) -> str | None:
    """How to enable what ``needs`` names and is missing (joined), or None if all is there."""
    reasons = [why for name in needs if (why := REQUIREMENTS[name].missing()) is not None]
    return "; ".join(reasons) or None


# -- the keyring -------------------------------------------------------------------------


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
        keyring.stop_agent()
        shutil.rmtree(home, ignore_errors=True)


# -- the CouchDB server ------------------------------------------------------------------


class ServerError(RuntimeError):
    """The server could not be started or reached; the message says how to fix it."""


@contextlib.contextmanager
def _as_server_error() -> Iterator[None]:
    """The test helpers' ``pytest.fail`` (an exception pytest reports) as a ServerError."""
    try:
        yield
    except pytest.fail.Exception as failed:
        raise ServerError(str(failed)) from None


@contextlib.contextmanager
def couch_server(log_dir: Path) -> Iterator[CouchServer]:
    """A running CouchDB-compatible server for the duration of the block (the test
    server's log goes to ``log_dir``).

    Raises:
        ServerError: it could not be started or did not answer.
    """
    external = os.environ.get(couchdb.URL_VARIABLE)
    if external:
        server = ExternalCouchServer.from_url(external)
        with _as_server_error():
            server.wait_ready(time.monotonic() + couchdb.START_SECONDS)
        yield server
        return
    missing = server_missing()
    if missing is not None:
        raise ServerError(f"the scan benchmark {missing}")
    node = NodeCouchServer(log_path=log_dir / "couchdb.log")
    try:
        with _as_server_error():
            node.start()
        yield node
    finally:
        node.stop()
