"""Pytest fixtures that stand up CouchDB for the tests.

By default they start ``tests/couchdb/server.js`` (express-pouchdb, a CouchDB-compatible
server from the npm registry, pinned by ``tests/couchdb/package-lock.json``) on a free
loopback port with an admin user. With ``DFARCHIVE_TEST_COUCHDB_URL`` set (e.g.
``http://admin:pw@127.0.0.1:5984``) the same tests run against that real CouchDB
instead. A server that can't be started or reached fails the test, saying how to fix it;
nothing is skipped.

Fixtures:
  couchdb_server         session: a running server (``.url``, ``.username``, ``.password``)
  couchdb_database       function: a fresh database name, deleted afterwards
  couchdb_store          function: factory ``(**options) -> CouchStore`` on that database
  ondisk_couchdb_server  function: a server keeping its data on disk, with ``stop()``,
                         ``start()`` and ``restart()`` (always the Node server)
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
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import unquote, urlsplit, urlunsplit

import pytest
import requests

from dfarchive.coordination.store.couchdb import CouchStore

SERVER_DIR = Path(__file__).resolve().parents[1] / "couchdb"
SERVER_JS = SERVER_DIR / "server.js"
URL_VARIABLE = "DFARCHIVE_TEST_COUCHDB_URL"
#: How long a server may take to start answering.
START_SECONDS = 30.0
#: How long a server may take to exit once told to.
STOP_SECONDS = 10.0
INSTALL_HINT = (
    "install the CouchDB-compatible test server with `npm ci --prefix tests/couchdb` "
    "(needs Node.js >= 18 and the npm registry), or set "
    f"{URL_VARIABLE}=http://admin:PASSWORD@127.0.0.1:5984 to use a running Apache CouchDB"
)


class CouchServer:
    """A CouchDB endpoint: ``url`` (no credentials in it), ``username``, ``password``."""

    def __init__(self, url: str, username: str | None, password: str | None) -> None:
        self.url = url
        self.username = username
        self.password = password

    def statusdb(self, database: str) -> dict[str, str | None]:
        """The ``statusdb`` config section pointing at ``database`` on this server."""
        return {
            "url": self.url,
            "database": database,
            "username": self.username,
            "password": self.password,
        }

    def facility_config(
        self, database: str, root: Path, gpg_receiver: str, **extra: Any
    ) -> dict[str, Any]:
        """A whole configuration for a test facility under ``root`` (``seq``,
        ``archives``, ``keys``) whose status database is ``database`` on this server;
        ``extra`` adds or overrides keys."""
        return {
            "statusdb": self.statusdb(database),
            "sequencing_path": str(root / "seq"),
            "destination_path": str(root / "archives"),
            "keys_path": str(root / "keys"),
            "gpg_receiver": gpg_receiver,
            **extra,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self.url!r}, username={self.username!r})"

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """One HTTP request, as the admin user unless ``auth`` is given (``path`` starts with /)."""
        if self.username:
            kwargs.setdefault("auth", (self.username, self.password))
        kwargs.setdefault("timeout", 10)
        return requests.request(method, self.url + path, **kwargs)

    def store(self, database: str, **options: Any) -> CouchStore:
        """A CouchStore on ``database`` with the admin credentials (not set up)."""
        return CouchStore(
            self.url, database=database, username=self.username, password=self.password, **options
        )

    def wait_ready(self, deadline: float) -> None:
        """Poll until the server answers an authenticated request, or fail at ``deadline``."""
        last = "no answer yet"
        while time.monotonic() < deadline:
            try:
                response = self.request("GET", "/_all_dbs", timeout=2)
            except requests.RequestException as error:
                last = str(error)
            else:
                if response.status_code == 200:
                    return
                last = f"HTTP {response.status_code}: {response.text[:200]}"
            self._check_alive()
            time.sleep(0.05)  # polling interval, not synchronisation: the loop checks
        pytest.fail(f"CouchDB at {self.url} did not become ready: {last}", pytrace=False)

    def _check_alive(self) -> None:
        """Hook for servers we run: fail early when the process died."""


class ExternalCouchServer(CouchServer):
    """A CouchDB we did not start (``DFARCHIVE_TEST_COUCHDB_URL``); it can't be restarted."""

    @classmethod
    def from_url(cls, url: str) -> ExternalCouchServer:
        parts = urlsplit(url)
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        clean = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        user = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password is not None else None
        return cls(clean, user, password)


