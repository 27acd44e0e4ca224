"""The CouchDB-compatible test server for the scan benchmark, outside pytest.

The server is the tests' :class:`tests.support.couchdb.NodeCouchServer`
(``tests/couchdb/server.js``: in memory, on a free loopback port, with a random admin
password), or the real Apache CouchDB that ``DFARCHIVE_TEST_COUCHDB_URL``
(``http://admin:pw@127.0.0.1:5984``) names. Those helpers fail a test when a server
does not start; here that becomes :class:`ServerError`, and the scan is skipped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import couchdb
from tests.support.couchdb import CouchServer, ExternalCouchServer, NodeCouchServer


class ServerError(RuntimeError):
    """The server could not be started or reached; the message says how to fix it."""


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
