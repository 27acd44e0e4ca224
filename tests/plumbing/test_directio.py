"""Direct I/O on real files: the archive writer (ArchiveOutput) writes exactly the bytes
it is given, with and without O_DIRECT, at every alignment; errors reach the caller
unchanged; a trailing reader is told of each completed write, of the end and of a
failure (WriteProgress)."""

from __future__ import annotations

import errno
import fcntl
import os
import threading

import pytest

from dfarchive.archiving.engines.output import ArchiveOutput
from dfarchive.errors import Cancelled
from dfarchive.plumbing.directio import DIRECT_ALIGNMENT, open_direct
from dfarchive.plumbing.writeprogress import WriteProgress
from tests.support.blocks import BLOCK, SIZES

WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


def is_direct(fd: int) -> bool:
    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def test_the_test_filesystem_takes_direct_io(tmp_path):
    """Guards the rest: on a filesystem without O_DIRECT these tests would only cover
    the fallback."""
    fd = open_direct(tmp_path / "probe", WRITE_FLAGS, 0o600)
    try:
        assert is_direct(fd)
    finally:
        os.close(fd)


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "buffered"])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("piece", [1000, BLOCK + 7])
def test_archive_output_writes_exactly_the_bytes_given(tmp_path, direct, size, piece):
    data = os.urandom(size)
    path = tmp_path / "out"
    fd = open_direct(path, WRITE_FLAGS, 0o600, direct=direct)
    try:
        with ArchiveOutput(fd, block_size=BLOCK) as output:
            for part in pieces(data, piece):
                output(bytearray(part))
        # a whole number of aligned blocks keeps O_DIRECT on; an unaligned tail ends it
        assert is_direct(fd) == (direct and size % DIRECT_ALIGNMENT == 0)
    finally:
        os.close(fd)
    assert path.read_bytes() == data
    assert output.size == size


def test_archive_output_copies_what_it_is_given(tmp_path):
    """The caller may reuse its buffer as soon as the call returns."""
    path = tmp_path / "out"
    buffer = bytearray(BLOCK // 2)
    expected = bytearray()
    fd = open_direct(path, WRITE_FLAGS, 0o600)
    try:
        with ArchiveOutput(fd, block_size=BLOCK) as output:
            for i in range(9):
                buffer[:] = bytes([i]) * len(buffer)
                output(buffer)
                expected += buffer
    finally:
        os.close(fd)
    assert path.read_bytes() == expected


def test_a_full_device_is_raised_unchanged():
    fd = os.open("/dev/full", os.O_WRONLY | os.O_CLOEXEC)
    try:
        output = ArchiveOutput(fd, block_size=BLOCK)
        with pytest.raises(OSError) as caught:  # by a later call or by close
            for _ in range(10):
                output(bytes(BLOCK))
            output.close()
        assert caught.value.errno == errno.ENOSPC
        output.abort()  # idempotent after a failure
    finally:
        os.close(fd)


def test_abort_drops_what_is_queued_and_stops_the_writer(tmp_path):
    path = tmp_path / "out"
    fd = open_direct(path, WRITE_FLAGS, 0o600)
    try:
        with pytest.raises(RuntimeError), ArchiveOutput(fd, block_size=BLOCK) as output:
            output(bytes(BLOCK // 2))
            raise RuntimeError("engine failed")
    finally:
        os.close(fd)
    assert not any(t.name == "dfarchive-write" and t.is_alive() for t in threading.enumerate())
    assert path.stat().st_size == 0  # the half block never went out


class RecordingProgress(WriteProgress):
    """Checks, at each publication, that the bytes published are in the file."""

    def __init__(self, path) -> None:
        super().__init__()
        self.path = path
        self.published: list[int] = []
        self.ended: str | None = None

    def advance(self, count: int) -> None:
        assert os.stat(self.path).st_size >= self.written + count  # written before published
        self.published.append(count)
        super().advance(count)

    def close(self) -> None:
        self.ended = self.ended or "closed"
        super().close()

    def fail(self) -> None:
        self.ended = self.ended or "failed"
        super().fail()


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "buffered"])
@pytest.mark.parametrize("size", [0, BLOCK - 1, 3 * BLOCK, 5 * BLOCK + DIRECT_ALIGNMENT + 17])
def test_archive_output_publishes_each_completed_write_then_closes(tmp_path, direct, size):
    path = tmp_path / "out"
    written = RecordingProgress(path)
    fd = open_direct(path, WRITE_FLAGS, 0o600, direct=direct)
    try:
        with ArchiveOutput(fd, block_size=BLOCK, written=written) as output:
            for part in pieces(os.urandom(size), 1000):
                output(part)
            assert written.ended is None  # not before every byte is out
    finally:
        os.close(fd)
    assert sum(written.published) == written.written == size
    assert all(count == BLOCK for count in written.published[:-1])  # whole aligned blocks
    assert written.ended == "closed"
    assert written.wait_for(size + 1) is True  # a reader may read to the end


def test_a_failed_write_or_an_abort_fails_the_write_progress(tmp_path):
    fd = os.open("/dev/full", os.O_WRONLY | os.O_CLOEXEC)
    written = WriteProgress()
    try:
        with pytest.raises(OSError), ArchiveOutput(fd, block_size=BLOCK, written=written) as out:
            out(bytes(3 * BLOCK))
    finally:
        os.close(fd)
    with pytest.raises(Cancelled, match="writer stopped"):
        written.wait_for(1)
    aborted = RecordingProgress(tmp_path / "out")
    fd = open_direct(aborted.path, WRITE_FLAGS, 0o600)
    try:
        with pytest.raises(RuntimeError), ArchiveOutput(fd, block_size=BLOCK, written=aborted):
            raise RuntimeError("engine failed")
    finally:
        os.close(fd)
    assert aborted.ended == "failed"
