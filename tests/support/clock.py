"""A clock the test moves by hand: :class:`ManualClock`."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Generic, TypeVar

#: A wall-clock time (stores read ``datetime``) or seconds (``time.monotonic``).
Moment = TypeVar("Moment", datetime, float)


class ManualClock(Generic[Moment]):
    """Calling it returns :attr:`now`, which moves only by :meth:`advance` (or by the
    test setting it). Stands in for a store's ``clock``, a ``clock=`` callable, or a
    module's ``time`` where only ``time.monotonic()`` is read (:meth:`monotonic`)."""

    def __init__(self, start: Moment) -> None:
        self.now: Moment = start

    def __call__(self) -> Moment:
        return self.now

    def monotonic(self) -> Moment:
        return self.now

    def advance(self, seconds: float) -> None:
        if isinstance(self.now, datetime):
            self.now = self.now + timedelta(seconds=seconds)
        else:
            self.now = self.now + seconds
