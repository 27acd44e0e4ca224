"""What the original ``dataflow_archive`` tool leaves behind, made with stock gpg and tar
exactly as it runs them (see /work/shared/original-tool-README.txt): for tests of
taking a facility over.

    tar -cf - -C <sequencer_dir> <run> | gpg --batch --symmetric --cipher-algo AES256 \\
        --compress-algo none --passphrase-file <destination>/<run>.key \\
        -o <destination>/<run>.tar.gpg
    gpg --encrypt -r <gpg_receiver> -o ~/run_keys/<run>.key.gpg <destination>/<run>.key
    rm <destination>/<run>.key

The key is ``gpg --gen-random 1 256`` unless a test gives one (to place a newline early).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

#: A 256-byte key with no newline or NUL: gpg used all of it.
WHOLE_KEY = bytes(range(1, 256)).replace(b"\n", b"\x0b") + b"\xff"
#: Keys gpg cut short: at a newline at byte 3, at a NUL at byte 5.
NEWLINE_KEY = b"\x8a\x01\xfe\n" + WHOLE_KEY[4:]
NUL_KEY = b"ab\rc\x80\x00" + WHOLE_KEY[6:]


@dataclass(frozen=True)
class LegacyArchive:
    run_id: str
    archive: Path
    key_file: Path
    key: bytes


def legacy_timestamp(moment: datetime) -> str:
    """The original tool's ISO-8601 form (``2026-04-28T10:00:00+00:00``)."""
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def legacy_document(run_id: str, path: Path, status: str, *, worker_id: str, **times: str) -> dict:
    """A run document in the original tool's schema, and nothing more."""
    now = legacy_timestamp(datetime.now(UTC))
    return {
        "_id": run_id,
        "path": str(path),
        "status": status,
        "worker_id": worker_id,
        "failure_count": 0,
        "created_at": times.get("created_at", now),
        "updated_at": times.get("updated_at", now),
    }


def gen_random_key(env: dict[str, str]) -> bytes:
    """``gpg --gen-random 1 256``, drawn again in the 1 case in 128 where gpg would get
    an empty passphrase (first byte a newline or NUL) and the original tool fails."""
    while True:
        key = subprocess.run(
            ["gpg", "--gen-random", "1", "256"], capture_output=True, env=env, check=True
        ).stdout
        if key[:1] not in (b"\n", b"\0"):
            return key


def archive_like_the_original(
    run: Path,
    destination: Path,
    keys_dir: Path,
    receiver: str,
    env: dict[str, str],
    *,
    key: bytes | None = None,
    keep_plaintext_key: bool = False,
) -> LegacyArchive:
    """Archive ``run`` as the original tool does; with ``keep_plaintext_key``, stop
    before deleting ``<run>.key`` (its crash leftover)."""
    run_id = run.name
    key = gen_random_key(env) if key is None else key
    key_path = destination / f"{run_id}.key"
    key_path.write_bytes(key)
    archive = destination / f"{run_id}.tar.gpg"
    tar = subprocess.Popen(
        ["tar", "-cf", "-", "-C", str(run.parent), run_id], stdout=subprocess.PIPE, env=env
    )
    gpg = subprocess.run(
        [
            "gpg",
            "--batch",
            "--symmetric",
            "--cipher-algo",
            "AES256",
            "--compress-algo",
            "none",
            "--passphrase-file",
            str(key_path),
            "-o",
            str(archive),
        ],
        stdin=tar.stdout,
        capture_output=True,
        env=env,
        timeout=120,
    )
    assert tar.stdout is not None
    tar.stdout.close()
    assert tar.wait(timeout=120) == 0 and gpg.returncode == 0, gpg.stderr
    wrapped = keys_dir / f"{run_id}.key.gpg"
    subprocess.run(
        ["gpg", "--batch", "--encrypt", "-r", receiver, "-o", str(wrapped), str(key_path)],
        capture_output=True,
        env=env,
        check=True,
        timeout=60,
    )
    if not keep_plaintext_key:
        os.unlink(key_path)
    return LegacyArchive(run_id, archive, wrapped, key)
