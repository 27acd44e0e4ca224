"""ReadAhead on real files (with and without O_DIRECT, every alignment) and on a
non-blocking pipe fed piecemeal: the exact bytes and their SHA-256, early stops, errors
and cancel; trailing a writer (WriteProgress)."""

from __future__ import annotations

import hashlib
import os
import threading
import time

import pytest

from dfarchive.errors import Cancelled
from dfarchive.plumbing.childproc import POLL_SECONDS
from dfarchive.plumbing.directio import open_direct
from dfarchive.plumbing.readahead import ReadAhead
from dfarchive.plumbing.writeprogress import WriteProgress
from tests.support.blocks import BLOCK, SIZES


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "buffered"])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("ask", [-1, 1000, BLOCK])
def test_read_ahead_returns_the_file_exactly(tmp_path, direct, size, ask):
    data = os.urandom(size)
    path = tmp_path / "in"
    path.write_bytes(data)
    fd = open_direct(path, os.O_RDONLY | os.O_CLOEXEC, 0, direct=direct)
    got = bytearray()
    try:
        with ReadAhead(fd, block_size=BLOCK, digest="sha256") as reader:
            while view := reader.read(ask):
                assert len(view) <= (BLOCK if ask < 0 else ask)
                got += view
            assert reader.read(ask) == b""  # stays at the end
            assert reader.size == size
            assert reader.hexdigest() == hashlib.sha256(data).hexdigest()
    finally:
        os.close(fd)
    assert got == data


def test_read_ahead_stops_early_without_reading_the_rest(tmp_path):
    path = tmp_path / "in"
    path.write_bytes(os.urandom(20 * BLOCK))
    fd = open_direct(path, os.O_RDONLY | os.O_CLOEXEC, 0)
    try:
        with ReadAhead(fd, block_size=BLOCK, blocks=2, digest="sha256") as reader:
            assert len(reader.read(10)) == 10
            with pytest.raises(ValueError, match="not read to its end"):
                reader.hexdigest()
        assert os.lseek(fd, 0, os.SEEK_CUR) <= 3 * BLOCK  # at most the blocks in flight
    finally:
        os.close(fd)
    assert not any(t.name == "dfarchive-read" and t.is_alive() for t in threading.enumerate())


def test_read_ahead_raises_read_errors_and_cancel(tmp_path):
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with ReadAhead(fd, block_size=BLOCK) as reader, pytest.raises(IsADirectoryError):
            reader.read()
    finally:
        os.close(fd)
    path = tmp_path / "in"
    path.write_bytes(bytes(3 * BLOCK))
    cancel = threading.Event()
    fd = os.open(path, os.O_RDONLY)
    try:
        with ReadAhead(fd, block_size=BLOCK, cancel=cancel) as reader:
            assert reader.read(BLOCK)
            cancel.set()
            with pytest.raises(Cancelled):
                reader.read(BLOCK)
    finally:
        os.close(fd)


def test_a_pipe_fed_piecemeal_fills_whole_blocks(tmp_path):
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    data = os.urandom(3 * BLOCK + 5)

    def feed() -> None:
        for i in range(0, len(data), 3000):
            os.write(write_fd, data[i : i + 3000])
        os.close(write_fd)

    feeder = threading.Thread(target=feed)
    feeder.start()
    sizes = []
    try:
        with ReadAhead(read_fd, block_size=BLOCK, digest="sha256") as reader:
            got = bytearray()
            while view := reader.read():
                sizes.append(len(view))
                got += view
            assert reader.hexdigest() == hashlib.sha256(data).hexdigest()
    finally:
        feeder.join()
        os.close(read_fd)
    assert got == data
    assert sizes == [BLOCK, BLOCK, BLOCK, 5]


def test_closing_while_a_pipe_is_silent_stops_the_helper_promptly():
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    try:
        reader = ReadAhead(read_fd, block_size=BLOCK)
        started = time.monotonic()
        reader.close()
        assert time.monotonic() - started < 5 * POLL_SECONDS
    finally:
        os.close(read_fd)
        os.close(write_fd)
    assert not any(t.name == "dfarchive-read" and t.is_alive() for t in threading.enumerate())


class WatchedProgress(WriteProgress):
    """Sets ``waiting`` when a reader waits for more than has been published."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = threading.Event()

    def wait_for(self, offset: int, *stops: threading.Event | None) -> bool:
        if offset > self.written:
            self.waiting.set()
        return super().wait_for(offset, *stops)


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "buffered"])
def test_a_trailing_reader_reads_only_what_was_published_and_the_tail_at_the_end(tmp_path, direct):
    data = os.urandom(3 * BLOCK + 17)
    path = tmp_path / "in"
    path.write_bytes(data)  # all there, but the writer has published one block only
    written = WatchedProgress()
    written.advance(BLOCK)
    fd = open_direct(path, os.O_RDONLY | os.O_CLOEXEC, 0, direct=direct)
    try:
        with ReadAhead(fd, block_size=BLOCK, digest="sha256", trail=written) as reader:
            assert reader.read() == data[:BLOCK]
            assert written.waiting.wait(30)
            assert os.lseek(fd, 0, os.SEEK_CUR) == BLOCK  # nothing past the published offset
            written.advance(BLOCK)
            assert reader.read() == data[BLOCK : 2 * BLOCK]
            written.advance(BLOCK + 17)  # the unaligned tail: read only once closed
            written.close()
            got = bytearray()
            while view := reader.read():
                got += view
            assert reader.hexdigest() == hashlib.sha256(data).hexdigest()
    finally:
        os.close(fd)
    assert got == data[2 * BLOCK :]


def test_a_failed_writer_stops_a_trailing_reader(tmp_path):
    path = tmp_path / "in"
    path.write_bytes(bytes(3 * BLOCK))
    written = WatchedProgress()
    fd = os.open(path, os.O_RDONLY)
    try:
        with ReadAhead(fd, block_size=BLOCK, trail=written) as reader:
            assert written.waiting.wait(30)
            written.fail()
            with pytest.raises(Cancelled, match="writer stopped"):
                reader.read()
    finally:
        os.close(fd)
    assert not any(t.name == "dfarchive-read" and t.is_alive() for t in threading.enumerate())
