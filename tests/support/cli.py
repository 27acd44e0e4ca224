"""Driving ``dfarchive`` in-process: run a command, write a config around an archived
run, register a run in its store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from dfarchive.cli.dfarchive import main
from dfarchive.coordination.store import NewRun, SqliteStore
from tests.support.archives import ArchivedRun


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``dfarchive ARGV`` in-process; return (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    out, err = capsys.readouterr()
    return exited.value.code, out, err


def write_config(tmp_path: Path, archived: ArchivedRun, **extra: Any) -> Path:
    for name in ("seq", "dest"):
        (tmp_path / name).mkdir(exist_ok=True)
    (tmp_path / "state").mkdir(exist_ok=True)
    settings = {
        "sequencing_path": str(tmp_path / "seq"),
        "destination_path": str(tmp_path / "dest"),
        "gpg_receiver": archived.home.fingerprint,
        "keys_path": str(tmp_path / "keys"),
        "statusdb": {"url": f"sqlite:{tmp_path / 'state' / 'runs.sqlite3'}"},
        "gnupg_home": archived.home.home,
        "max_attempts": 2,
        **extra,
    }
    path = tmp_path / "df_archive.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def add_run(store: SqliteStore, run_id: str, path: str = "/seq/A/run") -> None:
    store.register_many([NewRun(run_id, path, "A")], worker_id="host:1")
