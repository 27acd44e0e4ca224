"""No secret ever reaches a log line, stderr or stdout: not the CouchDB password (nor
its HTTP basic form), not a ``user:pass@`` URL credential, not a run key — at DEBUG
level, through a good run, a failing run, a wrong password and an unreachable broker."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import yaml

from dfarchive.config import PASSWORD_ENV
from dfarchive.store import NewRun

BIN = Path(sys.executable).parent
SENTINEL = ".metadata_rsync_exitcode"
BROKER_SECRET = "Br0kerS3cret-xyzzy"


def test_no_secret_in_logs_stderr_or_stdout(tmp_path, couchdb_server, couchdb_database, gnupg_home):
    assert couchdb_server.password, "the test server must have a password to hide"
    for name in ("seq/seqA", "archives", "keys"):
        (tmp_path / name).mkdir(parents=True, exist_ok=True)
    (tmp_path / "keys").chmod(0o700)
    run = tmp_path / "seq" / "seqA" / "run_ok"
    run.mkdir()
    (run / "RunInfo.xml").write_text("<RunInfo/>")
    (run / "data.bin").write_bytes(os.urandom(1 << 20))
    (run / SENTINEL).write_text("0")
    with couchdb_server.store(database=couchdb_database) as store:  # registered, then gone
        store.setup()
        gone = NewRun("run_gone", str(tmp_path / "seq" / "seqA" / "run_gone"), "seqA")
        store.register_many([gone], worker_id="test")
    log_file = tmp_path / "dataflow_archive.log"
    settings = couchdb_server.facility_config(
        couchdb_database,
        tmp_path,
        gnupg_home.fingerprint,
        log_file=str(log_file),
        log_level="DEBUG",
        max_attempts=1,
        scan_interval=0.5,
    )
    config = tmp_path / "df_archive.yaml"
    config.write_text(yaml.safe_dump(settings))
    outputs: list[str] = []

    def dataflow_archive(config_file: Path, expect: set[int], **env: str) -> None:
        result = subprocess.run(
            [str(BIN / "dataflow_archive"), "-c", str(config_file), "--once"],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, **env},
        )
        outputs.extend((result.stdout, result.stderr))
        assert result.returncode in expect, result.stderr

    # one run archived, one failing (its folder is gone): exit 1
    dataflow_archive(config, {1})
    # the wrong password from the environment: a start-up error, exit 2
    wrong = "Wr0ngPassw0rd-" + couchdb_server.password[::-1]
    dataflow_archive(config, {2}, **{PASSWORD_ENV: wrong})
    # schedule-only mode with credentials in an unreachable broker's URL (a start-up
    # error, or a failed pass: either way it must be reported without them)
    (run.parent / "run_late").mkdir()
    (run.parent / "run_late" / SENTINEL).write_text("0")
    broker_config = tmp_path / "broker.yaml"
    broker_config.write_text(
        yaml.safe_dump({**settings, "broker_url": f"amqp://bob:{BROKER_SECRET}@127.0.0.1:9/%2F"})
    )
    dataflow_archive(broker_config, {1, 2})

    log = log_file.read_text()
    everything = log + "".join(outputs)
    # the runs went as expected, and the log says so at DEBUG level
    assert "[run_ok] archived" in log and "[run_gone] attempt failed" in log
    assert " DEBUG " in log
    assert "127.0.0.1:9" in everything  # the broker failure was reported
    assert "statusdb" in outputs[3]  # the wrong password's one-line error
    run_key = gnupg_home.gpg("--decrypt", str(tmp_path / "keys" / "run_ok.key.gpg")).decode()
    assert len(run_key.strip()) == 64
    user = couchdb_server.username
    secrets = {
        "password": couchdb_server.password,
        "wrong password": wrong,
        "basic auth": base64.b64encode(f"{user}:{couchdb_server.password}".encode()).decode(),
        "wrong basic auth": base64.b64encode(f"{user}:{wrong}".encode()).decode(),
        "broker password": BROKER_SECRET,
        "URL credentials": f"bob:{BROKER_SECRET}@",
        "run key": run_key.strip(),
    }
    leaked = [what for what, secret in secrets.items() if secret in everything]
    assert leaked == [], f"leaked: {leaked}"
