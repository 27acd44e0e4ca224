"""Turn the rounds of measurements into medians, ratios, target checks and a table.

Ratios are taken within each round (both sides measured minutes apart, under the same
VM conditions) and their median is reported.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks.cases import GROUPS, Case

Rounds = Mapping[str, Sequence[Mapping[str, Any]]]  # case name -> one measurement per round
#: A phase shorter than this shows its time instead of a meaningless MB/s (a key wrap).
BRIEF_PHASE_SECONDS = 0.5


@dataclass(frozen=True)
class Ratio:
    """``numerator / denominator`` of MB/s, each a case name (its primary phase) or
    ``"case/phase"`` (one phase of a case)."""

    name: str
    label: str
    numerator: str
    denominator: str | tuple[str, ...]  # a tuple: the slowest of those cases (a ceiling)


@dataclass(frozen=True)
class Target:
    """A performance goal: ``value op threshold``."""

    name: str
    label: str
    op: str  # ">=", "<" or "<="
    threshold: float
    unit: str = "x"


def summarize(case: Case, rounds: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Median, min and max of each number over the rounds, per case and per phase."""

    def stats(values: list[float]) -> dict[str, float]:
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    phases = {
        name: {
            key: stats([r["phases"][name][key] for r in rounds])
            for key in ("mb_s", "seconds", "cpu_s_per_gib")
        }
        for name in rounds[0]["phases"]
    }
    return {
        "label": case.label,
        "group": case.group,
        "runs_at_once": case.runs,
        "primary_phase": case.primary,
        "params": dict(rounds[0].get("arguments", case.params)),
        "bytes": rounds[0]["bytes"],
        "mb_s": stats([r["mb_s"] for r in rounds]),
        "cpu_s_per_gib": stats([r["cpu_s_per_gib"] for r in rounds]),
        "peak_rss_mib": stats([r["peak_rss_mib"] for r in rounds]),
        "phases": phases,
        "extra": rounds[0]["extra"],
        "rounds": list(rounds),
    }


def ratios(default_engine: str) -> list[Ratio]:
    """The comparisons the targets need (``default_engine``: the package's default)."""
    ceilings = ("ceiling_read", "ceiling_cipher", "ceiling_disk")
    return [
        Ratio("e2e_vs_original", "dfarchive default / original (1 run, archive+validate)",
              "dfarchive_1", "original_1"),
        Ratio("e2e2_vs_original2", "dfarchive default / original (2 runs at once, aggregate)",
              "dfarchive_2", "original_2"),
        Ratio("step_vs_ceiling", f"archive step ({default_engine} engine) / "
              "min(read, AES-CFB, write) ceiling", f"steps_{default_engine}", ceilings),
        Ratio("e2e_vs_cipher", "dfarchive default (archive+validate) / AES-CFB ceiling",
              "dfarchive_1", "ceiling_cipher"),
        Ratio("gpg_e2e_vs_original", "dfarchive gpg/gpg / original (1 run)",
              "dfarchive_gpg_1", "original_1"),
        Ratio("gpg_e2e2_vs_original2", "dfarchive gpg/gpg / original (2 runs at once)",
              "dfarchive_gpg_2", "original_2"),
        Ratio("gpg_step_vs_ceiling", "archive step (gpg engine) / min(read, AES-CFB, write)",
              "steps_gpg", ceilings),
        Ratio("inprocess_step_vs_ceiling", "archive step (inprocess engine) / "
              "min(read, AES-CFB, write)", "steps_inprocess", ceilings),
        Ratio("original_scaling", "original: 2 runs at once / 1 run", "original_2", "original_1"),
        Ratio("dfarchive_scaling", "dfarchive default: 2 runs at once / 1 run",
              "dfarchive_2", "dfarchive_1"),
        Ratio("shell_none_vs_original", "tar | gpg (no compression) / original (archive only)",
              "shell_none", "original_1"),
        Ratio("restore_vs_stock", "dfarchive restore / gpg -d KEY | gpg -d ARCHIVE | tar -x",
              "restore/dfarchive", "restore/stock"),
    ]  # fmt: skip


def _mb_s(rounds: Rounds, name: str, i: int) -> float:
    case, _, phase = name.partition("/")
    measured = rounds[case][i]
    return float(measured["phases"][phase]["mb_s"] if phase else measured["mb_s"])