class NodeCouchServer(CouchServer):
    """``node tests/couchdb/server.js`` on ``host`` (127.0.0.1 by default), in memory or
    on disk (``data_dir``).

    The first start picks a free port; later starts reuse it, so URLs stay valid across
    :meth:`restart`. On disk, the databases survive restarts.
    """

    def __init__(
        self, *, log_path: Path, data_dir: Path | None = None, host: str = "127.0.0.1"
    ) -> None:
        super().__init__("", "admin", secrets.token_urlsafe(12))
        self.log_path = log_path
        self.host = host
        self.data_dir = data_dir
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> NodeCouchServer:
        """Start the server and wait until it answers. Fails the test if it can't."""
        if self.running:
            return self
        node = shutil.which("node")
        if node is None:
            pytest.fail(f"node is not on PATH: {INSTALL_HINT}", pytrace=False)
        if not (SERVER_DIR / "node_modules" / "express-pouchdb").is_dir():
            pytest.fail(f"tests/couchdb/node_modules is missing: {INSTALL_HINT}", pytrace=False)
        command = [node, str(SERVER_JS), "--port", str(self.port), "--host", self.host]
        if self.data_dir is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            command += ["--dir", str(self.data_dir)]
        env = {**os.environ, "COUCHDB_USER": self.username, "COUCHDB_PASSWORD": self.password}
        deadline = time.monotonic() + START_SECONDS
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, env=env
            )
        self.port = self._read_port(deadline)
        self.url = f"http://{self.host}:{self.port}"
        threading.Thread(target=self._drain_stdout, daemon=True).start()
        self.wait_ready(deadline)
        return self

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server: SIGTERM (or SIGKILL with ``kill``, like a crash); waits for exit."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        if kill:
            process.kill()
        else:
            process.terminate()
        try:
            process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_SECONDS)

    def restart(self, *, kill: bool = False) -> NodeCouchServer:
        """Stop and start again on the same port."""
        self.stop(kill=kill)
        return self.start()

    def _read_port(self, deadline: float) -> int:
        assert self._process is not None and self._process.stdout is not None
        stdout = self._process.stdout
        buffer = b""
        with selectors.DefaultSelector() as selector:
            selector.register(stdout, selectors.EVENT_READ)
            while b"\n" not in buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not selector.select(timeout=remaining):
                    self._fail_start("did not print LISTENING <port>")
                chunk = os.read(stdout.fileno(), 4096)
                if not chunk:
                    self._fail_start("exited before listening")
                buffer += chunk
        line = buffer.split(b"\n", 1)[0].decode(errors="replace").split()
        if len(line) != 2 or line[0] != "LISTENING" or not line[1].isdigit():
            self._fail_start(f"printed {' '.join(line)!r} instead of LISTENING <port>")
        return int(line[1])

    def _drain_stdout(self) -> None:
        process = self._process
        if process is None or process.stdout is None:
            return
        with self.log_path.open("ab") as log, contextlib.suppress(OSError, ValueError):
            for line in process.stdout:
                log.write(line)

    def _check_alive(self) -> None:
        if self._process is not None and self._process.poll() is not None:
            self._fail_start(f"exited with status {self._process.returncode}")

    def _fail_start(self, what: str) -> NoReturn:
        self.stop(kill=True)
        tail = self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""
        pytest.fail(
            f"the CouchDB test server {what} (log {self.log_path}):\n{tail}\n"
            f"If it is not installed: {INSTALL_HINT}",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def couchdb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CouchServer]:
    """A running CouchDB for the whole session: the Node test server, or the real one
    named by ``DFARCHIVE_TEST_COUCHDB_URL``."""
    external = os.environ.get(URL_VARIABLE)
    if external:
        server = ExternalCouchServer.from_url(external)
        server.wait_ready(time.monotonic() + START_SECONDS)
        yield server
        return
    node_server = NodeCouchServer(log_path=tmp_path_factory.mktemp("couchdb") / "server.log")
    node_server.start()
    try:
        yield node_server
    finally:
        node_server.stop()


@pytest.fixture
def couchdb_database(couchdb_server: CouchServer) -> Iterator[str]:
    """A fresh, unique database name (not created yet); the database is deleted afterwards."""
    name = f"dfarchive_test_{uuid.uuid4().hex[:16]}"
    yield name
    with contextlib.suppress(requests.RequestException):
        couchdb_server.request("DELETE", f"/{name}")


@pytest.fixture
def couchdb_store(
    couchdb_server: CouchServer, couchdb_database: str
) -> Iterator[Callable[..., CouchStore]]:
    """Factory of set-up CouchStores on this test's fresh database.

    ``couchdb_store(max_attempts=..., lease_seconds=..., clock=...)``; every store made
    in one test shares the database (``database=`` picks another). Closed afterwards.
    """
    stores: list[CouchStore] = []

    def make(**options: Any) -> CouchStore:
        options.setdefault("database", couchdb_database)
        store = couchdb_server.store(**options)
        stores.append(store)
        store.setup()
        return store

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def ondisk_couchdb_server(tmp_path: Path) -> Iterator[NodeCouchServer]:
    """A Node test server keeping its databases on disk under ``tmp_path``.

    ``stop()``, ``start()`` and ``restart()`` keep the data and the port.
    """
    server = NodeCouchServer(log_path=tmp_path / "couchdb.log", data_dir=tmp_path / "couchdb")
    server.start()
    try:
        yield server
    finally:
        server.stop()
