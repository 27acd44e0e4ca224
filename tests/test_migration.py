"""Taking over a live facility from the original ``dataflow_archive`` tool.

A facility exactly as the original leaves it: archives made by stock gpg and tar as it
runs them (tests.support.legacy_tool; keys cut short by gpg at an early newline or NUL among
them), its document schema and nothing more, its own ``_design/lookup`` with its own
``runfolder_id`` view, runs ``encrypted``, ``pending``, ``failed``, ``processing`` by
another host two hours ago and days ago (that one crashed: a partial archive and its
plaintext ``<run>.key`` are left), and one complete folder it never registered. It is
taken over with dfarchive's commands only, as real processes, in the order the README
("Migrating from dataflow_archive") gives; each test then checks one promise.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.archives import tree
from tests.support.gpg import GnupgHome, build_run_folder, new_gnupg_home
from tests.support.legacy_tool import (
    NEWLINE_KEY,
    NUL_KEY,
    WHOLE_KEY,
    LegacyArchive,
    archive_like_the_original,
    legacy_document,
    legacy_timestamp,
)

BIN = Path(sys.executable).parent
ORIGINAL_FIELDS = ("_id", "path", "status", "worker_id", "failure_count", "created_at",
                   "updated_at")  # fmt: skip
#: The original tool's view, as it defined it (not dfarchive's).
LEGACY_DESIGN = {
    "language": "javascript",
    "views": {"runfolder_id": {"map": "function(doc) {\n  emit(doc._id, doc);\n}"}},
}
ENCRYPTED_KEYS = {
    "run_enc_whole": WHOLE_KEY,  # gpg used all 256 bytes
    "run_enc_newline": NEWLINE_KEY,  # gpg used 3 bytes (newline at byte 3)
    "run_enc_nul": NUL_KEY,  # gpg used 5 bytes (NUL at byte 5)
    "run_enc_random": None,  # gpg --gen-random 1 256, as the original does
}
NOW = datetime.now(UTC)


@dataclass
class Facility:
    root: Path
    config: Path
    database: str
    home: GnupgHome
    legacy: dict[str, LegacyArchive]
    before: dict[str, dict[str, Any]]
    design_before: str
    leftover: Path
    steps: dict[str, subprocess.CompletedProcess[str]] = field(default_factory=dict)
    after: dict[str, dict[str, Any]] = field(default_factory=dict)  # after the takeover

    @property
    def seq(self) -> Path:
        return self.root / "seq"

    @property
    def archives(self) -> Path:
        return self.root / "archives"

    def source(self, run_id: str) -> Path:
        return next(self.seq.glob(f"*/{run_id}"))

    def run(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / tool), *args, "-c", str(self.config)],
            capture_output=True, text=True, env=self.home.env, timeout=300,
        )  # fmt: skip


def couch_json(server, path: str, method: str = "GET", **kwargs: Any) -> Any:
    response = server.request(method, path, **kwargs)
    assert response.status_code < 300, (path, response.status_code, response.text)
    return response.json()


def documents(server, database: str) -> dict[str, dict[str, Any]]:
    rows = couch_json(server, f"/{database}/_all_docs?include_docs=true")["rows"]
    return {row["id"]: row["doc"] for row in rows if not row["id"].startswith("_design/")}


def build_legacy_facility(root: Path, server, database: str, home: GnupgHome) -> Facility:
    """Everything as the original tool leaves it: files, documents, design document."""
    seq, archives, run_keys = root / "seq", root / "archives", root / "run_keys"
    for path in (seq / "seqA", seq / "seqB", archives, run_keys):
        path.mkdir(parents=True)
    run_keys.chmod(0o755)  # the original never restricted ~/run_keys

    def folder(sequencer: str, run_id: str, seed: int) -> Path:
        return build_run_folder(
            seq / sequencer, run_id, small_files=16, big_files=1, big_size=200_000, seed=seed
        ).path

    couch_json(server, f"/{database}", "PUT")
    couch_json(server, f"/{database}/_design/lookup", "PUT", json=LEGACY_DESIGN)
    legacy, docs = {}, []
    for n, (run_id, key) in enumerate(ENCRYPTED_KEYS.items()):
        path = folder("seqA", run_id, n)
        legacy[run_id] = archive_like_the_original(
            path, archives, run_keys, home.fingerprint, home.env, key=key
        )
        archived_at = legacy_timestamp(NOW - timedelta(days=29))
        docs.append(legacy_document(run_id, path, "encrypted", worker_id="seqhost-a",
                                    created_at=archived_at, updated_at=archived_at))  # fmt: skip
    docs.append(legacy_document("run_pending", folder("seqB", "run_pending", 10), "pending",
                                worker_id="seqhost-a"))  # fmt: skip
    docs.append({**legacy_document("run_failed", folder("seqB", "run_failed", 11), "failed",
                                   worker_id="seqhost-a"), "failure_count": 3})  # fmt: skip
    two_hours = legacy_timestamp(NOW - timedelta(hours=2))
    docs.append(legacy_document("run_claimed_recently", folder("seqB", "run_claimed_recently", 12),
                                "processing", worker_id="seqhost-b",
                                created_at=two_hours, updated_at=two_hours))  # fmt: skip
    days_ago = legacy_timestamp(NOW - timedelta(days=10))
    crashed = folder("seqB", "run_crashed", 13)
    docs.append(legacy_document("run_crashed", crashed, "processing", worker_id="seqhost-c",
                                created_at=days_ago, updated_at=days_ago))  # fmt: skip
    # the crash: the archive half written, the plaintext key not deleted yet
    (archives / "run_crashed.tar.gpg").write_bytes(os.urandom(5000))
    leftover = archives / "run_crashed.key"
    leftover.write_bytes(NEWLINE_KEY)
    folder("seqB", "run_unregistered", 14)
    for doc in docs:
        couch_json(server, f"/{database}/{doc['_id']}", "PUT", json=doc)
    config = root / "df_archive.yaml"
    config.write_text(yaml.safe_dump({
        **server.facility_config(database, root, home.fingerprint),
        "keys_path": str(run_keys),
        "gnupg_home": home.home,
        "scan_interval": 1,
    }))  # fmt: skip
    return Facility(
        root=root,
        config=config,
        database=database,
        home=home,
        legacy=legacy,
        before=documents(server, database),
        design_before=server.request("GET", f"/{database}/_design/lookup").text,
        leftover=leftover,
    )


@pytest.fixture(scope="module")
def facility(couchdb_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Facility]:
    """The legacy facility, taken over in the README's order."""
    root = tmp_path_factory.mktemp("facility")
    home = new_gnupg_home(tmp_path_factory.mktemp("gpg"))
    database = f"dfarchive_test_{uuid.uuid4().hex[:16]}"
    try:
        built = build_legacy_facility(root, couchdb_server, database, home)
        built.steps["status before"] = built.run("dfarchive", "status")
        built.steps["adopt refused"] = built.run("dfarchive", "adopt", "--all")
        (root / "run_keys").chmod(0o700)  # chmod o-rwx, as the refusal says
        built.steps["init"] = built.run("dfarchive", "init")
        built.steps["adopt"] = built.run("dfarchive", "adopt", "--all")
        built.steps["archive"] = built.run("dataflow_archive", "--once")
        built.after = documents(couchdb_server, database)
        yield built
    finally:
        home.stop_agent()
        couchdb_server.request("DELETE", f"/{database}")


