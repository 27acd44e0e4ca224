"""Smoke test of the benchmark suite: ``python -m benchmarks --quick`` runs and reports.

Correctness only: it completes, and its JSON holds every case, ratio, scan pass and
target with sane positive numbers. No thresholds: speed on a shared CI machine proves
nothing (the full run in ``benchmarks/README.md`` is where the numbers are).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.cases import CASES
from benchmarks.report import TARGETS

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 240


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("bench")
    data, out = base / "data", base / "results"
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks", "--quick", "--data", str(data), "--out", str(out)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
    finally:
        shutil.rmtree(data, ignore_errors=True)  # a few hundred MB of generated run folder
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"
    assert "Throughput" in proc.stdout and "Targets of issue 6" in proc.stdout
    assert not (out / "throughput.png").exists(), "the quick run must not need matplotlib"
    return json.loads((out / "quick.json").read_text())


@pytest.mark.slow
def test_every_case_has_sane_numbers(quick_report: dict[str, Any]) -> None:
    cases = quick_report["cases"]
    assert list(cases) == [case.name for case in CASES]
    for name, case in cases.items():
        assert case["bytes"] > 0, name
        for key in ("mb_s", "cpu_s_per_gib", "peak_rss_mib"):
            assert _positive(case[key]["median"]), (name, key, case[key])
        assert case["primary_phase"] in case["phases"], name
        for phase_name, phase in case["phases"].items():
            assert _positive(phase["seconds"]["median"]), (name, phase_name)
            assert _positive(phase["mb_s"]["median"]), (name, phase_name)
        assert len(case["rounds"]) == quick_report["settings"]["rounds"] == 1


@pytest.mark.slow
def test_ratios_scan_and_targets_are_reported(quick_report: dict[str, Any]) -> None:
    assert quick_report["ratios"], "no ratio computed"
    for name, ratio in quick_report["ratios"].items():
        assert _positive(ratio["median"]), name
    scan = quick_report["scan"]
    assert set(scan["summary"]) == {"sqlite", "couchdb", "original"}
    for backend, passes in scan["rounds"].items():
        for one in passes:
            new_pass = one["new_pass"]
            assert new_pass["registered"] == scan["tree"]["new"], backend
            assert new_pass["found"] == scan["tree"]["runs"], backend
            assert _positive(new_pass["requests"]) and _positive(new_pass["seconds"]), backend
    assert scan["summary"]["original"]["new_pass"]["requests"]["max"] == scan["tree"]["runs"] + 1
    assert [t["name"] for t in quick_report["targets"]] == [t.name for t in TARGETS]
    for target in quick_report["targets"]:
        assert isinstance(target["met"], bool) and math.isfinite(target["value"])


@pytest.mark.slow
def test_machine_and_data_are_described(quick_report: dict[str, Any]) -> None:
    machine = quick_report["machine"]
    assert machine["cores"] >= 1 and machine["memory_bytes"] > 0
    for key in ("cpu_model", "kernel", "python", "gpg", "tar", "cryptography"):
        assert machine[key], key
    assert len(quick_report["load_average"]["before"]) == 3
    run = quick_report["data"]["run"]
    assert run["files"] > 1000 and run["big_files"] == 40 and run["symlinks"] >= 1
    assert run["tar_bytes"] > run["bytes"]
