"""A benchmark report (the JSON) as Markdown, for ``benchmarks/README.md``.

``python -m benchmarks.markdown benchmarks/results/full.json`` prints it; every run
also writes it beside its JSON (``full.md``, ``quick.md``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from benchmarks.cases import GROUPS
from benchmarks.report import BRIEF_PHASE_SECONDS, cores_busy, format_value


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
        f"{load['after_each_round']} after each round, {load['after']} at the end "
        "(other sessions shared the machine)",
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


def _targets(report: Mapping[str, Any]) -> list[str]:
    lines = ["| target | measured | goal | met? |", "| --- | ---: | ---: | :---: |"]
    for t in report["targets"]:
        unit = t["unit"]
        lines.append(
            f"| {_cell(t['label'])} | {format_value(t['value'])}{unit} | "
            f"{t['op']} {t['threshold']:g}{unit} | {'yes' if t['met'] else '**no**'} |"
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


def main(argv: list[str]) -> int:
    (path,) = argv
    print(format_markdown(json.loads(Path(path).read_text())), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
