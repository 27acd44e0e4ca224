"""Scanning for complete run folders (pure: a directory tree in, runs out)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dfarchive.coordination.scan import (
    MAX_RUN_ID_BYTES,
    run_id_problem,
    run_path_problem,
    scan_runs,
)

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


def test_names_too_long_for_the_output_files_are_reported_every_scan(tmp_path):
    """``<id>.tar.gpg.partial`` must fit in 255 bytes: a 240-byte name is reported (it
    once failed three attempts, then ended failed); 239 bytes (with 'é', 2 bytes) fit."""
    longest = "é" + "r" * 237
    assert len(longest.encode()) == MAX_RUN_ID_BYTES == 239
    make_run(tmp_path, "seqA", longest)
    make_run(tmp_path, "seqA", "r" * 240)
    for _ in range(2):  # every pass, not once
        result = scan_runs(tmp_path, sentinel=SENTINEL)
        assert [r.run_id for r in result.runs] == [longest]
        assert [(s.path, s.reason) for s in result.skipped] == [
            (
                str(tmp_path / "seqA" / ("r" * 240)),
                "the name is 240 bytes long; at most 239 fit in the output file names "
                "(<run>.tar.gpg.partial)",
            )
        ]


@pytest.mark.parametrize(
    ("run_id", "reason"),
    [
        ("run_001", None),
        ("run 'q' é", None),
        ("", "a run id must be a non-empty string (found '')"),
        (None, "a run id must be a non-empty string (found None)"),
        (".", "'.' is not a folder name"),
        ("..", "'..' is not a folder name"),
        ("../../ESCAPED", "the name contains '/'"),
        ("a/b", "the name contains '/'"),
        ("_design", "names starting with '_' are reserved by CouchDB"),
        ("nul\x00", "the name contains control characters"),
        ("tab\there", "the name contains control characters"),
        ("del\x7f", "the name contains control characters"),
        ("bad\udcff", "the name is not valid UTF-8"),
    ],
)
def test_run_id_problem_says_why_an_id_is_unsafe(run_id, reason):
    assert run_id_problem(run_id) == reason


SEQ = Path("/data/seq")


@pytest.mark.parametrize(
    ("stored", "reason"),
    [
        ("/data/seq/seqA/run_1", None),
        ("/data/seq//seqA/./run_1/", None),  # the same folder, spelt loosely
        ("/data/seq/seqA/../seqB/run_1", None),  # normalised: seqB/run_1
        (None, "the run document has no usable 'path' (found None)"),
        ("", "the run document has no usable 'path' (found '')"),
        (["/data/seq/seqA/run_1"], "no usable 'path'"),
        ("seqA/run_1", "path 'seqA/run_1' is not an absolute path"),
        ("/data/seq/seqA/run_1\x00", "is not an absolute path"),
        ("/elsewhere/run_1", "is not this run's folder '/data/seq/<sequencer>/run_1'"),
        ("/data/seq/seqA/../../run_1", "is not this run's folder"),
        ("/data/seq/run_1", "is not this run's folder"),
        ("/data/seq/seqA/deeper/run_1", "is not this run's folder"),
        ("/data/seq/seqA/run_2", "is not this run's folder"),
        ("/data/seq/seqA/run_1/..", "is not this run's folder"),
    ],
)
def test_run_path_problem_accepts_only_the_runs_own_folder(stored, reason):
    problem = run_path_problem(stored, "run_1", SEQ)
    assert problem == reason if reason is None else reason in problem
