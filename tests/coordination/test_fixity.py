"""Fixity audits, the pure parts: when runs come due, what a check records, the rate
limiter (on real reads), and the scheduler's audit messages over a real SQLite store."""

from __future__ import annotations

import hashlib
import math
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from dfarchive.coordination import fixity, runstate
from dfarchive.coordination.store import SqliteStore
from dfarchive.coordination.store.base import NewRun
from dfarchive.errors import ConfigError, TransitionRefused
from dfarchive.ops.verify import verify_run
from dfarchive.service.config import parse_config
from dfarchive.service.scheduler import enqueue_audits_due
from tests.support.clock import ManualClock
from tests.support.waiting import wait_until

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def encrypted(run_id: str = "run_1", **changes: Any) -> dict[str, Any]:
    return {
        "_id": run_id,
        "status": "encrypted",
        "updated_at": "2026-11-01T00:00:00+00:00",
        "archive": {"file": "/a.tar.gpg", "size": 1, "sha256": "00"},
        **changes,
    }


def check(result: str = "ok", at: datetime = NOW, **changes: Any) -> dict[str, Any]:
    made = fixity.Check(
        checked_at=at, result=result, reason=None, host="h", seconds=1.5, deep=False
    ).record()
    return {**made, **changes}


# -- due dates --------------------------------------------------------------------------


def test_first_audits_of_10000_runs_adopted_at_once_spread_evenly_over_an_interval() -> None:
    adopted = "2026-01-01T00:00:00+00:00"
    interval = 90 * DAY
    docs = [
        encrypted(f"2601{i:05d}_A00123_{i:04d}_BH3XYZ", archive={"adopted_at": adopted})
        for i in range(10_000)
    ]
    start = runstate.parse_timestamp(adopted)
    assert start is not None
    offsets = [(fixity.due_at(doc, interval) - start) / interval for doc in docs]  # type: ignore[operator]
    assert all(1 <= offset < 2 for offset in offsets)  # between one and two intervals
    per_day = [0] * 90
    for offset in offsets:
        per_day[int((offset - 1) * 90)] += 1
    # 10,000 over 90 days: ~111 a day; never a pile-up on one day
    assert max(per_day) < 160 and min(per_day) > 70, per_day
    assert fixity.due_at(docs[0], interval) == fixity.due_at(dict(docs[0]), interval)  # stable


def test_later_audits_are_due_an_interval_after_the_last_check() -> None:
    doc = encrypted(fixity=check(at=NOW))
    assert fixity.due_at(doc, 30 * DAY) == NOW + 30 * DAY
    assert not fixity.is_due(doc, NOW + 29 * DAY, 30 * DAY)
    assert fixity.is_due(doc, NOW + 30 * DAY, 30 * DAY)


def test_an_adopted_run_counts_from_its_adoption_not_the_original_tools_update() -> None:
    doc = encrypted(updated_at="2020-01-01T00:00:00+00:00")
    doc["archive"]["adopted_at"] = "2026-11-30T00:00:00+00:00"
    assert fixity.base_time(doc) == datetime(2026, 11, 30, tzinfo=UTC)
    assert not fixity.is_due(doc, NOW, 90 * DAY)


@pytest.mark.parametrize(
    "doc",
    [
        {"_id": "r", "status": "pending"},
        {"_id": "r", "status": "encrypted"},  # the original tool's, not adopted yet
        {"_id": "r", "status": "encrypted", "archive": "?"},
    ],
)
def test_runs_without_an_archive_record_are_never_due(doc: dict[str, Any]) -> None:
    assert fixity.due_at(doc, DAY) is None
    assert fixity.check_age(doc, NOW) is None


def test_a_run_with_unreadable_times_is_due_at_once() -> None:
    doc = encrypted(updated_at="yesterday")
    assert fixity.is_due(doc, NOW, 90 * DAY)


def test_status_filters() -> None:
    failed = encrypted("f", fixity=check("failed", reason="SHA-256 is x"))
    missing = encrypted("m", fixity=check("missing"))
    fresh = encrypted("o", fixity=check())
    never = encrypted("n", updated_at="2020-01-01T00:00:00+00:00")
    docs = [failed, missing, fresh, never, {"_id": "p", "status": "pending"}]

    def ids(wanted: str, interval: timedelta | None) -> list[str]:
        return [d["_id"] for d in docs if fixity.matches_filter(d, wanted, NOW, interval)]

    assert ids("failed", None) == ["f"]
    assert ids("missing", None) == ["m"]
    assert ids("due", 30 * DAY) == ["n"]
    assert ids("due", None) == ["n"]  # audits off: the runs never checked
    assert ids("due", timedelta(0)) == ["f", "m", "o", "n"]


