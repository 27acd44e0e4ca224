"""Restore: decrypt + verify + safe extraction, against real archives and crafted ones.

Real archives come from the real pipeline (tar, OpenPGP, gpg-wrapped key). Hostile
archives are crafted with :mod:`tarfile`, encrypted with our OpenPGP writer, and their
passphrase wrapped with gpg, exactly like a real run's; they are restored through the
``dfarchive restore`` command (exit code and message) and must leave nothing behind.
"""

from __future__ import annotations

import io
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tarfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dfarchive.archiving import keys
from dfarchive.errors import (
    DestinationExists,
    KeyFileError,
    RestoreError,
    RestoreIntegrityError,
    UnsafeMember,
)
from dfarchive.openpgp import SymmetricWriter, encrypt_bytes
from dfarchive.ops.restore import TEMP_PREFIX, restore_archive
from dfarchive.ops.safeextract import SafeExtractor, TarExtraction, extract_stream, member_parts
from tests.support.archives import (
    LEGACY_KEYS,
    RUN_ID,
    ArchivedRun,
    make_archived_run,
    make_legacy_archive,
    tree,
)
from tests.support.cli import run_cli
from tests.support.gpg import GnupgHome, build_run_folder, new_gnupg_home
from tests.support.waiting import wait_until

README = Path(__file__).resolve().parents[2] / "README.md"


# -- helpers ----------------------------------------------------------------------------


def listing(root: Path) -> list[str]:
    """Every name under ``root`` (to show what a failed restore left)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["inprocess", "gpg"])
def archived(request, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArchivedRun]:
    """One real archive per engine, shared by this module's tests (they never modify it)."""
    base = tmp_path_factory.mktemp("restore")
    home = new_gnupg_home(base / "gpg")
    try:
        yield make_archived_run(base, home, engine=request.param)
    finally:
        home.stop_agent()


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
        restore_archive(
            archived.archive,
            archived.passphrase(),
            into,
            run_id=archived.run_id,
            plaintext_sha256="0" * 64,
        )
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
        restore_archive(archived.archive, b"0" * 64, tmp_path / "out", run_id=archived.run_id)
    assert listing(tmp_path / "out") == []


# -- the README's stock-tools recipe ----------------------------------------------------


def readme_restore_script() -> str:
    """The ``sh`` block of the README's "Keys and restoring" section that restores
    with stock tools."""
    section = re.search(r"^## Keys and restoring$(.*?)^## ", README.read_text(), re.S | re.M)
    assert section, "README.md has no '## Keys and restoring' section"
    blocks = re.findall(r"^```sh\n(.*?)^```", section.group(1), re.S | re.M)
    scripts = [block for block in blocks if "gpg" in block and "tar -x" in block]
    assert len(scripts) == 1, blocks
    return scripts[0]


def run_readme_script(
    run_id: str, archive: Path, key: Path, into: Path, home: GnupgHome
) -> subprocess.CompletedProcess[str]:
    """The README's script, verbatim but for its first line (the names to set)."""
    first, rest = readme_restore_script().split("\n", 1)
    assert first.startswith("RUN=") and "DIR=" in first, first
    names = " ".join(
        f"{name}={shlex.quote(str(value))}"
        for name, value in (("RUN", run_id), ("ARCHIVE", archive), ("KEY", key), ("DIR", into))
    )
    script = into.parent / "restore-run.sh"
    script.write_text(f"{names}\n{rest}")
    return subprocess.run(
        ["bash", str(script)], env=home.env, capture_output=True, text=True, timeout=120
    )


def test_the_readme_script_restores_a_good_archive(archived: ArchivedRun, tmp_path: Path) -> None:
    into = tmp_path / "stock"
    into.mkdir()
    done = run_readme_script(archived.run_id, archived.archive, archived.key, into, archived.home)
    assert done.returncode == 0, done.stderr
    assert os.listdir(into) == [archived.run_id]  # no work folder left
    assert tree(into / archived.run_id) == tree(archived.source)
    again = run_readme_script(archived.run_id, archived.archive, archived.key, into, archived.home)
    assert again.returncode == 1 and "already exists" in again.stderr
    assert os.listdir(into) == [archived.run_id]
    assert tree(into / archived.run_id) == tree(archived.source)


