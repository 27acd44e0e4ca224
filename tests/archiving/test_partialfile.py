"""PartialFile: write-then-rename, and two holders of one run never touch each other's file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from dfarchive.archiving.partialfile import PartialFile
from dfarchive.errors import ClaimLost


def write(partial: PartialFile, data: bytes) -> None:
    partial.open()
    partial.write_all(data)


def test_publish_renames_the_complete_file_with_its_exact_mode(tmp_path: Path):
    final = tmp_path / "run.tar.gpg"
    old_umask = os.umask(0o077)  # narrower than the mode: the mode still wins
    try:
        with PartialFile(final, 0o640) as partial:
            write(partial, b"archive")
            assert partial.path == tmp_path / "run.tar.gpg.partial"
            assert not final.exists()
            assert partial.publish() == final
    finally:
        os.umask(old_umask)
    assert final.read_bytes() == b"archive"
    assert stat.S_IMODE(final.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.tar.gpg"]


def test_leaving_without_publishing_removes_the_partial_file(tmp_path: Path):
    with pytest.raises(RuntimeError), PartialFile(tmp_path / "run.tar.gpg", 0o640) as partial:
        write(partial, b"half")
        raise RuntimeError("validation failed")
    assert list(tmp_path.iterdir()) == []


def test_a_stale_partial_from_an_earlier_holder_is_replaced(tmp_path: Path):
    (tmp_path / "run.tar.gpg.partial").write_bytes(b"left by a dead worker")
    with PartialFile(tmp_path / "run.tar.gpg", 0o640) as partial:
        write(partial, b"new")
        partial.publish()
    assert (tmp_path / "run.tar.gpg").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.tar.gpg"]


def test_an_earlier_holder_still_running_never_removes_or_publishes_the_new_file(
    tmp_path: Path,
):
    """A worker released (or paused past its lease) goes on until its next heartbeat,
    while the run's new holder already writes the same partial name."""
    final = tmp_path / "run.tar.gpg"
    earlier, current = PartialFile(final, 0o640), PartialFile(final, 0o640)
    write(earlier, b"earlier")
    write(current, b"current")  # takes the name over
    with pytest.raises(ClaimLost, match="another worker"):
        earlier.publish()
    earlier.discard()
    assert not final.exists()
    assert current.path.read_bytes() == b"current"
    current.publish()
    assert final.read_bytes() == b"current"


def test_discarding_a_file_never_opened_touches_nothing(tmp_path: Path):
    other = tmp_path / "run.key.gpg.partial"
    other.write_bytes(b"another holder's key")
    PartialFile(tmp_path / "run.key.gpg", 0o600).discard()
    assert other.read_bytes() == b"another holder's key"
