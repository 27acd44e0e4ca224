"""Run-state stores: CouchDB (production, many hosts) and SQLite (embedded, one host)."""

from __future__ import annotations

from ..config import Config
from .base import Claim, NewRun, RunStore
from .sqlite import SqliteStore

__all__ = ["Claim", "NewRun", "RunStore", "SqliteStore", "open_store"]


def open_store(config: Config) -> RunStore:
    """The store the config names (not yet set up: call ``setup()`` once at start-up)."""
    options = {
        "max_attempts": config.max_attempts,
        "lease_seconds": config.lease_seconds,
        "legacy_lease_seconds": config.legacy_lease_seconds,
    }
    if config.couchdb is not None:
        from .couchdb import CouchStore

        settings = config.couchdb
        return CouchStore(
            settings.url,
            database=settings.database,
            username=settings.username,
            password=settings.password,
            auth=settings.auth,
            **options,
        )
    assert config.state_file is not None
    config.state_file.parent.mkdir(parents=True, exist_ok=True)
    return SqliteStore(config.state_file, **options)