def test_classify() -> None:
    assert fixity.classify([], missing=False) == ("ok", None)
    assert fixity.classify(["a", "b"], missing=False) == ("failed", "a; b")
    assert fixity.classify(["archive /x is missing"], missing=True) == (
        "missing",
        "archive /x is missing",
    )


# -- the record -------------------------------------------------------------------------


def test_record_fixity_touches_only_the_fixity_fields_and_keeps_a_bounded_history() -> None:
    doc = encrypted(
        worker_id="host-a", claim_token="t", fixity_enqueued_at="2026-12-01T00:00:00+00:00"
    )
    for n in range(runstate.FIXITY_HISTORY_KEPT + 3):
        doc = runstate.record_fixity(doc, check=check(at=NOW + n * DAY))
    assert doc["fixity"] == check(at=NOW + (runstate.FIXITY_HISTORY_KEPT + 2) * DAY)
    history = doc["fixity_history"]
    assert len(history) == runstate.FIXITY_HISTORY_KEPT
    assert history[-1] == check(at=NOW + (runstate.FIXITY_HISTORY_KEPT + 1) * DAY)
    assert history[0] == check(at=NOW + 2 * DAY)  # oldest dropped first
    unchanged = {k: v for k, v in doc.items() if not k.startswith("fixity")}
    assert unchanged == {
        k: v for k, v in encrypted(worker_id="host-a", claim_token="t").items()
    }
    assert doc["fixity_enqueued_at"] is None


def test_record_fixity_is_idempotent_and_only_for_encrypted_runs() -> None:
    doc = runstate.record_fixity(encrypted(), check=check())
    assert runstate.record_fixity(doc, check=check()) is doc  # a retried write
    with pytest.raises(TransitionRefused, match="'pending'; only encrypted runs are audited"):
        runstate.record_fixity({"_id": "r", "status": "pending"}, check=check())


def test_a_long_reason_is_cut() -> None:
    made = fixity.Check(
        checked_at=NOW, result="failed", reason="x" * 5000, host="h", seconds=1, deep=True
    ).record()
    assert len(made["reason"]) == fixity.REASON_CHARS
    assert made["checked_at"] == "2026-12-01T12:00:00+00:00" and made["deep"] is True


# -- config -----------------------------------------------------------------------------


