"""The throughput chart (PNG): one bar per configuration, median with min-max whiskers.

Needs ``matplotlib`` (the ``bench`` extra); only the full run draws it.
``python -m benchmarks.chart results/full.json [out.png]`` redraws it from a report.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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
    source = Path(argv[0])
    target = Path(argv[1]) if len(argv) > 1 else source.with_name("throughput.png")
    draw(json.loads(source.read_text()), target)
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
