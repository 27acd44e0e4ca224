"""Real archives to verify, restore and adopt: a run archived by the real pipeline
(:class:`ArchivedRun`), one archived as the original tool did (:func:`make_legacy_archive`,
with every key shape it made) and :func:`tree`, what a restore must reproduce."""

from __future__ import annotations

import hashlib
import os
import random
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dfarchive.archiving import keys
from dfarchive.archiving.pipeline import ArchiveSettings, archive_run
from tests.support.gpg import GnupgHome, build_run_folder

RUN_ID = "231114_A00123_0042_AHXXXXXXX"


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


def legacy_key(stop: bytes | None, at: int = 0, *, seed: int = 0) -> bytes:
    """256 random bytes, as ``gpg --gen-random 1 256`` made the original tool's keys,
    whose first newline or NUL byte is ``stop`` at offset ``at`` (None: neither)."""
    rng = random.Random(seed)
    allowed = [b for b in range(256) if b not in b"\n\0"]
    body = bytes(rng.choice(allowed) for _ in range(256))
    if stop is None:
        return body
    return body[:at] + stop + rng.randbytes(255 - at)


LEGACY_KEYS = {
    **{f"newline_at_{at}": legacy_key(b"\n", at, seed=at) for at in range(1, 10)},
    **{f"nul_at_{at}": legacy_key(b"\0", at, seed=at) for at in range(1, 10)},
    "newline_in_the_middle": legacy_key(b"\n", 128, seed=128),
    "nul_in_the_middle": legacy_key(b"\0", 128, seed=129),
    "neither": legacy_key(None),
}
"""The original tool's key shapes (gpg refuses an empty passphrase: never at byte 0)."""


@dataclass(frozen=True)
class LegacyArchive:
    """A run archived the way the original tool (``dataflow_archive``) did it."""

    archive: Path
    key: Path

    def adopted_record(self, home: GnupgHome, **extra: Any) -> dict[str, Any]:
        """The archive record ``dfarchive adopt`` writes (without --deep)."""
        data = self.archive.read_bytes()
        return {
            "file": str(self.archive),
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "key_file": str(self.key),
            "recipient_fingerprint": home.fingerprint,
            "format": "dataflow_archive",
            "adopted_at": "2026-12-01T00:00:00+00:00",
            **extra,
        }


def make_legacy_archive(
    base: Path, home: GnupgHome, source: Path, key: bytes, *, compress: bool = False
) -> LegacyArchive:
    """``tar | gpg --symmetric --cipher-algo AES256 --compress-algo none
    --passphrase-file RUN.key``, then ``gpg --encrypt -r RECIPIENT RUN.key`` into
    ``run_keys/RUN.key.gpg``: the original tool's commands (``compress``: gpg's default
    compression instead, as older archives may have)."""
    base.mkdir(parents=True, exist_ok=True)
    key_file, archive = base / f"{source.name}.key", base / f"{source.name}.tar.gpg"
    key_file.write_bytes(key)
    tar = subprocess.Popen(
        ["tar", "-C", str(source.parent), "-cf", "-", source.name], stdout=subprocess.PIPE
    )
    compression = [] if compress else ["--compress-algo", "none"]
    with archive.open("wb") as out:
        subprocess.run(
            ["gpg", "--batch", "--symmetric", "--cipher-algo", "AES256", *compression,
             "--passphrase-file", str(key_file), "--output", "-"],
            stdin=tar.stdout, stdout=out, stderr=subprocess.PIPE, env=home.env, check=True,
            timeout=120,
        )  # fmt: skip
    assert tar.stdout is not None
    tar.stdout.close()
    assert tar.wait(timeout=120) == 0
    wrapped = base / "run_keys" / f"{source.name}.key.gpg"
    wrapped.parent.mkdir(exist_ok=True)
    home.gpg("--trust-model", "always", "--output", str(wrapped), "--encrypt",
             "--recipient", home.fingerprint, str(key_file))  # fmt: skip
    key_file.unlink()
    return LegacyArchive(archive, wrapped)


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
