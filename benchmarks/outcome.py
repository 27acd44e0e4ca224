"""What a benchmark case returns: bytes processed and timed phases (wall and CPU)."""

from __future__ import annotations

import contextlib
import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


def cpu_seconds() -> float:
    """User + system CPU of this process and of its children waited for so far."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


@dataclass
class Phases:
    """Named timed sections: ``with phases("encrypt"): ...``.

    CPU includes children (tar, gpg) that exited and were waited for inside the section.
    """

    record: dict[str, dict[str, float]] = field(default_factory=dict)

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), cpu_seconds()
        yield
        self.record[name] = {
            "seconds": time.perf_counter() - wall,
            "cpu_seconds": cpu_seconds() - cpu,
        }


@dataclass
class Outcome:
    """A case's result: plaintext bytes handled, its phases, anything else worth keeping."""

    bytes: int
    phases: dict[str, dict[str, float]]
    extra: dict[str, Any] = field(default_factory=dict)
