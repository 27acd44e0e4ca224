"""Progress: the live terminal lines of ``dataflow_archive`` and the document's
``progress`` field kept fresh by the lease heartbeats."""

from __future__ import annotations

import fcntl
import io
import os
import re
import select
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

from dfarchive.cli.progress_view import (
    STALL_SECONDS,
    RunProgress,
    TerminalProgress,
    progress_line,
    wants_progress,
)
from dfarchive.coordination.attempt import AttemptOutcome
from dfarchive.coordination.lease import MAX_HEARTBEAT_INTERVAL, LeaseKeeper
from dfarchive.coordination.store import NewRun, SqliteStore
from dfarchive.coordination.store.base import Claim
from tests.support.clock import ManualClock
from tests.support.localrun import documents, make_config, sparse_run
from tests.support.waiting import wait_until

BIN = Path(sys.executable).parent
LINE = re.compile(r"^(\S+) +(\d+\.\d)% +(\d+\.\d|--\.-) MB/s +ETA (\d+:\d\d:\d\d|-:--:--) ")


class Screen:
    """Just enough of a VT100 to replay what the view writes: text, CR, LF,
    cursor up (``ESC [ n A``) and erase down (``ESC [ J``)."""

    TOKEN = re.compile(r"\x1b\[(\d*)([AJ])|\r|\n|[^\x1b\r\n]+")

    def __init__(self) -> None:
        self.lines = [""]
        self.row = self.col = 0

    def feed(self, text: str) -> None:
        for match in self.TOKEN.finditer(text):
            token = match.group(0)
            if match.group(2) == "A":
                self.row = max(self.row - int(match.group(1) or 1), 0)
            elif match.group(2) == "J":
                self.lines[self.row] = self.lines[self.row][: self.col]
                del self.lines[self.row + 1 :]
            elif token == "\r":
                self.col = 0
            elif token == "\n":
                self.row, self.col = self.row + 1, 0
                if self.row == len(self.lines):
                    self.lines.append("")
            else:
                line = self.lines[self.row]
                self.lines[self.row] = line[: self.col] + token + line[self.col + len(token) :]
                self.col += len(token)

    @property
    def text(self) -> list[str]:
        return [line for line in self.lines if line]


def test_progress_line_shows_percent_rate_and_eta():
    progress = RunProgress()
    progress.update(0, 1_000_000_000, now=10.0)
    assert LINE.match(progress_line("run_1", progress, 10.0)).group(3) == "--.-"
    progress.update(250_000_000, 1_000_000_000, now=12.0)
    line = progress_line("run_1", progress, 12.0)
    run, percent, rate, eta = LINE.match(line).groups()
    assert (run, percent, rate, eta) == ("run_1", "25.0", "125.0", "0:00:06")
    assert line.endswith("0.25/1.00 GB")
    # no new bytes for a while: no stale rate or ETA, say what is going on
    stalled = progress_line("run_1", progress, 12.0 + STALL_SECONDS)
    assert "waiting for data (0:00:03)" in stalled and "MB/s" not in stalled
    # near the end too: validation counts in the figure, it is no phase of its own
    progress.update(990_000_000, 1_000_000_000, now=20.0)
    stalled = progress_line("run_1", progress, 20.0 + STALL_SECONDS)
    assert "waiting for data (0:00:03)" in stalled and "validating" not in stalled


def test_log_lines_scroll_above_the_live_lines_and_close_erases_them():
    out, clock = io.StringIO(), ManualClock(1000.0)
    view = TerminalProgress(out, clock=clock, size=lambda: os.terminal_size((60, 24)))
    view.stream.write("log line 1\n")
    view.progress("run_b", 10, 100)
    view.progress("run_a", 0, 100)
    clock.now += 1
    view.progress("run_a", 50_000_000, 100_000_000)
    view.stream.write("log line 2\n")
    screen = Screen()
    screen.feed(out.getvalue())
    assert screen.text[:2] == ["log line 1", "log line 2"]
    assert [LINE.match(line).group(1) for line in screen.text[2:]] == ["run_a", "run_b"]
    assert all(len(line) < 60 for line in screen.text)

    view.ended("run_b", AttemptOutcome.ENCRYPTED, None)
    screen = Screen()
    screen.feed(out.getvalue())
    assert [line.split()[0] for line in screen.text] == ["log", "log", "run_a"]

    view.close()
    screen = Screen()
    screen.feed(out.getvalue())
    assert screen.text == ["log line 1", "log line 2"]


def test_partial_line_from_elsewhere_is_not_overdrawn():
    out = io.StringIO()
    view = TerminalProgress(out, clock=ManualClock(1000.0), size=lambda: os.terminal_size((80, 24)))
    view.progress("run_a", 1, 100)
    view.stream.write("half a line ")
    view.progress("run_a", 2, 100)  # must not draw in the middle of that line
    view.stream.write("and the rest\n")
    screen = Screen()
    screen.feed(out.getvalue())
    assert screen.text[0] == "half a line and the rest"
    assert screen.text[1].startswith("run_a")


