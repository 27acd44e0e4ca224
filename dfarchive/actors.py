"""Dramatiq wiring: ``dramatiq dfarchive.actors`` starts archive workers.

Importing this module loads the config (``$ARCHIVE_CONFIG``, else the default path)
and sets up the RabbitMQ broker from ``broker_url`` (``$DFARCHIVE_BROKER_URL``
overrides) — nothing else: no connection, no scan. The start-up checks (tools,
directories, recipient key, store) run when a worker process boots; a failing check
stops that worker with one clear log line.

The actor is built for hours-long work: no time limit to speak of, no Dramatiq
retries (the store's ``failure_count`` is the retry policy, so a handled failure never
reaches the dead-letter queue), and ``notify_shutdown`` so a worker that is told to
stop releases its run instead of abandoning it.

While the recipient key is unusable (revoked, expired, removed since start-up), a
worker takes no run: a message that arrives then is dropped unclaimed (the run stays
pending; the scheduler sends it again after its re-enqueue window, an hour by
default, or on its next pass for a run an attempt released). The key is checked again
at most every ``scan_interval``.

With ``metrics_port`` set, Dramatiq's Prometheus middleware and dfarchive's
per-process metrics are served on that port (:mod:`dfarchive.worker_metrics`).
"""

from __future__ import annotations

import logging
import os

import dramatiq
from dramatiq.middleware import Middleware, Shutdown

from .attempt import AttemptObserver, RecipientGate, attempt_run
from .config import config_path, load_config, plaintext_credentials
from .coredumps import disable_core_dumps
from .errors import DfArchiveError
from .logs import setup_logging
from .messaging import ACTOR_NAME, QUEUE_NAME, broker_url, make_broker
from .metrics import ArchiveMetrics
from .startup import Runtime, StartupError, prepare

log = logging.getLogger(__name__)

#: Longer than any run will take (30 days): Dramatiq's TimeLimit can't interrupt a
#: blocking syscall anyway, and a run must never be killed for being large.
TIME_LIMIT_MS = 30 * 24 * 3600 * 1000

disable_core_dumps()  # workers hold run keys: never in a core file
_config = load_config(config_path())
_url = broker_url(_config.broker_url)
if _url is None:
    raise StartupError(
        f"{_config.source}: broker_url: missing; dramatiq workers need RabbitMQ "
        "(set broker_url, or $DFARCHIVE_BROKER_URL)"
    )
broker = make_broker(_url)
dramatiq.set_broker(broker)

if _config.metrics_port is not None:
    from .worker_metrics import WorkerPrometheus

    broker.add_middleware(WorkerPrometheus())

_runtime: Runtime | None = None
_gate: RecipientGate | None = None
_observers: list[AttemptObserver] = []


class WorkerStartupChecks(Middleware):
    """Run the start-up checks once per worker process, before it takes messages."""

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        global _runtime, _gate
        setup_logging(_config.log_level, _config.log_file)
        for warning in plaintext_credentials(_config):
            log.warning("%s", warning)
        try:
            _runtime = prepare(_config)
        except DfArchiveError as error:
            log.critical("worker cannot start: %s", error)
            raise
        if _config.metrics_port is not None:  # made after process boot: multiprocess mode
            _observers.append(ArchiveMetrics())
        _gate = RecipientGate(
            _runtime.recipient,  # type: ignore[arg-type]
            gnupg_home=_config.gnupg_home,
            recheck_seconds=_config.scan_interval,
        )
        log.info(
            "worker %s:%d ready (recipient %s)", _runtime.worker_id, os.getpid(), _runtime.recipient
        )

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if _runtime is not None:
            _runtime.store.close()


broker.add_middleware(WorkerStartupChecks())


@dramatiq.actor(
    actor_name=ACTOR_NAME,
    queue_name=QUEUE_NAME,
    max_retries=0,
    time_limit=TIME_LIMIT_MS,
    notify_shutdown=True,
)
def archive_run(run_id: str) -> None:
    """Claim ``run_id`` and archive it; a no-op if someone else holds or finished it."""
    assert _runtime is not None and _gate is not None, "worker booted without its checks"
    if not _gate.is_open():
        # Not claimed, so the run stays pending with its enqueued_at: the scheduler
        # sends it again once its re-enqueue window has passed.
        log.warning("[%s] not taken: the GPG recipient is unusable (see above)", run_id)
        return
    try:
        outcome = attempt_run(
            _runtime.store,
            run_id,
            worker_id=_runtime.worker_id,
            settings=_runtime.settings,
            recipient=_runtime.recipient,  # type: ignore[arg-type]
            sequencing_path=_config.sequencing_path,
            observers=_observers,
            gate=_gate,
        )
    except Shutdown:
        # attempt_run already stopped the children, removed partial files and released
        # the run; returning (not raising) keeps the message out of the dead letters.
        log.warning("[%s] worker shutting down; run released", run_id)
        return
    except DfArchiveError as error:
        # e.g. the store stayed unreachable past every retry. The message is only a
        # hint: the scheduler re-sends it, and an expired lease is reclaimed.
        log.error("[%s] attempt abandoned: %s", run_id, error)
        return
    log.info("[%s] attempt ended: %s", run_id, outcome.value)
