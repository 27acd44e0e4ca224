"""Fixtures for tests that need gpg keys or a run folder to archive.

``gnupg_home``: a fresh ``GNUPGHOME`` (mode 0700) with a throwaway recipient key
(ed25519 primary for signing, cv25519 subkey for encryption: made instantly), also set
as ``GNUPGHOME`` in the environment for the test; its gpg-agent is stopped afterwards.

``run_folder``: a factory building a realistic small sequencing run folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import stat
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

TEST_UID = "dfarchive test <test@dfarchive.invalid>"
SENTINEL = ".metadata_rsync_exitcode"
FIXED_MTIME = 1_700_000_000  # 2023-11-14, whole seconds: survives tar's format exactly


@dataclass(frozen=True)
class GnupgHome:
    """A throwaway GNUPGHOME holding one usable recipient key."""

    home: str
    fingerprint: str
    uid: str = TEST_UID

    @property
    def env(self) -> dict[str, str]:
        """The current environment with ``GNUPGHOME`` pointing here."""
        return {**os.environ, "GNUPGHOME": self.home}

    def gpg(self, *args: str, input: bytes | None = None, check: bool = True) -> bytes:
        """Run ``gpg --batch <args>`` in this home; return stdout."""
        return subprocess.run(
            ["gpg", "--batch", *args],
            input=input,
            capture_output=True,
            env=self.env,
            check=check,
            timeout=60,
        ).stdout

    def make_key(
        self,
        uid: str,
        *,
        usage: str = "sign",
        expire: str = "never",
        subkey_usage: str | None = "encr",
        subkey_expire: str | None = None,
        faked_time: str | None = None,
    ) -> str:
        """Create an ed25519 key (and optionally a cv25519 subkey), as if at
        ``faked_time`` (gpg's ``--faked-system-time``); return its fingerprint."""
        when = [f"--faked-system-time={faked_time}"] if faked_time else []
        self.gpg(*when, "--passphrase", "", "--quick-gen-key", uid, "ed25519", usage, expire)
        fingerprint = primary_fingerprint(self.gpg("--with-colons", "--list-keys", "--", uid))
        if subkey_usage is not None:
            self.gpg(
                *when,
                "--passphrase",
                "",
                "--quick-add-key",
                fingerprint,
                "cv25519",
                subkey_usage,
                subkey_expire or expire,
            )
        return fingerprint

    def stop_agent(self) -> None:
        """Stop the gpg-agent (and other daemons) gpg started for this home."""
        subprocess.run(
            ["gpgconf", "--kill", "all"],
            env=self.env,
            check=False,
            capture_output=True,
            timeout=30,
        )


def primary_fingerprint(colons: bytes) -> str:
    """The fingerprint of the first key in a ``--with-colons`` listing."""
    for line in colons.decode().splitlines():
        if line.startswith("fpr:"):
            return line.split(":")[9]
    raise AssertionError(f"no fingerprint in {colons!r}")


def new_gnupg_home(home: Path) -> GnupgHome:
    """``home`` (made if missing, mode 0700) as a GNUPGHOME holding a fresh recipient key
    (ed25519 + cv25519: instant). Stop its agent with :meth:`GnupgHome.stop_agent`."""
    home.mkdir(mode=0o700, exist_ok=True)
    home.chmod(0o700)
    fingerprint = GnupgHome(home=str(home), fingerprint="").make_key(TEST_UID)
    return GnupgHome(home=str(home), fingerprint=fingerprint)


@pytest.fixture
def gnupg_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[GnupgHome]:
    """A fresh GNUPGHOME with a recipient key; also exported as ``GNUPGHOME``."""
    # A short path: gpg-agent's socket lives in the home and socket paths are limited.
    home = tmp_path_factory.mktemp("gpg")
    monkeypatch.setenv("GNUPGHOME", str(home))
    keyring = new_gnupg_home(home)
    try:
        yield keyring
    finally:
        keyring.stop_agent()


@pytest.fixture(scope="module")
def symmetric_gnupg_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An empty GNUPGHOME exported for a whole test module, for symmetric gpg only.

    gpg 2.2 needs a gpg-agent even for ``--symmetric``, and starting one in a fresh
    home costs about a second; modules that need no keys share one.
    """
    home = tmp_path_factory.mktemp("gpg")
    home.chmod(0o700)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GNUPGHOME", str(home))
        try:
            yield home
        finally:
            subprocess.run(
                ["gpgconf", "--kill", "all"], check=False, capture_output=True, timeout=30
            )


@dataclass(frozen=True)
class RunFolderSpec:
    """What :func:`build_run_folder` put in a run folder (for assertions)."""

    path: Path
    files: int
    big_files: tuple[Path, ...]


def build_run_folder(
    root: Path,
    name: str = "231114_A00123_0042_AHXXXXXXX",
    *,
    small_files: int = 300,
    big_files: int = 2,
    big_size: int = 3 << 20,
    seed: int = 1234,
) -> RunFolderSpec:
    """Build a run folder under ``root`` shaped like an Illumina run.

    Nested ``Data/Intensities/BaseCalls/L00x/C1.y/`` folders with ``small_files`` small
    files (some empty, some exactly one tar block), ``big_files`` random files of
    ``big_size`` bytes, relative/absolute/dangling symlinks, a hard link, names with
    spaces, quotes, non-ASCII and non-UTF-8 bytes, a path and a link target longer than
    100 bytes (GNU long-name headers), folders for exclusion tests, various modes, fixed
    mtimes and the sentinel ``.metadata_rsync_exitcode``.
    """
    rng = random.Random(seed)
    run = root / name
    base_calls = run / "Data" / "Intensities" / "BaseCalls"
    count = 0
    for i in range(small_files):
        cycle_dir = base_calls / f"L00{1 + i % 2}" / f"C{1 + i // 40}.1"
        cycle_dir.mkdir(parents=True, exist_ok=True)
        size = rng.choice([0, 1, 511, 512, 513, rng.randrange(2000)])
        (cycle_dir / f"s_{1 + i % 2}_{1101 + i}.bcl").write_bytes(rng.randbytes(size))
        count += 1
    (run / "Thumbnail_Images").mkdir()
    (run / "Logs").mkdir()
    (run / "empty_dir").mkdir()
    (run / "RunInfo.xml").write_text('<?xml version="1.0"?>\n<RunInfo Version="5"/>\n')
    (run / "RunParameters.xml").write_text("<RunParameters/>\n")
    (run / "Logs" / "empty.log").write_bytes(b"")
    (run / "SampleSheet with spaces.csv").write_text("[Header]\nIEMFileVersion,4\n")
    (run / 'quote\'s "double".txt').write_text("quotes\n")
    (run / "naïve_Überlauf_日本.txt").write_text("non-ascii\n")
    (run / os.fsdecode(b"latin1_\xe9t\xe9.txt")).write_bytes(b"not utf-8 name\n")
    deep = run / "Logs" / ("very_long_directory_name_" * 3) / ("long_file_name_" * 5 + ".log")
    deep.parent.mkdir(parents=True)
    deep.write_text("long name\n")
    count += 8
    bigs = []
    for i in range(big_files):
        big = run / "Thumbnail_Images" / f"big_{i}.bin"
        big.write_bytes(os.urandom(big_size))
        bigs.append(big)
        count += 1
    os.symlink("RunInfo.xml", run / "link_relative")
    os.symlink(str(run / "RunParameters.xml"), run / "link_absolute")
    os.symlink("does/not/exist", run / "link_dangling")
    os.symlink("x" * 150, run / "link_long_target")
    os.link(run / "RunInfo.xml", run / "hardlink_RunInfo.xml")
    for excluded in ("Demultiplex_Stats", "demux_1"):
        (run / excluded).mkdir()
        (run / excluded / "stats.txt").write_text("excluded?\n")
    (run / "Logs" / "tool.sh").write_text("#!/bin/sh\n")
    (run / "Logs" / "tool.sh").chmod(0o755)
    (run / "RunParameters.xml").chmod(0o600)
    (run / SENTINEL).write_text("0\n")
    count += 4
    _fix_mtimes(run)
    return RunFolderSpec(path=run, files=count, big_files=tuple(bigs))


def _fix_mtimes(run: Path) -> None:
    """Give every entry a distinct fixed mtime (deepest first, so folders keep theirs)."""
    entries = sorted(run.rglob("*"), key=lambda p: len(p.parts), reverse=True)
    for i, entry in enumerate([*entries, run]):
        os.utime(entry, (FIXED_MTIME, FIXED_MTIME + i), follow_symlinks=False)


@pytest.fixture
def run_folder(tmp_path: Path) -> Callable[..., RunFolderSpec]:
    """A factory: ``run_folder(name=..., small_files=..., big_files=..., big_size=...)``
    builds a run folder under ``tmp_path/"runs"`` (see :func:`build_run_folder`)."""

    def make(name: str = "231114_A00123_0042_AHXXXXXXX", **kwargs: int) -> RunFolderSpec:
        root = tmp_path / "runs"
        root.mkdir(exist_ok=True)
        return build_run_folder(root, name, **kwargs)

    return make


# -- helpers for archive tests ---------------------------------------------------------


def tar_by_hand(run: Path, exclusions: Sequence[str] = ()) -> bytes:
    """The tar stream of ``run`` as DESIGN.md's command writes it, run directly."""
    command = ["tar", "--format=gnu", "-C", str(run.parent)]
    command += [f"--exclude={pattern}" for pattern in exclusions]
    command += ["-cf", "-", "--", run.name]
    return subprocess.run(command, capture_output=True, check=True, timeout=120).stdout


def encrypt_to_file(
    engine: str, run: Path, out: Path, passphrase: bytes, *, direct: bool = True, **kwargs: Any
) -> Any:
    """Run engine ``engine`` into ``out`` the way the pipeline does (direct I/O unless
    ``direct`` is false); return its result."""
    from dfarchive.archiving.engines import get_engine
    from dfarchive.plumbing.directio import open_direct

    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    fd = open_direct(out, flags, 0o640, direct=direct)
    try:
        result = get_engine(engine).encrypt(run, fd, passphrase, **kwargs)
        os.fsync(fd)
    finally:
        os.close(fd)
    return result


def stock_decrypt(archive: Path, passphrase: bytes) -> subprocess.CompletedProcess[bytes]:
    """``gpg --decrypt`` of ``archive`` with the passphrase on a pipe fd (stock gpg)."""
    read_fd, write_fd = os.pipe()
    os.write(write_fd, passphrase + b"\n")
    os.close(write_fd)
    try:
        return subprocess.run(
            [
                "gpg",
                "--batch",
                "--no-tty",
                "--pinentry-mode",
                "loopback",
                "--no-symkey-cache",
                "--passphrase-fd",
                str(read_fd),
                "--status-fd",
                "2",
                "--decrypt",
                "--",
                str(archive),
            ],
            capture_output=True,
            pass_fds=(read_fd,),
            timeout=120,
            check=False,
        )
    finally:
        os.close(read_fd)


def extract(tar_stream: bytes, dest: Path) -> None:
    """``tar -x`` of a tar stream into ``dest`` (stock GNU tar)."""
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["tar", "-x", "-C", str(dest)],
        input=tar_stream,
        check=True,
        capture_output=True,
        timeout=120,
    )


