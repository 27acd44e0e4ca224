"""dfarchive's own Prometheus metrics, served on ``metrics_port`` (off by default).

The metrics, their types and who serves each are in the README's "Metrics" section.

``dataflow_archive`` serves them with :func:`serve_metrics` (with the usual
``process_*`` metrics). Dramatiq workers serve the per-process ones (not the store
gauges) next to Dramatiq's own through :mod:`dfarchive.service.worker_metrics`.

``prometheus_client`` is imported only when metrics are used: in a Dramatiq worker it
must not be imported before Dramatiq's Prometheus middleware has switched it to
multiprocess mode.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from dfarchive.coordination import fixity
from dfarchive.coordination.attempt import AttemptObserver, AttemptOutcome
from dfarchive.coordination.runstate import ENCRYPTED, STATUSES
from dfarchive.errors import MetricsError, StoreError
from dfarchive.service.config import Config

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

    from dfarchive.coordination.store.base import RunStore

log = logging.getLogger(__name__)

#: A scrape re-reads the store for ``dfarchive_runs`` only if the last read is older
#: than ``scan_interval`` or this many seconds, whichever is shorter; scrapes in
#: between get the last counts, so a busy Prometheus never loads the database.
STORE_READ_INTERVAL = 15.0
#: Address the endpoint listens on (all interfaces unless set).
ADDRESS_ENV = "DFARCHIVE_METRICS_ADDR"
#: Histogram buckets for a run's throughput, bytes/s: 1 MB/s … 2 GB/s.
THROUGHPUT_BUCKETS = (1e6, 5e6, 1e7, 2.5e7, 5e7, 1e8, 2e8, 4e8, 8e8, 1.6e9, float("inf"))


class ArchiveMetrics(AttemptObserver):
    """Per-process counters, fed by the outcome of every attempt made here."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        # metrics made without a registry of their own would land in the global one
        registry = registry if registry is not None else CollectorRegistry()
        self.archived_runs = Counter(
            "dfarchive_archived_runs", "Runs archived by this process.", registry=registry
        )
        self.archived_bytes = Counter(
            "dfarchive_archived_bytes",
            "Plaintext (tar) bytes of the runs archived by this process.",
            registry=registry,
        )
        self.failures = Counter(
            "dfarchive_failures",
            "Counted failed attempts (run back to pending, or failed) in this process.",
            registry=registry,
        )
        self.last_success = Gauge(
            "dfarchive_last_success_timestamp_seconds",
            "Unix time when this process last archived a run.",
            registry=registry,
            multiprocess_mode="max",
        )
        self.throughput = Histogram(
            "dfarchive_archive_throughput_bytes_per_second",
            "End-to-end archiving rate of each run (tar bytes / seconds).",
            buckets=THROUGHPUT_BUCKETS,
            registry=registry,
        )

    def ended(self, run_id: str, outcome: AttemptOutcome, record: Mapping[str, Any] | None) -> None:
        if outcome is AttemptOutcome.FAILED:
            self.failures.inc()
        if outcome is not AttemptOutcome.ENCRYPTED or record is None:
            return
        size = int(record.get("plaintext_size") or 0)
        seconds = float(record.get("seconds") or 0)
        self.archived_runs.inc()
        self.archived_bytes.inc(size)
        self.last_success.set(time.time())
        if seconds > 0:
            self.throughput.observe(size / seconds)


class FixityMetrics:
    """Per-process counter of the bytes audits read here."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter

        registry = registry if registry is not None else CollectorRegistry()  # as above
        self.bytes = Counter(
            "dfarchive_fixity_bytes",
            "Archive bytes read by fixity audits in this process.",
            registry=registry,
        )

    def read(self, size: int) -> None:
        self.bytes.inc(size)


class FixityCounts:
    """What the store says about audits: runs by last result, the oldest check's age."""

    def __init__(self) -> None:
        self.results = dict.fromkeys((*fixity.RESULTS, UNCHECKED), 0)
        self.oldest_age = 0.0

    def add(self, doc: Mapping[str, Any], now: datetime) -> None:
        if not fixity.auditable(doc):
            return
        result = fixity.result_of(doc) or UNCHECKED
        self.results[result] += 1
        age = fixity.check_age(doc, now)
        if age is not None:
            self.oldest_age = max(self.oldest_age, age.total_seconds())


