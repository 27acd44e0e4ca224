"""Prometheus for ``dramatiq dfarchive.actors`` workers, when ``metrics_port`` is set.

Dramatiq's own middleware (:class:`dramatiq.middleware.prometheus.Prometheus`) counts
messages per worker process into ``prometheus_client``'s multiprocess files
(``$dramatiq_prom_db``, default ``/tmp/dramatiq-prometheus``), and a separate "fork"
process started by the ``dramatiq`` command serves them all. Stock Dramatiq takes
that server's address from the environment only (``dramatiq_prom_host``, default
``0.0.0.0``; ``dramatiq_prom_port``, default 9191) and the fork process never reads
our config, so :class:`WorkerPrometheus` swaps in :func:`serve_worker_metrics`:
the same exposition, on ``$dramatiq_prom_port`` if set, else ``metrics_port``.

dfarchive's per-process metrics (:class:`dfarchive.service.metrics.ArchiveMetrics`) are
created after process boot, so they land in the same files and come out of the
same endpoint, summed over the worker processes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer

from dramatiq.middleware.prometheus import DB_PATH, Prometheus

from dfarchive.errors import DfArchiveError
from dfarchive.service.config import config_path, load_config

log = logging.getLogger(__name__)

HOST_ENV, PORT_ENV = "dramatiq_prom_host", "dramatiq_prom_port"


class WorkerPrometheus(Prometheus):
    """Dramatiq's Prometheus middleware, serving on the configured ``metrics_port``."""

    @property
    def forks(self) -> list[Callable[[], int]]:
        return [serve_worker_metrics]


def worker_metrics_address(metrics_port: int | None) -> tuple[str, int]:
    """``($dramatiq_prom_host or 0.0.0.0, $dramatiq_prom_port or metrics_port or 9191)``."""
    port = os.environ.get(PORT_ENV) or metrics_port or 9191
    return os.environ.get(HOST_ENV) or "0.0.0.0", int(port)


class _MetricsHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=DB_PATH)
        body = generate_latest(registry)
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug(format, *args)


def serve_worker_metrics() -> int:
    """The fork process's body: serve the workers' metrics until terminated."""
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = DB_PATH
    try:
        config = load_config(config_path())
    except DfArchiveError as error:
        log.error("metrics: %s", error)
        return 2
    address = worker_metrics_address(config.metrics_port)
    try:
        server = HTTPServer(address, _MetricsHandler)
    except OSError as error:
        log.error("metrics: cannot listen on %s:%d: %s", *address, error.strerror or error)
        return 2
    log.info("worker metrics on http://%s:%d/metrics", *address)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0