def test_more_runs_than_fit_are_summed_up_in_one_line():
    view = TerminalProgress(
        io.StringIO(), clock=ManualClock(1000.0), size=lambda: os.terminal_size((80, 8))
    )
    for n in range(6):
        view.progress(f"run_{n}", n, 100)
    assert [line.split()[0] for line in view.lines()] == ["run_0", "run_1", "run_2", "..."]
    assert view.lines()[-1] == "... and 3 more runs in progress"


def test_progress_only_on_a_real_terminal():
    assert not wants_progress(io.StringIO(), {"TERM": "xterm"})
    primary, secondary = os.openpty()
    try:
        with open(secondary, "w", closefd=False) as tty:
            assert wants_progress(tty, {"TERM": "xterm"})
            assert not wants_progress(tty, {"TERM": "dumb"})
            assert not wants_progress(tty, {})
    finally:
        os.close(primary)
        os.close(secondary)


# -- the document's progress: written by every heartbeat -------------------------------


def test_lease_heartbeat_interval_is_a_third_of_the_lease_capped_at_30_s(tmp_path):
    claim = Claim(run_id="run_1", worker_id="test", token="t")
    assert MAX_HEARTBEAT_INTERVAL == 30.0
    for lease, expected in ((6, 2.0), (60, 20.0), (300, 30.0), (86400, 30.0)):
        with SqliteStore(tmp_path / "runs.sqlite3", lease_seconds=lease) as store:
            assert LeaseKeeper(store, claim, threading.Event()).interval == expected


def test_heartbeats_write_the_latest_progress_into_the_document(tmp_path):
    with SqliteStore(tmp_path / "runs.sqlite3", lease_seconds=1.5) as store:
        store.setup()
        store.register_many([NewRun("run_1", str(tmp_path), "seqA")], worker_id="test")
        claim = store.claim("run_1", worker_id="test")
        assert claim is not None
        with LeaseKeeper(store, claim, threading.Event()) as lease:  # heartbeat every 0.5 s
            for done in (1_000, 5_000):
                lease.update_progress(done, 10_000)
                progress = _wait_for_progress(store, done)
                assert progress["bytes_total"] == 10_000
                assert progress["rate"] > 0 and progress["updated_at"]
        assert not lease.lost


def _wait_for_progress(store: SqliteStore, done: int) -> dict:
    def progress() -> dict:
        found = (store.get("run_1") or {}).get("progress") or {}
        return found if found.get("bytes_done") == done else {}

    return wait_until(
        progress, 10, f"progress {done} in the document", detail=lambda: store.get("run_1")
    )


# -- the real command in a pseudo-terminal ------------------------------------------------


def test_dataflow_archive_in_a_terminal_draws_progress_lines(tmp_path, gnupg_home):
    config = make_config(tmp_path, gnupg_home, lease_seconds=2.4)  # heartbeat every 0.8 s
    sparse_run(tmp_path, "run_tty", 512 << 20)  # a few seconds of archiving
    primary, secondary = os.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(
        [str(BIN / "dataflow_archive"), "-c", str(config), "--once"],
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        env={**os.environ, "TERM": "xterm", "COLUMNS": "", "LINES": ""},
    )
    os.close(secondary)
    output, progress_seen = b"", []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            ready, _, _ = select.select([primary], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(primary, 65536)
                except OSError:  # EIO: the terminal's last writer is gone
                    break
                if not chunk:
                    break
                output += chunk
            if (tmp_path / "runs.sqlite3").exists():  # the document while it is archived
                doc = documents(tmp_path).get("run_tty", {})
                if doc.get("status") == "processing" and doc.get("progress"):
                    progress_seen.append(doc["progress"]["bytes_done"])
        assert proc.wait(timeout=60) == 0, output.decode(errors="replace")
    finally:
        proc.kill()
        os.close(primary)
    text = output.decode(errors="replace").replace("\r\n", "\n")
    lines = [LINE.match(part) for part in re.split(r"[\r\n]|\x1b\[J", text)]
    drawn = [m.groups() for m in lines if m]
    assert drawn, text
    assert {run for run, *_ in drawn} == {"run_tty"}
    assert any(rate != "--.-" for _, _, rate, _ in drawn), drawn
    assert "\x1b[1A\r\x1b[J" in text  # redrawn in place
    screen = Screen()
    screen.feed(text)
    assert not any(LINE.match(line) for line in screen.text), "progress left on screen"
    assert any("[run_tty] archived" in line for line in screen.text)
    # meanwhile the heartbeats put the progress into the document
    assert progress_seen and max(progress_seen) > 0, progress_seen


def test_no_escape_codes_when_not_a_terminal(tmp_path, gnupg_home):
    config = make_config(tmp_path, gnupg_home)
    sparse_run(tmp_path, "run_pipe", 1 << 20)
    result = subprocess.run(
        [str(BIN / "dataflow_archive"), "-c", str(config), "--once"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TERM": "xterm"},
    )
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stderr + result.stdout
    assert "[run_pipe] archived" in result.stderr
