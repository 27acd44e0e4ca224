"""What the reliability tests share: a workspace (directories, keyring, config, state),
running the real commands with a time bound, reading the end state, sampling processes.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dfarchive.archiving import keys
from dfarchive.coordination.store import SqliteStore
from dfarchive.openpgp import decrypt
from tests.support.gpg import GnupgHome

BIN = Path(sys.executable).parent
SENTINEL = ".metadata_rsync_exitcode"


@dataclass(frozen=True)
class Finished:
    """A command that ran to its end (within its time bound)."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@dataclass
class Workspace:
    """Everything one scenario needs, under ``base``: ``seq/``, ``archives/``, ``keys/``
    (0700), ``tmp/`` (the commands' ``TMPDIR``), the SQLite state and the log file."""

    base: Path
    home: GnupgHome
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for path in (self.seq, self.archives, self.tmpdir):
            path.mkdir(parents=True, exist_ok=True)
        self.keys.mkdir(mode=0o700, exist_ok=True)

    seq = property(lambda self: self.base / "seq")
    archives = property(lambda self: self.base / "archives")
    keys = property(lambda self: self.base / "keys")
    tmpdir = property(lambda self: self.base / "tmp")
    state = property(lambda self: self.base / "runs.sqlite3")
    log = property(lambda self: self.base / "dfarchive.log")

    def config(self, **extra: Any) -> Path:
        """Write the config (SQLite state unless ``statusdb`` is given); return its path."""
        settings = {
            "statusdb": {"url": f"sqlite:{self.state}"},
            "sequencing_path": str(self.seq),
            "destination_path": str(self.archives),
            "keys_path": str(self.keys),
            "gpg_receiver": self.home.fingerprint,
            "gnupg_home": self.home.home,
            "log_file": str(self.log),
            "scan_interval": 0.5,
            "lease_seconds": 30,
            **self.settings,
            **extra,
        }
        path = self.base / "df_archive.yaml"
        path.write_text(yaml.safe_dump(settings))
        return path

    def env(self, **extra: str) -> dict[str, str]:
        env = {**os.environ, "GNUPGHOME": self.home.home, "TMPDIR": str(self.tmpdir), **extra}
        env.pop("ARCHIVE_CONFIG", None)
        return env

    def run(
        self, program: str, *args: str, timeout: float = 120, env: dict[str, str] | None = None
    ) -> Finished:
        """Run ``program -c CONFIG args`` (the config must exist) to its end."""
        return run_command(
            [str(BIN / program), *args], env=env or self.env(), timeout=timeout, cwd=self.base
        )

    def make_run(self, sequencer: str, name: str | bytes, *, complete: bool = True) -> Path:
        """A run folder with one small file (and the sentinel when ``complete``)."""
        path = os.path.join(os.fsencode(self.seq / sequencer), os.fsencode(name))
        os.makedirs(path)
        run = Path(os.fsdecode(path))
        (run / "RunInfo.xml").write_text("<RunInfo/>\n")
        if complete:
            (run / SENTINEL).write_text("0\n")
        return run

    def documents(self) -> dict[str, dict[str, Any]]:
        return sqlite_documents(self.state)

    def partials(self) -> list[Path]:
        return [
            p
            for d in (self.archives, self.keys)
            for p in d.iterdir()
            if p.name.endswith(".partial")
        ]

    def run_key(self, run_id: str) -> bytes:
        """The run key, learned by unwrapping ``<run>.key.gpg`` with the test keyring."""
        return keys.unwrap_key(self.keys / f"{run_id}.key.gpg", gnupg_home=self.home.home)


def run_command(
    argv: list[str], *, env: dict[str, str], timeout: float, cwd: Path | None = None
) -> Finished:
    started = time.monotonic()
    result = subprocess.run(
        argv, env=env, capture_output=True, timeout=timeout, cwd=cwd, check=False
    )
    return Finished(
        result.returncode,
        result.stdout.decode(errors="backslashreplace"),
        result.stderr.decode(errors="backslashreplace"),
        time.monotonic() - started,
    )


