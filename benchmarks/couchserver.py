"""The CouchDB-compatible test server (``tests/couchdb/server.js``) for the scan benchmark.

In memory, on a free loopback port, with a random admin password passed through the
environment. ``DFARCHIVE_TEST_COUCHDB_URL`` (``http://admin:pw@127.0.0.1:5984``) points
the benchmark at a real Apache CouchDB instead.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import selectors
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

import requests

SERVER_DIR = Path(__file__).resolve().parent.parent / "tests" / "couchdb"
URL_VARIABLE = "DFARCHIVE_TEST_COUCHDB_URL"
START_SECONDS = 30.0
STOP_SECONDS = 10.0


class ServerError(RuntimeError):
    """The server could not be started or reached; the message says how to fix it."""


@dataclass(frozen=True)
class CouchEndpoint:
    """Where the server is (``url`` without credentials) and how to log in."""

    url: str
    username: str | None
    password: str | None
    kind: str  # "express-pouchdb test server" or "external"

    @property
    def auth(self) -> tuple[str, str] | None:
        return (self.username, self.password or "") if self.username else None


def _read_port(process: subprocess.Popen[bytes], deadline: float) -> int:
    assert process.stdout is not None
    line = b""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while b"\n" not in line:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(timeout=remaining):
                raise ServerError("the CouchDB test server did not print LISTENING <port>")
            chunk = os.read(process.stdout.fileno(), 4096)
            if not chunk:
                raise ServerError("the CouchDB test server exited before listening")
            line += chunk
    words = line.split(b"\n", 1)[0].split()
    if len(words) != 2 or words[0] != b"LISTENING" or not words[1].isdigit():
        raise ServerError(f"the CouchDB test server printed {line!r}")
    return int(words[1])


def _drain(process: subprocess.Popen[bytes]) -> None:
    assert process.stdout is not None
    with contextlib.suppress(OSError, ValueError):
        while process.stdout.read(65536):
            pass


def _wait_ready(endpoint: CouchEndpoint, deadline: float) -> None:
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            response = requests.get(f"{endpoint.url}/_all_dbs", auth=endpoint.auth, timeout=2)
        except requests.RequestException as error:
            last = str(error)
        else:
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}"
        time.sleep(0.05)  # polling interval; each round checks the real condition
    raise ServerError(f"CouchDB at {endpoint.url} did not answer: {last}")


def server_missing() -> str | None:
    """How to make a server available, or None if :func:`couch_server` can start one
    (or ``DFARCHIVE_TEST_COUCHDB_URL`` names one)."""
    if os.environ.get(URL_VARIABLE):
        return None
    if shutil.which("node") and (SERVER_DIR / "node_modules" / "express-pouchdb").is_dir():
        return None
    return (
        "needs the CouchDB-compatible test server: install Node.js and run "
        f"`npm ci --prefix tests/couchdb`, or set {URL_VARIABLE}="
        "http://admin:PASSWORD@127.0.0.1:5984"
    )


@contextlib.contextmanager
def couch_server() -> Iterator[CouchEndpoint]:
    """A running CouchDB-compatible server for the duration of the block."""
    external = os.environ.get(URL_VARIABLE)
    if external:
        parts = urlsplit(external)
        netloc = f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)
        endpoint = CouchEndpoint(
            url=urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", "")),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            kind="external",
        )
        _wait_ready(endpoint, time.monotonic() + START_SECONDS)
        yield endpoint
        return
    missing = server_missing()
    if missing is not None:
        raise ServerError(f"the scan benchmark {missing}")
    node = shutil.which("node")
    assert node is not None
    password = secrets.token_urlsafe(12)
    process = subprocess.Popen(
        [node, str(SERVER_DIR / "server.js"), "--port", "0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "COUCHDB_USER": "admin", "COUCHDB_PASSWORD": password},
    )
    try:
        deadline = time.monotonic() + START_SECONDS
        port = _read_port(process, deadline)
        threading.Thread(target=_drain, args=(process,), daemon=True).start()
        endpoint = CouchEndpoint(
            url=f"http://127.0.0.1:{port}",
            username="admin",
            password=password,
            kind="express-pouchdb test server (in memory)",
        )
        _wait_ready(endpoint, deadline)
        yield endpoint
    finally:
        process.terminate()
        try:
            process.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_SECONDS)