def tree_snapshot(root: Path) -> dict[bytes, tuple[Any, ...]]:
    """Every entry under ``root`` (included) keyed by its relative raw path: type, mode,
    mtime in whole seconds, and content digest or symlink target."""
    base = os.fsencode(root)
    snapshot: dict[bytes, tuple[Any, ...]] = {}

    def entry(path: bytes) -> tuple[Any, ...]:
        st = os.lstat(path)
        kind = stat.S_IFMT(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            detail: Any = os.readlink(path)
        elif stat.S_ISREG(st.st_mode):
            with open(path, "rb") as f:
                detail = hashlib.file_digest(f, "sha256").hexdigest()
        else:
            detail = None
        return (kind, stat.S_IMODE(st.st_mode), int(st.st_mtime), detail)

    snapshot[b"."] = entry(base)
    for top, dirs, files in os.walk(base):
        for name in [*dirs, *files]:
            path = os.path.join(top, name)
            snapshot[os.path.relpath(path, base)] = entry(path)
    return snapshot


#: The children dfarchive itself starts; other children of the test process (the
#: session's CouchDB test server) are not its business.
TOOL_NAMES = frozenset({b"tar", b"gpg"})


def children_of(pid: int) -> set[int]:
    """Live tar/gpg processes whose parent is ``pid`` (from /proc)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                head, tail = f.read().rsplit(b")", 1)
        except OSError:
            continue
        fields, name = tail.split(), head.split(b"(", 1)[1]
        if int(fields[1]) == pid and fields[0] != b"Z" and name in TOOL_NAMES:
            found.add(int(entry))
    return found


def process_texts(pid: int) -> bytes:
    """A process's command line and environment (empty if it is gone)."""
    out = b""
    for what in ("cmdline", "environ"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/{what}", "rb") as f:
            out += f.read()
    return out


def files_containing(roots: list[Path], needle: bytes) -> list[Path]:
    """Regular files under ``roots`` whose bytes contain ``needle``."""
    hits = []
    for root in roots:
        for path in Path(root).rglob("*"):
            if path.is_file() and not path.is_symlink() and needle in path.read_bytes():
                hits.append(path)
    return hits