def base_config(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    for name in ("seq", "dest"):
        (tmp_path / name).mkdir(exist_ok=True)
    return {
        "sequencing_path": str(tmp_path / "seq"),
        "destination_path": str(tmp_path / "dest"),
        "gpg_receiver": "ops@example.org",
        **extra,
    }


def test_config_keys_default_to_off_and_200_mb_s(tmp_path: Path) -> None:
    config = parse_config(base_config(tmp_path), source="c.yaml", base_dir=tmp_path)
    assert (config.fixity_interval_days, config.fixity_max_rate) == (0.0, 200.0)
    config = parse_config(
        base_config(tmp_path, fixity_interval_days=90, fixity_max_rate=50),
        source="c.yaml",
        base_dir=tmp_path,
    )
    assert (config.fixity_interval_days, config.fixity_max_rate) == (90, 50)


@pytest.mark.parametrize(
    ("key", "value"),
    [("fixity_interval_days", -1), ("fixity_max_rate", 0), ("fixity_interval_days", "often")],
)
def test_bad_fixity_config_names_the_key(tmp_path: Path, key: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=f"c.yaml: {key}: expected a number"):
        parse_config(base_config(tmp_path, **{key: value}), source="c.yaml", base_dir=tmp_path)


# -- the rate limiter -------------------------------------------------------------------


def test_the_limiter_starts_empty_and_pays_debt_by_sleeping() -> None:
    clock = ManualClock(0.0)
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.advance(seconds)

    limiter = fixity.RateLimiter(100.0, burst=0.1, clock=clock, sleep=sleep)
    limiter.consume(50)
    assert slept == [0.5]
    clock.advance(10)  # idle: credit is capped at the burst (10 tokens)
    limiter.consume(30)
    assert slept[-1] == pytest.approx(0.2)


def test_verify_reads_at_the_configured_rate(tmp_path: Path) -> None:
    """Real reads of a 60 MB file through verify_run, capped at 20 MB/s: the measured
    rate is within 20% of the cap (and the check itself still passes)."""
    data = os.urandom(1 << 20) * 60
    archive = tmp_path / "big.tar.gpg"
    archive.write_bytes(data)
    key = tmp_path / "big.key.gpg"
    key.write_bytes(b"k")
    doc = encrypted(
        archive={
            "file": str(archive),
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "key_file": str(key),
        }
    )
    limiter = fixity.RateLimiter(20 * fixity.MB)
    started = time.monotonic()
    report = verify_run(doc, on_read=limiter.consume)
    seconds = time.monotonic() - started
    assert report.ok, report.problems
    assert report.bytes_read == len(data)
    rate = len(data) / seconds
    assert 0.8 * 20 * fixity.MB <= rate <= 1.2 * 20 * fixity.MB, rate / fixity.MB


# -- the store and the scheduler (SQLite) -------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    opened = SqliteStore(str(tmp_path / "runs.sqlite3"))
    opened.setup()
    return opened


def archived_run(store: SqliteStore, run_id: str) -> dict[str, Any]:
    store.register_many([NewRun(run_id, f"/seq/{run_id}", "A")], worker_id="h")
    claim = store.claim(run_id, worker_id="h")
    assert claim is not None
    return store.finish(claim, {"file": f"/a/{run_id}.tar.gpg", "size": 1, "sha256": "00"})


def audit_config(tmp_path: Path, days: float):
    return parse_config(
        base_config(tmp_path, fixity_interval_days=days, scan_interval=0.1),
        source="c.yaml",
        base_dir=tmp_path,
    )


def test_the_scheduler_sends_each_due_audit_once_until_recorded(
    store: SqliteStore, tmp_path: Path
) -> None:
    for n in range(3):
        archived_run(store, f"run_{n}")
    store.register_many([NewRun("pending_run", "/seq/p", "A")], worker_id="h")
    store.clock = lambda: datetime.now(UTC) + 3 * DAY  # past two intervals of one day
    config = audit_config(tmp_path, 1)
    sent: list[str] = []
    assert sorted(enqueue_audits_due(store, config, sent.append)) == ["run_0", "run_1", "run_2"]
    assert sorted(sent) == ["run_0", "run_1", "run_2"]
    assert all(store.get(f"run_{n}")["fixity_enqueued_at"] for n in range(3))  # type: ignore[index]
    store.known.audits_looked_at = -math.inf  # as if the next look was due: not the window
    assert enqueue_audits_due(store, config, sent.append) == []
    store.record_fixity("run_1", check())
    doc = store.get("run_1")
    assert doc is not None and doc["fixity_enqueued_at"] is None and doc["status"] == "encrypted"


def test_a_failed_send_unmarks_the_runs_not_sent(store: SqliteStore, tmp_path: Path) -> None:
    for n in range(2):
        archived_run(store, f"run_{n}")
    store.clock = lambda: datetime.now(UTC) + 3 * DAY

    def broken(run_id: str) -> None:
        raise ConnectionError("broker down")

    with pytest.raises(ConnectionError):
        enqueue_audits_due(store, audit_config(tmp_path, 1), broken)
    assert all(store.get(f"run_{n}")["fixity_enqueued_at"] is None for n in range(2))  # type: ignore[index]


def test_store_metrics_count_results_and_the_oldest_check(store: SqliteStore) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from dfarchive.service.metrics import StoreCollector

    for run_id in ("run_ok", "run_bad", "run_gone", "run_new"):
        archived_run(store, run_id)
    day_ago = datetime.now(UTC) - DAY
    store.record_fixity("run_ok", check(at=day_ago))
    store.record_fixity("run_bad", check("failed", reason="SHA-256 is 11"))
    store.record_fixity("run_gone", check("missing"))
    registry = CollectorRegistry()
    registry.register(StoreCollector(store, interval=0))
    text = generate_latest(registry).decode()
    for result, count in (("ok", 1), ("failed", 1), ("missing", 1), ("unchecked", 1)):
        assert f'dfarchive_fixity_runs{{result="{result}"}} {count}.0' in text
    age = next(
        float(line.split()[1])
        for line in text.splitlines()
        if line.startswith("dfarchive_fixity_oldest_check_age_seconds ")
    )
    assert 86400 <= age < 86400 + 60


# -- the one-host loop (dataflow_archive without a broker) ---------------------------------


def test_the_local_loop_audits_when_idle_and_records(tmp_path: Path, gnupg_home) -> None:
    import threading

    import yaml

    from dfarchive.service import localloop as localrun
    from dfarchive.service.config import load_config
    from dfarchive.service.startup import prepare

    for name in ("seq/seqA/run_l", "archives", "keys"):
        (tmp_path / name).mkdir(parents=True, exist_ok=True)
    (tmp_path / "keys").chmod(0o700)
    (tmp_path / "seq/seqA/run_l/data.bin").write_bytes(os.urandom(200_000))
    (tmp_path / "seq/seqA/run_l/.metadata_rsync_exitcode").write_text("0")
    path = tmp_path / "df_archive.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "statusdb": {"url": f"sqlite:{tmp_path / 'runs.sqlite3'}"},
                "sequencing_path": str(tmp_path / "seq"),
                "destination_path": str(tmp_path / "archives"),
                "keys_path": str(tmp_path / "keys"),
                "gpg_receiver": gnupg_home.fingerprint,
                "scan_interval": 0.2,
                "fixity_interval_days": 1 / 86400,  # one second
            }
        )
    )
    runtime = prepare(load_config(path))
    archiver = localrun.LocalArchiver(runtime)
    thread = threading.Thread(target=archiver.run, daemon=True)
    thread.start()

    def wait_for(result: str) -> dict[str, Any]:
        def audited() -> dict[str, Any] | None:
            doc = runtime.store.get("run_l")
            return doc if doc and (doc.get("fixity") or {}).get("result") == result else None

        return wait_until(
            audited, 60, f"a {result} audit recorded", every=0.1,
            detail=lambda: runtime.store.get("run_l"),
        )  # fmt: skip

    try:
        doc = wait_for("ok")
        assert doc["status"] == "encrypted" and doc["fixity"]["host"] == runtime.worker_id
        archive = Path(doc["archive"]["file"])
        data = bytearray(archive.read_bytes())
        data[-100] ^= 0x40
        archive.write_bytes(bytes(data))
        doc = wait_for("failed")
        assert "SHA-256 is" in doc["fixity"]["reason"]
        assert doc["fixity_history"][-1]["result"] == "ok"
    finally:
        archiver.stop()
        thread.join(30)
        runtime.store.close()
    assert not thread.is_alive()


