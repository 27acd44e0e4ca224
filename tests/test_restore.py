"""Restore: decrypt + verify + safe extraction, against real archives and crafted ones.

Real archives come from the real pipeline (tar, OpenPGP, gpg-wrapped key). Hostile
archives are crafted with :mod:`tarfile`, encrypted with our OpenPGP writer, and their
passphrase wrapped with gpg, exactly like a real run's; they are restored through the
``dfarchive restore`` command (exit code and message) and must leave nothing behind.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dfarchive import keys
from dfarchive.cli.dfarchive import main
from dfarchive.openpgp import SymmetricWriter
from dfarchive.pipeline import ArchiveSettings, archive_run
from dfarchive.restore import (
    DestinationExists,
    RestoreError,
    RestoreIntegrityError,
    SafeExtractor,
    UnsafeMember,
    extract_stream,
    member_parts,
    restore_archive,
)
from tests.gpg_fixtures import TEST_UID, GnupgHome, build_run_folder

RUN_ID = "231114_A00123_0042_AHXXXXXXX"


# -- shared helpers (also used by test_verify and test_cli_dfarchive) -----------------


@dataclass(frozen=True)
class ArchivedRun:
    """A run folder archived by the real pipeline, and what it needs to be restored."""

    run_id: str
    source: Path
    record: dict[str, Any]
    home: GnupgHome
    settings: ArchiveSettings

    @property
    def archive(self) -> Path:
        return Path(self.record["file"])

    @property
    def key(self) -> Path:
        return Path(self.record["key_file"])

    def passphrase(self) -> bytes:
        return keys.unwrap_key(self.key, gnupg_home=self.home.home)


def make_gnupg_home(base: Path) -> GnupgHome:
    """A GNUPGHOME with a fresh recipient key (see tests.gpg_fixtures)."""
    home = base / "gpg"
    home.mkdir(mode=0o700)
    fingerprint = GnupgHome(home=str(home), fingerprint="").make_key(TEST_UID)
    return GnupgHome(home=str(home), fingerprint=fingerprint)


def stop_gpg_agent(home: GnupgHome) -> None:
    subprocess.run(
        ["gpgconf", "--kill", "all"], env=home.env, check=False, capture_output=True, timeout=30
    )


def make_archived_run(
    base: Path, home: GnupgHome, *, run_id: str = RUN_ID, engine: str = "inprocess"
) -> ArchivedRun:
    """Build a small realistic run folder under ``base`` and archive it for real."""
    source = build_run_folder(base / "runs", run_id, small_files=40, big_files=1, big_size=1 << 20)
    settings = ArchiveSettings(
        destination_path=base / "archives",
        keys_path=base / "keys",
        gnupg_home=Path(home.home),
        engine=engine,
    )
    settings.destination_path.mkdir()
    settings.keys_path.mkdir(mode=0o700)
    recipient = keys.resolve_recipient(home.fingerprint, gnupg_home=home.home)
    with pytest.MonkeyPatch.context() as patch:
        # the gpg engine's child runs in the environment's keyring: keep it off ~/.gnupg
        patch.setenv("GNUPGHOME", home.home)
        record = archive_run(run_id, source.path, settings, recipient)
    return ArchivedRun(run_id, source.path, record, home, settings)


def tree(root: Path) -> dict[bytes, tuple]:
    """Everything a restore must reproduce, keyed by raw relative name: type, mode,
    mtime (whole seconds: tar's resolution), contents, symlink target, hard-link group."""
    root_b = os.fsencode(root)
    found: dict[bytes, tuple] = {}
    inodes: dict[int, list[bytes]] = {}
    for directory, dirnames, filenames in os.walk(root_b):
        for name in dirnames + filenames:
            path = os.path.join(directory, name)
            rel = os.path.relpath(path, root_b)
            st = os.lstat(path)
            mtime = st.st_mtime_ns // 1_000_000_000
            if stat.S_ISLNK(st.st_mode):
                found[rel] = ("link", os.readlink(path), mtime)
            elif stat.S_ISDIR(st.st_mode):
                found[rel] = ("dir", stat.S_IMODE(st.st_mode), mtime)
            else:
                with open(path, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
                found[rel] = ("file", stat.S_IMODE(st.st_mode), mtime, digest, st.st_ino)
                inodes.setdefault(st.st_ino, []).append(rel)
    st = os.lstat(root_b)
    found[b"."] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns // 1_000_000_000)
    for rel, entry in found.items():
        if entry[0] == "file":  # replace the inode by the (sorted) names sharing it
            found[rel] = (*entry[:4], tuple(sorted(inodes[entry[4]])))
    return found


def listing(root: Path) -> list[str]:
    """Every name under ``root`` (to show what a failed restore left)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``dfarchive ARGV`` in-process; return (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    out, err = capsys.readouterr()
    return exited.value.code, out, err


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["inprocess", "gpg"])
def archived(request, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArchivedRun]:
    """One real archive per engine, shared by this module's tests (they never modify it)."""
    base = tmp_path_factory.mktemp("restore")
    home = make_gnupg_home(base)
    try:
        yield make_archived_run(base, home, engine=request.param)
    finally:
        stop_gpg_agent(home)


@pytest.fixture
def no_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No config anywhere: restore must work from --archive and --key alone."""
    monkeypatch.delenv("ARCHIVE_CONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


# -- real archives ------------------------------------------------------------------------


def test_restore_reproduces_the_run_folder_exactly(archived: ArchivedRun, tmp_path: Path) -> None:
    into = tmp_path / "restored"
    result = restore_archive(
        archived.archive,
        archived.passphrase(),
        into,
        run_id=archived.run_id,
        plaintext_size=archived.record["plaintext_size"],
        plaintext_sha256=archived.record["plaintext_sha256"],
    )
    assert result.restored == (into / archived.run_id,)
    assert result.checked_against_record
    assert result.members == archived.record["members"]
    assert result.plaintext_sha256 == archived.record["plaintext_sha256"]
    assert os.listdir(into) == [archived.run_id]  # no temporary directory left
    assert tree(into / archived.run_id) == tree(archived.source)


def test_stock_tools_restore_the_same_tree(archived: ArchivedRun, tmp_path: Path) -> None:
    """The README's restore: gpg -d KEY | gpg ... --passphrase-fd 0 -d ARCHIVE | tar -x."""
    into = tmp_path / "stock"
    into.mkdir()
    command = (
        f"gpg -d {archived.key} | gpg --batch --pinentry-mode loopback --passphrase-fd 0 "
        f"-d {archived.archive} | tar -x"
    )
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command],
        cwd=into,
        env=archived.home.env,
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert tree(into / archived.run_id) == tree(archived.source)


def test_cli_restore_from_files_without_any_config(
    archived: ArchivedRun, tmp_path: Path, no_config: None, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("GNUPGHOME", archived.home.home)
    into = tmp_path / "out"
    code, out, err = run_cli(
        capsys,
        "restore", archived.run_id, "--to", str(into),
        "--archive", str(archived.archive), "--key", str(archived.key),
    )  # fmt: skip
    assert code == 0, err
    assert f"restored {into / archived.run_id}" in out
    assert "no recorded checksum" in out
    assert tree(into / archived.run_id) == tree(archived.source)


def test_restore_refuses_an_existing_run_folder(archived: ArchivedRun, tmp_path: Path) -> None:
    into = tmp_path / "out"
    (into / archived.run_id).mkdir(parents=True)
    (into / archived.run_id / "mine").write_text("keep me")
    with pytest.raises(DestinationExists, match="already exists"):
        restore_archive(archived.archive, archived.passphrase(), into, run_id=archived.run_id)
    assert listing(into) == [archived.run_id, f"{archived.run_id}/mine"]


def test_a_wrong_recorded_checksum_leaves_nothing(archived: ArchivedRun, tmp_path: Path) -> None:
    into = tmp_path / "out"
    with pytest.raises(RestoreIntegrityError, match="plaintext SHA-256"):
        restore_archive(archived.archive, archived.passphrase(), into, plaintext_sha256="0" * 64)
    assert listing(into) == []


@pytest.mark.parametrize(
    "damage", ["flip_header", "flip_middle", "flip_last", "truncate", "append"]
)
def test_a_damaged_archive_leaves_nothing(
    archived: ArchivedRun, tmp_path: Path, damage: str
) -> None:
    data = bytearray(archived.archive.read_bytes())
    if damage == "flip_header":
        data[300] ^= 0x40  # in the first tar header: tar itself chokes before the MDC
    elif damage == "flip_middle":
        data[len(data) // 2] ^= 0x01
    elif damage == "flip_last":
        data[-3] ^= 0x01  # in the MDC: only the end of decryption can tell
    elif damage == "truncate":
        del data[-100:]
    else:
        data += b"\x00"
    broken = tmp_path / "broken.tar.gpg"
    broken.write_bytes(bytes(data))
    into = tmp_path / "out"
    expected = RestoreError if damage == "flip_header" else RestoreIntegrityError
    with pytest.raises(expected, match=r"broken\.tar\.gpg"):
        restore_archive(broken, archived.passphrase(), into, run_id=archived.run_id)
    assert listing(into) == []


def test_the_wrong_key_is_an_integrity_error(archived: ArchivedRun, tmp_path: Path) -> None:
    with pytest.raises(RestoreIntegrityError, match="integrity check"):
        restore_archive(archived.archive, b"0" * 64, tmp_path / "out")
    assert listing(tmp_path / "out") == []


# -- crafted, hostile archives --------------------------------------------------------------


def tar_of(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def entry(name: str, kind: bytes = tarfile.REGTYPE, *, data: bytes = b"", link: str = "",
          mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes | None]:  # fmt: skip
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime, info.linkname = kind, mode, 1_700_000_000, link
    if kind == tarfile.REGTYPE:
        info.size = len(data)
        return info, data
    return info, None


@dataclass(frozen=True)
class Crafted:
    archive: Path
    key: Path


@pytest.fixture
def craft(archived: ArchivedRun, tmp_path: Path) -> Callable[[bytes], Crafted]:
    """Encrypt a plaintext with our OpenPGP writer and wrap its passphrase with gpg."""
    recipient = keys.resolve_recipient(archived.home.fingerprint, gnupg_home=archived.home.home)

    def make(plaintext: bytes) -> Crafted:
        passphrase = keys.new_run_key()
        archive, key = tmp_path / "crafted.tar.gpg", tmp_path / "crafted.key.gpg"
        with archive.open("wb") as out:
            writer = SymmetricWriter(lambda piece: out.write(bytes(piece)), passphrase)
            writer.write(plaintext)
            writer.close()
        key.write_bytes(keys.wrap_key(passphrase, recipient, gnupg_home=archived.home.home))
        return Crafted(archive, key)

    return make


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory next to the restore destination that must stay empty."""
    path = tmp_path / "outside"
    path.mkdir()
    return path


def hostile_cases(outside: Path) -> dict[str, tuple[list, str]]:
    ok = entry("run/ok.txt", data=b"fine\n")
    return {
        "dotdot": ([ok, entry("run/../../outside/evil", data=b"x")], "run/../../outside/evil"),
        "dotdot_top": ([ok, entry("../evil", data=b"x")], "../evil"),
        "absolute": ([ok, entry(f"{outside}/evil", data=b"x")], f"{outside}/evil"),
        "through_absolute_symlink": (
            [ok, entry("run/link", tarfile.SYMTYPE, link=str(outside)),
             entry("run/link/evil", data=b"x")],
            "run/link/evil",
        ),
        "through_relative_symlink": (
            [ok, entry("run/up", tarfile.SYMTYPE, link="../../outside"),
             entry("run/up/evil", data=b"x")],
            "run/up/evil",
        ),
        "symlink_dir_then_dir": (
            [entry("run/d", tarfile.SYMTYPE, link=str(outside)),
             entry("run/d/sub", tarfile.DIRTYPE, mode=0o755)],
            "run/d/sub",
        ),
        "hardlink_dotdot": (
            [ok, entry("run/hard", tarfile.LNKTYPE, link="../x")], "run/hard"
        ),
        "hardlink_absolute": (
            [ok, entry("run/hard", tarfile.LNKTYPE, link=f"{outside}/target")], "run/hard"
        ),
        "hardlink_through_symlink": (
            [ok, entry("run/link", tarfile.SYMTYPE, link=str(outside)),
             entry("run/hard", tarfile.LNKTYPE, link="run/link/target")],
            "run/hard",
        ),
        "device": ([ok, entry("run/null", tarfile.CHRTYPE)], "run/null"),
    }  # fmt: skip


CASES = [
    "dotdot",
    "dotdot_top",
    "absolute",
    "through_absolute_symlink",
    "through_relative_symlink",
    "symlink_dir_then_dir",
    "hardlink_dotdot",
    "hardlink_absolute",
    "hardlink_through_symlink",
    "device",
]


@pytest.mark.parametrize("case", CASES)
def test_restore_refuses_hostile_members(
    case: str,
    craft,
    outside: Path,
    tmp_path: Path,
    capsys,
    monkeypatch,
    archived: ArchivedRun,
    no_config: None,
) -> None:
    monkeypatch.setenv("GNUPGHOME", archived.home.home)
    (outside / "target").write_text("outside file")
    members, bad_name = hostile_cases(outside)[case]
    crafted = craft(tar_of(*members))
    before = listing(tmp_path)
    into = tmp_path / "into"
    code, out, err = run_cli(
        capsys,
        "restore", "run", "--to", str(into),
        "--archive", str(crafted.archive), "--key", str(crafted.key),
    )  # fmt: skip
    assert code == 1, (out, err)
    assert repr(bad_name) in err
    assert "nothing restored" in err
    assert sorted(os.listdir(outside)) == ["target"]
    assert (outside / "target").read_text() == "outside file"
    assert listing(into) == []  # no temporary directory, no half-restored tree
    assert listing(tmp_path) == sorted([*before, "into"])  # nothing written anywhere else


def test_a_later_member_replaces_a_symlink_instead_of_writing_through_it(
    craft, outside: Path, tmp_path: Path, archived: ArchivedRun
) -> None:
    crafted = craft(
        tar_of(
            entry("run/a", tarfile.SYMTYPE, link=f"{outside}/file"),
            entry("run/a", data=b"inside\n", mode=0o600),
        )
    )
    passphrase = keys.unwrap_key(crafted.key, gnupg_home=archived.home.home)
    restore_archive(crafted.archive, passphrase, tmp_path / "into")
    restored = tmp_path / "into" / "run" / "a"
    assert not restored.is_symlink() and restored.read_bytes() == b"inside\n"
    assert stat.S_IMODE(restored.stat().st_mode) == 0o600
    assert os.listdir(outside) == []


def test_a_symlink_pointing_outside_is_restored_as_a_link(
    craft, outside: Path, tmp_path: Path, archived: ArchivedRun
) -> None:
    crafted = craft(
        tar_of(
            entry("run", tarfile.DIRTYPE, mode=0o750),
            entry("run/abs", tarfile.SYMTYPE, link=str(outside)),
            entry("run/rel", tarfile.SYMTYPE, link="../../outside/nothing"),
            entry("run/hard_to_link", tarfile.LNKTYPE, link="run/abs"),
        )
    )
    passphrase = keys.unwrap_key(crafted.key, gnupg_home=archived.home.home)
    restore_archive(crafted.archive, passphrase, tmp_path / "into")
    run = tmp_path / "into" / "run"
    assert os.readlink(run / "abs") == str(outside)
    assert os.readlink(run / "rel") == "../../outside/nothing"
    assert os.readlink(run / "hard_to_link") == str(outside)  # a link to the link itself
    assert os.lstat(run / "hard_to_link").st_ino == os.lstat(run / "abs").st_ino
    assert stat.S_IMODE(run.stat().st_mode) == 0o750
    assert run.stat().st_mtime == 1_700_000_000
    assert os.listdir(outside) == []


# -- the pure parts ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "parts"),
    [
        ("run/a/b.txt", (b"run", b"a", b"b.txt")),
        ("./run//a/./b", (b"run", b"a", b"b")),
        ("run/", (b"run",)),
        (".", ()),
        ("caf\udce9/x", (b"caf\xe9", b"x")),  # a non-UTF-8 name as tarfile decodes it
        ("a..b/..c", (b"a..b", b"..c")),
    ],
)
def test_member_parts(name: str, parts: tuple[bytes, ...]) -> None:
    assert member_parts(name) == parts


@pytest.mark.parametrize("name", ["/etc/passwd", "//x", "../x", "a/../../x", "a/.."])
def test_member_parts_refuses(name: str) -> None:
    with pytest.raises(UnsafeMember) as refused:
        member_parts(name)
    assert refused.value.name == name


def test_safe_extractor_without_crypto(tmp_path: Path) -> None:
    """Extraction alone, from an in-memory tar: a fifo, a read-only directory, a file
    whose parent is not in the archive, and directory attributes applied last."""
    plaintext = tar_of(
        entry("run", tarfile.DIRTYPE, mode=0o555),
        entry("run/pipe", tarfile.FIFOTYPE, mode=0o640),
        entry("run/implicit/file.txt", data=b"data", mode=0o400),
    )
    extractor = SafeExtractor(tmp_path, preserve_owner=False)
    assert extract_stream(io.BytesIO(plaintext), extractor) == 3
    extractor.apply_directory_attributes()
    assert stat.S_ISFIFO(os.lstat(tmp_path / "run" / "pipe").st_mode)
    assert (tmp_path / "run" / "implicit" / "file.txt").read_bytes() == b"data"
    assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == 0o555
    assert extractor.top_level == [b"run"]
    (tmp_path / "run").chmod(0o755)
    shutil.rmtree(tmp_path / "run")
