"""Parent side: run a case in its own process and turn its output into numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.cases import Case
from benchmarks.context import CaseContext
from benchmarks.runner import RESULT_PREFIX

PACKAGE_PARENT = Path(__file__).resolve().parent.parent
CASE_TIMEOUT = 1800.0
GIB = 1 << 30
MB = 1e6


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
        [sys.executable, "-m", "benchmarks.runner", case.name, ctx.to_json()],
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