@pytest.mark.parametrize("damage", ["flip_middle", "flip_last"])
def test_the_readme_script_extracts_nothing_from_a_tampered_archive(
    archived: ArchivedRun, tmp_path: Path, damage: str
) -> None:
    """tar extracts all of it before gpg reports the bad MDC: the script must see gpg
    fail and drop what tar wrote."""
    data = bytearray(archived.archive.read_bytes())
    data[len(data) // 2 if damage == "flip_middle" else -3] ^= 0x01
    tampered = tmp_path / "tampered.tar.gpg"
    tampered.write_bytes(bytes(data))
    into = tmp_path / "stock"
    into.mkdir()
    done = run_readme_script(archived.run_id, tampered, archived.key, into, archived.home)
    assert done.returncode == 1, done.stderr
    assert f"{archived.run_id} NOT restored" in done.stderr
    assert listing(into) == []


# -- archives made by the original tool (dataflow_archive) -----------------------------


@dataclass(frozen=True)
class Legacy:
    """A keyring and a run folder to archive the original tool's way."""

    home: GnupgHome
    source: Path


@pytest.fixture(scope="module")
def legacy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Legacy]:
    base = tmp_path_factory.mktemp("legacy")
    home = new_gnupg_home(base / "gpg")
    source = build_run_folder(base / "runs", RUN_ID, small_files=20, big_files=1, big_size=1 << 16)
    try:
        yield Legacy(home, source.path)
    finally:
        home.stop_agent()


@pytest.mark.parametrize("shape", LEGACY_KEYS)
def test_restores_archives_made_by_the_original_tool(
    legacy: Legacy, tmp_path: Path, shape: str
) -> None:
    made = make_legacy_archive(tmp_path / "made", legacy.home, legacy.source, LEGACY_KEYS[shape])
    key = keys.unwrap_key(made.key, gnupg_home=legacy.home.home)
    assert key == LEGACY_KEYS[shape]  # all 256 bytes; gpg used only a prefix
    into = tmp_path / "into"
    result = restore_archive(made.archive, key, into, run_id=RUN_ID)
    assert result.restored == (into / RUN_ID,)
    assert tree(into / RUN_ID) == tree(legacy.source)


def test_restores_a_compressed_archive_of_the_original_tool(legacy: Legacy, tmp_path: Path) -> None:
    key = LEGACY_KEYS["newline_at_3"]
    made = make_legacy_archive(tmp_path / "made", legacy.home, legacy.source, key, compress=True)
    result = restore_archive(made.archive, key, tmp_path / "into", run_id=RUN_ID)
    assert tree(tmp_path / "into" / RUN_ID) == tree(legacy.source)
    assert result.members > 20


def test_cli_and_the_readme_script_restore_an_original_archive(
    legacy: Legacy, tmp_path: Path, no_config: None, capsys, monkeypatch
) -> None:
    made = make_legacy_archive(
        tmp_path / "made", legacy.home, legacy.source, LEGACY_KEYS["nul_at_2"]
    )
    monkeypatch.setenv("GNUPGHOME", legacy.home.home)
    code, out, err = run_cli(
        capsys,
        "restore", RUN_ID, "--to", str(tmp_path / "cli"),
        "--archive", str(made.archive), "--key", str(made.key),
    )  # fmt: skip
    assert code == 0, err
    assert f"restored {tmp_path / 'cli' / RUN_ID}" in out
    assert tree(tmp_path / "cli" / RUN_ID) == tree(legacy.source)
    into = tmp_path / "stock"
    into.mkdir()
    done = run_readme_script(RUN_ID, made.archive, made.key, into, legacy.home)
    assert done.returncode == 0, done.stderr
    assert tree(into / RUN_ID) == tree(legacy.source)


