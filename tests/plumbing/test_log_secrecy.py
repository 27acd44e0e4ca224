"""No secret ever reaches a log line, stderr or stdout: not the CouchDB password (nor
its HTTP basic form), not a ``user:pass@`` URL credential, not a run key — at DEBUG
level, through a good run, a failing run, a wrong password and an unreachable broker."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dfarchive.coordination.store import NewRun
from dfarchive.service.config import PASSWORD_ENV

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


# -- URL credentials of every shape, malformed URLs, known passwords ------------------------

SECRET = "Secr3t-xyzzy"


def facility(tmp_path: Path, **settings: object) -> Path:
    for name in ("seq", "archives", "keys"):
        (tmp_path / name).mkdir(exist_ok=True)
    (tmp_path / "keys").chmod(0o700)
    config = tmp_path / "df_archive.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "statusdb": {"url": f"sqlite:{tmp_path / 'runs.sqlite3'}"},
                "sequencing_path": str(tmp_path / "seq"),
                "destination_path": str(tmp_path / "archives"),
                "keys_path": str(tmp_path / "keys"),
                "gpg_receiver": "nobody@dfarchive.invalid",
                "log_file": str(tmp_path / "dfarchive.log"),
                **settings,
            }
        )
    )
    return config


def run(*argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / argv[0]), *argv[1:]],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


@pytest.mark.parametrize(
    "userinfo",
    [f":{SECRET}", f"bob:Sl4sh/{SECRET}", f"bob:Sp4ce {SECRET}", f"bob:At@{SECRET}"],
    ids=["no user", "slash", "space", "at sign"],
)
def test_url_credentials_of_any_shape_are_masked_in_a_cli_error(tmp_path, userinfo):
    url = f"ftp://{userinfo}@couch.example.org:5984"  # rejected, and quoted in the error
    config = facility(tmp_path, statusdb={"url": url, "database": "runs"})
    result = run("dfarchive", "status", "-c", str(config))
    assert result.returncode == 2
    assert "statusdb.url: expected an http(s) URL" in result.stderr
    assert "ftp://***@couch.example.org:5984" in result.stderr
    assert SECRET not in result.stderr
    for piece in ("Sl4sh", "Sp4ce"):
        assert piece not in result.stderr


@pytest.mark.parametrize("source", ["config", "environment"])
@pytest.mark.parametrize("program", ["dataflow_archive", "dfarchive"])
def test_a_malformed_broker_url_quotes_no_part_of_its_password(tmp_path, source, program):
    url = f"amqp://bob:Sl4sh/{SECRET}@127.0.0.1:5672/%2F"  # the / ends the "port"
    env = {"DFARCHIVE_BROKER_URL": url} if source == "environment" else {}
    config = facility(tmp_path, **({"broker_url": url} if source == "config" else {}))
    argv = [program, "scheduler"] if program == "dfarchive" else [program]
    result = run(*argv, "-c", str(config), "--once", **env)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert "broker_url: not a valid amqp:// URL" in line
    assert "percent-encoded" in line
    log = tmp_path / "dfarchive.log"  # a config error comes before logging starts
    everything = result.stderr + (log.read_text() if log.exists() else "")
    assert "Sl4sh" not in everything and SECRET not in everything


def test_the_statusdb_password_is_masked_wherever_it_shows_up(tmp_path):
    """Pasted into the wrong key (here the database name), the password is still not
    shown: every secret the config holds is masked in what is printed and logged."""
    port = 9  # discard: nothing listens, the store is unreachable at once
    statusdb = {
        "url": f"http://127.0.0.1:{port}",
        "database": f"runs-{SECRET}".lower(),
        "username": "bob",
    }
    config = facility(tmp_path, statusdb=statusdb)
    result = run("dfarchive", "status", "-c", str(config), **{PASSWORD_ENV: statusdb["database"]})
    assert result.returncode == 2
    assert "server unreachable" in result.stderr
    assert statusdb["database"] not in result.stderr
    assert "database '***'" in result.stderr
