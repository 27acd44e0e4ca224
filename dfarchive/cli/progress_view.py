"""A live progress line per active run, for ``dataflow_archive`` in a terminal.

::

    240101_A00001_0001_AHDEMOXXXX   42.3%   312.5 MB/s  ETA 0:03:12  1.23/2.91 GB

The lines sit at the bottom of stderr and are redrawn in place (plain ANSI: cursor up,
erase down); log lines written meanwhile scroll above them, because the stderr log
handler writes through :attr:`TerminalProgress.stream`. Nothing here is used when
stderr is not a terminal: then the log lines are all there is.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from dfarchive.coordination.attempt import AttemptObserver, AttemptOutcome

#: Throughput is measured over this trailing window (seconds).
RATE_WINDOW = 10.0
#: The lines are redrawn at least this often (seconds), so stalls show.
REFRESH_SECONDS = 1.0
#: A run whose byte count has not moved for this long is shown as waiting.
STALL_SECONDS = 3.0

_UP_AND_ERASE = "\x1b[{n}A\r\x1b[J"  # cursor up n lines, column 1, erase to the end


def wants_progress(stream: TextIO, environ: Mapping[str, str] = os.environ) -> bool:
    """True if ``stream`` is a terminal that understands cursor movement."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        return False
    return tty and environ.get("TERM", "") not in ("", "dumb")


def format_duration(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


@dataclass
class RunProgress:
    """What is known about one active run."""

    done: int = 0
    total: int = 0
    changed_at: float = 0.0
    samples: deque[tuple[float, int]] = field(default_factory=deque)

    def update(self, done: int, total: int, now: float) -> None:
        if done != self.done or not self.samples:
            self.changed_at = now
        self.done, self.total = done, max(total, done)
        self.samples.append((now, done))
        while len(self.samples) > 2 and now - self.samples[0][0] > RATE_WINDOW:
            self.samples.popleft()

    def rate(self) -> float:
        """Bytes per second over the trailing window (0 until two samples)."""
        (t0, d0), (t1, d1) = self.samples[0], self.samples[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 else 0.0


def progress_line(run_id: str, progress: RunProgress, now: float) -> str:
    """One run's line: id, percent, MB/s, ETA, bytes done of the estimate.

    The bytes done are the run's one figure for writing and validating together
    (:class:`dfarchive.archiving.pipeline.RunProgress`): validation has no phase of its own.
    """
    total = max(progress.total, 1)
    percent = 100.0 * progress.done / total
    sizes = f"{progress.done / 1e9:.2f}/{progress.total / 1e9:.2f} GB"
    if now - progress.changed_at >= STALL_SECONDS:
        waited = format_duration(now - progress.changed_at)
        return f"{run_id}  {percent:5.1f}%  waiting for data ({waited})  {sizes}"
    rate = progress.rate()
    if rate <= 0:  # one sample so far
        return f"{run_id}  {percent:5.1f}%     --.- MB/s  ETA -:--:--  {sizes}"
    eta = format_duration((progress.total - progress.done) / rate)
    return f"{run_id}  {percent:5.1f}%  {rate / 1e6:7.1f} MB/s  ETA {eta}  {sizes}"


class _LiveStream:
    """A text stream for log handlers: lines go above the live block."""

    def __init__(self, view: TerminalProgress) -> None:
        self._view = view

    def write(self, text: str) -> int:
        self._view._write_above(text)
        return len(text)

    def flush(self) -> None:
        self._view._flush()


class TerminalProgress(AttemptObserver):
    """Live progress lines at the bottom of a terminal stream.

    Use :meth:`attach` to route the stderr log handlers through it, and :meth:`close`
    when done (it erases the lines).
    """

    def __init__(
        self,
        stream: TextIO,
        *,
        clock: Callable[[], float] = time.monotonic,
        size: Callable[[], os.terminal_size] = shutil.get_terminal_size,
    ) -> None:
        self._out = stream
        self._clock = clock
        self._size = size
        self._runs: dict[str, RunProgress] = {}
        self._lock = threading.RLock()
        self._shown = 0  # lines of the block currently on screen
        self._midline = False  # the last text written above did not end a line
        self._closed = threading.Event()
        self._refresher: threading.Thread | None = None
        self.stream = _LiveStream(self)

    # -- set-up --------------------------------------------------------------------------

    def attach(self, logger: logging.Logger | None = None, *, refresh: bool = True) -> None:
        """Send the log handlers that write to our stream through the live block, and
        (with ``refresh``) redraw every REFRESH_SECONDS so stalled runs show."""
        for handler in (logger or logging.getLogger()).handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is self._out:
                handler.setStream(self.stream)
        if refresh:
            self._refresher = threading.Thread(
                target=self._refresh, name="progress-view", daemon=True
            )
            self._refresher.start()

    def close(self) -> None:
        """Stop redrawing and erase the block."""
        self._closed.set()
        if self._refresher is not None:
            self._refresher.join(timeout=5)
        with self._lock:
            self._runs.clear()
            self._erase()
            self._out.flush()

    # -- AttemptObserver -------------------------------------------------------------------

    def progress(self, run_id: str, done: int, total: int) -> None:
        with self._lock:
            self._runs.setdefault(run_id, RunProgress()).update(done, total, self._clock())
            self._redraw()

    def ended(self, run_id: str, outcome: AttemptOutcome, record: Mapping[str, Any] | None) -> None:
        with self._lock:
            self._runs.pop(run_id, None)
            self._redraw()

    # -- drawing ---------------------------------------------------------------------------

    def lines(self) -> list[str]:
        """The block as it would be drawn now: one line per active run, by run id,
        cut to the terminal's width, and no taller than half the terminal."""
        now, size = self._clock(), self._size()
        width, room = max(size.columns, 20), max(size.lines // 2, 2)
        with self._lock:
            run_ids = sorted(self._runs)
            shown = run_ids if len(run_ids) <= room else run_ids[: room - 1]
            lines = [progress_line(run_id, self._runs[run_id], now) for run_id in shown]
        if len(shown) < len(run_ids):
            lines.append(f"... and {len(run_ids) - len(shown)} more runs in progress")
        return [line[: width - 1] for line in lines]

    def _refresh(self) -> None:
        while not self._closed.wait(REFRESH_SECONDS):
            with self._lock:
                if self._runs:
                    self._redraw()

    def _erase(self) -> None:
        if self._shown:
            self._out.write(_UP_AND_ERASE.format(n=self._shown))
            self._shown = 0

    def _draw(self) -> None:
        if self._midline or self._closed.is_set():
            return  # never draw in the middle of someone else's line
        lines = self.lines()
        if lines:
            self._out.write("".join(line + "\n" for line in lines))
        self._shown = len(lines)

    def _redraw(self) -> None:
        with self._lock:
            self._erase()
            self._draw()
            self._out.flush()

    def _write_above(self, text: str) -> None:
        with self._lock:
            self._erase()
            self._out.write(text)
            if text:
                self._midline = not text.endswith("\n")
            self._draw()

    def _flush(self) -> None:
        with self._lock:
            self._out.flush()
