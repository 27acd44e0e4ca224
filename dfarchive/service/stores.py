"""Opening the run-state store a configuration names."""

from __future__ import annotations

from typing import TypedDict

from dfarchive.coordination.store import RunStore, SqliteStore
from dfarchive.service.config import Config


class _StoreOptions(TypedDict):
    """The keyword arguments every store takes from the config."""

    max_attempts: int
    lease_seconds: float
    legacy_lease_seconds: float


def open_store(config: Config) -> RunStore:
    """The store the config names (not yet set up: call ``setup()`` once at start-up)."""
    options: _StoreOptions = {
        "max_attempts": config.max_attempts,
        "lease_seconds": config.lease_seconds,
        "legacy_lease_seconds": config.legacy_lease_seconds,
    }
    if config.couchdb is not None:
        from dfarchive.coordination.store.couchdb import CouchStore

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