def compute_ratios(rounds: Rounds, default_engine: str) -> dict[str, dict[str, Any]]:
    """Each ratio per round and its median; ratios whose cases did not run are left out."""
    out: dict[str, dict[str, Any]] = {}
    for ratio in ratios(default_engine):
        denominators = (
            ratio.denominator if isinstance(ratio.denominator, tuple) else (ratio.denominator,)
        )
        cases = [name.partition("/")[0] for name in (ratio.numerator, *denominators)]
        if any(name not in rounds for name in cases):
            continue
        count = min(len(rounds[name]) for name in cases)
        values = [
            _mb_s(rounds, ratio.numerator, i) / min(_mb_s(rounds, d, i) for d in denominators)
            for i in range(count)
        ]
        out[ratio.name] = {
            "label": ratio.label,
            "numerator": ratio.numerator,
            "denominator": list(denominators),
            "rounds": values,
            "median": statistics.median(values),
        }
    return out


TARGETS = (
    Target("e2e_vs_original", "archive+validate, default engine, 1 run vs original", ">=", 1.8),
    Target("e2e2_vs_original2", "2 runs at once, aggregate vs original at 2", ">=", 1.7),
    Target("gpg_e2e_vs_original", "engine gpg, validate_with gpg, 1 run vs original", ">=", 1.2),
    Target("cpu_per_gib", "CPU s per GiB, default engine, archive+validate", "<=", 4.05, " s"),
    Target("step_vs_ceiling", "archive step vs min(read, AES-CFB, fsync'd write)", ">=", 0.6),
    Target("peak_rss", "peak RSS archiving one run (default engine)", "<", 200.0, "MiB"),
    Target("peak_rss_growth", "peak RSS: run / run 10x smaller (size-independent)", "<=", 1.2),
    Target("scan_sqlite_requests", "scan+register pass, SQLite: store requests", "<=", 5, ""),
    Target("scan_sqlite_seconds", "scan+register pass, SQLite: seconds", "<", 3.0, "s"),
    Target("scan_couchdb_requests", "scan+register pass, CouchDB: store requests", "<=", 5, ""),
    Target("scan_couchdb_seconds", "scan+register pass, CouchDB: seconds", "<", 3.0, "s"),
    Target("enqueue_couchdb_requests", "pass with a broker, CouchDB: store requests", "<=", 10, ""),
    Target("enqueue_couchdb_seconds", "pass with a broker, CouchDB: seconds", "<", 5.0, "s"),
    Target("restore_vs_stock", "restore vs the stock gpg | gpg | tar -x (issue 16)", ">=", 1.0),
)


def evaluate_targets(
    cases: Mapping[str, Mapping[str, Any]],
    ratio_values: Mapping[str, Mapping[str, Any]],
    scan: Mapping[str, Any] | None,
) -> list[dict[str, Any]]:
    """Each target (issues 6, 11 and 16) with its measured value; unmeasured ones are left
    out."""
    values: dict[str, float] = {name: ratio["median"] for name, ratio in ratio_values.items()}
    if "dfarchive_1" in cases:
        values["peak_rss"] = cases["dfarchive_1"]["peak_rss_mib"]["max"]
        values["cpu_per_gib"] = cases["dfarchive_1"]["cpu_s_per_gib"]["median"]
        if "dfarchive_small" in cases:
            small = cases["dfarchive_small"]["peak_rss_mib"]["max"]
            values["peak_rss_growth"] = values["peak_rss"] / small
    for backend in ("sqlite", "couchdb"):
        summary = (scan or {}).get("summary", {}).get(backend)
        if summary:
            values[f"scan_{backend}_requests"] = summary["new_pass"]["requests"]["max"]
            values[f"scan_{backend}_seconds"] = summary["new_pass"]["seconds"]["median"]
            if "enqueue_pass" in summary:
                values[f"enqueue_{backend}_requests"] = summary["enqueue_pass"]["requests"]["max"]
                values[f"enqueue_{backend}_seconds"] = summary["enqueue_pass"]["seconds"]["median"]
    checks: dict[str, Callable[[float, float], bool]] = {
        ">=": lambda v, t: v >= t,
        "<": lambda v, t: v < t,
        "<=": lambda v, t: v <= t,
    }
    return [
        {
            "name": target.name,
            "label": target.label,
            "value": values[target.name],
            "op": target.op,
            "threshold": target.threshold,
            "unit": target.unit,
            "met": checks[target.op](values[target.name], target.threshold),
        }
        for target in TARGETS
        if target.name in values
    ]