# -- key files -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["store", "symmetric", "signed"])
def test_a_key_file_not_encrypted_to_a_public_key_is_refused(
    legacy: Legacy, tmp_path: Path, kind: str, no_config: None, capsys, monkeypatch
) -> None:
    """``gpg --store`` (a literal packet, no encryption at all), ``--symmetric`` and
    ``--sign`` output all "decrypt" to the passphrase, but none is a run key file."""
    passphrase = keys.new_run_key()
    plaintext = tar_of(entry("run/ok.txt", data=b"fine\n"))
    archive = tmp_path / "run.tar.gpg"
    archive.write_bytes(encrypt_bytes(plaintext, passphrase, s2k_count_byte=0))
    (tmp_path / "run.key").write_bytes(passphrase)
    key = tmp_path / "run.key.gpg"
    how = {"store": ["--store"], "symmetric": ["--passphrase", "x", "--symmetric"],
           "signed": ["--sign"]}[kind]  # fmt: skip
    legacy.home.gpg("--output", str(key), *how, str(tmp_path / "run.key"))
    message = f"key file {key} is not a message encrypted to a public key"
    with pytest.raises(KeyFileError, match=re.escape(message)):
        keys.unwrap_key(key, gnupg_home=legacy.home.home)
    monkeypatch.setenv("GNUPGHOME", legacy.home.home)
    into = tmp_path / "into"
    code, out, err = run_cli(
        capsys, "restore", "run", "--to", str(into), "--archive", str(archive), "--key", str(key)
    )
    assert (code, out) == (1, ""), err
    assert "restore failed, nothing restored" in err and message in err
    assert not into.exists()


# -- work folders ----------------------------------------------------------------------


def small_archive(tmp_path: Path, run_id: str, passphrase: bytes) -> Path:
    archive = tmp_path / "archives" / f"{run_id}.tar.gpg"
    archive.parent.mkdir(exist_ok=True)
    plaintext = tar_of(
        entry(run_id, tarfile.DIRTYPE, mode=0o755), entry(f"{run_id}/data", data=b"x" * 100_000)
    )
    archive.write_bytes(encrypt_bytes(plaintext, passphrase, s2k_count_byte=0))
    return archive


def work_folders(into: Path) -> list[Path]:
    return sorted(into.glob(f"{TEMP_PREFIX}*"))


RESTORE_FROM_STDIN = """
import sys
from pathlib import Path
from dfarchive.ops.restore import restore_archive
archive, into, run_id = sys.argv[1:]
restore_archive(Path(archive), sys.stdin.buffer.read(), Path(into), run_id=run_id)
"""


def test_a_killed_restores_work_folder_is_removed_by_the_next_restore(tmp_path: Path) -> None:
    passphrase = keys.new_run_key()
    fifo = tmp_path / "slow.tar.gpg"
    os.mkfifo(fifo)
    into = tmp_path / "into"
    into.mkdir()
    child = subprocess.Popen(
        [sys.executable, "-c", RESTORE_FROM_STDIN, str(fifo), str(into), "killed"],
        stdin=subprocess.PIPE,
    )
    try:
        assert child.stdin is not None
        child.stdin.write(passphrase)
        child.stdin.close()
        with open(fifo, "wb") as writer:  # the child now holds a locked work folder
            writer.write(small_archive(tmp_path, "killed", passphrase).read_bytes()[:1000])
            writer.flush()
            wait_until(lambda: [p for p in work_folders(into) if (p / "tree").is_dir()],
                       30, "the work folder", every=0.01)  # fmt: skip
            child.kill()
            child.wait(timeout=30)
    finally:
        child.kill()
        child.wait(timeout=30)
    [stale] = work_folders(into)
    restore_archive(small_archive(tmp_path, "next", passphrase), passphrase, into, run_id="next")
    assert sorted(os.listdir(into)) == ["next"]
    assert not stale.exists()


