"""Scanning for complete run folders (pure: a directory tree in, runs out)."""

from __future__ import annotations

import os
from pathlib import Path

from dfarchive.scan import scan_runs

SENTINEL = ".metadata_rsync_exitcode"


def make_run(root: Path, sequencer: str, run: str, *, complete: bool = True) -> Path:
    path = root / sequencer / run
    path.mkdir(parents=True)
    (path / "RunInfo.xml").write_text("<RunInfo/>")
    if complete:
        (path / SENTINEL).write_text("0")
    return path


def test_finds_complete_runs_and_skips_incomplete_and_ignored(tmp_path):
    make_run(tmp_path, "seqB", "run_002")
    make_run(tmp_path, "seqA", "run_001")
    make_run(tmp_path, "seqA", "run_003", complete=False)
    make_run(tmp_path, "seqA", "transferring")
    make_run(tmp_path, "nosync", "run_004")
    (tmp_path / "seqA" / "stray_file").write_text("")
    result = scan_runs(tmp_path, sentinel=SENTINEL, ignore=["nosync", "transferring"])
    assert [(r.sequencer, r.run_id, r.path) for r in result.runs] == [
        ("seqA", "run_001", str(tmp_path / "seqA" / "run_001")),
        ("seqB", "run_002", str(tmp_path / "seqB" / "run_002")),
    ]
    assert result.skipped == []


def test_duplicate_names_and_bad_ids_are_reported_not_dropped(tmp_path):
    make_run(tmp_path, "seqA", "run_001")
    make_run(tmp_path, "seqB", "run_001")
    make_run(tmp_path, "seqA", "_design")
    result = scan_runs(tmp_path, sentinel=SENTINEL)
    assert [r.path for r in result.runs] == [str(tmp_path / "seqA" / "run_001")]
    reasons = {s.path: s.reason for s in result.skipped}
    assert "already seen at" in reasons[str(tmp_path / "seqB" / "run_001")]
    assert "reserved" in reasons[str(tmp_path / "seqA" / "_design")]


def test_non_utf8_names_are_reported(tmp_path):
    bad = os.fsencode(tmp_path / "seqA") + b"/run_\xff"
    os.makedirs(bad)
    open(bad + b"/" + SENTINEL.encode(), "w").close()
    result = scan_runs(tmp_path, sentinel=SENTINEL)
    assert result.runs == []
    assert "UTF-8" in result.skipped[0].reason


def test_symlinked_run_folders_are_not_followed(tmp_path):
    real = make_run(tmp_path / "elsewhere", "x", "run_009")
    (tmp_path / "seqA").mkdir()
    (tmp_path / "seqA" / "run_009").symlink_to(real)
    assert scan_runs(tmp_path, sentinel=SENTINEL).runs == []
