"""SQLite backend: the embedded default for one host (no server to run).

One file in WAL mode; each document is stored as JSON beside an integer revision, and
a write is ``UPDATE ... WHERE rev = ?`` — the same compare-and-swap CouchDB does on
``_rev``, safe across threads and processes on one host.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dfarchive.coordination.runstate import RunDocument
from dfarchive.coordination.store.base import RunStore
from dfarchive.errors import StoreError, StoreUnavailable

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id     TEXT PRIMARY KEY,
    rev    INTEGER NOT NULL,
    status TEXT,
    body   TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_status ON runs (status, id);
"""

#: How long a writer waits for another process's transaction before giving up.
BUSY_TIMEOUT_SECONDS = 30.0


class SqliteStore(RunStore):
    """Run documents in one SQLite file. ``_rev`` is ``"<n>"``, bumped on every write."""

    backend = "sqlite"

    def __init__(self, path: str | Path, **options: Any) -> None:
        super().__init__(**options)
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    # -- connection -----------------------------------------------------------------

    @contextmanager
    def _db(self, *, write: bool = False) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                if self._conn is None:
                    self._conn = self._connect()
                if write:
                    self._conn.execute("BEGIN IMMEDIATE")
                    try:
                        yield self._conn
                    except BaseException:
                        self._conn.execute("ROLLBACK")
                        raise
                    self._conn.execute("COMMIT")
                else:
                    yield self._conn
            except sqlite3.OperationalError as error:
                raise StoreUnavailable(f"SQLite store {self.path}: {error}") from None
            except sqlite3.DatabaseError as error:
                raise StoreError(f"SQLite store {self.path}: {error}") from None

    def _connect(self) -> sqlite3.Connection:
        if not self.path.parent.is_dir():
            raise StoreError(
                f"SQLite store {self.path}: directory {self.path.parent} does not exist"
            )
        conn = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        return conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # -- primitives -------------------------------------------------------------------

    def setup(self) -> None:
        with self._db(write=True) as db:
            for statement in filter(str.strip, SCHEMA.split(";")):
                db.execute(statement)

    def get(self, run_id: str) -> RunDocument | None:
        with self._db() as db:
            row = db.execute(
                "SELECT id, rev, status, body FROM runs WHERE id = ?", (run_id,)
            ).fetchone()
        return None if row is None else _document(*row)

    def get_many(self, run_ids: Iterable[str]) -> dict[str, RunDocument]:
        """The stored documents of those of ``run_ids`` that exist, in one query."""
        with self._db() as db:
            rows = db.execute(
                "SELECT id, rev, status, body FROM runs"
                " WHERE id IN (SELECT value FROM json_each(?))",
                (json.dumps(list(run_ids)),),
            ).fetchall()
        return {row[0]: _document(*row) for row in rows}

    def runs(self, status: str | None = None) -> list[RunDocument]:
        with self._db() as db:
            if status is None:
                rows = db.execute("SELECT id, rev, status, body FROM runs ORDER BY id").fetchall()
            else:
                rows = db.execute(
                    "SELECT id, rev, status, body FROM runs WHERE status = ? ORDER BY id",
                    (status,),
                ).fetchall()
        return [_document(*row) for row in rows]

    def _replace(self, doc: RunDocument) -> RunDocument | None:
        written = self._replace_many([doc])
        return written[0] if written else None

    def _replace_many(self, docs: list[RunDocument]) -> list[RunDocument]:
        """``UPDATE ... WHERE rev = ?`` for each document, all in one transaction."""
        written = []
        with self._db(write=True) as db:
            for doc in docs:
                rev = int(doc["_rev"])
                cursor = db.execute(
                    "UPDATE runs SET rev = rev + 1, status = ?, body = ? WHERE id = ? AND rev = ?",
                    (doc.get("status"), _body(doc), doc["_id"], rev),
                )
                if cursor.rowcount == 1:
                    written.append({**doc, "_rev": str(rev + 1)})
        return written

    def _insert_missing(self, docs: list[RunDocument]) -> list[str]:
        inserted = []
        with self._db(write=True) as db:
            for doc in docs:
                cursor = db.execute(
                    "INSERT OR IGNORE INTO runs (id, rev, status, body) VALUES (?, 1, ?, ?)",
                    (doc["_id"], doc.get("status"), _body(doc)),
                )
                if cursor.rowcount == 1:
                    inserted.append(doc["_id"])
        return inserted


def _body(doc: RunDocument) -> str:
    return json.dumps({k: v for k, v in doc.items() if k != "_rev"}, sort_keys=True)


#: The status shown for a row whose body is not a JSON object (edited by hand): no
#: transition accepts it, so nothing overwrites the body before an operator looks.
UNREADABLE = "unreadable"


def _document(run_id: str, rev: int, status: str | None, body: str) -> RunDocument:
    try:
        doc = json.loads(body)
    except ValueError as error:
        problem = f"not valid JSON ({error})"
    else:
        if isinstance(doc, dict):
            return {**doc, "_id": run_id, "_rev": str(rev)}
        problem = f"a JSON {type(doc).__name__}, not an object"
    return {
        "_id": run_id,
        "_rev": str(rev),
        "status": UNREADABLE,
        "last_error": f"the stored document (status column {status!r}) is {problem}; "
        "fix or delete the row in the SQLite state file",
    }
