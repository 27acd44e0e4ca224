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

from dfarchive.errors import Cancelled, ToolError
from dfarchive.tarstream import TarStream, tar_command
from tests.gpg_fixtures import tar_by_hand

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
