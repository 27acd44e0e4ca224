"""``dataflow_archive [-c CONFIG] [--once]``: the original tool's command.

Without ``broker_url`` it scans, claims and archives on this host; with one it only
schedules, and ``dramatiq dfarchive.actors`` workers do the archiving.

Signals, as the original tool: the first Ctrl+C or SIGTERM finishes the runs in
progress and exits 0; a second Ctrl+C stops them at once (partial files removed,
runs back to pending uncounted) and exits 130.

In a terminal, a live progress line per active run sits below the log lines
(:mod:`dfarchive.cli.progress_view`); with ``metrics_port`` set, Prometheus metrics are
served (:mod:`dfarchive.service.metrics`).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import Callable
from types import FrameType

from dfarchive import __version__
from dfarchive.archiving.keys import Recipient
from dfarchive.cli.common import (
    EXIT_CHECK_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    add_config_option,
    load,
    run_main,
)
from dfarchive.cli.progress_view import TerminalProgress, wants_progress
from dfarchive.coordination.attempt import AttemptObserver
from dfarchive.coordination.store import RunStore
from dfarchive.plumbing.sigsafe import SignalSafeEvent
from dfarchive.service.config import Config
from dfarchive.service.localloop import LocalArchiver
from dfarchive.service.messaging import broker_url
from dfarchive.service.metrics import scheduler_metrics, serve_metrics
from dfarchive.service.scheduler import run_scheduler
from dfarchive.service.startup import Runtime, prepare


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dataflow_archive",
        description="Scan sequencing run folders, archive complete runs (tar + OpenPGP "
        "AES-256), validate them, wrap their keys, and track every run in the status DB.",
    )
    add_config_option(p)
    p.add_argument(
        "--once",
        action="store_true",
        help="one full pass: archive everything pending, wait for it, then exit "
        "(0 if every run attempted ended encrypted, 1 otherwise)",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def install_signal_handlers(on_first: Callable[[], None], on_second: Callable[[], None]) -> None:
    """First SIGINT/SIGTERM → ``on_first``; a second SIGINT → ``on_second``.

    Both run inside the signal handler, perhaps nested in the other one, so they must
    take no lock: set :class:`~dfarchive.plumbing.sigsafe.SignalSafeEvent` s, no logging.
    """
    received: list[int] = []

    def handle(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        if len(received) == 1:
            on_first()
        elif signum == signal.SIGINT:
            on_second()

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)


def main() -> None:
    run_main("dataflow_archive", _main)


def _main() -> int:
    args = parser().parse_args()
    config = load(args)
    with contextlib.ExitStack() as cleanup:
        if broker_url(config.broker_url):
            stop = SignalSafeEvent()
            install_signal_handlers(stop.set, _interrupt)
            cleanup.enter_context(scheduler_metrics(config))
            return run_scheduler(config, once=args.once, stop=stop)

        runtime = prepare(config)
        cleanup.enter_context(runtime.store)
        observers = _start_metrics(config, runtime.store, cleanup)
        if wants_progress(sys.stderr):
            view = TerminalProgress(sys.stderr)
            view.attach()
            cleanup.callback(view.close)
            observers.append(view)
        return _archive_here(runtime, observers, once=args.once)


def _interrupt() -> None:
    """A second Ctrl+C while scheduling: leave the pass in progress (perhaps waiting on
    an unreachable server) at once; :func:`run_main` exits 130. A scheduler holds no
    run and writes no file, so nothing is left to clean up (runs marked but not sent
    yet are sent again after the re-enqueue window)."""
    raise KeyboardInterrupt


def _start_metrics(
    config: Config, store: RunStore, cleanup: contextlib.ExitStack
) -> list[AttemptObserver]:
    """Serve ``/metrics`` if ``metrics_port`` is set; return the observers feeding it."""
    metrics = serve_metrics(config, store)
    if metrics is None:
        return []
    cleanup.callback(metrics.close)
    return [metrics.archive]


def _archive_here(
    runtime: Runtime[Recipient], observers: list[AttemptObserver], *, once: bool
) -> int:
    """Scan, claim and archive on this host until stopped (or one pass with ``once``)."""
    archiver = LocalArchiver(runtime, observers=observers)
    install_signal_handlers(archiver.stop, archiver.stop_now)
    all_encrypted = archiver.run(once=once)
    if archiver.immediate.is_set():
        return EXIT_INTERRUPTED
    if once and not all_encrypted:
        return EXIT_CHECK_FAILED
    return EXIT_OK
