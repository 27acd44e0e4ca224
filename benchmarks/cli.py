"""``python -m benchmarks``: generate the data, run every case in rounds, report.

Full run (default): a 3 GiB run folder, 3 rounds, the scan benchmark on 10,000 run
folders (1,000 new), JSON + PNG chart in ``benchmarks/results/``. ``--quick``: 256 MiB
(the runs-at-once cases and the compressing baseline on the 25 MiB run), one round, 500
run folders, no chart: a correctness smoke test whose numbers mean little. The tuning
sweeps always run on the run ten times smaller.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import machine, report, requirements, scanbench
from benchmarks.cases import Case, select
from benchmarks.harness import CaseContext, run_case
from benchmarks.make_run import DEFAULT_ROOT, build_run, parse_size
from benchmarks.requirements import ServerError, couch_server, throwaway_gnupg_home
from dfarchive.archiving.pipeline import ArchiveSettings
from dfarchive.archiving.tarstream import tar_command
from tests.support.gpg import GnupgHome

RESULTS_DIR = Path(__file__).resolve().parent / "results"
FULL = {"size": "3GiB", "rounds": 3, "scan_runs": 10_000, "scan_new": 1_000}
QUICK = {"size": "256MiB", "rounds": 1, "scan_runs": 500, "scan_new": 50}
#: The original tool's scan pattern makes one request per run folder (minutes on the
#: test server); its count is exact and its time an average over thousands of
#: requests, so one round of it is enough.
ORIGINAL_SCAN_ROUNDS = 1
SPACE_MARGIN = 1 << 30
READ_CHUNK = 1 << 20


def _progress(message: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def tar_stream_size(run_path: Path) -> int:
    """Bytes of the run's tar stream, as dfarchive's tar writes it (also warms the cache)."""
    tar = subprocess.Popen(tar_command(run_path), stdout=subprocess.PIPE)
    assert tar.stdout is not None
    size = 0
    while chunk := tar.stdout.read(READ_CHUNK):
        size += len(chunk)
    if tar.wait() != 0:
        raise RuntimeError(f"tar of {run_path} failed with status {tar.returncode}")
    return size


def _check_space(data_dir: Path, size: int, runs_at_once: int) -> None:
    """Room for the data (if not built yet) and the archives of the widest case."""
    data_dir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(data_dir).free
    need = int(size * 1.1) * (1 + runs_at_once) + SPACE_MARGIN
    if free < need:
        raise SystemExit(
            f"not enough space in {data_dir}: {free / 2**30:.1f} GiB free, "
            f"the benchmark needs about {need / 2**30:.1f} GiB"
        )


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small and fast smoke run")
    parser.add_argument("--size", help="run folder size (default 3GiB, quick 300MiB)")
    parser.add_argument("--seed", type=int, default=1, help="data generator seed")
    parser.add_argument("--rounds", type=int, help="rounds of all cases (default 3, quick 1)")
    parser.add_argument(
        "--cases", action="append", help="only cases matching these globs (comma-separated)"
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_ROOT, help="data folder")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder")
    parser.add_argument("--skip-scan", action="store_true", help="no scan benchmark")
    parser.add_argument("--scan-runs", type=int, help="run folders in the scan tree")
    parser.add_argument("--scan-new", type=int, help="of which not registered yet")
    chart = parser.add_mutually_exclusive_group()
    chart.add_argument("--chart", action="store_true", default=None, help="draw the PNG")
    chart.add_argument("--no-chart", dest="chart", action="store_false")
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    args.size = parse_size(args.size or defaults["size"])
    args.rounds = args.rounds or defaults["rounds"]
    args.scan_runs = args.scan_runs or defaults["scan_runs"]
    args.scan_new = args.scan_new or defaults["scan_new"]
    args.chart = not args.quick if args.chart is None else args.chart
    patterns = [p for group in args.cases or [] for p in group.split(",") if p]
    try:
        args.selected = select(patterns or None)
    except ValueError as error:
        parser.error(str(error))
    return args


SCAN = "scan"
CHART = "chart"
#: What the parts that are not cases need (see :mod:`benchmarks.requirements`).
SCAN_NEEDS, CHART_NEEDS = ("couchdb",), ("matplotlib",)


def _skip_unmet(args: argparse.Namespace) -> dict[str, str]:
    """Leave out of ``args`` the cases, scan and chart whose needs are missing, saying
    for each, in one line, how to enable it. Returns ``{name: how to enable}``."""
    skipped = {}
    for case in args.selected:
        if (reason := requirements.unmet(case.needs)) is not None:
            skipped[case.name] = reason
    if not args.skip_scan and (reason := requirements.unmet(SCAN_NEEDS)) is not None:
        skipped[SCAN] = reason
        args.skip_scan = True
    if args.chart and (reason := requirements.unmet(CHART_NEEDS)) is not None:
        skipped[CHART] = reason
        args.chart = False
    args.selected = [case for case in args.selected if case.name not in skipped]
    for name, reason in skipped.items():
        _progress(f"skipping {name}: {reason}")
    return skipped


@contextlib.contextmanager
def _gnupg_if_needed(cases: list[Case]) -> Iterator[GnupgHome | None]:
    """A throwaway keyring if any of ``cases`` needs gpg."""
    if not any("gpg" in case.needs for case in cases):
        yield None
        return
    with throwaway_gnupg_home() as gnupg:
        yield gnupg


def _run_scan(args: argparse.Namespace, data_dir: Path, work_dir: Path) -> dict[str, Any] | None:
    """The scan benchmark; None (with a line saying why) if its server fails to start."""
    tree = scanbench.build_tree(data_dir, args.scan_runs, args.scan_new)
    try:
        with couch_server(work_dir) as server:
            return scanbench.run_scan_benchmark(
                tree,
                work_dir,
                server,
                rounds=args.rounds,
                original_rounds=ORIGINAL_SCAN_ROUNDS,
                progress=_progress,
            )
    except ServerError as error:
        _progress(f"skipping {SCAN}: {error}")
        return None


def _run_rounds(
    cases: list[Case], ctx: CaseContext, env: dict[str, str], rounds: int
) -> tuple[dict[str, list[dict[str, Any]]], list[list[float]]]:
    results: dict[str, list[dict[str, Any]]] = {case.name: [] for case in cases}
    loads = []
    for i in range(rounds):
        for case in cases:
            if case.max_rounds is not None and i >= case.max_rounds:
                continue
            measured = {
                **run_case(case, replace(ctx, round=i), env),
                "arguments": case.arguments(ctx.quick),
            }
            results[case.name].append(measured)
            _progress(
                f"round {i + 1}/{rounds} {case.label}: {measured['mb_s']:.0f} MB/s, "
                f"{measured['cpu_s_per_gib']:.2f} CPU s/GiB, "
                f"{measured['peak_rss_mib']:.0f} MiB"
            )
        loads.append(machine.load_average())
    return results, loads


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    mode = "quick" if args.quick else "full"
    started = time.time()
    skipped = _skip_unmet(args)
    data_dir: Path = args.data.resolve()
    _check_space(data_dir, args.size, max((case.runs for case in args.selected), default=1))
    repo = Path(__file__).resolve().parent.parent
    code_at_start = machine.code_version(repo)
    load_before = machine.load_average()
    _progress(f"{mode} run: data in {data_dir}, load average {load_before}")
    run = build_run(args.size, seed=args.seed, root=data_dir)
    small = build_run(args.size // 10, seed=args.seed, root=data_dir)
    tar_bytes, small_tar_bytes = tar_stream_size(Path(run.path)), tar_stream_size(Path(small.path))
    _progress(f"run folder {run.path}: {tar_bytes / 1e9:.2f} GB tar stream, {run.files} files")
    work_dir = data_dir / "work"
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir()
    default = ArchiveSettings(destination_path=work_dir, keys_path=work_dir)
    try:
        with _gnupg_if_needed(args.selected) as gnupg:
            ctx = CaseContext(
                run_path=run.path,
                tar_bytes=tar_bytes,
                small_run_path=small.path,
                small_tar_bytes=small_tar_bytes,
                work_dir=str(work_dir),
                gnupg_home=gnupg.home if gnupg else "",
                fingerprint=gnupg.fingerprint if gnupg else "",
                quick=args.quick,
            )
            env = {**os.environ, **({"GNUPGHOME": gnupg.home} if gnupg else {})}
            rounds, loads = _run_rounds(args.selected, ctx, env, args.rounds)
        scan = None if args.skip_scan else _run_scan(args, data_dir, work_dir)
        if not args.skip_scan and scan is None:
            skipped[SCAN] = "its CouchDB-compatible server did not start (see above)"
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    cases = {case.name: report.summarize(case, rounds[case.name]) for case in args.selected}
    ratios = report.compute_ratios(rounds, default.engine)
    host = machine.describe(data_dir)
    result = {
        "mode": mode,
        "started_at": datetime.fromtimestamp(started, UTC).isoformat(),
        "duration_seconds": round(time.time() - started, 1),
        "machine": host,
        "code": {**machine.code_version(repo), "at_start": code_at_start},
        "load_average": {"before": load_before, "after_each_round": loads,
                         "after": machine.load_average()},
        "settings": {
            "rounds": args.rounds,
            "order": [case.name for case in args.selected],
            "default_engine": default.engine,
            "default_validate_with": default.validate_with,
            "package_tunables": machine.package_tunables(),
        },
        "data": {
            "run": {**asdict(run), "tar_bytes": tar_bytes},
            "small_run": {**asdict(small), "tar_bytes": small_tar_bytes},
        },
        "cases": cases,
        "skipped": skipped,
        "ratios": ratios,
        "scan": scan,
        "targets": report.evaluate_targets(cases, ratios, scan, host["cores_usable"]),
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / f"{mode}.json"
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    (args.out / f"{mode}.md").write_text(report.format_markdown(result))
    print(report.format_table(result))
    print(f"\nJSON: {json_path}")
    if args.chart:
        png = args.out / "throughput.png"
        report.draw(result, png)
        print(f"chart: {png}")
    return 0
