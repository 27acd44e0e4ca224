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

Audit messages (``audit_run``, queue ``dfarchive.fixity``; see :mod:`dfarchive.coordination.fixity`)
are consumed by the same workers, after archive messages (a lower priority). An audit
is not started while a run is pending and stops when one becomes pending: its message
is sent again after YIELD_DELAY_MS and nothing is recorded. The process's audits read
at most ``fixity_max_rate`` MB/s together.

With ``metrics_port`` set, Dramatiq's Prometheus middleware and dfarchive's
per-process metrics are served on that port (:mod:`dfarchive.service.worker_metrics`).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import dramatiq
from dramatiq.middleware import Middleware, MiddlewareError, Shutdown

from dfarchive.archiving.keys import Recipient
from dfarchive.coordination.attempt import AttemptObserver, RecipientGate, attempt_run
from dfarchive.coordination.fixity import MB, OK, RateLimiter
from dfarchive.errors import DfArchiveError, Yielded
from dfarchive.ops.verify import recipient_key_lister
from dfarchive.plumbing.coredumps import disable_core_dumps
from dfarchive.plumbing.logs import setup_logging
from dfarchive.service.audit import AuditSettings, audit_and_record
from dfarchive.service.config import config_path, load_config, plaintext_credentials
from dfarchive.service.messaging import (
    ACTOR_NAME,
    FIXITY_ACTOR_NAME,
    FIXITY_PRIORITY,
    FIXITY_QUEUE_NAME,
    QUEUE_NAME,
    enqueue_fixity,
    make_broker,
    required_broker_url,
)
from dfarchive.service.metrics import ArchiveMetrics, FixityMetrics
from dfarchive.service.startup import Runtime, prepare

log = logging.getLogger(__name__)

#: Longer than any run will take (30 days): Dramatiq's TimeLimit can't interrupt a
#: blocking syscall anyway, and a run must never be killed for being large.
TIME_LIMIT_MS = 30 * 24 * 3600 * 1000
#: Every actor's options: never retried by Dramatiq (the scheduler re-sends), no time
#: limit a run would reach, told of a worker shutdown (the run in progress is released).
ACTOR_OPTIONS: dict[str, Any] = {
    "max_retries": 0,
    "time_limit": TIME_LIMIT_MS,
    "notify_shutdown": True,
}

disable_core_dumps()  # workers hold run keys: never in a core file
_config = load_config(config_path())
_url = required_broker_url(
    _config, "dramatiq workers need RabbitMQ (set broker_url, or $DFARCHIVE_BROKER_URL)"
)
broker = make_broker(_url)
dramatiq.set_broker(broker)

if _config.metrics_port is not None:
    from dfarchive.service.worker_metrics import WorkerPrometheus

    broker.add_middleware(WorkerPrometheus())

_runtime: Runtime[Recipient] | None = None
_gate: RecipientGate | None = None
_observers: list[AttemptObserver] = []
_audits: AuditSettings | None = None
_fixity_metrics: FixityMetrics | None = None


class WorkerCannotStart(MiddlewareError):
    """A start-up check failed in a worker process; the message says which."""


class WorkerStartupChecks(Middleware):
    """Run the start-up checks once per worker process, before it takes messages."""

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        global _runtime, _gate, _audits, _fixity_metrics
        setup_logging(_config.log_level, _config.log_file)
        for warning in plaintext_credentials(_config):
            log.warning("%s", warning)
        try:
            _runtime = prepare(_config)
        except DfArchiveError as error:
            log.critical("worker cannot start: %s", error)
            # Dramatiq logs and ignores other exceptions from this hook: the process
            # would then take messages it cannot handle. A MiddlewareError stops it, and
            # with it the whole dramatiq command (its messages go back to the queue).
            raise WorkerCannotStart(str(error)) from None
        if _config.metrics_port is not None:  # made after process boot: multiprocess mode
            _observers.append(ArchiveMetrics())
            _fixity_metrics = FixityMetrics()
        _audits = AuditSettings(
            limiter=RateLimiter(_config.fixity_max_rate * MB),
            recipient_keys=recipient_key_lister(_gnupg_home()),
            host=_runtime.worker_id,
        )
        _gate = RecipientGate(
            _runtime.recipient,
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


@dramatiq.actor(actor_name=ACTOR_NAME, queue_name=QUEUE_NAME, **ACTOR_OPTIONS)
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
            recipient=_runtime.recipient,
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


# -- fixity audits ----------------------------------------------------------------------

#: An audit that gave way to archive work is sent again after this long (ms), so that
#: workers do not pass it back and forth while the archive work is being claimed.
YIELD_DELAY_MS = 10_000


def _gnupg_home() -> str | None:
    return str(_config.gnupg_home) if _config.gnupg_home else None


@dramatiq.actor(
    actor_name=FIXITY_ACTOR_NAME,
    queue_name=FIXITY_QUEUE_NAME,
    priority=FIXITY_PRIORITY,
    **ACTOR_OPTIONS,
)
def audit_run(run_id: str) -> None:
    """Audit ``run_id``'s archive and record the result, unless archive work waits."""
    assert _runtime is not None and _audits is not None, "worker booted without its checks"
    store = _runtime.store
    try:
        doc = store.get(run_id)
        if doc is None or not doc.get("fixity_enqueued_at"):
            return  # audited since this message was sent (a duplicate), or gone
        check, _ = audit_and_record(
            store,
            doc,
            _audits,
            yield_to_archiving=True,
            on_read=_fixity_metrics.read if _fixity_metrics is not None else None,
        )
    except (Yielded, Shutdown) as reason:
        log.info("[%s] audit postponed: %s", run_id, str(reason) or "worker shutting down")
        _send_again(run_id)
        return
    except DfArchiveError as error:
        # The message is a hint only: the scheduler sends it again after its window.
        log.error("[%s] audit abandoned: %s", run_id, error)
        return
    if check.result == OK:
        log.info("[%s] fixity ok (%.1f s)", run_id, check.seconds)
    else:
        log.error("[%s] fixity %s: %s", run_id, check.result, check.reason)


def _send_again(run_id: str) -> None:
    try:
        enqueue_fixity(broker, run_id, delay_ms=YIELD_DELAY_MS)
    except DfArchiveError as error:
        log.warning("[%s] audit not re-sent (the scheduler will): %s", run_id, error)
