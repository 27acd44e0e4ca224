"""Run one case in this process and print its measurements as one JSON line.

``python -m benchmarks.runner CASE_NAME CONTEXT_JSON`` — started by
:func:`benchmarks.measure.run_case`, one process per case and round, so that peak RSS
(``ru_maxrss``) and CPU time belong to that case alone.
"""

from __future__ import annotations

import importlib
import json
import re
import sys
import time
from dataclasses import asdict
from pathlib import Path

from benchmarks.cases import CASES
from benchmarks.context import CaseContext
from benchmarks.outcome import cpu_seconds

RESULT_PREFIX = "BENCHMARK-RESULT "


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
    outcome = function(ctx, **case.arguments(ctx.quick))
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    result = {
        **asdict(outcome),
        "case_seconds": wall,
        "case_cpu_seconds": cpu,
        "peak_rss_kib": peak_rss_kib(),
    }
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
