"""Folder stamps: every kind of change to an archived entry is seen, others are not."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from dfarchive.archiving.folderstamps import check_unchanged, stamp_folder
from dfarchive.archiving.pipeline import TAR_ENTRY_OVERHEAD, estimate_tar_size
from dfarchive.errors import ToolError


@pytest.fixture
def run(tmp_path: Path) -> Path:
    run = tmp_path / "run_1"
    (run / "Data" / "L001").mkdir(parents=True)
    (run / "Data" / "L001" / "C1.1.cbcl").write_bytes(b"x" * 1000)
    (run / "RunInfo.xml").write_text("<RunInfo/>")
    (run / "Logs").mkdir()
    (run / "Logs" / "run.log").write_text("line\n")
    (run / "latest").symlink_to("Data")
    return run


ARCHIVED = frozenset(  # as if Logs were excluded
    {b"run_1", b"run_1/Data", b"run_1/Data/L001", b"run_1/Data/L001/C1.1.cbcl"}
    | {b"run_1/RunInfo.xml"}
)
OTHERS = frozenset({b"run_1/latest"})  # the symbolic link
NONE: frozenset[bytes] = frozenset()
CBCL = "Data/L001/C1.1.cbcl"


def test_every_entry_is_stamped_by_its_member_name(run: Path):
    stamps = stamp_folder(run)
    assert set(stamps) == ARCHIVED | {b"run_1/Logs", b"run_1/Logs/run.log", b"run_1/latest"}
    file_type, inode, size, _, _ = stamps[b"run_1/Data/L001/C1.1.cbcl"]
    assert (file_type, inode, size) == (stat.S_IFREG, os.lstat(run / CBCL).st_ino, 1000)
    assert stamps[b"run_1/latest"][0] == stat.S_IFLNK  # not followed
    assert stamps[b"run_1/Data"][0] == stat.S_IFDIR


def test_the_size_estimate_counts_file_sizes_and_entries(run: Path):
    stamps = stamp_folder(run)
    file_bytes = 1000 + len("<RunInfo/>") + len("line\n") + len("Data")  # the link's target
    assert estimate_tar_size(stamps) == file_bytes + TAR_ENTRY_OVERHEAD * len(stamps)


def test_an_unchanged_folder_passes(run: Path):
    before = stamp_folder(run)
    (run / "Data" / "L001" / "C1.1.cbcl").read_bytes()  # reading changes nothing
    check_unchanged(run, before, ARCHIVED, others=OTHERS)


CHANGES = {
    "rewritten": (
        lambda run: (run / "RunInfo.xml").write_text("<RunInfo />"),
        "file 'run_1/RunInfo.xml' was modified",
    ),
    "truncated": (
        lambda run: os.truncate(run / CBCL, 10),
        f"file 'run_1/{CBCL}' was modified",
    ),
    "chmod": (
        lambda run: (run / "RunInfo.xml").chmod(0o600),
        "file 'run_1/RunInfo.xml' was modified",
    ),
    "deleted": (
        lambda run: (run / "RunInfo.xml").unlink(),
        "directory 'run_1' had entries added, removed or renamed",
    ),
    "added": (
        lambda run: (run / "Data/L001/new.cbcl").write_bytes(b""),
        "directory 'run_1/Data/L001' had entries added",
    ),
    "moved": (
        lambda run: os.replace(run / "RunInfo.xml", run / "Data/RunInfo.xml"),
        "directory 'run_1' had entries",
    ),
}


@pytest.mark.parametrize("change, message", CHANGES.values(), ids=CHANGES.keys())
def test_a_change_to_an_archived_entry_is_named(run: Path, change, message):
    before = stamp_folder(run)
    change(run)
    with pytest.raises(ToolError, match="changed while it was archived") as raised:
        check_unchanged(run, before, ARCHIVED, others=OTHERS)
    assert message in str(raised.value)


def test_a_file_replaced_under_the_same_name_is_seen_even_if_alike(run: Path):
    before = stamp_folder(run)
    os.replace(run / "RunInfo.xml", run.parent / "kept.xml")
    (run.parent / "kept.xml").rename(run / "RunInfo.xml")  # back, same inode and content
    with pytest.raises(ToolError, match=re.escape("directory 'run_1' had entries added")):
        check_unchanged(run, before, ARCHIVED, others=OTHERS)  # the folder changed meanwhile


def test_a_vanished_file_is_named_when_its_folder_is_not_archived(run: Path):
    before = stamp_folder(run)
    (run / CBCL).unlink()
    with pytest.raises(ToolError, match=re.escape(f"file 'run_1/{CBCL}' disappeared")):
        check_unchanged(run, before, frozenset({b"run_1/Data/L001/C1.1.cbcl"}), others=NONE)


def test_an_archived_file_that_appeared_after_the_stamps_is_a_change(run: Path):
    before = stamp_folder(run)
    (run / "late.txt").write_text("late")
    with pytest.raises(ToolError, match=re.escape("file 'run_1/late.txt' appeared")):
        check_unchanged(run, before, frozenset({b"run_1/late.txt"}), others=NONE)


def test_changes_to_entries_tar_did_not_archive_pass(run: Path):
    before = stamp_folder(run)
    with open(run / "Logs" / "run.log", "a") as log:
        log.write("more\n")
    (run / "Logs" / "other.log").write_text("new\n")
    check_unchanged(run, before, ARCHIVED, others=OTHERS)


def test_changes_to_a_link_tar_archived_pass_when_its_folder_is_not_checked(run: Path):
    before = stamp_folder(run)
    (run / "latest").unlink()
    (run / "latest").symlink_to("Logs")  # its directory changed: that is checked
    check_unchanged(run, before, frozenset({b"run_1/RunInfo.xml"}), others=OTHERS)


def test_a_link_that_appeared_after_the_stamps_is_a_change(run: Path):
    before = stamp_folder(run)
    (run / "later").symlink_to("Data")
    with pytest.raises(ToolError, match=re.escape("file 'run_1/later' appeared")):
        check_unchanged(run, before, NONE, others=frozenset({b"run_1/later"}))


STRANGERS = {
    "neighbour": (frozenset({b"run_1", b"victim1", b"victim1/data"}), NONE, "'victim1'"),
    "parent": (ARCHIVED | {b"."}, NONE, "'.'"),
    "outside": (ARCHIVED, frozenset({b"../etc/passwd"}), "'../etc/passwd'"),
    "hard_link_target": (ARCHIVED, frozenset({b"run_1/x", b"other/secret"}), "'other/secret'"),
    "prefix": (ARCHIVED | {b"run_1x/RunInfo.xml"}, OTHERS, "'run_1x/RunInfo.xml'"),
}


@pytest.mark.parametrize("archived, others, named", STRANGERS.values(), ids=STRANGERS.keys())
def test_a_name_that_is_no_entry_of_the_run_folder_is_refused(run: Path, archived, others, named):
    before = stamp_folder(run)
    with pytest.raises(ToolError) as raised:
        check_unchanged(run, before, archived, others=others)
    more = len((archived | others) - before.keys()) - 1
    assert str(raised.value) == (
        f"tar archived {named}{f' (and {more} more)' if more else ''}, which is not an "
        f"entry of run folder {run}: the archive would not hold exactly that folder; "
        "not archived"
    )
