"""Adopting the original tool's archives and keys, and removing its crash leftovers:
archives made by stock gpg and tar exactly as the original runs them (tests.support.legacy_tool),
a legacy CouchDB database on the CouchDB-compatible test server."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from dfarchive.archiving.keys import resolve_recipient
from dfarchive.coordination import runstate
from dfarchive.coordination.leftovers import legacy_key_leftovers, remove_legacy_key_leftover
from dfarchive.coordination.store import NewRun, SqliteStore
from dfarchive.errors import AdoptionError, CryptoError, TransitionRefused
from dfarchive.ops.adopt import (
    LEGACY_FORMAT,
    check_key_file,
    check_symmetric_message,
    key_file_recipients,
    recipient_key_ids,
)
from tests.support.archives import tree
from tests.support.cli import run_cli
from tests.support.gpg import GnupgHome, build_run_folder
from tests.support.legacy_tool import (
    NEWLINE_KEY,
    NUL_KEY,
    WHOLE_KEY,
    archive_like_the_original,
    legacy_document,
)

NOW = datetime(2026, 4, 28, 12, 0, 0, tzinfo=UTC)
LEGACY_HOST = "seqhost-old"


# -- the transition ------------------------------------------------------------------------


def encrypted_legacy_doc() -> dict[str, Any]:
    return legacy_document(
        "run_1",
        Path("/seq/A/run_1"),
        "encrypted",
        worker_id=LEGACY_HOST,
        created_at="2025-01-01T10:00:00+00:00",
        updated_at="2025-01-01T11:00:00+00:00",
    )


def test_adopt_records_the_archive_and_keeps_every_original_value() -> None:
    doc = encrypted_legacy_doc()
    record = {"file": "/a/run_1.tar.gpg", "size": 9}
    adopted = runstate.adopt(doc, record=record, now=NOW)
    assert adopted == {**doc, "archive": {**record, "adopted_at": "2026-04-28T12:00:00+00:00"}}
    assert doc == encrypted_legacy_doc()  # a new dict: the input is untouched
    # the same write again (a retried write that committed) is "nothing to do"
    assert runstate.adopt(adopted, record=record, now=NOW) is adopted


@pytest.mark.parametrize("status", ["pending", "processing", "failed", None])
def test_adopt_refuses_runs_that_are_not_encrypted(status: str | None) -> None:
    with pytest.raises(TransitionRefused, match="only encrypted runs can be adopted"):
        runstate.adopt({**encrypted_legacy_doc(), "status": status}, record={}, now=NOW)


def test_adopt_refuses_a_run_with_an_archive_record() -> None:
    doc = {**encrypted_legacy_doc(), "archive": {"file": "/a/x", "engine": "inprocess"}}
    with pytest.raises(TransitionRefused, match="already has an archive record"):
        runstate.adopt(doc, record={"file": "/a/x"}, now=NOW)


def test_the_store_adopts_with_compare_and_swap(tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "runs.sqlite3", clock=lambda: NOW) as store:
        store.setup()
        store.register_many([NewRun("run_1", "/seq/A/run_1", "A")], worker_id="h")
        with pytest.raises(TransitionRefused):
            store.adopt("run_1", {"file": "x"})  # pending
        claim = store.claim("run_1", worker_id="h")
        assert claim is not None
        before = store.finish(claim, {"file": "x"})
        with pytest.raises(TransitionRefused):
            store.adopt("run_1", {"file": "y"})  # archived by dfarchive: has a record
        assert store.get("run_1") == before


# -- the files -------------------------------------------------------------------------------


@pytest.fixture
def facility(tmp_path: Path, gnupg_home: GnupgHome) -> dict[str, Path]:
    paths = {name: tmp_path / name for name in ("seq", "archives", "run_keys")}
    for path in paths.values():
        path.mkdir()
    paths["run_keys"].chmod(0o700)
    (paths["seq"] / "seqA").mkdir()
    return paths


def legacy_run(
    facility: dict[str, Path], home: GnupgHome, run_id: str, key: bytes | None = None,
    **kwargs: Any,
):  # fmt: skip
    run = build_run_folder(
        facility["seq"] / "seqA", run_id, small_files=12, big_files=1, big_size=70_000
    )
    return archive_like_the_original(
        run.path, facility["archives"], facility["run_keys"], home.fingerprint, home.env,
        key=key, **kwargs,
    )  # fmt: skip


def tar_of(facility: dict[str, Path], run_id: str) -> bytes:
    """The run's tar stream as the original tool's ``tar -cf -`` writes it."""
    command = ["tar", "-cf", "-", "-C", str(facility["seq"] / "seqA"), run_id]
    return subprocess.run(command, capture_output=True, check=True).stdout


def test_a_stock_gpg_archive_is_well_formed_and_damage_is_not(
    facility: dict[str, Path], gnupg_home: GnupgHome, tmp_path: Path
) -> None:
    legacy = legacy_run(facility, gnupg_home, "run_1", NEWLINE_KEY)
    data = legacy.archive.read_bytes()
    with open(legacy.archive, "rb") as source:
        shape = check_symmetric_message(source)
    assert (shape.session_keys, shape.cipher) == (1, 9)  # AES-256
    damaged = {
        "truncated": data[:-1],
        "appended": data + b"\0",
        "empty": b"",
        "headers only": data[:40],
        "plain tar": tar_of(facility, "run_1"),
        "a wrapped key": legacy.key_file.read_bytes(),
    }
    for what, blob in damaged.items():
        with pytest.raises(CryptoError):
            check_symmetric_message(io.BytesIO(blob))
            pytest.fail(f"{what} passed as well-formed")


def test_the_key_file_must_be_addressed_to_the_recipient(
    facility: dict[str, Path], gnupg_home: GnupgHome
) -> None:
    legacy = legacy_run(facility, gnupg_home, "run_1")
    recipient = resolve_recipient(gnupg_home.fingerprint, gnupg_home=gnupg_home.home)
    ids = recipient_key_ids(recipient, gnupg_home=gnupg_home.home)
    assert set(key_file_recipients(legacy.key_file)) <= ids
    check_key_file(legacy.key_file, recipient, ids)  # no error
    other = gnupg_home.make_key("other <other@dfarchive.invalid>")
    wrong = facility["run_keys"] / "wrong.key.gpg"
    subprocess.run(
        ["gpg", "--batch", "--encrypt", "-r", other, "-o", str(wrong)],
        input=b"k", env=gnupg_home.env, check=True, capture_output=True,
    )  # fmt: skip
    with pytest.raises(AdoptionError, match=rf"{wrong} is encrypted to .*not to gpg_receiver"):
        check_key_file(wrong, recipient, ids)
    legacy.archive.rename(facility["archives"] / "elsewhere")
    with pytest.raises(AdoptionError, match="is not a wrapped key"):
        check_key_file(facility["archives"] / "elsewhere", recipient, ids)
    with pytest.raises(AdoptionError, match="is missing"):
        check_key_file(facility["run_keys"] / "none.key.gpg", recipient, ids)


# -- leftovers -------------------------------------------------------------------------------


def test_a_leftover_plaintext_key_is_removed_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    leftover = tmp_path / "run_1.key"
    leftover.write_bytes(NEWLINE_KEY)
    with caplog.at_level(logging.WARNING, logger="dfarchive.ops.adopt"):
        assert remove_legacy_key_leftover(tmp_path, "run_1") == leftover
    assert not leftover.exists()
    assert f"removed the plaintext run key {leftover} left by dataflow_archive" in caplog.text
    assert remove_legacy_key_leftover(tmp_path, "run_1") is None  # nothing there any more


def test_only_a_regular_file_of_that_exact_name_is_removed(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_bytes(b"keep")
    (tmp_path / "run_1.key").symlink_to(target)
    (tmp_path / "run_2.key").mkdir()
    (tmp_path / "run_3.key.gpg").write_bytes(b"wrapped")
    (tmp_path / "run_3.keys").write_bytes(b"other")
    outside = tmp_path / "x.key"
    outside.write_bytes(b"outside")
    sub = tmp_path / "sub"
    sub.mkdir()
    for run_id in ("run_1", "run_2", "run_3", "../x", "", "."):
        assert remove_legacy_key_leftover(sub if run_id == "../x" else tmp_path, run_id) is None
    assert target.read_bytes() == b"keep" and (tmp_path / "run_1.key").is_symlink()
    assert (tmp_path / "run_2.key").is_dir() and outside.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "precious", "run_1.key", "run_2.key", "run_3.key.gpg", "run_3.keys", "sub", "x.key",
    ]  # fmt: skip


def test_leftovers_are_found_for_known_runs_only(tmp_path: Path) -> None:
    for name in ("run_1.key", "run_2.key", "stranger.key", "run_3.tar.gpg"):
        (tmp_path / name).write_bytes(b"k")
    (tmp_path / "run_4.key").symlink_to(tmp_path / "run_1.key")
    found = legacy_key_leftovers(tmp_path, ["run_1", "run_2", "run_3", "run_4"])
    assert found == {"run_1": tmp_path / "run_1.key", "run_2": tmp_path / "run_2.key"}


# -- dfarchive adopt, on a legacy CouchDB database --------------------------------------------


@pytest.fixture
def legacy_db(couchdb_server, couchdb_database: str) -> str:
    """The original tool's database: its design document and no other."""
    assert couchdb_server.request("PUT", f"/{couchdb_database}").status_code in (201, 202)
    design = {"views": {"runfolder_id": {"map": "function (doc) { emit(doc._id, doc); }"}}}
    response = couchdb_server.request("PUT", f"/{couchdb_database}/_design/lookup", json=design)
    assert response.status_code in (201, 202), response.text
    return couchdb_database


