"""What runs a case in a process of its own and measures it.

The parent (:func:`run_case`) starts ``python -m benchmarks.harness CASE_NAME
CONTEXT_JSON``, one process per case and round, so that peak RSS (``VmHWM``, see
:func:`peak_rss_kib`) and CPU time belong to that case alone. In that process,
:func:`main` hands the case function a :class:`CaseContext` (what every case needs to
know); the function times its phases with :class:`Phases` and returns a
:class:`CaseResult` (bytes processed and timed phases, wall and CPU), printed as one
JSON line that the parent turns into numbers.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.cases import CASES, Case

RESULT_PREFIX = "BENCHMARK-RESULT "
PACKAGE_PARENT = Path(__file__).resolve().parent.parent
CASE_TIMEOUT = 1800.0
GIB = 1 << 30
MB = 1e6


# -- what every case needs to know, handed from the parent to each case's process --------


@dataclass(frozen=True)
class CaseContext:
    """Paths and facts shared by all cases of one benchmark run.

    Attributes:
        run_path, tar_bytes: the benchmark run folder and the size of its tar stream.
        small_run_path, small_tar_bytes: a run ten times smaller (peak RSS vs run size).
        work_dir: where cases write their archives (same filesystem as the data);
            every case removes what it wrote.
        gnupg_home, fingerprint: the throwaway keyring and its recipient key.
        quick: a ``--quick`` smoke run (see :meth:`benchmarks.cases.Case.arguments`).
        round: the round being run, from 0 (a case measuring two things alternates
            their order with it).
    """

    run_path: str
    tar_bytes: int
    small_run_path: str
    small_tar_bytes: int
    work_dir: str
    gnupg_home: str
    fingerprint: str
    quick: bool = False
    round: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> CaseContext:
        return cls(**json.loads(text))

    def run(self, which: str = "run") -> tuple[Path, int]:
        """``(path, tar bytes)`` of the ``"run"`` or the ``"small"`` run folder."""
        if which == "small":
            return Path(self.small_run_path), self.small_tar_bytes
        return Path(self.run_path), self.tar_bytes


# -- what a case returns: bytes processed and timed phases (wall and CPU) -----------------


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
class CaseResult:
    """A case's result: plaintext bytes handled, its phases, anything else worth keeping."""

    bytes: int
    phases: dict[str, dict[str, float]]
    extra: dict[str, Any] = field(default_factory=dict)
    worker_peak_rss_kib: int = 0
    """The largest peak RSS of the worker processes the case ran its work in, if any:
    the case's peak RSS is the larger of its own and this."""


# -- the case's process: run one case and print its measurements as one JSON line ---------


def peak_rss_kib() -> int:
    """This process's peak resident set since it was started (``VmHWM``).

    Not ``ru_maxrss``: Linux carries the parent's high-water mark over ``fork`` and
    ``exec`` into it, so a small child of a big parent would look big.
    """
    status = Path("/proc/self/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    if match is None:
        raise RuntimeError("no VmHWM in /proc/self/status")
    return int(match.group(1))


def main(argv: list[str]) -> int:
    name, context = argv
    case = next(case for case in CASES if case.name == name)
    module_name, function_name = case.target.split(":")
    function = getattr(importlib.import_module(module_name), function_name)
    ctx = CaseContext.from_json(context)
    cpu, wall = cpu_seconds(), time.perf_counter()
    returned = function(ctx, **case.arguments(ctx.quick))
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    result = {
        **asdict(returned),
        "case_seconds": wall,
        "case_cpu_seconds": cpu,
        "peak_rss_kib": max(peak_rss_kib(), returned.worker_peak_rss_kib),
    }
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


# -- parent side: run a case in its own process and turn its output into numbers ----------


class CaseFailed(RuntimeError):
    """A case's process failed; the message quotes its stderr."""


def run_case(case: Case, ctx: CaseContext, env: dict[str, str]) -> dict[str, Any]:
    """Run ``case`` once in a fresh Python process; return its measurements.

    Returns a dict with ``mb_s`` (plaintext MB/s of the primary phase, aggregated over
    the case's runs), ``seconds``, ``cpu_s_per_gib`` (self + children, whole case),
    ``peak_rss_mib`` (the Python process doing the work; tar/gpg children not included),
    ``phases`` (each with seconds, CPU and MB/s) and the case's ``extra``.

    Raises:
        CaseFailed: the process exited non-zero or printed no result.
    """
    python_path = os.pathsep.join(filter(None, [str(PACKAGE_PARENT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.harness", case.name, ctx.to_json()],
        env={**env, "PYTHONPATH": python_path},
        cwd=PACKAGE_PARENT,
        capture_output=True,
        text=True,
        timeout=CASE_TIMEOUT,
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        raise CaseFailed(
            f"case {case.name} failed (exit status {proc.returncode}):\n{proc.stderr[-3000:]}"
        )
    raw = json.loads(lines[-1][len(RESULT_PREFIX) :])
    size = raw["bytes"]
    phases = {
        name: {
            **phase,
            "mb_s": size / phase["seconds"] / MB,
            "cpu_s_per_gib": phase["cpu_seconds"] / (size / GIB),
        }
        for name, phase in raw["phases"].items()
    }
    primary = phases[case.primary]
    return {
        "bytes": size,
        "seconds": primary["seconds"],
        "mb_s": primary["mb_s"],
        "cpu_s_per_gib": primary["cpu_s_per_gib"],
        "case_cpu_s_per_gib": raw["case_cpu_seconds"] / (size / GIB),
        "peak_rss_mib": raw["peak_rss_kib"] / 1024,
        "phases": phases,
        "extra": raw["extra"],
    }


if __name__ == "__main__":
    # Run the case through the module imported by its name, not this ``__main__`` copy:
    # the case functions import CaseContext and CaseResult from ``benchmarks.harness``.
    from benchmarks import harness

    sys.exit(harness.main(sys.argv[1:]))
