"""CouchDB backend: the production store, shared by every host.

Built on ``ibmcloudant``. Each run is one document whose ``_id`` is the run folder name
(the original ``dataflow_archive`` schema); a write carries the ``_rev`` it read, so
CouchDB itself is the compare-and-swap: a 409 means someone else wrote first.

Library errors stop here: ``ibm_cloud_sdk_core.ApiException`` and ``requests``
exceptions become :class:`StoreAuthError` (401/403), :class:`StoreUnavailable`
(connection failures, timeouts, 429 and 5xx) or :class:`StoreError` (anything else).
Messages name the server URL without credentials and the database, never a password.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Any, NoReturn
from urllib.parse import unquote, urlsplit, urlunsplit

import requests
from ibm_cloud_sdk_core import ApiException, DetailedResponse
from ibm_cloud_sdk_core.authenticators import (
    Authenticator,
    BasicAuthenticator,
    NoAuthAuthenticator,
)
from ibmcloudant.cloudant_v1 import CloudantV1
from ibmcloudant.couchdb_session_authenticator import CouchDbSessionAuthenticator

from dfarchive.coordination.runstate import RunDocument
from dfarchive.coordination.store.base import Changes, RunStore
from dfarchive.errors import StoreAuthError, StoreError, StoreUnavailable
from dfarchive.plumbing.timeouts import STORE_RETRIES, store_timeout

log = logging.getLogger(__name__)

#: The original tool's design document: it queries ``_design/lookup/_view/runfolder_id``,
#: and other tools may too. Not ours: created (with this one view) only when missing,
#: never changed, whatever it holds.
LOOKUP_DOC = "lookup"
LOOKUP_VIEWS: dict[str, dict[str, str]] = {
    "runfolder_id": {"map": "function (doc) { if (doc.path) { emit(doc._id, doc.status); } }"},
}
#: dfarchive's own design document, and its views. Only run documents (they have a
#: ``path``) are indexed.
DESIGN_DOC = "dfarchive"
VIEWS: dict[str, dict[str, str]] = {
    "by_status": {"map": "function (doc) { if (doc.path) { emit(doc.status, null); } }"},
}
#: Concurrent edits of our design document tolerated by :meth:`CouchStore.setup`.
SETUP_ROUNDS = 5
#: Retries of a request that failed to connect, timed out or got a 429/5xx. Writes are
#: retried too: a write that committed but whose reply was lost comes back as a 409,
#: which the compare-and-swap loop re-reads and recognises as its own.
DEFAULT_RETRIES = STORE_RETRIES
#: Longest wait between two retries, in seconds.
RETRY_INTERVAL_SECONDS = 2.0

AUTH_MODES = ("basic", "session")
#: Locks serialising this process's transitions of one document (by hash of its id).
UPDATE_LOCK_STRIPES = 64


class CouchStore(RunStore):
    """Run documents in one CouchDB database.

    Parameters:
      url: the server, e.g. ``https://couch.example.org:5984``. Credentials embedded
        in it (``http://user:pw@host``) are used when ``username`` is not given, and
        are never shown.
      database: the database holding the run documents.
      username, password: CouchDB credentials; without a username, no authentication.
      auth: ``"basic"`` (HTTP basic on every request) or ``"session"`` (cookie session).
      timeout: seconds to wait for a connection or a reply, per attempt; or
        ``(connect, read)`` seconds (default: :func:`dfarchive.plumbing.timeouts.store_timeout`).
      retries: extra attempts for a request that failed to connect, timed out or got a
        429/5xx (0 disables the SDK's retries).
      options: passed to :class:`RunStore` (``max_attempts``, ``lease_seconds``, ``clock``).

    Raises:
      StoreAuthError: a username without a password, or credentials the SDK rejects.
      StoreError: a URL that is not http(s) or an unknown ``auth``.
    """

    backend = "couchdb"

    def __init__(
        self,
        url: str,
        *,
        database: str,
        username: str | None = None,
        password: str | None = None,
        auth: str = "basic",
        timeout: float | tuple[float, float] | None = None,
        retries: int = DEFAULT_RETRIES,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.url, url_user, url_password = _split_credentials(url)
        if username is None and url_user:
            username, password = url_user, url_password
        self.database = database
        self.username = username or None
        self.auth = auth
        self.timeout = store_timeout() if timeout is None else timeout
        self._secret = password or None
        self._count_lock = threading.Lock()
        self._request_count = 0
        self._login_status: int | None = None
        self._update_locks = [threading.Lock() for _ in range(UPDATE_LOCK_STRIPES)]
        self._main_client = self._new_client(self.timeout, retries)
        self._bounded_clients: dict[float, CloudantV1] = {}
        self._clients_lock = threading.Lock()
        self._thread = threading.local()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(url={self.url!r}, database={self.database!r}, "
            f"username={self.username!r}, auth={self.auth!r})"
        )

    @property
    def request_count(self) -> int:
        """HTTP requests answered so far (including session logins); for benchmarks/tests."""
        return self._request_count

    def close(self) -> None:
        for client in (self._main_client, *self._bounded_clients.values()):
            client.get_http_client().close()

    @contextlib.contextmanager
    def bounded(self, seconds: float) -> Iterator[None]:
        """Requests this thread makes inside the block wait at most ``seconds`` to
        connect and for each read, and are not retried (heartbeats: the next one is the
        retry). They use a client of their own, with its own session login."""
        with self._clients_lock:
            if seconds not in self._bounded_clients:
                self._bounded_clients[seconds] = self._new_client(seconds, 0)
            client = self._bounded_clients[seconds]
        outer = getattr(self._thread, "client", None)
        self._thread.client = client
        try:
            yield
        finally:
            self._thread.client = outer

    @property
    def _client(self) -> CloudantV1:
        """The client for this thread: a bounded one inside :meth:`bounded`."""
        return getattr(self._thread, "client", None) or self._main_client

    def _new_client(self, timeout: float | tuple[float, float], retries: int) -> CloudantV1:
        client = CloudantV1(authenticator=self._authenticator(self._secret))
        client.set_service_url(self.url)
        client.set_http_config({"timeout": timeout})
        if retries > 0:
            client.enable_retries(max_retries=retries, retry_interval=RETRY_INTERVAL_SECONDS)
        client.get_http_client().hooks["response"].append(self._observe_response)
        return client

    # -- primitives -------------------------------------------------------------------

    def setup(self) -> None:
        """Create the database if missing, bring ``_design/dfarchive`` up to date, and
        create the original tool's ``_design/lookup`` if it is missing.

        Idempotent. An existing ``_design/lookup`` is never changed; views someone
        added to ``_design/dfarchive`` are kept.

        Raises: StoreUnavailable, StoreAuthError, StoreError.
        """
        self._ensure_database()
        self._ensure_lookup_doc()
        for _ in range(SETUP_ROUNDS):
            if self._ensure_design_doc():
                return
        raise StoreError(
            f"{self._where()}: _design/{DESIGN_DOC} kept changing under us "
            f"({SETUP_ROUNDS} conflicting writes)"
        )

    def get(self, run_id: str) -> RunDocument | None:
        """The stored document with its ``_rev``, or None if there is none.

        Raises: StoreUnavailable, StoreAuthError, StoreError.
        """
        if not _storable_id(run_id):
            return None  # CouchDB cannot hold a run document with this id
        doc: RunDocument | None = self._call(  # the JSON document, or None for 404
            f"reading run {run_id!r}",
            lambda: self._client.get_document(db=self.database, doc_id=run_id),
            tolerate=(404,),
        )
        return doc

    def get_many(self, run_ids: Iterable[str]) -> dict[str, RunDocument]:
        """The stored documents of those of ``run_ids`` that exist, in one request.

        Raises: StoreUnavailable, StoreAuthError, StoreError.
        """
        ids = [run_id for run_id in run_ids if _storable_id(run_id)]
        if not ids:
            return {}
        result = self._call(
            f"reading {len(ids)} runs",
            lambda: self._client.post_all_docs(db=self.database, keys=ids, include_docs=True),
        )
        return {
            row["key"]: row["doc"] for row in result["rows"] if isinstance(row.get("doc"), dict)
        }

    def runs(self, status: str | None = None) -> list[RunDocument]:
        """All run documents, or those with ``status``, ordered by id; one request.

        Run documents are those with a ``path`` (design documents and any other
        documents in the database are left out), as in the views.

        Raises: StoreUnavailable, StoreAuthError, StoreError (also when the database or
        its design document is missing: run :meth:`setup`).
        """
        if status is None:  # _all_docs needs no index: cheaper than a view for all runs
            result = self._call(
                "listing runs",
                lambda: self._client.post_all_docs(db=self.database, include_docs=True),
            )
        else:
            result = self._call(
                f"listing runs with status {status!r}",
                lambda: self._client.post_view(
                    db=self.database,
                    ddoc=DESIGN_DOC,
                    view="by_status",
                    key=status,
                    include_docs=True,
                ),
            )
        docs = (row.get("doc") for row in result["rows"])
        return sorted((doc for doc in docs if _is_run(doc)), key=lambda doc: doc["_id"])

    def changed_since(self, mark: str | None) -> Changes:
        """The ids in the database's ``_changes`` feed since ``mark``, in one request.

        ``mark`` None: no ids, just the current sequence (``since=now``). Deleted
        documents and non-run documents are reported too.

        Raises: StoreUnavailable, StoreAuthError, StoreError.
        """
        result = self._call(
            "reading the changes feed",
            lambda: self._client.post_changes(db=self.database, since=mark or "now"),
        )
        ids = None if mark is None else frozenset(row["id"] for row in result["results"])
        return Changes(mark=str(result["last_seq"]), ids=ids)

    def _replace(self, doc: RunDocument) -> RunDocument | None:
        """PUT ``doc`` with the ``_rev`` it was read with; None on a conflict (409).

        Raises: StoreUnavailable, StoreAuthError, StoreError.
        """
        result = self._call(
            f"writing run {doc['_id']!r}",
            lambda: self._client.put_document(db=self.database, doc_id=doc["_id"], document=doc),
            tolerate=(409,),
        )
        return None if result is None else {**doc, "_rev": result["rev"]}

    def _replace_many(self, docs: list[RunDocument]) -> list[RunDocument]:
        """POST ``docs`` to ``_bulk_docs`` with the ``_rev`` each was read with, in one
        request; CouchDB checks each ``_rev`` and answers a conflict for that one only.

        Raises: StoreUnavailable, StoreAuthError, StoreError.
        """
        results = self._call(
            f"writing {len(docs)} runs",
            lambda: self._client.post_bulk_docs(db=self.database, bulk_docs={"docs": docs}),
        )
        revs = {result["id"]: result["rev"] for result in self._accepted(results, "written")}
        return [{**doc, "_rev": revs[doc["_id"]]} for doc in docs if doc["_id"] in revs]

    def _insert_missing(self, docs: list[RunDocument]) -> list[str]:
        """Insert the documents not stored yet, in one request whatever their number.

        Returns the ids this call inserted: an id stored already (or registered by
        another writer meanwhile) comes back as a conflict and is not ours; the id of a
        deleted document is registered anew. Ids CouchDB cannot store (starting with
        ``_``) are logged and skipped.

        Raises: StoreUnavailable, StoreAuthError, StoreError.
        """
        todo = _storable(docs)
        if not todo:
            return []
        results = self._call(
            f"registering {len(todo)} runs",
            lambda: self._client.post_bulk_docs(db=self.database, bulk_docs={"docs": todo}),
        )
        return [result["id"] for result in self._accepted(results, "registered")]

    def _update(self, run_id: str, change: Callable[[RunDocument], RunDocument]) -> RunDocument:
        """The base compare-and-swap loop, one thread of this process at a time per run.

        Threads sharing this store (a worker's heartbeat and its main thread) then never
        conflict with each other; conflicts left are with other processes and hosts.
        """
        with self._update_locks[hash(run_id) % UPDATE_LOCK_STRIPES]:
            return super()._update(run_id, change)

    # -- helpers ----------------------------------------------------------------------

    def _authenticator(self, password: str | None) -> Authenticator:
        if self.auth not in AUTH_MODES:
            raise StoreError(f"CouchDB auth must be one of {AUTH_MODES}, not {self.auth!r}")
        if self.username is None:
            return NoAuthAuthenticator()
        if password is None:
            raise StoreAuthError(f"{self._where()}: user {self.username!r} has no password")
        try:
            if self.auth == "session":
                return CouchDbSessionAuthenticator(self.username, password)
            return BasicAuthenticator(self.username, password)
        except ValueError as error:
            raise StoreAuthError(f"{self._where()}: {self._redacted(str(error))}") from None

    def _observe_response(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        """Count every response; remember how the last session login was answered."""
        with self._count_lock:
            self._request_count += 1
        if response.request.method == "POST" and response.request.path_url.endswith("/_session"):
            self._login_status = response.status_code

    def _ensure_database(self) -> None:
        found = self._call(
            "checking the database",
            lambda: self._client.head_database(db=self.database),
            tolerate=(404,),
            result=False,
        )
        if found is not None:
            return
        self._call(
            "creating the database",
            lambda: self._client.put_database(db=self.database),
            tolerate=(412,),  # created by someone else meanwhile
        )
        log.info("created CouchDB database %s at %s", self.database, self.url)

    def _ensure_lookup_doc(self) -> None:
        """Create ``_design/lookup`` with ``runfolder_id`` if there is none; else leave
        it exactly as it is (warning if the view the original tool queries is missing)."""
        stored = self._call(
            f"reading _design/{LOOKUP_DOC}",
            lambda: self._client.get_design_document(db=self.database, ddoc=LOOKUP_DOC),
            tolerate=(404,),
        )
        if stored is not None:
            if "runfolder_id" not in stored.get("views", {}):
                log.warning(
                    "_design/%s in %s has no runfolder_id view, which the original "
                    "dataflow_archive queries (dfarchive does not need it; left as it is)",
                    LOOKUP_DOC,
                    self.database,
                )
            return
        wanted = {"_id": f"_design/{LOOKUP_DOC}", "language": "javascript", "views": LOOKUP_VIEWS}
        created = self._call(
            f"creating _design/{LOOKUP_DOC}",
            lambda: self._client.put_design_document(
                db=self.database, ddoc=LOOKUP_DOC, design_document=wanted
            ),
            tolerate=(409,),  # created by someone else meanwhile: theirs stays
        )
        if created is not None:
            log.info("created _design/%s in %s (view runfolder_id)", LOOKUP_DOC, self.database)

    def _ensure_design_doc(self) -> bool:
        """One read-compare-write round; False when the write lost a race."""
        stored = self._call(
            f"reading _design/{DESIGN_DOC}",
            lambda: self._client.get_design_document(db=self.database, ddoc=DESIGN_DOC),
            tolerate=(404,),
        )
        current = stored or {"_id": f"_design/{DESIGN_DOC}"}
        views = {**current.get("views", {}), **VIEWS}
        if stored is not None and views == stored.get("views"):
            return True
        wanted = {**current, "language": "javascript", "views": views}
        written = self._call(
            f"writing _design/{DESIGN_DOC}",
            lambda: self._client.put_design_document(
                db=self.database, ddoc=DESIGN_DOC, design_document=wanted
            ),
            tolerate=(409,),
        )
        if written is None:
            return False
        log.info("wrote _design/%s in %s (views: %s)", DESIGN_DOC, self.database, sorted(views))
        return True

    def _accepted(self, results: list[dict[str, Any]], done: str) -> list[dict[str, Any]]:
        """The results of a ``_bulk_docs`` request that were written.

        A conflict (another writer was first) is expected and skipped silently; any
        other refusal is logged with the run's id.
        """
        accepted = []
        for result in results:
            if result.get("ok") or ("rev" in result and "error" not in result):
                accepted.append(result)
            elif result.get("error") != "conflict":
                log.error(
                    "%s: run %r was not %s: %s: %s",
                    self._where(),
                    result.get("id"),
                    done,
                    result.get("error"),
                    result.get("reason"),
                )
        return accepted

    def _where(self) -> str:
        return f"CouchDB {self.url} database {self.database!r}"

    def _redacted(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    def _call(
        self,
        what: str,
        request: Callable[[], DetailedResponse],
        *,
        tolerate: Collection[int] = (),
        result: bool = True,
    ) -> Any:
        """Make one request; return its JSON result (or the response if not ``result``).

        Returns None when the server answers with a status in ``tolerate``. A session
        that the server no longer accepts (401) is renewed once.

        Raises: StoreAuthError (401/403), StoreUnavailable (unreachable, timeout, 429,
        5xx), StoreError (anything else).
        """
        for renewed in (False, True):
            try:
                response = request()
            except ApiException as error:
                if error.status_code in tolerate:
                    return None
                if error.status_code == 401 and self.auth == "session" and not renewed:
                    self._forget_session()
                    continue
                self._raise_api_error(error, what)
            except requests.exceptions.SSLError as error:  # a setup problem, not transient
                self._unblock_session_login()
                reason = _reason(error)
                raise StoreError(f"{self._where()}: {what}: TLS failed ({reason})") from None
            except (
                requests.exceptions.ConnectionError,
                requests.exceptions.Timeout,
                requests.exceptions.RetryError,
                requests.exceptions.ChunkedEncodingError,
            ) as error:
                self._unblock_session_login()
                raise StoreUnavailable(
                    f"{self._where()}: {what}: server unreachable ({_reason(error)})"
                ) from None
            except requests.exceptions.RequestException as error:
                self._unblock_session_login()
                raise StoreError(f"{self._where()}: {what}: {self._redacted(str(error))}") from None
            except StopIteration:  # the session login's reply had no AuthSession cookie
                self._unblock_session_login()
                self._raise_login_error(what)
            return response.get_result() if result else response
        raise AssertionError("unreachable")  # pragma: no cover

    def _raise_api_error(self, error: ApiException, what: str) -> NoReturn:
        status = error.status_code
        detail = self._redacted(f"HTTP {status}: {error.message}")
        if status in (401, 403):
            raise StoreAuthError(
                f"{self._where()}: {what}: credentials of user {self.username!r} refused ({detail})"
            ) from None
        if status == 429 or status >= 500:
            raise StoreUnavailable(f"{self._where()}: {what}: {detail}") from None
        raise StoreError(f"{self._where()}: {what}: {detail}") from None

    def _raise_login_error(self, what: str) -> NoReturn:
        status = self._login_status
        detail = f"session login as {self.username!r} answered HTTP {status}"
        if status in (401, 403):
            raise StoreAuthError(f"{self._where()}: {what}: {detail}: refused") from None
        if status is not None and (status == 429 or status >= 500):
            raise StoreUnavailable(f"{self._where()}: {what}: {detail}") from None
        raise StoreError(f"{self._where()}: {what}: {detail} without a session cookie") from None

    def _session_tokens(self) -> Any:
        authenticator = self._client.get_authenticator()
        return getattr(authenticator, "token_manager", None) if self.auth == "session" else None

    def _forget_session(self) -> None:
        """Make the next request log in again (the server dropped or expired our session)."""
        tokens = self._session_tokens()
        if tokens is not None:
            with tokens.lock:
                tokens.expire_time = 0
                tokens.request_time = 0

    def _unblock_session_login(self) -> None:
        """Undo the SDK's pacing after a failed login.

        ibm-cloud-sdk-core marks a login as in flight and only clears the mark when it
        succeeds: after a failed one, every request would wait 60 s for it.
        """
        tokens = self._session_tokens()
        if tokens is not None:
            with tokens.lock:
                tokens.request_time = 0


def _reason(error: Exception) -> str:
    """The innermost cause of a requests error, e.g. ``[Errno 111] Connection refused``.

    Never holds credentials: the URL the SDK uses has none.
    """
    cause: BaseException = error
    seen = {id(cause)}
    while cause.__context__ is not None and id(cause.__context__) not in seen:
        cause = cause.__context__
        seen.add(id(cause))
    return str(cause) or type(cause).__name__


def _split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """``url`` without user info, and the user and password it held (unquoted)."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in ("http", "https") or not parts.hostname or port == -1:
        raise StoreError(f"CouchDB URL must look like http(s)://host:port, not {_safe_url(url)!r}")
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    netloc = host + (f":{port}" if port else "")
    clean = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    return clean, user, password


def _safe_url(url: str) -> str:
    """``url`` with any user info cut out, for messages."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep else url.rpartition("@")[2]


def _is_run(doc: Any) -> bool:
    """A run document, as the views see it (not a design or other document)."""
    return isinstance(doc, dict) and bool(doc.get("path")) and not doc["_id"].startswith("_")


def _storable_id(run_id: str) -> bool:
    # "." and ".." can't be addressed in a URL path: clients resolve them as segments
    return bool(run_id) and not run_id.startswith("_") and run_id not in (".", "..")


def _storable(docs: list[RunDocument]) -> list[RunDocument]:
    """``docs`` without those whose id CouchDB reserves (``_...``) or rejects (empty)."""
    kept = [doc for doc in docs if _storable_id(doc["_id"])]
    if len(kept) != len(docs):
        skipped = sorted(doc["_id"] for doc in docs if not _storable_id(doc["_id"]))
        log.warning("not registering runs CouchDB cannot store (id starts with _): %s", skipped)
    return kept


__all__ = ["DESIGN_DOC", "LOOKUP_DOC", "LOOKUP_VIEWS", "VIEWS", "CouchStore"]
