"""verify_run: the bit-rot check of an archived run, plain (no key) and deep (decrypting)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dfarchive.archiving import keys
from dfarchive.archiving.keys import gpg_passphrase
from dfarchive.archiving.tarheaders import TarHeaderWalker
from dfarchive.coordination.store import SqliteStore
from dfarchive.errors import NotVerifiable, ToolError
from dfarchive.openpgp import decrypt_bytes
from dfarchive.ops.adopt import key_file_recipients
from dfarchive.ops.verify import archive_record, recipient_key_lister, verify_run
from tests.support.archives import (
    LEGACY_KEYS,
    ArchivedRun,
    make_archived_run,
    make_legacy_archive,
    tree,
)
from tests.support.cli import add_run, run_cli, write_config
from tests.support.gpg import new_gnupg_home


@pytest.fixture(scope="module")
def archived(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArchivedRun]:
    base = tmp_path_factory.mktemp("verify")
    home = new_gnupg_home(base / "gpg")
    try:
        yield make_archived_run(base, home)
    finally:
        home.stop_agent()


def encrypted_doc(archived: ArchivedRun, **changes: Any) -> dict[str, Any]:
    return {
        "_id": archived.run_id,
        "status": "encrypted",
        "archive": {**archived.record, **changes},
    }


def copy_archive(archived: ArchivedRun, tmp_path: Path) -> Path:
    copy = tmp_path / archived.archive.name
    copy.write_bytes(archived.archive.read_bytes())
    return copy


def unwrapper(archived: ArchivedRun):
    return lambda path: keys.unwrap_key(path, gnupg_home=archived.home.home)


@pytest.mark.parametrize("deep", [False, True])
def test_an_untouched_archive_verifies(archived: ArchivedRun, deep: bool) -> None:
    report = verify_run(encrypted_doc(archived), deep=deep, unwrap=unwrapper(archived))
    assert report.ok, report.problems
    assert report.archive == archived.archive
    assert f"SHA-256 {archived.record['sha256']}" in report.passed
    if deep:
        assert "decrypts; integrity code (MDC) correct" in report.passed
        assert f"plaintext SHA-256 {archived.record['plaintext_sha256']}" in report.passed
        assert f"tar members {archived.record['members']}" in report.passed


def test_a_flipped_byte_is_a_hash_mismatch_then_an_mdc_failure(
    archived: ArchivedRun, tmp_path: Path
) -> None:
    copy = copy_archive(archived, tmp_path)
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0x80
    copy.write_bytes(bytes(data))
    doc = encrypted_doc(archived, file=str(copy))
    plain = verify_run(doc)
    assert [p for p in plain.problems if "SHA-256 is" in p and str(copy) in p]
    assert f"size {archived.record['size']} bytes" in plain.passed  # the size still matches
    deep = verify_run(doc, deep=True, unwrap=unwrapper(archived))
    assert any("does not decrypt" in p and "modification detection" in p for p in deep.problems)


def test_a_truncated_archive_is_a_size_mismatch(archived: ArchivedRun, tmp_path: Path) -> None:
    copy = copy_archive(archived, tmp_path)
    with copy.open("r+b") as f:
        f.truncate(copy.stat().st_size - 1)
    report = verify_run(encrypted_doc(archived, file=str(copy)))
    assert not report.ok
    assert report.problems[0] == (
        f"archive {copy} is {archived.record['size'] - 1} bytes, "
        f"the record says {archived.record['size']}"
    )


def test_deep_detects_an_edited_plaintext_checksum(archived: ArchivedRun) -> None:
    doc = encrypted_doc(archived, plaintext_sha256="ab" * 32, members=1)
    assert verify_run(doc).ok  # without the key only the archive bytes are checked
    report = verify_run(doc, deep=True, unwrap=unwrapper(archived))
    assert report.problems == [
        f"plaintext SHA-256 is {archived.record['plaintext_sha256']}, the record says {'ab' * 32}",
        f"tar members is {archived.record['members']}, the record says 1",
    ]


def test_missing_files_are_problems(archived: ArchivedRun, tmp_path: Path) -> None:
    doc = encrypted_doc(archived, file=str(tmp_path / "gone.tar.gpg"))
    assert verify_run(doc).problems == [f"archive {tmp_path / 'gone.tar.gpg'} is missing"]
    doc = encrypted_doc(archived, key_file=str(tmp_path / "gone.key.gpg"))
    report = verify_run(doc, deep=True, unwrap=unwrapper(archived))
    assert report.problems == [f"key file {tmp_path / 'gone.key.gpg'} is missing or empty"]
    assert f"SHA-256 {archived.record['sha256']}" in report.passed  # still checked


def test_a_key_without_its_private_key_is_an_error(archived: ArchivedRun, tmp_path: Path) -> None:
    other = new_gnupg_home(tmp_path / "gpg")
    try:
        recipient = keys.resolve_recipient(other.fingerprint, gnupg_home=other.home)
        wrapped = tmp_path / "other.key.gpg"
        wrapped.write_bytes(keys.wrap_key(keys.new_run_key(), recipient, gnupg_home=other.home))
    finally:
        other.stop_agent()
    with pytest.raises(ToolError, match="No secret key"):
        verify_run(
            encrypted_doc(archived, key_file=str(wrapped)), deep=True, unwrap=unwrapper(archived)
        )


def test_a_key_file_that_is_not_openpgp_is_a_problem(archived: ArchivedRun, tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.key.gpg"
    bogus.write_bytes(b"not an OpenPGP message")
    report = verify_run(
        encrypted_doc(archived, key_file=str(bogus)), deep=True, unwrap=unwrapper(archived)
    )
    assert [p for p in report.problems if f"key file {bogus} is not a message encrypted" in p]


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"_id": "r", "status": "pending"}, "'pending', not encrypted"),
        ({"_id": "r", "status": "encrypted"}, "no archive record"),
        ({"_id": "r", "status": "encrypted", "archive": {"file": "/x"}}, "lacks file, size"),
        (
            {"_id": "r", "status": "encrypted", "archive": {"file": "/x", "size": True}},
            "lacks file, size",
        ),
    ],
)
def test_runs_without_an_archive_are_not_verifiable(doc: dict, message: str) -> None:
    with pytest.raises(NotVerifiable, match=message):
        verify_run(doc)


def test_archive_record_tolerates_missing_optional_fields() -> None:
    record = archive_record(
        {"_id": "r", "status": "encrypted", "archive": {"file": "/a", "size": 3, "sha256": "AB"}}
    )
    assert (record.file, record.size, record.sha256) == (Path("/a"), 3, "ab")
    assert record.key_file is None and record.plaintext_sha256 is None


# -- runs archived by the original tool (dataflow_archive) -------------------------------


@pytest.fixture
def store(
    tmp_path: Path, archived: ArchivedRun, monkeypatch: pytest.MonkeyPatch, capsys
) -> Iterator[SqliteStore]:
    """A config (``$ARCHIVE_CONFIG``) with this module's keyring and a fresh SQLite store."""
    monkeypatch.setenv("ARCHIVE_CONFIG", str(write_config(tmp_path, archived)))
    code, _, err = run_cli(capsys, "init")
    assert code == 0, err
    with SqliteStore(str(tmp_path / "state" / "runs.sqlite3"), max_attempts=2) as opened:
        yield opened


