"""verify_run: the bit-rot check of an archived run, plain (no key) and deep (decrypting)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dfarchive import keys
from dfarchive.errors import ToolError
from dfarchive.verify import NotVerifiable, archive_record, verify_run
from tests.test_restore import ArchivedRun, make_archived_run, make_gnupg_home, stop_gpg_agent


@pytest.fixture(scope="module")
def archived(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArchivedRun]:
    base = tmp_path_factory.mktemp("verify")
    home = make_gnupg_home(base)
    try:
        yield make_archived_run(base, home)
    finally:
        stop_gpg_agent(home)


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


def test_a_key_that_does_not_unwrap_is_an_error(archived: ArchivedRun, tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.key.gpg"
    bogus.write_bytes(b"not an OpenPGP message")
    with pytest.raises(ToolError):
        verify_run(
            encrypted_doc(archived, key_file=str(bogus)), deep=True, unwrap=unwrapper(archived)
        )


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
