"""TarStream: GNU tar as a child, its failures, and its death when the block exits."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from dfarchive.archiving.tarstream import TarStream, tar_command
from dfarchive.errors import Cancelled, ToolError
from tests.support.gpg import tar_by_hand

EXCLUSIONS = ["Demultiplex*", "demux_*"]


def read_all(tar: TarStream, size: int = 1 << 20) -> bytes:
    buf = memoryview(bytearray(size))
    out = bytearray()
    while n := tar.read_into(buf):
        out += buf[:n]
    return bytes(out)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_command_is_an_argument_list_with_exclusions_verbatim():
    assert tar_command(Path("/data/seq/A/run 1"), ["Demultiplex*", "--weird pattern"]) == [
        "tar",
        "--format=gnu",
        "--no-unquote",
        "-C",
        "/data/seq/A",
        "--exclude=Demultiplex*",
        "--exclude=--weird pattern",
        "-cf",
        "-",
        "--",
        "run 1",
    ]


@pytest.mark.parametrize("exclusions", [[], EXCLUSIONS])
def test_stream_is_what_tar_writes_by_hand(run_folder, exclusions):
    spec = run_folder(small_files=50, big_files=1, big_size=2 << 20)
    with TarStream(spec.path, exclusions=exclusions) as tar:
        data = read_all(tar, 300_000)
        tar.finish()
    assert data == tar_by_hand(spec.path, exclusions)
    names = subprocess.run(["tar", "-tf", "-"], input=data, capture_output=True, check=True).stdout
    assert (b"Demultiplex_Stats" in names) == (not exclusions)
    assert (b"demux_1" in names) == (not exclusions)


def test_missing_run_folder_is_a_tool_error_naming_it(tmp_path):
    missing = tmp_path / "run_gone"
    with TarStream(missing) as tar, pytest.raises(ToolError) as caught:
        read_all(tar)
        tar.finish()
    message = str(caught.value)
    assert str(missing) in message
    assert "Cannot stat" in message
    assert "exit status 2" in message


def test_file_changed_while_read_is_a_tool_error(tmp_path):
    run = tmp_path / "run_changing"
    run.mkdir()
    (run / "big.bin").write_bytes(bytes(16 << 20))  # larger than every pipe buffer
    with TarStream(run) as tar:
        first = memoryview(bytearray(65536))
        assert tar.read_into(first) == len(first)  # tar is now inside big.bin
        os.utime(run / "big.bin", (1, 1))
        read_all(tar)
        with pytest.raises(ToolError, match=r"exit status 1.*file changed as we read it"):
            tar.finish()


def test_leaving_the_block_early_kills_tar(tmp_path):
    run = tmp_path / "run_big"
    run.mkdir()
    (run / "big.bin").write_bytes(bytes(16 << 20))
    with pytest.raises(RuntimeError), TarStream(run) as tar:
        pid = tar.pid
        assert tar.read_into(memoryview(bytearray(4096))) == 4096
        raise RuntimeError("caller failed")
    assert not group_alive(pid)
    assert not Path(f"/proc/{pid}").exists()


def test_cancel_while_tar_is_silent_is_prompt(tmp_path):
    run = tmp_path / "run_big"
    run.mkdir()
    (run / "big.bin").write_bytes(bytes(16 << 20))
    cancel = threading.Event()
    with TarStream(run, cancel=cancel) as tar:
        pid = tar.pid
        assert tar.read_into(memoryview(bytearray(4096))) == 4096
        os.kill(pid, signal.SIGSTOP)  # tar is now silent forever
        drain = memoryview(bytearray(1 << 20))
        with contextlib.suppress(BlockingIOError):
            while os.readv(tar.fd, [drain]):
                pass
        cancel.set()
        started = time.monotonic()
        with pytest.raises(Cancelled):
            read_all(tar)
        assert time.monotonic() - started < 2
    assert not group_alive(pid)  # killed although stopped


def tar_names(data: bytes) -> list[bytes]:
    """Member names as tar lists them, raw (no trailing slash)."""
    listed = subprocess.run(
        ["tar", "--quoting-style=literal", "-tf", "-"], input=data, capture_output=True, check=True
    ).stdout
    return [name.rstrip(b"/") for name in listed.splitlines()]


def entries(run: Path) -> list[bytes]:
    """The run folder and everything in it, named as tar members (raw bytes)."""
    parent = os.fsencode(run.parent)
    found = [os.fsencode(run.name)]
    for directory, dirs, files in os.walk(os.fsencode(run)):
        found += [os.path.relpath(os.path.join(directory, n), parent) for n in dirs + files]
    return sorted(found)


# Run folder names GNU tar would decode on its command line, and what they decode to.
UNQUOTED_NAMES = {
    "octal_neighbour": "victim\\061",  # -> victim1, a real folder next to it
    "octal_dot": "\\056",  # -> ".": the whole sequencer folder
    "octal_dotdot": "\\056\\056",  # -> "..": the whole sequencing tree
    "backslash": "back\\\\slash",  # -> back\slash: "Cannot stat"
    "backslash_n": "line\\nfeed",  # -> a newline
    "octal_backslash": "\\134",  # -> a lone backslash
}


@pytest.mark.parametrize("name", UNQUOTED_NAMES.values(), ids=UNQUOTED_NAMES.keys())
def test_the_run_folder_name_reaches_tar_verbatim(tmp_path, name):
    sequencer = tmp_path / "seq" / "seqA"
    for decoy in ("victim1", "back\\slash", "line\nfeed", "\\"):
        (sequencer / decoy).mkdir(parents=True, exist_ok=True)
        (sequencer / decoy / "not_this_run.txt").write_text("decoy\n")
    run = sequencer / name
    run.mkdir()
    (run / "RunInfo.xml").write_text("<RunInfo/>\n")
    (run / "inside\\061 \\\\ \\n.txt").write_text("a backslash inside\n")
    with TarStream(run) as tar:
        data = read_all(tar)
        tar.finish()
    assert sorted(tar_names(data)) == entries(run)


def test_backslashes_in_the_parent_folder_are_taken_verbatim(tmp_path):
    for parent in ("se\\061q", "seq1"):  # tar never unquotes -C's directory
        (tmp_path / parent / "run").mkdir(parents=True)
        (tmp_path / parent / "run" / f"in_{parent}").write_text(parent)
    run = tmp_path / "se\\061q" / "run"
    with TarStream(run) as tar:
        data = read_all(tar)
        tar.finish()
    assert sorted(tar_names(data)) == entries(run) == [b"run", b"run/in_se\\061q"]


# Exclusions are fnmatch patterns where a backslash escapes the next character, exactly
# as for tar --exclude typed on a command line (with or without --no-unquote).
BACKSLASH_EXCLUSIONS = {
    "x\\061": {"x061"},  # \0 is a literal 0: not "x1", not the name "x\061"
    "y\\*": {"y*"},  # a literal star
    "*\\\\*": {"x\\061", "a\\b"},  # any name holding a backslash
    "a\\b": {"ab"},
}


@pytest.mark.parametrize("pattern, excluded", BACKSLASH_EXCLUSIONS.items())
def test_exclusions_with_backslashes_match_as_on_tars_command_line(tmp_path, pattern, excluded):
    run = tmp_path / "run"
    run.mkdir()
    names = {"x061", "x1", "x\\061", "y*", "yz", "a\\b", "ab"}
    for name in names:
        (run / name).write_text(name)
    with TarStream(run, exclusions=[pattern]) as tar:
        data = read_all(tar)
        tar.finish()
    assert data == tar_by_hand(run, [pattern])  # the documented command, by hand
    kept = {os.fsdecode(name)[len("run/") :] for name in tar_names(data)[1:]}
    assert kept == names - excluded