def sqlite_documents(path: Path) -> dict[str, dict[str, Any]]:
    with SqliteStore(path) as store:
        store.setup()
        return {doc["_id"]: doc for doc in store.runs()}


def plaintext_of(archive: Path, passphrase: bytes) -> bytes:
    """The decrypted tar stream of an archive (integrity checked)."""
    out = bytearray()
    with open(archive, "rb") as source:
        decrypt(source, passphrase, out.extend)
    return bytes(out)


def tar_members(plaintext: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(
        fileobj=io.BytesIO(plaintext), mode="r:", encoding="utf-8", errors="surrogateescape"
    ) as tar:
        return tar.getmembers()


def files_holding(roots: list[Path], *needles: bytes) -> list[Path]:
    """Regular files under ``roots`` (recursively, links not followed) holding a needle."""
    hits = []
    for root in roots:
        for directory, _, names in os.walk(root):
            for name in names:
                path = os.path.join(directory, name)
                if not os.path.isfile(path) or os.path.islink(path):
                    continue
                with contextlib.suppress(OSError), open(path, "rb") as f:
                    data = f.read()
                    if any(needle in data for needle in needles):
                        hits.append(Path(path))
    return hits


# -- process sampling -------------------------------------------------------------------


def _proc_read(pid: int, what: str) -> bytes:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/{what}", "rb") as f:
        return f.read()
    return b""


def _parent_and_name(pid: int) -> tuple[int, bytes] | None:
    data = _proc_read(pid, "stat")
    if not data:
        return None
    head, _, tail = data.rpartition(b")")
    fields = tail.split()
    return (int(fields[1]), head.split(b"(", 1)[1]) if len(fields) > 1 else None


def descendants(root: int) -> dict[int, bytes]:
    """Live descendants of ``root`` (pid → process name), from /proc."""
    parents: dict[int, int] = {}
    names: dict[int, bytes] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            found = _parent_and_name(int(entry))
            if found is not None:
                parents[int(entry)], names[int(entry)] = found
    result: dict[int, bytes] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in result:
                result[pid] = names[pid]
                frontier.append(pid)
    return result


class ProcessSampler:
    """Reads the argv and environment of every process on the machine, over and over,
    on a thread, while a command runs; remembers each distinct text, and the names of
    the command's descendants seen."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.texts: dict[int, set[bytes]] = {}
        self.descendant_names: set[bytes] = set()
        self.descendant_pids: set[int] = set()
        self.rounds = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def _run(self) -> None:
        me = os.getpid()
        command = _proc_read(self.root, "cmdline")
        while not self._stop.is_set():
            for pid, name in descendants(self.root).items():
                self.descendant_names.add(name)
                self.descendant_pids.add(pid)
            for entry in os.listdir("/proc"):
                if entry.isdigit() and int(entry) != me:
                    pid = int(entry)
                    cmdline = _proc_read(pid, "cmdline")
                    if pid != self.root and cmdline == command:
                        continue  # forked, not yet exec'd: /proc shows the parent's copy
                    text = cmdline + b"\0\0" + _proc_read(pid, "environ")
                    self.texts.setdefault(pid, set()).add(text)
            self.rounds += 1

    def holding(self, *needles: bytes, among: set[int] | None = None) -> list[int]:
        """Processes (all sampled, or those ``among``) whose argv or environment held
        one of ``needles`` at some point."""
        return [
            pid
            for pid, texts in self.texts.items()
            if (among is None or pid in among)
            and any(needle in text for text in texts for needle in needles)
        ]

    def __enter__(self) -> ProcessSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


@contextlib.contextmanager
def started(argv: list[str], *, env: dict[str, str], cwd: Path) -> Iterator[subprocess.Popen]:
    """A command running in the background; killed if the block exits before it ended."""
    process = subprocess.Popen(
        argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(30)
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()
