"""A ``dataflow_archive`` set-up on SQLite under ``tmp_path``: its config, a cheap but
slow-to-archive run folder, and the documents its store holds."""

from __future__ import annotations

from pathlib import Path

import yaml

from dfarchive.coordination.store import SqliteStore
from tests.support.gpg import SENTINEL


def make_config(tmp_path: Path, gnupg_home, **extra) -> Path:
    for name in ("seq/seqA", "archives", "keys"):
        (tmp_path / name).mkdir(parents=True, exist_ok=True)
    (tmp_path / "keys").chmod(0o700)
    config = {
        "statusdb": {"url": f"sqlite:{tmp_path / 'runs.sqlite3'}"},
        "sequencing_path": str(tmp_path / "seq"),
        "destination_path": str(tmp_path / "archives"),
        "keys_path": str(tmp_path / "keys"),
        "gpg_receiver": gnupg_home.fingerprint,
        "scan_interval": 0.5,
        "lease_seconds": 30,
        **extra,
    }
    path = tmp_path / "df_archive.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def sparse_run(tmp_path: Path, name: str, size: int) -> Path:
    """A run folder whose one big file is sparse: cheap to make, slow enough to archive."""
    run = tmp_path / "seq" / "seqA" / name
    run.mkdir(parents=True)
    (run / "RunInfo.xml").write_text("<RunInfo/>")
    with open(run / "big.cbcl", "wb") as f:
        f.truncate(size)
    (run / SENTINEL).write_text("0")
    return run


def documents(tmp_path: Path) -> dict[str, dict]:
    with SqliteStore(tmp_path / "runs.sqlite3") as store:
        store.setup()  # the file may exist before its table does
        return {doc["_id"]: doc for doc in store.runs()}
