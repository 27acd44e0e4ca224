"""Waiting for something to become true within a time limit: :func:`wait_until`."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: How often :func:`wait_until` asks again, by default.
POLL_SECONDS = 0.05


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    what: str,
    *,
    every: float = POLL_SECONDS,
    detail: Callable[[], object] | None = None,
) -> T:
    """Call ``predicate`` every ``every`` seconds until it returns something true;
    return that value.

    After ``timeout`` seconds, raise AssertionError naming ``what`` was waited for,
    followed by ``detail()`` if given (the state at that moment: documents, a log).
    An exception from ``predicate`` (e.g. an assertion that the process is still
    running) ends the wait at once.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            message = f"timed out after {timeout:g} s waiting for {what}"
            if detail is not None:
                message += f": {detail()}"
            raise AssertionError(message)
        time.sleep(every)  # the polling interval, not a synchronisation sleep
