"""The benchmark report's arithmetic: a throughput target's ceiling on the machine measured."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.report import MB_PER_GIB, evaluate_targets, machine_ceiling

RATIO = {"numerator": "ours", "denominator": ["theirs"]}


def _cases(ours: list[float], theirs: list[float], disk: list[float]) -> dict[str, Any]:
    """Three cases over as many rounds: our CPU s/GiB, their MB/s, the disk's MB/s."""
    return {
        "ours": {"rounds": [{"cpu_s_per_gib": cpu, "mb_s": 1.0} for cpu in ours]},
        "theirs": {"rounds": [{"cpu_s_per_gib": 1.0, "mb_s": mb_s} for mb_s in theirs]},
        "disk": {"rounds": [{"cpu_s_per_gib": 0.1, "mb_s": mb_s} for mb_s in disk]},
    }


def test_the_ceiling_is_the_slower_of_disk_and_cores_per_round_then_the_lower_median() -> None:
    # round 1: 2 cores at 2 CPU s/GiB do 1074 MB/s, the disk 200: disk-bound, 2.0x of 100
    # round 2: 2 cores at 8 CPU s/GiB do 268 MB/s, the disk 400: CPU-bound, 2.68x of 100
    # round 3: the disk 150 of 100: 1.5x; the lower median of (1.5, 2.0, 2.68) is 2.0
    cases = _cases(ours=[2.0, 8.0, 2.0], theirs=[100.0, 100.0, 100.0], disk=[200.0, 400.0, 150.0])
    ceiling = machine_ceiling(RATIO, ["disk"], cases, cores=2)
    assert ceiling is not None
    assert ceiling["value"] == pytest.approx(2.0) and ceiling["bound"] == "disk"
    assert ceiling["rounds"] == pytest.approx([2.0, 2 * MB_PER_GIB / 8 / 100, 1.5])


def test_a_cpu_bound_ceiling_names_the_cpu() -> None:
    cases = _cases(ours=[10.0], theirs=[100.0], disk=[1000.0])
    ceiling = machine_ceiling(RATIO, ["disk"], cases, cores=2)
    assert ceiling is not None and ceiling["bound"] == "CPU"
    assert ceiling["value"] == pytest.approx(2 * MB_PER_GIB / 10 / 100)


def test_no_ceiling_without_its_cases() -> None:
    cases = _cases(ours=[2.0], theirs=[100.0], disk=[200.0])
    del cases["disk"]
    assert machine_ceiling(RATIO, ["disk"], cases, cores=2) is None


def test_the_slowest_limit_names_the_bound_over_the_slowest_baseline() -> None:
    # the archive step: tar 900, AES 500, disk 700 MB/s; 2 cores at 4 CPU s/GiB do 537
    cases = _cases(ours=[4.0], theirs=[100.0], disk=[700.0])
    cases["ceiling_read"] = {"rounds": [{"cpu_s_per_gib": 1.0, "mb_s": 900.0}]}
    cases["ceiling_cipher"] = {"rounds": [{"cpu_s_per_gib": 1.0, "mb_s": 500.0}]}
    ratio = {"numerator": "ours", "denominator": ["ceiling_read", "ceiling_cipher", "disk"]}
    ceiling = machine_ceiling(ratio, ["ceiling_read", "ceiling_cipher", "disk"], cases, cores=2)
    assert ceiling is not None and ceiling["bound"] == "AES"
    assert ceiling["value"] == pytest.approx(1.0)  # AES over the slowest of the three
    cases["ours"]["rounds"][0]["cpu_s_per_gib"] = 8.0  # the cores now do 268 MB/s
    ceiling = machine_ceiling(ratio, ["ceiling_read", "ceiling_cipher", "disk"], cases, cores=2)
    assert ceiling is not None and ceiling["bound"] == "CPU"
    assert ceiling["value"] == pytest.approx(2 * MB_PER_GIB / 8 / 500)


def test_cpu_target_is_the_median_per_round_ratio_to_the_original() -> None:
    def case(cpu: list[float]) -> dict[str, Any]:
        return {
            "rounds": [{"cpu_s_per_gib": c, "mb_s": 1.0} for c in cpu],
            "peak_rss_mib": {"max": 50.0},
        }

    cases = {"dfarchive_1": case([4.0, 7.0, 5.0]), "original_1": case([8.0, 10.0, 5.0])}
    targets = {t["name"]: t for t in evaluate_targets(cases, {}, None, cores=2)}
    assert targets["cpu_vs_original"]["value"] == pytest.approx(0.7)  # of 0.5, 0.7, 1.0
    assert targets["cpu_vs_original"]["met"] is True
    assert targets["cpu_vs_original"]["ceiling"] is None