# -- text --------------------------------------------------------------------------------


def cores_busy(case: Mapping[str, Any]) -> float:
    """CPU seconds per wall second of a case (median rates): how many cores it kept busy."""
    return case["cpu_s_per_gib"]["median"] * case["mb_s"]["median"] * 1e6 / 2**30


def format_value(value: float) -> str:
    """Three significant digits, but whole numbers from 100 up (no exponent)."""
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _fmt_range(stats: Mapping[str, float], digits: int = 0) -> str:
    return f"{stats['min']:.{digits}f}-{stats['max']:.{digits}f}"


def format_table(report: Mapping[str, Any]) -> str:
    """The human-readable summary: cases, phases, ratios, scan, targets."""
    lines = []
    rounds = report["settings"]["rounds"]
    lines.append(
        f"Throughput ({report['mode']} run: {report['data']['run']['tar_bytes'] / 1e9:.2f} GB "
        f"tar stream, {report['data']['run']['files']} files; median of {rounds} round(s), "
        "MB/s of plaintext)"
    )
    header = (
        f"{'configuration':<46} {'MB/s':>7} {'range':>11} {'n':>2} {'CPU s/GiB':>9} "
        f"{'cores':>5} {'RSS MiB':>8}"
    )
    lines += [header, "-" * len(header)]
    order = list(GROUPS)
    for case in sorted(report["cases"].values(), key=lambda c: order.index(c["group"])):
        lines.append(
            f"{case['label']:<46} {case['mb_s']['median']:>7.0f} {_fmt_range(case['mb_s']):>11} "
            f"{len(case['rounds']):>2} {case['cpu_s_per_gib']['median']:>9.2f} "
            f"{cores_busy(case):>5.2f} {case['peak_rss_mib']['max']:>8.0f}"
        )
        if case["primary_phase"] == "all" and len(case["phases"]) == 1:
            continue
        for name, phase in case["phases"].items():
            if name in (case["primary_phase"], "all"):
                continue
            seconds = phase["seconds"]["median"]
            speed = (
                f"{phase['mb_s']['median']:>7.0f} {_fmt_range(phase['mb_s']):>11}"
                if seconds >= BRIEF_PHASE_SECONDS
                else f"{f'({seconds:.2f} s)':>19}"
            )
            lines.append(
                f"{'  - ' + name.replace('_', ' '):<46} {speed} {'':>2} "
                f"{phase['cpu_s_per_gib']['median']:>9.2f}"
            )
    for name, reason in report.get("skipped", {}).items():
        lines.append(f"skipped {name}: {reason}")
    if report["ratios"]:
        lines += ["", "Ratios (per round, median)"]
        for ratio in report["ratios"].values():
            lines.append(f"{ratio['label']:<72} {ratio['median']:>6.2f}x")
    scan = report.get("scan")
    if scan:
        tree = scan["tree"]
        lines += [
            "",
            f"Scan + register: {tree['runs']} run folders under {tree['sequencers']} "
            f"sequencers, {tree['new']} new (median of rounds; server: {scan['server']})",
        ]
        for backend, summary in scan["summary"].items():
            for pass_name, numbers in summary.items():
                lines.append(
                    f"  {backend:<10} {pass_name.replace('_', ' '):<12} "
                    f"{numbers['seconds']['median']:>8.3f} s {numbers['requests']['max']:>7.0f} "
                    "requests"
                )
    if report["targets"]:
        lines += [
            "",
            "Targets"
            + (" (quick run: not meaningful)" if report["mode"] == "quick" else ""),
        ]
        for target in report["targets"]:
            lines.append(
                f"  [{'met' if target['met'] else 'NOT met':>7}] {target['label']:<58} "
                f"{format_value(target['value'])}{target['unit']} (target {target['op']} "
                f"{target['threshold']:g}{target['unit']})"
            )
    return "\n".join(lines)
