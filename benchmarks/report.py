"""Turn the rounds of measurements into medians, ratios, target checks, and write them
out: a text table, Markdown (for ``benchmarks/README.md``) and a PNG chart.

Ratios are taken within each round (both sides measured minutes apart, under the same
VM conditions) and their median is reported.

Every run writes the Markdown beside its JSON (``full.md``, ``quick.md``);
``python -m benchmarks.report markdown benchmarks/results/full.json`` prints it again.
The throughput chart needs ``matplotlib`` (the ``bench`` extra) and only the full run
draws it; ``python -m benchmarks.report chart results/full.json [out.png]`` redraws it.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
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
        Ratio("e2e2p_vs_original2", "dfarchive default, a process per run / original "
              "(2 runs at once, aggregate)", "dfarchive_2p", "original_2"),
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
        Ratio("processes_vs_threads", "dfarchive default, 2 runs at once: a process each / "
              "threads of one process", "dfarchive_2p", "dfarchive_2"),
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
    Target("e2e2p_vs_original2", "2 runs at once, a process each, vs original at 2", ">=", 1.7),
    Target("gpg_e2e_vs_original", "engine gpg, validate_with gpg, 1 run vs original", ">=", 1.2),
    # issue 16: "no higher than today's", 4.05 CPU s/GiB when the original took 5.44
    Target("cpu_vs_original", "CPU s per GiB, default engine, vs the original's", "<=", 0.745),
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


#: What each case that can bound a throughput target measures, to name the bound.
LIMITS = {
    "ceiling_read": "tar",
    "ceiling_cipher": "AES",
    "ceiling_disk": "disk",
    "ceiling_readback": "disk",
    "ceiling_readback_2": "disk",
}
#: For each throughput target, the cases measuring what its work needs of the machine
#: besides the cores: the disk (fsync'd direct writes, with a trailing read-back when
#: the work validates as it writes), and for the archive step also tar and the cipher.
CEILINGS = {
    "e2e_vs_original": ("ceiling_readback",),
    "e2e2_vs_original2": ("ceiling_readback_2",),
    "e2e2p_vs_original2": ("ceiling_readback_2",),
    "gpg_e2e_vs_original": ("ceiling_readback",),
    "step_vs_ceiling": ("ceiling_read", "ceiling_cipher", "ceiling_disk"),
}
MB_PER_GIB = 2**30 / 1e6


def machine_ceiling(
    ratio: Mapping[str, Any],
    limits: Sequence[str],
    cases: Mapping[str, Mapping[str, Any]],
    cores: int,
) -> dict[str, Any] | None:
    """The most any program doing the work of ``ratio``'s numerator case could reach on
    the machine measured, as that ratio: per round, the slowest of the ``limits`` cases
    and of the cores at the case's measured CPU s/GiB, over the ratio's denominator
    (the slowest of its cases). Returns the lower median of the rounds (a ceiling is not
    to be overstated) with what bounds it there (:data:`LIMITS`, or ``"CPU"``), and the
    per-round values; None if a case it needs did not run."""
    case, denominators = ratio["numerator"], ratio["denominator"]
    names = (case, *denominators, *limits)
    if any(name not in cases for name in names):
        return None
    rounds = min(len(cases[name]["rounds"]) for name in names)
    per_round = []
    for i in range(rounds):
        bounds = {LIMITS.get(name, name): cases[name]["rounds"][i]["mb_s"] for name in limits}
        bounds["CPU"] = cores * MB_PER_GIB / cases[case]["rounds"][i]["cpu_s_per_gib"]
        bound = min(bounds, key=bounds.__getitem__)
        baseline = min(cases[name]["rounds"][i]["mb_s"] for name in denominators)
        per_round.append((bounds[bound] / baseline, bound))
    value, bound = sorted(per_round)[(len(per_round) - 1) // 2]
    return {"value": value, "bound": bound, "rounds": [v for v, _ in per_round]}


def evaluate_targets(
    cases: Mapping[str, Mapping[str, Any]],
    ratio_values: Mapping[str, Mapping[str, Any]],
    scan: Mapping[str, Any] | None,
    cores: int = 0,
) -> list[dict[str, Any]]:
    """Each target (issues 6, 11 and 16) with its measured value and, for a throughput
    target, this machine's ceiling (:func:`machine_ceiling` with :data:`CEILINGS`, needs
    ``cores``); unmeasured targets are left out."""
    values: dict[str, float] = {name: ratio["median"] for name, ratio in ratio_values.items()}
    if "dfarchive_1" in cases:
        values["peak_rss"] = cases["dfarchive_1"]["peak_rss_mib"]["max"]
    if "dfarchive_1" in cases and "original_1" in cases:
        values["cpu_vs_original"] = statistics.median(
            ours["cpu_s_per_gib"] / theirs["cpu_s_per_gib"]
            for ours, theirs in zip(
                cases["dfarchive_1"]["rounds"], cases["original_1"]["rounds"], strict=False
            )
        )
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
            "ceiling": machine_ceiling(
                ratio_values[target.name], CEILINGS[target.name], cases, cores
            )
            if target.name in CEILINGS and cores
            else None,
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
                + (f"; this machine's ceiling {_ceiling(target)}" if target.get("ceiling") else "")
            )
    return "\n".join(lines)


# -- Markdown ----------------------------------------------------------------------------


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def _cell(text: str) -> str:
    """``text`` safe inside a Markdown table cell."""
    return text.replace("|", "\\|")


def _machine(report: Mapping[str, Any]) -> list[str]:
    m = report["machine"]
    load = report["load_average"]
    code = report.get("code") or {}
    changes = code.get("dfarchive_changes") or []
    run, small = report["data"]["run"], report["data"]["small_run"]
    return [
        f"* **Machine**: {m['cores']} cores ({m['cpu_model']}, AES-NI: "
        f"{'yes' if m['cpu_flags_aes'] else 'no'}), {m['memory_bytes'] / 2**30:.1f} GiB, "
        f"kernel {m['kernel']}, {m['os']}, data on {m['data_filesystem']}",
        f"* **Tools**: Python {m['python']}, {m['gpg']} ({m['libgcrypt']}), {m['tar']}, "
        f"cryptography {m['cryptography']} ({m['openssl']}), node {m['node']}",
        f"* **Load average** (1/5/15 min): {load['before']} at start, "
        f"{load['after_each_round']} after each round, {load['after']} at the end",
        f"* **Code**: the working tree at commit {str(code.get('commit'))[:12]}"
        + (f" with uncommitted changes to {', '.join(changes)}" if changes else "")
        + " (at the end of the run)",
        f"* **Data**: run folder of {_gb(run['tar_bytes'])} tar stream ({run['files']} files: "
        f"{run['big_files']} large, {run['small_files']} small, {run['empty_files']} empty, "
        f"{run['symlinks']} symlinks), seed {run['seed']}; small run {_gb(small['tar_bytes'])}",
        f"* **Started** {report['started_at']}, took {report['duration_seconds'] / 60:.1f} min; "
        f"default engine `{report['settings']['default_engine']}`, validation "
        f"`{report['settings']['default_validate_with']}`; tunables "
        + ", ".join(f"`{k}` = {v}" for k, v in report["settings"]["package_tunables"].items()),
    ]


def _cases(report: Mapping[str, Any]) -> list[str]:
    lines = [
        "| configuration | MB/s (median) | min-max | rounds | CPU s/GiB | cores busy | "
        "peak RSS MiB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    order = list(GROUPS)
    for case in sorted(report["cases"].values(), key=lambda c: order.index(c["group"])):
        mb = case["mb_s"]
        lines.append(
            f"| {_cell(case['label'])} | **{mb['median']:.0f}** | "
            f"{mb['min']:.0f}-{mb['max']:.0f} | {len(case['rounds'])} | "
            f"{case['cpu_s_per_gib']['median']:.2f} | {cores_busy(case):.2f} | "
            f"{case['peak_rss_mib']['max']:.0f} |"
        )
        for name, phase in case["phases"].items():
            if name in (case["primary_phase"], "all"):
                continue
            mb, seconds = phase["mb_s"], phase["seconds"]["median"]
            speed = (
                f"{mb['median']:.0f} | {mb['min']:.0f}-{mb['max']:.0f}"
                if seconds >= BRIEF_PHASE_SECONDS
                else f"({seconds:.2f} s) |"
            )
            lines.append(
                f"| &nbsp;&nbsp;↳ {name.replace('_', ' ')} | {speed} | | "
                f"{phase['cpu_s_per_gib']['median']:.2f} | | |"
            )
    return lines


def _ratios(report: Mapping[str, Any]) -> list[str]:
    lines = ["| ratio (within each round, median) | value | per round |", "| --- | ---: | --- |"]
    for ratio in report["ratios"].values():
        rounds = ", ".join(f"{v:.2f}" for v in ratio["rounds"])
        lines.append(f"| {_cell(ratio['label'])} | **{ratio['median']:.2f}x** | {rounds} |")
    return lines


PASS_LABELS = {
    "new_pass": "new runs",
    "steady_pass": "nothing new",
    "enqueue_pass": "new runs, broker set (old ones archived)",
}


def _scan(report: Mapping[str, Any]) -> list[str]:
    scan = report.get("scan")
    if not scan:
        return []
    tree = scan["tree"]
    lines = [
        f"{tree['runs']:,} run folders under {tree['sequencers']} sequencers, {tree['new']:,} "
        f"new; server: {scan['server']}.",
        "",
        "| store | pass | seconds (median) | store requests | rounds |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    names = {"sqlite": "dfarchive, SQLite", "couchdb": "dfarchive, CouchDB",
             "original": "original tool's pattern, CouchDB"}  # fmt: skip
    for backend, summary in scan["summary"].items():
        for pass_name, numbers in summary.items():
            label = PASS_LABELS.get(pass_name, pass_name)
            lines.append(
                f"| {names.get(backend, backend)} | {label} | "
                f"{numbers['seconds']['median']:.3f} | {numbers['requests']['max']:,.0f} | "
                f"{len(scan['rounds'][backend])} |"
            )
    return lines


def _ceiling(target: Mapping[str, Any]) -> str:
    ceiling = target.get("ceiling")
    if not ceiling:
        return ""
    return f"{format_value(ceiling['value'])}{target['unit']} ({ceiling['bound']})"


def _targets(report: Mapping[str, Any]) -> list[str]:
    lines = [
        "| target | measured | goal | met? | this machine's ceiling |",
        "| --- | ---: | ---: | :---: | ---: |",
    ]
    for t in report["targets"]:
        unit = t["unit"]
        lines.append(
            f"| {_cell(t['label'])} | {format_value(t['value'])}{unit} | "
            f"{t['op']} {t['threshold']:g}{unit} | {'yes' if t['met'] else '**no**'} | "
            f"{_ceiling(t)} |"
        )
    lines.append(
        "\nThe ceiling of a throughput target is the most any archiver doing that "
        "configuration's work could reach on this machine, as the same ratio: the slowest "
        "of the disk's fsync'd direct writes (with a trailing read-back where the "
        "configuration validates as it writes: the `ceiling: ... read-back` cases; for "
        "the archive step also tar and AES-CFB) and the cores' rate at the "
        "configuration's measured CPU s/GiB (lower median of the rounds)."
    )
    return lines


def format_markdown(report: Mapping[str, Any]) -> str:
    """Machine, throughput table, ratios, scan and targets of ``report`` as Markdown."""
    sections = [
        _machine(report),
        ["", "#### Throughput", ""],
        _cases(report),
        [f"\nSkipped {name}: {reason}" for name, reason in report.get("skipped", {}).items()],
        ["", "#### Ratios", ""],
        _ratios(report),
    ]
    if report.get("scan"):
        sections += [["", "#### Scan + register", ""], _scan(report)]
    sections += [["", "#### Targets", ""], _targets(report)]
    return "\n".join(line for section in sections for line in section) + "\n"


# -- the chart ---------------------------------------------------------------------------
# The throughput chart (PNG): one bar per configuration, median with min-max whiskers.


COLORS = {
    "ceiling": "#9e9e9e",
    "baseline": "#e08214",
    "dfarchive": "#2166ac",
    "sweep": "#67a9cf",
}
GROUP_NAMES = {
    "ceiling": "machine ceiling",
    "baseline": "what users run instead",
    "dfarchive": "dfarchive",
    "sweep": "dfarchive tuning sweep (archive step)",
}
#: Not bars of their own: the same configuration on other data; a cost, not a pipeline.
LEFT_OUT = ("dfarchive_small", "cost_hashes", "cost_buffered_write")


def _panel(ax: Any, cases: list[Mapping[str, Any]], title: str, legend: bool) -> None:
    from matplotlib.patches import Patch

    labels = [case["label"] for case in cases]
    medians = [case["mb_s"]["median"] for case in cases]
    lows = [case["mb_s"]["median"] - case["mb_s"]["min"] for case in cases]
    highs = [case["mb_s"]["max"] - case["mb_s"]["median"] for case in cases]
    y = list(range(len(cases)))
    ax.barh(
        y,
        medians,
        color=[COLORS[case["group"]] for case in cases],
        xerr=[lows, highs],
        capsize=3,
        ecolor="#333333",
    )
    ax.set_yticks(y, labels, fontsize=9)
    ax.invert_yaxis()
    ends = [m + h for m, h in zip(medians, highs, strict=True)]
    top = max(ends)
    for yi, value, end in zip(y, medians, ends, strict=True):
        ax.text(end + top * 0.012, yi, f"{value:.0f}", va="center", fontsize=8)
    ax.set_xlim(0, top * 1.12)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title, fontsize=10)
    if not legend:
        return
    seen = dict.fromkeys(case["group"] for case in cases)
    ax.legend(
        handles=[Patch(color=COLORS[g], label=GROUP_NAMES[g]) for g in seen],
        loc="lower right",
        fontsize=8,
    )


def draw(report: Mapping[str, Any], path: Path) -> None:
    """Write the chart of ``report`` (see :mod:`benchmarks.report`) to ``path``: the
    comparison on the full run above, the tuning sweeps (small run) below.

    Raises:
        ImportError: matplotlib is not installed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = list(COLORS)
    cases = sorted(
        (case for name, case in report["cases"].items() if name not in LEFT_OUT),
        key=lambda case: order.index(case["group"]),
    )
    main = [case for case in cases if case["group"] != "sweep"]
    sweep = [case for case in cases if case["group"] == "sweep"]
    panels = [p for p in (main, sweep) if p]
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(11, 0.36 * len(cases) + 1.6 * len(panels) + 0.6),
        dpi=110,
        gridspec_kw={"height_ratios": [len(p) + 1.5 for p in panels]},
        squeeze=False,
    )
    machine = report["machine"]
    data = report["data"]
    rounds = report["settings"]["rounds"]
    rounds_text = f"median of {rounds} rounds" if rounds > 1 else "1 round"
    titles = {
        id(main): f"{data['run']['tar_bytes'] / 1e9:.1f} GB run, {rounds_text}",
        id(sweep): f"tuning sweeps, archive step alone: "
        f"{data['small_run']['tar_bytes'] / 1e9:.2f} GB run, {rounds_text}",
    }
    for ax, panel in zip(axes[:, 0], panels, strict=True):
        _panel(ax, panel, titles[id(panel)], legend=panel is main)
    axes[-1, 0].set_xlabel("MB/s of plaintext (median; whiskers: min-max over rounds)")
    load = report["load_average"]
    ones = [load["before"][0], *(x[0] for x in load["after_each_round"]), load["after"][0]]
    fig.suptitle(
        f"dfarchive benchmark ({report['started_at'][:10]}): {machine['cores']} cores, "
        f"{machine['memory_bytes'] / 2**30:.0f} GiB, {machine['cpu_model']}; "
        f"1-min load average {min(ones):.1f}-{max(ones):.1f} during the run",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str]) -> int:
    """``markdown FILE.json`` prints the report as Markdown; ``chart FILE.json [OUT.png]``
    draws the chart (beside the JSON as ``throughput.png`` unless OUT.png is given)."""
    usage = "usage: python -m benchmarks.report {markdown FILE.json | chart FILE.json [OUT.png]}"
    if len(argv) == 2 and argv[0] == "markdown":
        print(format_markdown(json.loads(Path(argv[1]).read_text())), end="")
        return 0
    if len(argv) in (2, 3) and argv[0] == "chart":
        source = Path(argv[1])
        target = Path(argv[2]) if len(argv) > 2 else source.with_name("throughput.png")
        draw(json.loads(source.read_text()), target)
        print(target)
        return 0
    print(usage, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
