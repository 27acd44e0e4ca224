"""Prometheus metrics: dfarchive's own from ``dataflow_archive``, and Dramatiq's plus
dfarchive's from real ``dramatiq dfarchive.actors`` workers, scraped over HTTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from dfarchive.coordination.attempt import AttemptOutcome
from dfarchive.coordination.store import NewRun, SqliteStore
from dfarchive.service.metrics import ArchiveMetrics, StoreCollector
from tests.support.localrun import documents, make_config, sparse_run
from tests.support.waiting import wait_until

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``/metrics`` as {(sample name, sorted labels): value}."""
    response = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    response.raise_for_status()
    assert response.headers["Content-Type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def wait_for_scrape(port: int, proc: subprocess.Popen, ready, what: str, timeout: float = 90):
    """Scrape until ``ready(samples)``; fail with the last scrape (or error)."""
    last: list[object] = [None]

    def scraped() -> tuple[dict] | None:
        assert proc.poll() is None, f"exited with {proc.returncode} before {what}"
        try:
            last[0] = samples = scrape(port)
        except requests.RequestException as error:
            last[0] = error
            return None
        return (samples,) if ready(samples) else None  # a tuple: true even if samples is {}

    (samples,) = wait_until(
        scraped, timeout, what, every=0.2, detail=lambda: f"last scrape: {last[0]}"
    )
    return samples


def test_archive_metrics_count_outcomes():
    registry = CollectorRegistry()
    metrics = ArchiveMetrics(registry)
    metrics.ended("a", AttemptOutcome.FAILED, None)
    metrics.ended("b", AttemptOutcome.RELEASED, None)
    metrics.ended("c", AttemptOutcome.ENCRYPTED, {"plaintext_size": 300_000_000, "seconds": 2.0})
    value = registry.get_sample_value
    assert value("dfarchive_archived_runs_total") == 1
    assert value("dfarchive_archived_bytes_total") == 300_000_000
    assert value("dfarchive_failures_total") == 1
    assert value("dfarchive_archive_throughput_bytes_per_second_count") == 1
    assert value("dfarchive_archive_throughput_bytes_per_second_sum") == 150_000_000
    assert value("dfarchive_archive_throughput_bytes_per_second_bucket", {"le": "1e+08"}) == 0
    assert value("dfarchive_archive_throughput_bytes_per_second_bucket", {"le": "2e+08"}) == 1
    assert abs(value("dfarchive_last_success_timestamp_seconds") - time.time()) < 60


def test_run_counts_survive_documents_with_odd_statuses(tmp_path):
    """A document written behind dfarchive's back with no status, or a number for one,
    is counted under its own label; the other counts are still served."""
    path = tmp_path / "runs.sqlite3"
    with SqliteStore(path) as store:
        store.setup()
        store.register_many([NewRun("run_ok", str(tmp_path / "run_ok"), "seqA")], worker_id="s")
    with sqlite3.connect(path) as db:
        for body in ({"_id": "no_status"}, {"_id": "numbered", "status": 3}):
            db.execute(
                "INSERT INTO runs (id, rev, status, body) VALUES (?, 1, ?, ?)",
                (body["_id"], body.get("status"), json.dumps(body)),
            )
    with SqliteStore(path) as store:
        registry = CollectorRegistry()
        registry.register(StoreCollector(store))
        assert registry.get_sample_value("dfarchive_runs", {"status": "pending"}) == 1
        assert registry.get_sample_value("dfarchive_runs", {"status": "None"}) == 1
        assert registry.get_sample_value("dfarchive_runs", {"status": "3"}) == 1
        assert registry.get_sample_value("dfarchive_runs", {"status": "failed"}) == 0
        assert registry.get_sample_value("dfarchive_store_up") == 1


def test_dataflow_archive_serves_metrics_after_archiving(tmp_path, gnupg_home):
    port = free_port()
    config = make_config(tmp_path, gnupg_home, metrics_port=port, max_attempts=1)
    sparse_run(tmp_path, "run_ok", 8 << 20)
    with SqliteStore(tmp_path / "runs.sqlite3") as store:  # registered, then gone: fails
        store.setup()
        store.register_many([NewRun("run_gone", str(tmp_path / "gone"), "seqA")], worker_id="s")
    started = time.time()
    log = (tmp_path / "out.log").open("w")
    proc = subprocess.Popen(
        [str(BIN / "dataflow_archive"), "-c", str(config)], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        samples = wait_for_scrape(
            port,
            proc,
            lambda s: (
                s.get(("dfarchive_runs", (("status", "encrypted"),))) == 1
                and s.get(("dfarchive_runs", (("status", "failed"),))) == 1
                and s.get(("dfarchive_archived_runs_total", ())) == 1
            ),
            "one run encrypted and one failed",
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        log.close()
    archive = documents(tmp_path)["run_ok"]["archive"]
    assert samples[("dfarchive_runs", (("status", "pending"),))] == 0
    assert samples[("dfarchive_runs", (("status", "processing"),))] == 0
    assert samples[("dfarchive_store_up", ())] == 1
    assert samples[("dfarchive_archived_bytes_total", ())] == archive["plaintext_size"]
    assert samples[("dfarchive_failures_total", ())] == 1
    assert started <= samples[("dfarchive_last_success_timestamp_seconds", ())] <= time.time()
    throughput = ("dfarchive_archive_throughput_bytes_per_second_count", ())
    assert samples[throughput] == 1
    assert samples[("process_cpu_seconds_total", ())] > 0
    output = (tmp_path / "out.log").read_text()
    assert f"metrics on http://0.0.0.0:{port}/metrics" in output
    assert "\x1b" not in output  # not a terminal: plain log lines


def test_a_busy_metrics_port_is_a_start_up_error(tmp_path, gnupg_home):
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        config = make_config(tmp_path, gnupg_home, metrics_port=busy.getsockname()[1])
        result = subprocess.run(
            [str(BIN / "dataflow_archive"), "-c", str(config), "--once"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("dataflow_archive: error: ") and "metrics_port: cannot listen" in last


@pytest.mark.slow
def test_workers_and_scheduler_serve_their_metrics(
    tmp_path, couchdb_server, couchdb_database, amqp_url, queue_name, gnupg_home
):
    port = free_port()
    for name in ("seq/seqA", "archives", "keys", "prom"):
        (tmp_path / name).mkdir(parents=True, exist_ok=True)
    (tmp_path / "keys").chmod(0o700)
    settings = couchdb_server.facility_config(
        couchdb_database, tmp_path, gnupg_home.fingerprint, broker_url=amqp_url, scan_interval=0.5
    )
    config = tmp_path / "worker.yaml"
    config.write_text(yaml.safe_dump({**settings, "metrics_port": port}))
    scheduler_port = free_port()  # same host: the scheduler needs a port of its own
    scheduler_config = tmp_path / "scheduler.yaml"
    scheduler_config.write_text(yaml.safe_dump({**settings, "metrics_port": scheduler_port}))
    run = tmp_path / "seq" / "seqA" / "run_w"
    run.mkdir()
    (run / "RunInfo.xml").write_text("<RunInfo/>")
    (run / ".metadata_rsync_exitcode").write_text("0")
    env = {
        **os.environ,
        "ARCHIVE_CONFIG": str(config),
        "DFARCHIVE_QUEUE": queue_name,
        "dramatiq_prom_db": str(tmp_path / "prom"),  # this test's own multiprocess files
    }
    env.pop("dramatiq_prom_port", None)
    labels = (("actor_name", "archive_run"), ("queue_name", queue_name))
    processes = []
    logs = []
    try:
        for name, command in (
            ("worker", [str(BIN / "dramatiq"), "dfarchive.actors", "-p", "1", "-t", "1"]),
            ("scheduler", [str(BIN / "dfarchive"), "scheduler", "-c", str(scheduler_config)]),
        ):
            logs.append((tmp_path / f"{name}.log").open("w"))
            processes.append(
                subprocess.Popen(
                    command,
                    env=env,
                    stdout=logs[-1],
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        samples = wait_for_scrape(
            port,
            processes[0],
            lambda s: (
                s.get(("dfarchive_archived_runs_total", ())) == 1
                and s.get(("dramatiq_messages_total", labels)) == 1
            ),
            "the worker's metrics after one run",
            timeout=120,
        )
        fleet = wait_for_scrape(
            scheduler_port,
            processes[1],
            lambda s: s.get(("dfarchive_runs", (("status", "encrypted"),))) == 1,
            "the scheduler's store metrics",
        )
    finally:
        for proc in processes:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in processes:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        for log in logs:
            log.close()
    assert samples[("dfarchive_archived_bytes_total", ())] > 0
    assert samples[("dfarchive_failures_total", ())] == 0
    assert samples.get(("dramatiq_message_errors_total", labels), 0) == 0
    assert fleet[("dfarchive_store_up", ())] == 1
    assert fleet[("dfarchive_archived_runs_total", ())] == 0  # the scheduler archives nothing
