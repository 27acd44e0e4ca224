"""The benchmark cases, in the order each round runs them.

Each case is a function ``f(ctx, **params) -> CaseResult`` run in a process of its own
(so its peak RSS and CPU are its own); ``primary`` names the phase whose time gives the
case's throughput. Every round runs every case once, in this order (A B C A B C), so
cases are compared within a round while the VM's speed drifts. One exception: gpg with
its default compression is 7x slower than everything else and no target depends on it,
so it runs in the first round only (``max_rounds``) to keep the full run short.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

GROUPS = ("ceiling", "baseline", "dfarchive", "sweep")


@dataclass(frozen=True)
class Case:
    """One configuration to measure.

    Attributes:
        name: identifier (JSON key, ``--cases`` pattern).
        label: what the table and the chart call it.
        group: one of :data:`GROUPS`.
        target: ``"module:function"`` in this package.
        params: keyword arguments for the function.
        primary: the phase whose wall time gives MB/s.
        runs: runs archived at once (throughput is their aggregate).
        quick_small: in a ``--quick`` run, measure on the small run folder (the
            runs-at-once cases and the slow compressing baseline: a smoke run only
            checks that they work).
        max_rounds: run in at most this many rounds (None: every round).
        needs: what it needs beyond Python and the package (names in
            :data:`benchmarks.requirements.REQUIREMENTS`); checked before any case runs.
    """

    name: str
    label: str
    group: str
    target: str
    params: dict[str, Any] = field(default_factory=dict)
    primary: str = "all"
    runs: int = 1
    quick_small: bool = False
    max_rounds: int | None = None
    needs: tuple[str, ...] = ()

    def arguments(self, quick: bool) -> dict[str, Any]:
        """Keyword arguments for the case function in a full or a quick run."""
        return {**self.params, "data": "small"} if quick and self.quick_small else self.params


KIB, MIB = 1 << 10, 1 << 20
GPG = ("gpg",)


def _relay_label(chunk: int) -> str:
    size = f"{chunk // KIB} KiB" if chunk < MIB else f"{chunk // MIB} MiB"
    return f"small run: gpg engine relay {size}"


CASES: tuple[Case, ...] = (
    Case("ceiling_read", "ceiling: tar | cat > /dev/null", "ceiling",
         "benchmarks.baselines:ceiling_read", primary="read"),
    Case("ceiling_cipher", "ceiling: AES-256-CFB in memory", "ceiling",
         "benchmarks.baselines:ceiling_cipher", primary="encrypt"),
    Case("ceiling_disk", "ceiling: write (O_DIRECT) + fsync", "ceiling",
         "benchmarks.baselines:ceiling_disk", primary="write"),
    Case("ceiling_readback", "ceiling: write + trailing read-back (O_DIRECT) + fsync",
         "ceiling", "benchmarks.baselines:ceiling_readback", primary="write"),
    Case("ceiling_readback_2", "ceiling: 2 files written + read back at once", "ceiling",
         "benchmarks.baselines:ceiling_readback", {"streams": 2}, primary="write", runs=2,
         quick_small=True),
    Case("cost_buffered_write", "cost: write through the page cache + fsync", "ceiling",
         "benchmarks.baselines:ceiling_disk", {"direct": False}, primary="write"),
    Case("cost_hashes", "cost: SHA-256 in memory (hashlib)", "ceiling",
         "benchmarks.baselines:cost_hashes", primary="sha256"),
    Case("original_1", "original tool: archive+validate", "baseline",
         "benchmarks.baselines:original", needs=GPG),
    Case("dfarchive_1", "dfarchive default: archive+validate", "dfarchive",
         "benchmarks.dfcases:end_to_end", needs=GPG),
    Case("shell_none", "tar | gpg --compress-algo none", "baseline",
         "benchmarks.baselines:shell_gpg", {"compress": False}, primary="archive", needs=GPG),
    Case("steps_inprocess", "inprocess engine: archive step", "dfarchive",
         "benchmarks.dfcases:engine_steps", {"engine": "inprocess"}, primary="encrypt", needs=GPG),
    Case("steps_gpg", "gpg engine: archive step", "dfarchive",
         "benchmarks.dfcases:engine_steps", {"engine": "gpg"}, primary="encrypt", needs=GPG),
    Case("dfarchive_gpg_1", "dfarchive gpg/gpg: archive+validate", "dfarchive",
         "benchmarks.dfcases:end_to_end", {"engine": "gpg", "validate_with": "gpg"}, needs=GPG),
    Case("original_2", "original tool: 2 runs at once", "baseline",
         "benchmarks.baselines:original", {"runs": 2}, runs=2, quick_small=True, needs=GPG),
    Case("dfarchive_2", "dfarchive default: 2 runs at once", "dfarchive",
         "benchmarks.dfcases:end_to_end", {"runs": 2}, runs=2, quick_small=True, needs=GPG),
    Case("dfarchive_2p", "dfarchive default: 2 runs, a process each", "dfarchive",
         "benchmarks.dfcases:end_to_end", {"runs": 2, "processes": True}, runs=2,
         quick_small=True, needs=GPG),
    Case("dfarchive_gpg_2", "dfarchive gpg/gpg: 2 runs at once", "dfarchive",
         "benchmarks.dfcases:end_to_end", {"engine": "gpg", "validate_with": "gpg", "runs": 2},
         runs=2, quick_small=True, needs=GPG),
    Case("shell_default", "tar | gpg (default compression)", "baseline",
         "benchmarks.baselines:shell_gpg", {"compress": True}, primary="archive",
         quick_small=True, max_rounds=1, needs=GPG),
    # The sweeps compare settings with one another (their package defaults included),
    # on the run ten times smaller: eight more passes over the full run would double
    # the length of a full run for no other comparison.
    *(
        Case(f"relay_{chunk // KIB}k", _relay_label(chunk), "sweep",
             "benchmarks.dfcases:gpg_engine_relay", {"chunk": chunk, "data": "small"},
             primary="encrypt", needs=GPG)
        for chunk in (8 * KIB, 64 * KIB, 1 * MIB, 4 * MIB)
    ),
    Case("relay_splice", "small run: gpg engine cmd via os.splice", "sweep",
         "benchmarks.dfcases:splice_relay", {"data": "small"}, primary="encrypt", needs=GPG),
    *(
        Case(f"inprocess_chunk_{chunk // MIB}m",
             f"small run: inprocess engine chunk {chunk // MIB} MiB", "sweep",
             "benchmarks.dfcases:inprocess_chunk", {"chunk": chunk, "data": "small"},
             primary="encrypt")
        for chunk in (1 * MIB, 4 * MIB, 16 * MIB)
    ),
    Case("dfarchive_small", "dfarchive default, run 10x smaller", "dfarchive",
         "benchmarks.dfcases:end_to_end", {"data": "small"}, needs=GPG),
    # Restoring: the stock tools' pipeline and dfarchive's restore on one archive, one
    # after the other in the same process (see benchmarks.dfcases.restore).
    Case("restore", "restore: dfarchive vs gpg | gpg | tar -x", "dfarchive",
         "benchmarks.dfcases:restore", primary="dfarchive", quick_small=True, needs=GPG),
)  # fmt: skip


def select(patterns: list[str] | None) -> list[Case]:
    """The cases whose names match any of the glob ``patterns`` (all if None).

    Raises:
        ValueError: a pattern matches nothing.
    """
    if not patterns:
        return list(CASES)
    for pattern in patterns:
        if not any(fnmatch.fnmatch(case.name, pattern) for case in CASES):
            names = ", ".join(case.name for case in CASES)
            raise ValueError(f"no case matches {pattern!r}; cases: {names}")
    return [c for c in CASES if any(fnmatch.fnmatch(c.name, p) for p in patterns)]