def test_a_running_restores_work_folder_is_left_alone(tmp_path: Path) -> None:
    passphrase = keys.new_run_key()
    fifo = tmp_path / "slow.tar.gpg"
    os.mkfifo(fifo)
    into = tmp_path / "into"
    outcome: list[BaseException | None] = []

    def slow_restore() -> None:
        try:
            restore_archive(fifo, passphrase, into, run_id="slow")
            outcome.append(None)
        except BaseException as error:
            outcome.append(error)

    slow = threading.Thread(target=slow_restore)
    slow.start()
    with open(fifo, "wb") as writer:
        wait_until(
            lambda: into.is_dir() and len(work_folders(into)) == 1,
            30, "the work folder", every=0.01,
        )  # fmt: skip
        [working] = work_folders(into)
        wait_until(lambda: (working / "tree").is_dir(), 30, "the locked work folder", every=0.01)
        restore_archive(small_archive(tmp_path, "fast", passphrase), passphrase, into,
                        run_id="fast")  # fmt: skip
        assert work_folders(into) == [working]
        writer.write(small_archive(tmp_path, "slow", passphrase).read_bytes())
    slow.join(timeout=60)
    assert outcome == [None]
    assert sorted(os.listdir(into)) == ["fast", "slow"]
    assert (into / "slow" / "data").read_bytes() == b"x" * 100_000


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
        "beside_run_after": ([ok, entry("evil_top", data=b"x")], "evil_top"),
        "beside_run_before": ([entry("evil_top", data=b"x"), ok], "evil_top"),
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
    "beside_run_after",
    "beside_run_before",
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


def test_a_nul_byte_in_a_pax_path_is_a_clear_refusal(
    craft, tmp_path: Path, capsys, monkeypatch, archived: ArchivedRun, no_config: None
) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info, data = entry("run/innocent", data=b"x")
        info.pax_headers = {"path": "run/a\x00b"}
        tar.addfile(info, io.BytesIO(data or b""))
    crafted = craft(buffer.getvalue())
    monkeypatch.setenv("GNUPGHOME", archived.home.home)
    into = tmp_path / "into"
    code, out, err = run_cli(
        capsys,
        "restore", "run", "--to", str(into),
        "--archive", str(crafted.archive), "--key", str(crafted.key),
    )  # fmt: skip
    assert (code, out) == (1, "")
    assert err == (
        "dfarchive: restore failed, nothing restored: refusing archive member "
        "'run/a\\x00b': a NUL byte in the name\n"
    )
    assert listing(into) == []


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
    restore_archive(crafted.archive, passphrase, tmp_path / "into", run_id="run")
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
    restore_archive(crafted.archive, passphrase, tmp_path / "into", run_id="run")
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
    extractor = SafeExtractor(tmp_path, run_id="run", preserve_owner=False)
    assert extract_stream(io.BytesIO(plaintext), extractor) == 3
    extractor.apply_directory_attributes()
    assert stat.S_ISFIFO(os.lstat(tmp_path / "run" / "pipe").st_mode)
    assert (tmp_path / "run" / "implicit" / "file.txt").read_bytes() == b"data"
    assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == 0o555
    (tmp_path / "run").chmod(0o755)
    shutil.rmtree(tmp_path / "run")


def test_a_sparse_member_is_refused(
    craft, tmp_path: Path, capsys, monkeypatch, archived: ArchivedRun, no_config: None
) -> None:
    """Sparse members hold their map in the data, which restore never hands to tarfile;
    dfarchive's tar never writes them (no --sparse): refused, nothing left behind."""
    crafted = craft(
        tar_of(
            entry("run", tarfile.DIRTYPE, mode=0o755), entry("run/holes", tarfile.GNUTYPE_SPARSE)
        )
    )
    monkeypatch.setenv("GNUPGHOME", archived.home.home)
    into = tmp_path / "into"
    code, out, err = run_cli(
        capsys,
        "restore", "run", "--to", str(into),
        "--archive", str(crafted.archive), "--key", str(crafted.key),
    )  # fmt: skip
    assert (code, out) == (1, "")
    assert err == (
        "dfarchive: restore failed, nothing restored: refusing archive member "
        "'run/holes': sparse files are not restored\n"
    )
    assert listing(into) == []


