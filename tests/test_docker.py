"""docker/: what can be checked without a Docker engine. The entrypoint script runs
for real (with stub ``dramatiq``/``dfarchive`` programs recording their argv, and the
real gpg importing a key); the config the compose setup mounts passes dfarchive's own
validation; compose.yaml and the Dockerfile hold together."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from dfarchive.service.config import PASSWORD_ENV, parse_config

DOCKER = Path(__file__).resolve().parent.parent / "docker"
ENTRYPOINT = DOCKER / "entrypoint.sh"

STUB = """#!/bin/sh
# records how it was called, then exits 0
python3 -c 'import json, os, sys; print(json.dumps({"argv": sys.argv[1:],
  "config": os.environ.get("ARCHIVE_CONFIG")}))' "$(basename "$0")" "$@" >> "$STUB_LOG"
"""


@pytest.fixture
def entrypoint(tmp_path):
    """Run docker/entrypoint.sh with stubs first on PATH; returns (result, calls)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("dramatiq", "dfarchive", "dataflow_archive"):
        (bin_dir / name).write_text(STUB)
        (bin_dir / name).chmod(0o755)
    config = tmp_path / "df_archive.yaml"
    config.write_text("# mounted config\n")
    log = tmp_path / "calls.jsonl"
    home = tmp_path / "gnupg"

    def run(*args: str, **env: str) -> tuple[subprocess.CompletedProcess[str], list[dict]]:
        environ = {
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "HOME": str(tmp_path),
            "ARCHIVE_CONFIG": str(config),
            "GNUPGHOME": str(home),
            "DFARCHIVE_RECIPIENT_KEY": str(tmp_path / "no-key.asc"),
            "STUB_LOG": str(log),
            **env,
        }
        result = subprocess.run(
            [str(ENTRYPOINT), *args], env=environ, capture_output=True, text=True, timeout=60
        )
        calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        log.unlink(missing_ok=True)
        return result, calls

    run.config = config  # type: ignore[attr-defined]
    run.home = home  # type: ignore[attr-defined]
    return run


@pytest.mark.parametrize(
    ("args", "argv"),
    [
        (
            (),
            [
                "dramatiq",
                "dfarchive.actors",
                "--processes",
                "2",
                "--threads",
                "1",
                "--worker-shutdown-timeout",
                "600000",
            ],
        ),
        (("worker", "--threads", "4"), ["dramatiq", "dfarchive.actors", "--threads", "4"]),
        (("scheduler",), ["dfarchive", "scheduler"]),
        (("scheduler", "--once"), ["dfarchive", "scheduler", "--once"]),
        (("init",), ["dfarchive", "init"]),
        (("dataflow_archive", "--once"), ["dataflow_archive", "--once"]),
        (("dfarchive", "status", "--json"), ["dfarchive", "status", "--json"]),
    ],
)
def test_entrypoint_modes(entrypoint, args, argv):
    result, calls = entrypoint(*args)
    assert result.returncode == 0, result.stderr
    assert [call["argv"] for call in calls] == [argv]
    assert calls[0]["config"] == str(entrypoint.config)


def test_worker_settings_come_from_the_environment(entrypoint):
    result, calls = entrypoint(
        "worker",
        DFARCHIVE_WORKER_PROCESSES="2",
        DFARCHIVE_WORKER_THREADS="3",
        DFARCHIVE_WORKER_SHUTDOWN_TIMEOUT_MS="60000",
    )
    assert result.returncode == 0, result.stderr
    assert calls[0]["argv"][2:] == [
        "--processes",
        "2",
        "--threads",
        "3",
        "--worker-shutdown-timeout",
        "60000",
    ]


def test_worker_clears_stale_dramatiq_prometheus_files(entrypoint, tmp_path):
    prom = tmp_path / "prom"
    prom.mkdir()
    (prom / "counter_4711.db").write_bytes(b"stale")
    (prom / "keep.txt").write_text("not ours")
    result, _ = entrypoint("worker", dramatiq_prom_db=str(prom))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in prom.iterdir()) == ["keep.txt"]