def adopted_doc(run_id: str, record: dict[str, Any]) -> dict[str, Any]:
    return {"_id": run_id, "status": "encrypted", "archive": record}


@pytest.mark.parametrize("shape", LEGACY_KEYS)
def test_deep_verifies_archives_made_by_the_original_tool(
    archived: ArchivedRun, tmp_path: Path, shape: str
) -> None:
    made = make_legacy_archive(tmp_path, archived.home, archived.source, LEGACY_KEYS[shape])
    doc = adopted_doc(archived.run_id, made.adopted_record(archived.home))
    assert verify_run(doc).ok
    report = verify_run(doc, deep=True, unwrap=unwrapper(archived))
    assert report.ok, report.problems
    assert "decrypts; integrity code (MDC) correct" in report.passed


def test_a_deeply_adopted_record_is_checked_in_full(archived: ArchivedRun, tmp_path: Path) -> None:
    key = LEGACY_KEYS["nul_at_7"]
    made = make_legacy_archive(tmp_path, archived.home, archived.source, key)
    plaintext = decrypt_bytes(made.archive.read_bytes(), gpg_passphrase(key))
    index = TarHeaderWalker()
    index.feed(plaintext)
    digest = hashlib.sha256(plaintext).hexdigest()
    members = index.summary().members
    record = made.adopted_record(
        archived.home, plaintext_sha256=digest, plaintext_size=len(plaintext), members=members
    )
    report = verify_run(adopted_doc(archived.run_id, record), deep=True, unwrap=unwrapper(archived))
    assert report.ok, report.problems
    assert {f"plaintext SHA-256 {digest}", f"tar members {members}"} <= set(report.passed)
    record["plaintext_sha256"] = "00" * 32
    report = verify_run(adopted_doc(archived.run_id, record), deep=True, unwrap=unwrapper(archived))
    assert report.problems == [f"plaintext SHA-256 is {digest}, the record says {'00' * 32}"]


