"""Smoke test of the benchmark suite: ``python -m benchmarks --quick`` runs and reports.

Correctness only: it completes, and its JSON holds every case, ratio, scan pass and
target with sane positive numbers. No thresholds: speed on a shared CI machine proves
nothing (the full run in ``benchmarks/README.md`` is where the numbers are). And a case
whose needs are missing (the CouchDB test server, gpg, matplotlib) is skipped with one
line saying how to enable it, the others still run and their results are written.
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

from benchmarks import cli, requirements
from benchmarks.cases import CASES
from benchmarks.report import CEILINGS, LIMITS, TARGETS
from tests.support import couchdb as couchserver

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
    assert "Throughput" in proc.stdout and "Targets" in proc.stdout
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
    ceilings = {t["name"]: t["ceiling"] for t in quick_report["targets"] if t["ceiling"]}
    assert set(ceilings) == set(CEILINGS)
    for name, ceiling in ceilings.items():
        assert _positive(ceiling["value"]), name
        assert ceiling["bound"] in {*LIMITS.values(), "CPU"}, name


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


def _skip_lines(stderr: str) -> dict[str, str]:
    lines = [line.split("] ", 1)[-1] for line in stderr.splitlines() if "skipping " in line]
    return dict(line.removeprefix("skipping ").split(": ", 1) for line in lines)


@pytest.mark.slow
def test_cases_that_cannot_run_are_skipped_with_how_to_enable_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No CouchDB test server installed, no matplotlib, and gpg reported missing: the
    scan, the chart and the gpg cases are skipped before anything runs, one line each;
    the case that needs none of them runs and the results are written."""
    monkeypatch.setattr(couchserver, "SERVER_DIR", tmp_path / "no-npm-ci-here")
    monkeypatch.delenv(couchserver.URL_VARIABLE, raising=False)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    no_gpg = requirements.Requirement("gpg", lambda: "needs GnuPG: install it")
    monkeypatch.setitem(requirements.REQUIREMENTS, "gpg", no_gpg)
    out = tmp_path / "results"
    code = cli.main(
        ["--quick", "--chart", "--size", "16MiB", "--cases", "ceiling_cipher,original_1,restore",
         "--data", str(tmp_path / "data"), "--out", str(out)]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    skips = _skip_lines(captured.err)
    assert set(skips) == {"original_1", "restore", "scan", "chart"}
    assert "run `npm ci --prefix tests/couchdb`" in skips["scan"]
    assert couchserver.URL_VARIABLE in skips["scan"]
    assert skips["chart"] == "needs matplotlib: `pip install -e '.[bench]'`"
    assert skips["restore"] == skips["original_1"] == "needs GnuPG: install it"
    first_case = captured.err.index("round 1/1")
    assert all(captured.err.index(f"skipping {name}:") < first_case for name in skips)
    report = json.loads((out / "quick.json").read_text())
    assert list(report["cases"]) == ["ceiling_cipher"]
    assert _positive(report["cases"]["ceiling_cipher"]["mb_s"]["median"])
    assert report["skipped"] == skips
    assert report["scan"] is None
    assert (out / "quick.md").is_file() and not (out / "throughput.png").exists()
    assert "skipped scan: needs the CouchDB-compatible test server" in captured.out


@pytest.mark.slow
def test_restore_is_measured_against_the_stock_pipeline(quick_report: dict[str, Any]) -> None:
    restore = quick_report["cases"]["restore"]
    assert set(restore["phases"]) == {"stock", "dfarchive"}
    assert restore["primary_phase"] == "dfarchive"
    assert restore["params"] == {"data": "small"}  # --quick: cheap
    assert restore["extra"]["members"] > quick_report["data"]["small_run"]["files"]
    ratio = quick_report["ratios"]["restore_vs_stock"]
    assert ratio["numerator"] == "restore/dfarchive"
    assert ratio["denominator"] == ["restore/stock"]
    stock = restore["phases"]["stock"]["mb_s"]["median"]
    ours = restore["phases"]["dfarchive"]["mb_s"]["median"]
    assert ratio["median"] == pytest.approx(ours / stock)