@pytest.mark.parametrize("mode", ["worker", "scheduler", "init"])
def test_a_missing_config_is_one_clear_line_and_exit_2(entrypoint, tmp_path, mode):
    missing = tmp_path / "nowhere" / "df_archive.yaml"
    result, calls = entrypoint(mode, ARCHIVE_CONFIG=str(missing))
    assert result.returncode == 2
    assert calls == []
    assert result.stderr.strip() == (
        f"dfarchive-entrypoint: config file {missing} not found: mount it there or set "
        "ARCHIVE_CONFIG (see docker/compose.yaml)"
    )


def test_other_commands_run_without_a_config(entrypoint, tmp_path):
    result, calls = entrypoint("dfarchive", "--version", ARCHIVE_CONFIG=str(tmp_path / "none"))
    assert result.returncode == 0, result.stderr
    assert calls[0]["argv"] == ["dfarchive", "--version"]


def test_the_recipient_key_is_imported_into_gnupghome(entrypoint, tmp_path, gnupg_home):
    key = tmp_path / "recipient.asc"
    key.write_bytes(gnupg_home.gpg("--armor", "--export", gnupg_home.fingerprint))
    result, calls = entrypoint("scheduler", DFARCHIVE_RECIPIENT_KEY=str(key))
    assert result.returncode == 0, result.stderr
    assert calls[0]["argv"] == ["dfarchive", "scheduler"]
    home = entrypoint.home
    assert home.stat().st_mode & 0o777 == 0o700
    try:
        listing = subprocess.run(
            ["gpg", "--batch", "--homedir", str(home), "--with-colons", "--list-keys"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
    finally:
        subprocess.run(
            ["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True, timeout=30
        )
    assert f"fpr:::::::::{gnupg_home.fingerprint}:" in listing
    # a key file that is not a key: a clear failure, not a worker without its recipient
    key.write_text("not a key\n")
    result, calls = entrypoint("worker", DFARCHIVE_RECIPIENT_KEY=str(key))
    assert result.returncode == 2 and calls == []
    assert "dfarchive-entrypoint: cannot import the recipient key" in result.stderr


# -- the files compose mounts -----------------------------------------------------------


def test_the_mounted_config_is_valid_with_the_password_from_the_environment(tmp_path):
    raw = yaml.safe_load((DOCKER / "df_archive.yaml").read_text())
    # the container paths, re-rooted under tmp_path so the directory checks can run
    for key in ("sequencing_path", "destination_path", "keys_path"):
        assert raw[key].startswith("/data/")
        raw[key] = str(tmp_path / raw[key].lstrip("/"))
        Path(raw[key]).mkdir(parents=True)
    config = parse_config(
        raw, source="docker/df_archive.yaml", base_dir=DOCKER, environ={PASSWORD_ENV: "pw"}
    )
    assert config.couchdb is not None
    assert config.couchdb.url == "http://couchdb:5984"
    assert config.couchdb.password == "pw"
    assert config.broker_url is None  # compose passes DFARCHIVE_BROKER_URL
    assert config.metrics_port == 9191
    assert config.log_file is None  # containers log to stderr


def test_compose_file_wires_the_services_together():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"rabbitmq", "couchdb", "init", "scheduler", "worker"}

    rabbit = services["rabbitmq"]
    assert "management" in rabbit["image"]
    # management UIs: on this host only (their passwords travel in plain HTTP)
    assert rabbit["ports"] == ["127.0.0.1:15672:15672"]
    assert services["couchdb"]["ports"] == ["127.0.0.1:5984:5984"]
    assert "./rabbitmq.conf:/etc/rabbitmq/conf.d/90-dfarchive.conf:ro" in rabbit["volumes"]
    timeout = re.search(r"^consumer_timeout\s*=\s*(\d+)\s*$", _read("rabbitmq.conf"), re.M)
    assert timeout and int(timeout.group(1)) >= 24 * 3600 * 1000

    couch = services["couchdb"]
    assert couch["image"].startswith("couchdb:3")
    assert couch["environment"]["COUCHDB_PASSWORD"].startswith("${COUCHDB_PASSWORD:?")
    assert "single_node = true" in _read("couchdb.ini")

    commands = {name: services[name]["command"] for name in ("init", "scheduler", "worker")}
    assert commands == {"init": ["init"], "scheduler": ["scheduler"], "worker": ["worker"]}
    assert services["init"]["depends_on"]["couchdb"]["condition"] == "service_healthy"
    for name in ("scheduler", "worker"):
        service = services[name]
        assert service["depends_on"]["init"]["condition"] == "service_completed_successfully"
        assert service["depends_on"]["rabbitmq"]["condition"] == "service_healthy"
    assert str(services["worker"]["deploy"]["replicas"]).startswith("${DFARCHIVE_WORKERS")
    assert int(services["worker"]["environment"]["DFARCHIVE_WORKER_SHUTDOWN_TIMEOUT_MS"]) < 120_000

    for name in ("init", "scheduler", "worker"):
        service = services[name]
        assert service["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}
        env = service["environment"]
        assert env["ARCHIVE_CONFIG"] == "/etc/dfarchive/df_archive.yaml"
        assert env["DFARCHIVE_STATUSDB_PASSWORD"].startswith("${COUCHDB_PASSWORD:?")
        assert "@rabbitmq:5672/" in env["DFARCHIVE_BROKER_URL"]
        mounts = {v.split(":")[1]: v for v in service["volumes"]}
        assert mounts["/etc/dfarchive/df_archive.yaml"].endswith(":ro")
        assert mounts["/data/sequencing"] == "sequencing:/data/sequencing:ro"
        assert set(mounts) >= {"/data/archives", "/data/run_keys", "/home/dfarchive/.gnupg"}
        assert service["secrets"] == ["recipient_key"]
        assert service["ulimits"] == {"core": 0}  # processes holding run keys

    assert set(compose["volumes"]) >= {
        "sequencing",
        "archives",
        "run_keys",
        "gnupg",
        "couchdb-data",
        "rabbitmq-data",
    }
    for name in ("sequencing", "archives", "run_keys"):
        assert compose["volumes"][name]["driver_opts"]["o"] == "bind"
    # every file compose mounts from docker/ is there
    for service in services.values():
        for volume in service.get("volumes", []):
            if volume.startswith("./"):
                assert (DOCKER / volume.split(":")[0]).is_file(), volume


def test_dockerfile_builds_the_worker_image_it_should():
    text = _read("Dockerfile")
    instructions = [line.split(None, 1) for line in _logical_lines(text) if line]
    first = {}
    for keyword, rest in instructions:
        first.setdefault(keyword, rest)
    assert first["FROM"] == "python:3.11-slim"
    run = " ".join(rest for keyword, rest in instructions if keyword == "RUN")
    assert re.search(r"apt-get install -y --no-install-recommends gnupg tar", run)
    assert "useradd --system --uid" in run and "pip install --no-cache-dir ." in run
    user = [rest for keyword, rest in instructions if keyword == "USER"]
    assert user == ["dfarchive"]
    assert json.loads(first["ENTRYPOINT"]) == ["dfarchive-entrypoint"]
    assert json.loads(first["CMD"]) == ["worker"]
    copies = [rest.split() for keyword, rest in instructions if keyword == "COPY"]
    assert ["docker/entrypoint.sh", "/usr/local/bin/dfarchive-entrypoint"] in copies
    root = DOCKER.parent
    ignore = _read("Dockerfile.dockerignore")
    for *sources, _target in copies:
        for source in sources:
            assert (root / source).exists(), source
            assert f"!{source}" in ignore or f"!{source}/" in ignore, source
    assert os.access(ENTRYPOINT, os.X_OK)


def _read(name: str) -> str:
    return (DOCKER / name).read_text()


def _logical_lines(text: str) -> list[str]:
    """Dockerfile instructions: continuations joined, comment lines dropped."""
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#"):  # a comment never continues, and is dropped inside one
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append((current + stripped).strip())
        current = ""
    return lines
