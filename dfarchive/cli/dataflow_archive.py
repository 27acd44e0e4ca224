"""``dataflow_archive [-c CONFIG] [--once]``: the original tool's command.

Without ``broker_url`` it scans, claims and archives on this host; with one it only
schedules, and ``dramatiq dfarchive.actors`` workers do the archiving.

Signals, as the original tool: the first Ctrl+C or SIGTERM finishes the runs in
progress and exits 0; a second Ctrl+C stops them at once (partial files removed,
runs back to pending uncounted) and exits 130.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

from .. import __version__
from ..localrun import LocalArchiver
from ..messaging import broker_url
from ..scheduler import run_scheduler
from ..startup import prepare
from .common import (
    EXIT_CHECK_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    add_config_option,
    load,
    run_main,
)

log = logging.getLogger("dfarchive")


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
    """First SIGINT/SIGTERM → ``on_first``; a second SIGINT → ``on_second``."""
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
    if broker_url(config.broker_url):
        stop = threading.Event()
        install_signal_handlers(stop.set, stop.set)
        return run_scheduler(config, once=args.once, stop=stop)

    runtime = prepare(config)
    archiver = LocalArchiver(runtime)

    def graceful() -> None:
        log.warning("stopping: finishing runs in progress (Ctrl+C again to stop now)")
        archiver.stop()

    def immediate() -> None:
        log.warning("stopping now: cancelling runs in progress")
        archiver.stop_now()

    install_signal_handlers(graceful, immediate)
    try:
        all_encrypted = archiver.run(once=args.once)
    finally:
        runtime.store.close()
    if archiver.immediate.is_set():
        return EXIT_INTERRUPTED
    if args.once and not all_encrypted:
        return EXIT_CHECK_FAILED
    return EXIT_OK
