"""Shared fixtures. Servers and keys come from the fixture modules listed here."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.deployment import Deployment

pytest_plugins = [
    name
    for name in ("tests.support.gpg", "tests.support.couchdb", "tests.support.amqp")
    if importlib.util.find_spec(name) is not None
]


@pytest.fixture(autouse=True)
def _core_dumps_left_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands run in-process (``tests.support.cli.run_cli``) must not turn core dumps
    off in the pytest process itself: the hard limit can't be raised again, every later
    child would inherit it, and ``reliability/test_secrets.py`` needs children that
    start with core dumps on to prove each command turns them off (in processes of
    their own, where this patch does not reach)."""
    monkeypatch.setattr("dfarchive.cli.common.disable_core_dumps", lambda: None)


@pytest.fixture
def deployment(
    tmp_path, couchdb_server, couchdb_database, amqp_url, queue_name, gnupg_home
) -> Iterator[Callable[..., Deployment]]:
    """Make a :class:`tests.support.deployment.Deployment` (its processes stopped at the end)."""
    made: list[Deployment] = []

    def make(**extra: Any) -> Deployment:
        made.append(
            Deployment(
                tmp_path, couchdb_server, couchdb_database, amqp_url, queue_name, gnupg_home,
                **extra,
            )
        )
        return made[-1]

    yield make
    for each in made:
        each.stop_all()