def put_doc(couchdb_server, database: str, doc: dict[str, Any]) -> None:
    response = couchdb_server.request("PUT", f"/{database}/{doc['_id']}", json=doc)
    assert response.status_code in (201, 202), response.text


def get_doc(couchdb_server, database: str, run_id: str) -> dict[str, Any]:
    return couchdb_server.request("GET", f"/{database}/{run_id}").json()


def adopt_config(
    tmp_path: Path, facility: dict[str, Path], couchdb_server, database: str, home: GnupgHome
) -> Path:
    config = couchdb_server.facility_config(database, tmp_path, home.fingerprint)
    config.update(
        sequencing_path=str(facility["seq"]),
        destination_path=str(facility["archives"]),
        keys_path=str(facility["run_keys"]),
        gnupg_home=home.home,
    )
    path = tmp_path / "df_archive.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def legacy_encrypted(couchdb_server, database: str, facility, legacy) -> dict[str, Any]:
    doc = legacy_document(
        legacy.run_id, facility["seq"] / "seqA" / legacy.run_id, "encrypted",
        worker_id=LEGACY_HOST,
        created_at="2025-03-01T08:00:00+00:00", updated_at="2025-03-01T09:30:00+00:00",
    )  # fmt: skip
    put_doc(couchdb_server, database, doc)
    return get_doc(couchdb_server, database, legacy.run_id)