def test_a_key_file_that_is_not_a_run_key_is_a_deep_problem(
    archived: ArchivedRun, tmp_path: Path
) -> None:
    stored = tmp_path / "stored.key.gpg"
    (tmp_path / "plain.key").write_bytes(archived.passphrase())
    archived.home.gpg("--output", str(stored), "--store", str(tmp_path / "plain.key"))
    report = verify_run(
        encrypted_doc(archived, key_file=str(stored)), deep=True, unwrap=unwrapper(archived)
    )
    assert report.problems == [
        f"key file {stored} is not a message encrypted to a public key (a run key file "
        "is written by gpg --encrypt -r RECIPIENT); refusing it"
    ]
    assert f"SHA-256 {archived.record['sha256']}" in report.passed  # still checked


def test_runs_archived_by_the_original_tool_must_be_adopted_first(
    store: SqliteStore, archived: ArchivedRun, tmp_path: Path, capsys
) -> None:
    add_run(store, "original_run", str(archived.source))
    doc = store.get("original_run")
    assert doc is not None
    store._replace({**doc, "status": "encrypted"})  # as the original tool left it
    into = tmp_path / "restored"
    for argv in (
        ["verify", "original_run"],
        ["verify", "original_run", "--deep"],
        ["restore", "original_run", "--to", str(into)],
    ):
        code, out, err = run_cli(capsys, *argv)
        assert (code, out) == (1, ""), (argv, err)
        assert "was archived by the original tool (dataflow_archive)" in err, argv
        assert "must be adopted first: dfarchive adopt original_run" in err, argv
    assert not into.exists()


def test_an_adopted_run_verifies_and_restores_from_the_store(
    store: SqliteStore, archived: ArchivedRun, tmp_path: Path, capsys
) -> None:
    made = make_legacy_archive(
        tmp_path / "made", archived.home, archived.source, LEGACY_KEYS["newline_at_1"]
    )
    add_run(store, archived.run_id, str(archived.source))
    claim = store.claim(archived.run_id, worker_id="host:3")
    assert claim is not None
    store.finish(claim, made.adopted_record(archived.home))
    for deep in ([], ["--deep"]):
        code, out, err = run_cli(capsys, "verify", archived.run_id, *deep)
        assert code == 0, out + err
    into = tmp_path / "restored"
    code, out, err = run_cli(capsys, "restore", archived.run_id, "--to", str(into))
    assert code == 0, err
    assert "no recorded checksum to compare" in out
    assert tree(into / archived.run_id) == tree(archived.source)


# -- fixity audits: what the shallow check adds ---------------------------------------------


def test_a_missing_archive_is_flagged_apart_from_damage(archived: ArchivedRun, tmp_path) -> None:
    gone = verify_run(encrypted_doc(archived, file=str(tmp_path / "on-tape.tar.gpg")))
    assert gone.missing and gone.problems == [f"archive {tmp_path / 'on-tape.tar.gpg'} is missing"]
    copy = copy_archive(archived, tmp_path)
    with open(copy, "r+b") as f:
        f.truncate(10)
    damaged = verify_run(encrypted_doc(archived, file=str(copy)))
    assert not damaged.ok and not damaged.missing


def test_the_key_file_must_be_addressed_to_the_recorded_recipient(archived: ArchivedRun) -> None:
    fingerprint = archived.record["recipient_fingerprint"]
    lister = recipient_key_lister(archived.home.home)
    report = verify_run(encrypted_doc(archived), recipient_keys=lister)
    assert report.ok, report.problems
    assert f"key file {archived.key} addressed to {fingerprint}" in report.passed
    addressed = ", ".join(key_file_recipients(archived.key))
    other = verify_run(encrypted_doc(archived), recipient_keys=lambda fp: {"0123456789ABCDEF"})
    assert other.problems == [
        f"key file {archived.key} is encrypted to {addressed}, not to the recorded recipient "
        f"{fingerprint} (key ids 0123456789ABCDEF)"
    ]


def test_an_unreadable_key_file_is_a_problem(archived: ArchivedRun, tmp_path: Path) -> None:
    junk = tmp_path / "junk.key.gpg"
    junk.write_bytes(b"not openpgp at all")
    report = verify_run(
        encrypted_doc(archived, key_file=str(junk)),
        recipient_keys=recipient_key_lister(archived.home.home),
    )
    assert len(report.problems) == 1
    assert report.problems[0].startswith(f"key file {junk} is not a wrapped key: ")


def test_every_byte_read_is_reported(archived: ArchivedRun) -> None:
    reads: list[int] = []
    for deep in (False, True):
        reads.clear()
        report = verify_run(
            encrypted_doc(archived), deep=deep, unwrap=unwrapper(archived), on_read=reads.append
        )
        assert report.ok and sum(reads) == report.bytes_read == archived.record["size"]
