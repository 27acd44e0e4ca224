"""Fixity audits for real: dramatiq workers, the scheduler, RabbitMQ and the
CouchDB-compatible server. Every archived run (adopted ones too) gets audited and
recorded; damage and absence are told apart; audits keep to their read rate; and a new
run is archived ahead of a full audit backlog."""

from __future__ import annotations

import re
import socket
import statistics
from datetime import timedelta
from pathlib import Path

import pytest
import requests
import yaml

from dfarchive.coordination.runstate import parse_timestamp
from tests.support.amqp import message_count
from tests.support.deployment import Deployment
from tests.support.legacy_tool import archive_like_the_original, legacy_document
from tests.support.waiting import wait_until

SMALL_RUNS = 30
BIG_RUNS = 3
BIG_SIZE = 16 << 20
RATE_MB_S = 4.0
INTERVAL_SECONDS = 6.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def facility(deployment) -> Deployment:
    return deployment(
        fixity_interval_days=INTERVAL_SECONDS / 86400,
        fixity_max_rate=RATE_MB_S,
        metrics_port=free_port(),
    )  # the queue_name fixture deletes the queues, the fixity one too


def adopt_legacy_runs(facility: Deployment, count: int) -> list[str]:
    """Runs the original tool archived, recorded as it left them, then adopted."""
    env = facility.gnupg_home.env
    run_ids = []
    for n in range(count):
        run_id = f"LEGACY_{n}"
        folder = facility.tmp / "legacy" / "seqA" / run_id
        folder.mkdir(parents=True)
        (folder / "RunInfo.xml").write_text("<RunInfo/>")
        archive_like_the_original(
            folder,
            facility.tmp / "archives",
            facility.tmp / "keys",
            facility.gnupg_home.fingerprint,
            env,
        )
        facility.store._insert_missing(
            [legacy_document(run_id, folder, "encrypted", worker_id="oldhost")]
        )
        run_ids.append(run_id)
    adopted = facility.cli("adopt", "--all")
    assert adopted.returncode == 0, adopted.stderr
    return run_ids


def results(doc: dict) -> str | None:
    return (doc.get("fixity") or {}).get("result")


def checks(doc: dict) -> list[dict]:
    return [*(doc.get("fixity_history") or []), *([doc["fixity"]] if doc.get("fixity") else [])]


def metric(url: str, name: str) -> float | None:
    text = requests.get(url, timeout=10).text
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else None


def test_audits_record_every_run_yield_to_archiving_and_keep_their_rate(facility: Deployment):
    legacy = adopt_legacy_runs(facility, 2)
    small = [f"RUN_{n:02d}" for n in range(SMALL_RUNS)]
    big = [f"BIG_{n}" for n in range(BIG_RUNS)]
    for run_id in small:
        facility.run_folder(run_id, 100_000, random=True)
    for run_id in big:
        facility.run_folder(run_id, BIG_SIZE, random=True)
    everything = [*legacy, *small, *big]
    ports = [free_port(), free_port()]
    facility.scheduler()
    for host, port in zip(("host-a", "host-b"), ports, strict=True):
        prom_db = facility.tmp / f"prom-{host}"
        prom_db.mkdir()
        facility.worker(
            host, threads=1, dramatiq_prom_port=str(port), dramatiq_prom_db=str(prom_db)
        )
    docs = facility.wait_for(
        lambda d: all(d.get(r, {}).get("status") == "encrypted" for r in everything),
        "every run encrypted",
        timeout=240,
    )

    # damage one adopted archive, take one of dfarchive's away (to tape)
    flipped = Path(docs[legacy[0]]["archive"]["file"])
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0x01
    flipped.write_bytes(bytes(data))
    gone = Path(docs[small[5]]["archive"]["file"])
    gone.unlink()

    expected = {run_id: "ok" for run_id in everything}
    expected[legacy[0]], expected[small[5]] = "failed", "missing"
    docs = facility.wait_for(
        lambda d: all(results(d[r]) == want for r, want in expected.items()),
        "every run audited with the expected result",
        timeout=240,
    )
    failed = docs[legacy[0]]["fixity"]
    assert "SHA-256 is" in failed["reason"] and failed["host"] in ("host-a", "host-b")
    assert docs[small[5]]["fixity"]["reason"] == f"archive {gone} is missing"
    assert all(docs[r]["fixity"]["deep"] is False for r in everything)
    assert all(docs[r]["status"] == "encrypted" for r in everything)  # nothing else changed

    # operators see it: status --fixity and the scheduler's metrics
    listed = facility.cli("status", "--fixity", "failed").stdout.splitlines()
    assert [line.split()[0] for line in listed[1:-1]] == [legacy[0]]
    url = f"http://127.0.0.1:{yaml_port(facility)}/metrics"
    wait_until(  # every 0.5 s: the collector re-reads the store every scan_interval
        lambda: metric(url, 'dfarchive_fixity_runs{result="failed"}') == 1.0,
        30, "one failed run in the metrics", every=0.5,
        detail=lambda: requests.get(url, timeout=10).text,
    )  # fmt: skip
    assert metric(url, 'dfarchive_fixity_runs{result="missing"}') == 1.0
    assert (metric(url, "dfarchive_fixity_oldest_check_age_seconds") or 0) > 0
    read = sum(
        metric(f"http://127.0.0.1:{port}/metrics", "dfarchive_fixity_bytes_total") or 0
        for port in ports
    )
    assert read >= BIG_RUNS * BIG_SIZE

    # the audit read rate stays within 20% of fixity_max_rate: never above (each
    # audit), and not held far below it either (the median: an audit's seconds include
    # a gpg --list-keys, slow on a loaded machine)
    size = docs[big[0]]["archive"]["size"]
    rates = sorted(size / c["seconds"] / 1e6 for r in big for c in checks(docs[r]))
    assert rates and max(rates) <= 1.2 * RATE_MB_S, rates
    assert statistics.median(rates) >= 0.8 * RATE_MB_S, rates

    # a new run registered during a full audit backlog is archived first
    wait_until(
        lambda: message_count(facility.amqp_url, facility.queue + ".fixity") != 0,
        60, "an audit backlog", every=0.2,
    )  # fmt: skip
    facility.run_folder("NEW_RUN", 100_000, random=True)
    docs = facility.wait_for(
        lambda d: d.get("NEW_RUN", {}).get("status") == "encrypted", "the new run archived"
    )
    new = docs["NEW_RUN"]
    registered = parse_timestamp(new["created_at"])
    claimed = parse_timestamp(new["claimed_at"])
    assert registered is not None and claimed is not None
    assert claimed - registered < timedelta(seconds=INTERVAL_SECONDS)
    for run_id in everything:
        for check in checks(docs[run_id]):
            done = parse_timestamp(check["checked_at"])
            assert done is not None
            started = done - timedelta(seconds=check["seconds"])
            # (timestamps are whole seconds: a second of slack each side)
            assert not (
                registered + timedelta(seconds=1) < started < claimed - timedelta(seconds=1)
            ), (run_id, check, new)


def yaml_port(facility: Deployment) -> int:
    return int(yaml.safe_load(facility.config.read_text())["metrics_port"])