def test_adopt_all_records_the_legacy_archives(
    tmp_path: Path, facility, gnupg_home: GnupgHome, couchdb_server, legacy_db: str, capsys
) -> None:
    whole = legacy_run(facility, gnupg_home, "run_whole", WHOLE_KEY, keep_plaintext_key=True)
    newline = legacy_run(facility, gnupg_home, "run_newline", NEWLINE_KEY)
    before = {
        legacy.run_id: legacy_encrypted(couchdb_server, legacy_db, facility, legacy)
        for legacy in (whole, newline)
    }
    pending = legacy_document("run_pending", Path("/s/A/run_pending"), "pending", worker_id="h")
    put_doc(couchdb_server, legacy_db, pending)
    config = adopt_config(tmp_path, facility, couchdb_server, legacy_db, gnupg_home)
    leftover = facility["archives"] / "run_whole.key"
    assert leftover.exists()

    code, out, err = run_cli(capsys, "adopt", "--all", "-c", str(config))
    assert code == 0, out + err
    lines = out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["run_newline", "run_whole", "adopt"]
    assert lines[-1] == "adopt: 2 adopted"
    for legacy in (whole, newline):
        doc = get_doc(couchdb_server, legacy_db, legacy.run_id)
        record = doc["archive"]
        data = legacy.archive.read_bytes()
        assert record == {
            "file": str(legacy.archive),
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "key_file": str(legacy.key_file),
            "recipient_fingerprint": gnupg_home.fingerprint,
            "format": LEGACY_FORMAT,
            "host": os.uname().nodename,
            "adopted_at": record["adopted_at"],
        }
        adopted_at = datetime.fromisoformat(record["adopted_at"])
        assert adopted_at > datetime.now(UTC) - timedelta(minutes=5)
        # every original field keeps its value: the run was archived then, by that host
        original = before[legacy.run_id]
        assert {k: doc[k] for k in original if k != "_rev"} == {
            k: v for k, v in original.items() if k != "_rev"
        }
        assert f"{legacy.run_id}: adopted {legacy.archive} ({len(data)} bytes" in out
    assert not leftover.exists()
    assert f"removed the plaintext run key {leftover} left by dataflow_archive" in err
    assert get_doc(couchdb_server, legacy_db, "run_pending")["_rev"].startswith("1-")

    # now verify works on them without options, and notices a flipped byte
    code, out, err = run_cli(capsys, "verify", "run_newline", "-c", str(config))
    assert code == 0 and "verification passed" in out, out + err
    data = bytearray(newline.archive.read_bytes())
    data[len(data) // 2] ^= 0x01
    newline.archive.write_bytes(bytes(data))
    code, out, _ = run_cli(capsys, "verify", "run_newline", "-c", str(config))
    assert code == 1 and "MISMATCH" in out

    # a key gpg used whole needs no cut: restore works as for dfarchive's own runs
    to = str(tmp_path / "r")
    code, out, err = run_cli(capsys, "restore", "run_whole", "--to", to, "-c", str(config))
    assert code == 0, out + err
    assert tree(tmp_path / "r" / "run_whole") == tree(facility["seq"] / "seqA" / "run_whole")

    # a second pass finds nothing left to adopt, but still clears a leftover key
    (facility["archives"] / "run_newline.key").write_bytes(NEWLINE_KEY)
    code, out, _ = run_cli(capsys, "adopt", "--all", "-c", str(config))
    assert (code, out) == (0, "adopt: 0 adopted\n")
    assert not (facility["archives"] / "run_newline.key").exists()


def test_adopt_deep_records_the_plaintext(
    tmp_path: Path, facility, gnupg_home: GnupgHome, couchdb_server, legacy_db: str, capsys
) -> None:
    legacies = [
        legacy_run(facility, gnupg_home, "run_newline", NEWLINE_KEY),
        legacy_run(facility, gnupg_home, "run_nul", NUL_KEY),
        legacy_run(facility, gnupg_home, "run_random"),
    ]
    for legacy in legacies:
        legacy_encrypted(couchdb_server, legacy_db, facility, legacy)
    config = adopt_config(tmp_path, facility, couchdb_server, legacy_db, gnupg_home)
    code, out, err = run_cli(capsys, "adopt", "--deep", "run_newline", "run_nul", "run_random",
                             "-c", str(config))  # fmt: skip
    assert code == 0, out + err
    assert out.count("integrity code (MDC) correct") == 3
    for legacy in legacies:
        tar = tar_of(facility, legacy.run_id)
        members = subprocess.run(["tar", "-tf", "-"], input=tar, capture_output=True, check=True)
        record = get_doc(couchdb_server, legacy_db, legacy.run_id)["archive"]
        assert record["plaintext_sha256"] == hashlib.sha256(tar).hexdigest()
        assert record["plaintext_size"] == len(tar)
        assert record["members"] == len(members.stdout.splitlines())
        assert record["format"] == LEGACY_FORMAT


def test_missing_or_damaged_files_are_a_line_per_run_and_nothing_recorded(
    tmp_path: Path, facility, gnupg_home: GnupgHome, couchdb_server, legacy_db: str, capsys
) -> None:
    no_key = legacy_run(facility, gnupg_home, "run_no_key", keep_plaintext_key=True)
    no_archive = legacy_run(facility, gnupg_home, "run_no_archive")
    truncated = legacy_run(facility, gnupg_home, "run_truncated")
    good = legacy_run(facility, gnupg_home, "run_good")
    no_key.key_file.unlink()
    no_archive.archive.unlink()
    truncated.archive.write_bytes(truncated.archive.read_bytes()[:-100])
    before = {
        legacy.run_id: legacy_encrypted(couchdb_server, legacy_db, facility, legacy)
        for legacy in (no_key, no_archive, truncated, good)
    }
    config = adopt_config(tmp_path, facility, couchdb_server, legacy_db, gnupg_home)
    code, out, err = run_cli(capsys, "adopt", "--all", "-c", str(config))
    assert code == 1, out + err
    assert out.splitlines() == [
        f"run_good: adopted {good.archive} ({good.archive.stat().st_size} bytes, SHA-256 "
        f"{hashlib.sha256(good.archive.read_bytes()).hexdigest()}); key {good.key_file}",
        f"run_no_archive: NOT adopted: archive {no_archive.archive} is missing",
        f"run_no_key: NOT adopted: key file {no_key.key_file} is missing",
        f"run_truncated: NOT adopted: archive {truncated.archive} is not a well-formed "
        "OpenPGP symmetric message: message truncated in the body of packet tag 18",
        "adopt: 1 adopted, 3 NOT adopted (nothing recorded for them)",
    ]
    for run_id, doc in before.items():
        if run_id != "run_good":
            assert get_doc(couchdb_server, legacy_db, run_id) == doc
    # the only copy of that run's key is not deleted while its wrapped key is missing
    assert (facility["archives"] / "run_no_key.key").read_bytes() == no_key.key


def test_adopt_names_runs_it_cannot_adopt(
    tmp_path: Path, facility, gnupg_home: GnupgHome, couchdb_server, legacy_db: str, capsys
) -> None:
    put_doc(couchdb_server, legacy_db, legacy_document(
        "run_pending", Path("/seq/seqA/run_pending"), "pending", worker_id="h"))  # fmt: skip
    recorded = legacy_run(facility, gnupg_home, "run_recorded")
    legacy_encrypted(couchdb_server, legacy_db, facility, recorded)
    config = adopt_config(tmp_path, facility, couchdb_server, legacy_db, gnupg_home)
    assert run_cli(capsys, "adopt", "run_recorded", "-c", str(config))[0] == 0
    code, out, _ = run_cli(
        capsys, "adopt", "run_pending", "nosuchrun", "run_recorded", "-c", str(config)
    )
    assert code == 1
    assert out.splitlines() == [
        "run_pending: NOT adopted: it is 'pending', not encrypted: there is nothing to adopt",
        "nosuchrun: NOT adopted: no such run in the couchdb store",
        "run_recorded: already has an archive record; nothing to adopt",
        "adopt: 0 adopted, 1 already recorded, 2 NOT adopted (nothing recorded for them)",
    ]
    for argv in (["adopt"], ["adopt", "--all", "run_recorded"]):
        code, out, err = run_cli(capsys, *argv, "-c", str(config))
        assert (code, out) == (2, "")
        assert err == "dfarchive: adopt: give the runs to adopt, or --all (not both)\n"