#: ``dfarchive_fixity_runs{result}`` of an encrypted run never audited.
UNCHECKED = "unchecked"


class StoreCollector:
    """``dfarchive_runs{status}`` and ``dfarchive_store_up``, read from the store."""

    def __init__(self, store: RunStore, *, interval: float = STORE_READ_INTERVAL) -> None:
        self.store = store
        self.interval = interval
        self._lock = threading.Lock()
        self._read_at = -float("inf")
        self._counts: dict[str, int] = {}  # by str(status): a document may hold any JSON value
        self._fixity = FixityCounts()
        self._up = 0

    def _read(self) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._read_at < self.interval:
                return
            self._read_at = now
            try:
                docs = self.store.runs()
            except StoreError as error:
                log.warning("metrics: cannot read the store: %s", error)
                self._up = 0
                return
            counts: dict[str, int] = dict.fromkeys(STATUSES, 0)
            audits, wall_now = FixityCounts(), datetime.now(UTC)
            for doc in docs:
                status = doc.get("status")
                label = str(status)  # sortable whatever was written behind our back
                counts[label] = counts.get(label, 0) + 1
                if status == ENCRYPTED:
                    audits.add(doc, wall_now)
            self._counts, self._fixity, self._up = counts, audits, 1

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        self._read()
        runs = GaugeMetricFamily(
            "dfarchive_runs", "Runs in the status database, by status.", labels=["status"]
        )
        for status, count in sorted(self._counts.items()):
            runs.add_metric([status], count)
        yield runs
        yield GaugeMetricFamily(
            "dfarchive_store_up", "1 if the last read of the status database worked.", self._up
        )
        results = GaugeMetricFamily(
            "dfarchive_fixity_runs",
            "Encrypted runs by the result of their last fixity audit.",
            labels=["result"],
        )
        for result, count in self._fixity.results.items():
            results.add_metric([result], count)
        yield results
        yield GaugeMetricFamily(
            "dfarchive_fixity_oldest_check_age_seconds",
            "Longest time any encrypted run has gone without a fixity check.",
            self._fixity.oldest_age,
        )


class MetricsServer:
    """The running ``/metrics`` endpoint of this process."""

    def __init__(self, config: Config, store: RunStore) -> None:
        from prometheus_client import (
            CollectorRegistry,
            PlatformCollector,
            ProcessCollector,
            start_http_server,
        )

        assert config.metrics_port is not None
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        interval = min(config.scan_interval, STORE_READ_INTERVAL)
        self.registry.register(StoreCollector(store, interval=interval))
        self.archive = ArchiveMetrics(self.registry)
        address = os.environ.get(ADDRESS_ENV) or "0.0.0.0"
        try:
            self._server, self._thread = start_http_server(
                config.metrics_port, address, self.registry
            )
        except OSError as error:
            raise MetricsError(
                f"{config.source}: metrics_port: cannot listen on {address}:"
                f"{config.metrics_port}: {error.strerror or error}"
            ) from None
        self.port = self._server.server_port
        log.info("metrics on http://%s:%d/metrics", address, self.port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def serve_metrics(config: Config, store: RunStore) -> MetricsServer | None:
    """Start ``/metrics`` on ``metrics_port`` if it is set; None if it is not.

    Raises: MetricsError (one line) if the port can't be opened.
    """
    if config.metrics_port is None:
        return None
    return MetricsServer(config, store)


@contextlib.contextmanager
def scheduler_metrics(config: Config) -> Iterator[MetricsServer | None]:
    """For processes that only schedule: ``/metrics`` with a store of its own, if
    ``metrics_port`` is set (the per-process counters stay 0: workers archive)."""
    if config.metrics_port is None:
        yield None
        return
    from dfarchive.service.stores import open_store

    with open_store(config) as store:
        server = MetricsServer(config, store)
        try:
            yield server
        finally:
            server.close()
