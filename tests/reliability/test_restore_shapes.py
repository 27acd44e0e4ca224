"""``restore`` against crafted hostile archives: shapes ``tests/ops/test_restore.py`` does
not cover (GNU long names and long link targets, pax path records, link chains, a
top-level link, a file used as a directory, entries beside the run folder, NUL bytes in
pax names). Each is encrypted with dfarchive's OpenPGP writer like a real archive; a
refused restore leaves nothing, inside or outside."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from dfarchive.errors import RestoreError, UnsafeMember
from dfarchive.openpgp import encrypt_bytes
from dfarchive.ops.restore import restore_archive

PASSPHRASE = b"0123456789abcdef" * 4
LONG = "long_directory_name_" * 6  # 120 characters: GNU 'L'/'K' headers, pax records


def member(name: str, kind: bytes = tarfile.REGTYPE, *, link: str = "", data: bytes = b"x",
           pax: dict[str, str] | None = None) -> tuple[tarfile.TarInfo, bytes | None]:  # fmt: skip
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.mtime = kind, link, 0o644, 1_700_000_000
    if pax:
        info.pax_headers = dict(pax)
    if kind == tarfile.REGTYPE:
        info.size = len(data)
        return info, data
    return info, None


def tar_of(members: list, *, format: int) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=format) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def hostile(outside: Path) -> dict[str, tuple[list, int, str]]:
    """case → (members, tar format, the refused member's name)."""
    gnu, pax = tarfile.GNU_FORMAT, tarfile.PAX_FORMAT
    ok = member("run/ok.txt")
    return {
        "gnu long name with ..": (
            [ok, member(f"run/{LONG}/../../../outside/evil")], gnu,
            f"run/{LONG}/../../../outside/evil",
        ),
        "gnu long absolute name": (
            [ok, member(f"{outside}/{LONG}/evil")], gnu, f"{outside}/{LONG}/evil",
        ),
        "gnu long hard-link target with ..": (
            [ok, member("run/hard", tarfile.LNKTYPE, link=f"run/{LONG}/../../../outside/t")],
            gnu, "run/hard",
        ),
        "pax path record with ..": (
            [ok, member("run/innocent", pax={"path": "run/../../outside/evil"})], pax,
            "run/../../outside/evil",
        ),
        "pax absolute hard-link target": (
            [ok, member("run/hard", tarfile.LNKTYPE, link="x",
                        pax={"linkpath": f"{outside}/target"})],
            pax, "run/hard",
        ),
        "top-level symlink then a member through it": (
            [member("run", tarfile.SYMTYPE, link=str(outside)), member("run/evil")], gnu, "run",
        ),
        "the run folder as a file": ([member("run")], gnu, "run"),
        "an entry beside the run folder, after it": (
            [ok, member("run/more"), member("evil_top")], gnu, "evil_top",
        ),
        "an entry beside the run folder, before it": (
            [member("evil_top"), ok], gnu, "evil_top",
        ),
        "a directory beside the run folder": (
            [ok, member("other", tarfile.DIRTYPE), member("other/x")], gnu, "other",
        ),
        "a dot-slash entry beside the run folder": (
            [ok, member("./evil_top")], gnu, "./evil_top",
        ),
        "pax path with a NUL byte": (
            [ok, member("run/innocent", pax={"path": "run/a\x00b"})], pax, "run/a\x00b",
        ),
        "pax link target with a NUL byte": (
            [ok, member("run/l", tarfile.SYMTYPE, link="x", pax={"linkpath": "t\x00u"})], pax,
            "run/l",
        ),
        "pax hard-link target with a NUL byte": (
            [ok, member("run/h", tarfile.LNKTYPE, link="x", pax={"linkpath": "run/ok\x00.txt"})],
            pax, "run/h",
        ),
        "symlink chain": (
            [ok, member("run/a", tarfile.SYMTYPE, link="b"),
             member("run/b", tarfile.SYMTYPE, link=str(outside)), member("run/a/evil")],
            gnu, "run/a/evil",
        ),
        "directory replaced by a symlink": (
            [member("run/d", tarfile.DIRTYPE), member("run/d", tarfile.SYMTYPE, link=str(outside)),
             member("run/d/evil")],
            gnu, "run/d",
        ),
        "hard link to a symlink used as a directory": (
            [ok, member("run/l", tarfile.SYMTYPE, link=str(outside)),
             member("run/h", tarfile.LNKTYPE, link="run/l"), member("run/h/evil")],
            gnu, "run/h/evil",
        ),
        "a file used as a directory": (
            [member("run/f"), member("run/f/evil")], gnu, "run/f/evil",
        ),
        "block device": ([ok, member("run/sda", tarfile.BLKTYPE)], gnu, "run/sda"),
    }  # fmt: skip


CASES = list(hostile(Path("/x")))


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("case", CASES)
def test_hostile_shapes_are_refused_and_leave_nothing(case: str, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "target").write_text("outside file\n")
    members, fmt, refused = hostile(outside)[case]
    archive = tmp_path / "crafted.tar.gpg"
    archive.write_bytes(encrypt_bytes(tar_of(members, format=fmt), PASSPHRASE))
    before = listing(tmp_path)
    into = tmp_path / "into"
    with pytest.raises(UnsafeMember) as caught:
        restore_archive(archive, PASSPHRASE, into, run_id="run")
    assert caught.value.name == refused
    assert listing(outside) == ["target"]
    assert (outside / "target").read_text() == "outside file\n"
    assert listing(into) == []  # no temporary directory, no half-restored tree
    assert listing(tmp_path) == sorted([*before, "into"])


def test_backslashes_are_name_characters_not_separators(tmp_path: Path) -> None:
    name = "a\\..\\..\\evil"
    archive = tmp_path / "crafted.tar.gpg"
    plaintext = tar_of([member(f"run/{name}", data=b"literal\n")], format=tarfile.GNU_FORMAT)
    archive.write_bytes(encrypt_bytes(plaintext, PASSPHRASE))
    result = restore_archive(archive, PASSPHRASE, tmp_path / "into", run_id="run")
    assert result.members == 1
    assert os.listdir(tmp_path / "into") == ["run"]
    assert os.listdir(tmp_path / "into" / "run") == [name]
    assert (tmp_path / "into" / "run" / name).read_bytes() == b"literal\n"


@pytest.mark.parametrize("members", [[], [member(".", tarfile.DIRTYPE)]], ids=["empty", "dot"])
def test_an_archive_without_the_run_folder_restores_nothing(members: list, tmp_path: Path) -> None:
    archive = tmp_path / "crafted.tar.gpg"
    archive.write_bytes(encrypt_bytes(tar_of(members, format=tarfile.GNU_FORMAT), PASSPHRASE))
    with pytest.raises(RestoreError, match=r"crafted\.tar\.gpg: holds nothing under run/"):
        restore_archive(archive, PASSPHRASE, tmp_path / "into", run_id="run")
    assert listing(tmp_path / "into") == []