def stream_of_every_header_kind(tar_format: int) -> bytes:
    """A run folder whose tar holds long names and link targets (GNU 'L'/'K' headers or
    pax records), a hard link, a symlink, an empty file and files of odd sizes."""
    long_dir = "run/" + "d" * 120
    members = [
        entry("run", tarfile.DIRTYPE, mode=0o755),
        entry(long_dir, tarfile.DIRTYPE, mode=0o750),
        entry(f"{long_dir}/{'f' * 150}.bin", data=bytes(range(256)) * 7 + b"tail"),
        entry("run/empty"),
        entry("run/odd", data=b"x" * 1023, mode=0o600),
        entry("run/hard", tarfile.LNKTYPE, link="run/odd"),
        entry("run/long_link", tarfile.SYMTYPE, link="../" + "t" * 140),
    ]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tar_format) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


@pytest.mark.parametrize("tar_format", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
@pytest.mark.parametrize("chunk", [1, 7, 512, 1000])
def test_extraction_takes_the_stream_cut_anywhere(
    tmp_path: Path, tar_format: int, chunk: int
) -> None:
    """Restore extracts pieces as they are decrypted: headers, long names, pax records
    and member data split across pieces at any byte give the same tree as one piece."""
    plaintext = stream_of_every_header_kind(tar_format)
    whole, pieces = tmp_path / "whole", tmp_path / "pieces"
    for root in (whole, pieces):
        root.mkdir()
    in_one = SafeExtractor(whole, run_id="run")
    assert extract_stream(io.BytesIO(plaintext), in_one) == 7
    in_pieces = SafeExtractor(pieces, run_id="run")
    extraction = TarExtraction(in_pieces)
    view = memoryview(plaintext)
    for start in range(0, len(view), chunk):
        extraction.feed(view[start : start + chunk])
    extraction.finish()
    extraction.close()
    assert extraction.members == 7
    # as restore does: directories get their modes and times once their contents are in
    # (compared before that, their times are the clock's, a second apart now and then)
    in_one.apply_directory_attributes()
    in_pieces.apply_directory_attributes()
    assert tree(pieces / "run") == tree(whole / "run")
    long_file = pieces / "run" / ("d" * 120) / ("f" * 150 + ".bin")
    assert long_file.read_bytes() == bytes(range(256)) * 7 + b"tail"
    assert os.readlink(pieces / "run" / "long_link") == "../" + "t" * 140
    assert os.stat(pieces / "run" / "hard").st_ino == os.stat(pieces / "run" / "odd").st_ino


@pytest.mark.parametrize("where", ["in a long name", "in member data", "in padding"])
def test_a_stream_ending_inside_a_member_is_unreadable(tmp_path: Path, where: str) -> None:
    """As tarfile reads it: a stream cut inside a member is an error; one cut between
    members just ends (restore then finds the end-of-archive marker missing)."""
    plaintext = stream_of_every_header_kind(tarfile.GNU_FORMAT)
    cut = {
        "in a long name": 512 + 512 + 10,  # the run folder, then the 'L' header's data
        "in member data": plaintext.index(b"tail"),
        "in padding": plaintext.index(b"tail") + 10,
    }[where]
    with pytest.raises(RestoreError, match=r"cannot read the tar stream after \d+ members"):
        extract_stream(io.BytesIO(plaintext[:cut]), SafeExtractor(tmp_path, run_id="run"))


def test_a_stream_ending_between_members_just_ends(tmp_path: Path) -> None:
    plaintext = stream_of_every_header_kind(tarfile.GNU_FORMAT)
    assert extract_stream(io.BytesIO(plaintext[:512]), SafeExtractor(tmp_path, run_id="run")) == 1