# -- archiving wins ---------------------------------------------------------------------


def test_an_audit_gives_way_to_a_run_becoming_pending(
    store: SqliteStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dfarchive.service import audit

    data = os.urandom(1 << 20) * 24
    archive = tmp_path / "run_a.tar.gpg"
    archive.write_bytes(data)
    archived_run(store, "run_a")
    doc = store.get("run_a")
    assert doc is not None
    doc["archive"] = {"file": str(archive), "size": len(data), "sha256": "00", "key_file": "/k"}
    monkeypatch.setattr(audit, "YIELD_CHECK_SECONDS", 0.0)  # look at every read
    reads: list[int] = []

    def new_run_arrives(n: int) -> None:
        reads.append(n)
        if len(reads) == 1:
            store.register_many([NewRun("run_new", "/seq/new", "A")], worker_id="h")

    settings = audit.AuditSettings(limiter=fixity.RateLimiter(50 * fixity.MB))
    with pytest.raises(audit.Yielded, match=r"\[run_a\] audit stopped: archive work arrived"):
        audit.audit_and_record(
            store, doc, settings, yield_to_archiving=True, on_read=new_run_arrives
        )
    assert sum(reads) < len(data)  # stopped part-way
    assert "fixity" not in store.get("run_a")  # type: ignore[operator]
    with pytest.raises(audit.Yielded, match=r"\[run_a\] audit not started"):
        audit.audit_and_record(store, doc, settings, yield_to_archiving=True)
    check, report = audit.audit_and_record(store, doc, settings)  # an operator's: no yielding
    assert check.result == "failed" and report is not None and report.bytes_read == len(data)
    assert store.get("run_a")["fixity"]["result"] == "failed"  # type: ignore[index]
