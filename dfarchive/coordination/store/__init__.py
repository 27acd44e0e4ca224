"""Run-state stores: CouchDB (production, many hosts) and SQLite (embedded, one host)."""

from __future__ import annotations

from dfarchive.coordination.store.base import Claim, NewRun, RunStore
from dfarchive.coordination.store.sqlite import SqliteStore

__all__ = ["Claim", "NewRun", "RunStore", "SqliteStore"]