# -- before: the leftover is flagged; a world-readable keys folder is refused -----------------


def test_status_flags_the_crash_leftover_before_the_takeover(facility: Facility) -> None:
    status = facility.steps["status before"]
    assert status.returncode == 0, status.stderr
    assert f"plaintext run key {facility.leftover} left by dataflow_archive" in status.stderr
    line = next(line for line in status.stdout.splitlines() if line.startswith("run_crashed"))
    assert line.endswith(f"plaintext key {facility.leftover} left")


def test_adopt_first_asks_to_close_the_old_keys_folder(facility: Facility) -> None:
    refused = facility.steps["adopt refused"]
    assert refused.returncode == 2 and refused.stdout == ""
    assert f"run: chmod o-rwx {facility.root / 'run_keys'}" in refused.stderr


# -- adoption ------------------------------------------------------------------------------


def test_every_legacy_archive_is_adopted(facility: Facility) -> None:
    adopt = facility.steps["adopt"]
    assert adopt.returncode == 0, adopt.stdout + adopt.stderr
    assert adopt.stdout.splitlines()[-1] == f"adopt: {len(ENCRYPTED_KEYS)} adopted"
    for run_id, legacy in facility.legacy.items():
        record = facility.after[run_id]["archive"]
        data = legacy.archive.read_bytes()
        assert (record["format"], record["file"], record["key_file"]) == (
            "dataflow_archive", str(legacy.archive), str(legacy.key_file),
        )  # fmt: skip
        assert (record["size"], record["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())


@pytest.mark.parametrize("run_id", list(ENCRYPTED_KEYS))
def test_adopted_runs_pass_verify_and_a_flipped_byte_fails_it(
    facility: Facility, run_id: str
) -> None:
    verified = facility.run("dfarchive", "verify", run_id)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    archive = facility.legacy[run_id].archive
    original = archive.read_bytes()
    flipped = bytearray(original)
    flipped[len(flipped) // 3] ^= 0x40
    archive.write_bytes(bytes(flipped))
    try:
        damaged = facility.run("dfarchive", "verify", run_id)
    finally:
        archive.write_bytes(original)
    assert damaged.returncode == 1 and "MISMATCH" in damaged.stdout, damaged.stderr


@pytest.mark.parametrize("run_id", list(ENCRYPTED_KEYS))
def test_adopted_runs_pass_deep_verify(facility: Facility, run_id: str) -> None:
    deep = facility.run("dfarchive", "verify", "--deep", run_id)
    assert deep.returncode == 0, deep.stdout + deep.stderr
    assert "integrity code (MDC) correct" in deep.stdout


@pytest.mark.parametrize("run_id", list(ENCRYPTED_KEYS))
def test_every_legacy_archive_restores_byte_identical(
    facility: Facility, run_id: str, tmp_path: Path
) -> None:
    restored = facility.run("dfarchive", "restore", run_id, "--to", str(tmp_path))
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert tree(tmp_path / run_id) == tree(facility.source(run_id))  # content, modes, times, links


# -- the runs dfarchive archives, and those it leaves alone --------------------------------


def test_pending_unregistered_and_long_dead_claims_are_archived(facility: Facility) -> None:
    archive = facility.steps["archive"]
    assert archive.returncode == 0, archive.stderr
    after = facility.after
    for run_id in ("run_pending", "run_unregistered", "run_crashed"):
        assert after[run_id]["status"] == "encrypted", after[run_id]
        assert after[run_id]["archive"]["engine"] == "inprocess"  # dfarchive's own archive
        verified = facility.run("dfarchive", "verify", "--deep", run_id)
        assert verified.returncode == 0, verified.stdout + verified.stderr
    assert after["run_failed"] == facility.before["run_failed"]


def test_a_recent_legacy_claim_is_left_to_its_worker(facility: Facility) -> None:
    after = facility.after
    assert after["run_claimed_recently"] == facility.before["run_claimed_recently"]
    assert not (facility.archives / "run_claimed_recently.tar.gpg").exists()


def test_no_plaintext_key_file_remains(facility: Facility) -> None:
    assert sorted(facility.root.rglob("*.key")) == []


def test_the_legacy_view_is_unchanged(facility: Facility, couchdb_server) -> None:
    now = couchdb_server.request("GET", f"/{facility.database}/_design/lookup").text
    assert now == facility.design_before


def test_every_original_field_is_still_there(facility: Facility) -> None:
    after = facility.after
    assert set(after) == {*facility.before, "run_unregistered"}
    for run_id, doc in facility.before.items():
        assert set(ORIGINAL_FIELDS) <= set(after[run_id]), run_id
        assert {type(after[run_id][key]) for key in ORIGINAL_FIELDS} <= {str, int}
        if run_id in ENCRYPTED_KEYS:  # adopting changes nothing the original wrote
            assert {key: after[run_id][key] for key in ORIGINAL_FIELDS} == {
                key: doc[key] for key in ORIGINAL_FIELDS
            }
