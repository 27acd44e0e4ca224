"""Shared fixtures. Servers and keys come from the fixture modules listed here."""

from __future__ import annotations

import importlib.util

pytest_plugins = [
    name
    for name in ("tests.gpg_fixtures", "tests.couchdb_fixtures", "tests.amqp")
    if importlib.util.find_spec(name) is not None
]
