"""Config loading: the original tool's keys, dfarchive's additions, and clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from dfarchive.errors import ConfigError
from dfarchive.service.config import (
    PASSWORD_ENV,
    Config,
    config_path,
    load_config,
    plaintext_credentials,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def dirs(tmp_path) -> dict[str, Path]:
    made = {name: tmp_path / name for name in ("seq", "arch", "keys")}
    for path in made.values():
        path.mkdir()
    return made


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "df_archive.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def minimal(dirs: dict[str, Path]) -> str:
    return f"""
        sequencing_path: {dirs["seq"]}
        destination_path: {dirs["arch"]}
        gpg_receiver: archive@example.org
    """


def test_original_tool_config_is_accepted_unchanged(tmp_path, dirs):
    path = write(
        tmp_path,
        f"""
        statusdb:
          username: myuser
          password: mypassword
          url: couch.example.org:5984
          database: archiving_status
        sequencing_path: {dirs["seq"]}
        destination_path: {dirs["arch"]}
        gpg_receiver: user
        ignore:
          - nosync
          - transferring
        tar_exclusions:
          - "Demultiplex*"
          - "demux_*"
        log_file: {tmp_path}/dataflow_archive.log
        log_level: warn
        """,
    )
    config = load_config(path, environ={})
    assert isinstance(config, Config)
    assert config.couchdb is not None
    assert config.couchdb.url == "https://couch.example.org:5984"  # scheme added as before
    assert config.couchdb.database == "archiving_status"
    assert config.couchdb.password == "mypassword"
    assert config.state_file is None
    assert config.ignore == ("nosync", "transferring")
    assert config.tar_exclusions == ("Demultiplex*", "demux_*")
    assert config.log_level == "WARNING"
    assert config.log_file == tmp_path / "dataflow_archive.log"
    # defaults of the added keys
    assert config.keys_path == Path("~/run_keys").expanduser()
    assert (config.engine, config.max_attempts, config.concurrency) == ("inprocess", 3, 2)
    assert config.direct_io is True
    assert (config.scan_interval, config.lease_seconds) == (30.0, 300.0)
    assert config.sentinel == ".metadata_rsync_exitcode"
    assert config.broker_url is None
    assert "mypassword" not in repr(config)


def test_embedded_defaults_without_statusdb(tmp_path, dirs):
    config = load_config(write(tmp_path, minimal(dirs)), environ={})
    assert config.couchdb is None
    assert config.state_file == Path("~/.local/state/dfarchive/runs.sqlite3").expanduser()


def test_sqlite_url_and_relative_paths_resolve_next_to_the_file(tmp_path, dirs):
    path = write(
        tmp_path,
        """
        statusdb:
          url: sqlite:state.sqlite3
        sequencing_path: seq
        destination_path: arch
        keys_path: keys
        gpg_receiver: archive@example.org
        broker_url: amqp://guest:guest@127.0.0.1:5672/
        engine: gpg
        direct_io: false
        """,
    )
    config = load_config(path, environ={})
    assert config.state_file == tmp_path / "state.sqlite3"
    assert config.sequencing_path == dirs["seq"]
    assert config.keys_path == dirs["keys"]
    assert config.engine == "gpg"
    assert config.archive_settings().direct_io is False
    assert "guest:guest" not in repr(config)


def test_password_can_come_from_the_environment(tmp_path, dirs):
    path = write(
        tmp_path,
        minimal(dirs)
        + """
        statusdb:
          url: http://127.0.0.1:5984
          database: runs
          username: archiver
        """,
    )
    config = load_config(path, environ={"DFARCHIVE_STATUSDB_PASSWORD": "s3cret"})
    assert config.couchdb.password == "s3cret"


def test_lookup_order():
    assert config_path("/a.yaml", {"ARCHIVE_CONFIG": "/b.yaml"}) == Path("/a.yaml")
    assert config_path(None, {"ARCHIVE_CONFIG": "/b.yaml"}) == Path("/b.yaml")
    assert config_path(None, {}) == Path("~/conf/df_archive.yaml").expanduser()


BAD_CONFIGS = {
    "missing sequencing_path": (
        "destination_path: {arch}\ngpg_receiver: x\n",
        "sequencing_path: missing; this key is required",
    ),
    "missing gpg_receiver": (
        "sequencing_path: {seq}\ndestination_path: {arch}\n",
        "gpg_receiver: missing",
    ),
    "path does not exist": (
        "sequencing_path: {seq}/nope\ndestination_path: {arch}\ngpg_receiver: x\n",
        "sequencing_path: {seq}/nope does not exist",
    ),
    "path is a file": (
        "sequencing_path: {seq}\ndestination_path: {file}\ngpg_receiver: x\n",
        "destination_path: {file} is not a directory",
    ),
    "unknown key with a suggestion": (
        "{base}tar_exclusion:\n  - x\n",
        "tar_exclusion: unknown key; did you mean 'tar_exclusions'?",
    ),
    "unknown statusdb key": (
        "{base}statusdb:\n  url: http://h\n  database: d\n  pasword: p\n",
        "statusdb.pasword: unknown key; did you mean 'password'?",
    ),
    "wrong type: list expected": (
        "{base}ignore: nosync\n",
        "ignore: expected a list of strings, got a string",
    ),
    "wrong type inside a list": (
        "{base}tar_exclusions:\n  - ok\n  - 3\n",
        "tar_exclusions[1]: expected a non-empty string, got a number",
    ),
    "bad log level": (
        "{base}log_level: LOUD\n",
        "log_level: expected one of DEBUG, INFO, WARN, WARNING, ERROR, CRITICAL; got 'LOUD'",
    ),
    "bad engine": (
        "{base}engine: openssl\n",
        "engine: expected one of inprocess, gpg; got 'openssl'",
    ),
    "negative number": (
        "{base}max_attempts: 0\n",
        "max_attempts: expected a whole number >= 1, got 0",
    ),
    "number as string": (
        "{base}scan_interval: soon\n",
        "scan_interval: expected a number of seconds, got a string",
    ),
    "statusdb without database": (
        "{base}statusdb:\n  url: http://127.0.0.1:5984\n",
        "statusdb.database: missing; this key is required",
    ),
    "username without password": (
        "{base}statusdb:\n  url: http://h:5984\n  database: d\n  username: u\n",
        "statusdb.password: missing; username and password go together",
    ),
    "credentials in the URL": (
        "{base}statusdb:\n  url: http://u:p@h:5984\n  database: d\n",
        "statusdb.url: must not contain credentials",
    ),
    "broker url scheme": (
        "{base}broker_url: redis://127.0.0.1\n",
        "broker_url: expected an amqp:// or amqps:// URL",
    ),
    "log file directory missing": (
        "{base}log_file: {seq}/no/such/dir/x.log\n",
        "log_file: directory {seq}/no/such/dir does not exist",
    ),
    "not a mapping": ("- just\n- a list\n", "expected a mapping of keys to values"),
    "invalid YAML": ("{base}ignore: [unclosed\n", "not valid YAML"),
}


def render(template: str, tmp_path: Path, dirs: dict[str, Path]) -> str:
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    base = f"sequencing_path: {dirs['seq']}\ndestination_path: {dirs['arch']}\ngpg_receiver: x\n"
    return template.format(seq=dirs["seq"], arch=dirs["arch"], file=a_file, base=base)


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_names_file_and_key(case, tmp_path, dirs):
    template, expected = BAD_CONFIGS[case]
    path = tmp_path / "df_archive.yaml"
    path.write_text(render(template, tmp_path, dirs))
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert render(expected, tmp_path, dirs) in message
    assert "\n" not in message


def test_missing_config_file_says_how_to_name_one(tmp_path):
    with pytest.raises(ConfigError, match=r"no such config file .*-c PATH.*ARCHIVE_CONFIG"):
        load_config(tmp_path / "absent.yaml")


CLI_CASES = [("dfarchive", case) for case in BAD_CONFIGS] + [
    ("dataflow_archive", "missing sequencing_path"),
    ("dataflow_archive", "unknown key with a suggestion"),
]


@pytest.mark.parametrize(("command", "case"), CLI_CASES)
def test_cli_reports_a_bad_config_in_one_line_with_exit_2(command, case, tmp_path, dirs):
    template, expected = BAD_CONFIGS[case]
    path = tmp_path / "df_archive.yaml"
    path.write_text(render(template, tmp_path, dirs))
    args = [str(Path(sys.executable).parent / command)]
    args += ["status", "-c", str(path)] if command == "dfarchive" else ["-c", str(path)]
    result = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0]
    assert render(expected, tmp_path, dirs) in lines[0]
    assert "Traceback" not in result.stderr


# -- credentials -----------------------------------------------------------------------------


def config_file(tmp_path: Path, dirs: dict[str, Path], **settings: object) -> Path:
    path = tmp_path / "df_archive.yaml"
    base = {
        "sequencing_path": str(dirs["seq"]),
        "destination_path": str(dirs["arch"]),
        "keys_path": str(dirs["keys"]),
        "gpg_receiver": "archive@example.org",
    }
    path.write_text(yaml.safe_dump({**base, **settings}))
    return path


@pytest.mark.parametrize(
    "url",
    [
        "amqp://bob:Sl4sh/Secr3t-xyzzy@rabbit.example.org:5672/%2F",
        "amqp://bob:Secr3t-xyzzy@rabbit.example.org:56x72/%2F",
        "amqp://bob:Hash#Secr3t-xyzzy@rabbit.example.org/%2F",
    ],
)
def test_a_malformed_broker_url_is_refused_quoting_none_of_it(tmp_path, dirs, url):
    path = config_file(tmp_path, dirs, broker_url=url)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    message = str(caught.value)
    assert message.startswith(f"{path}: broker_url: not a valid amqp:// URL")
    for piece in ("bob", "Sl4sh", "Secr3t", "Hash", "rabbit", "56x72"):
        assert piece not in message


@pytest.mark.parametrize(
    ("url", "auth", "warned"),
    [
        ("http://couch.example.org:5984", "basic", True),
        ("http://couch.example.org:5984", "session", True),
        ("https://couch.example.org:5984", "basic", False),
        ("http://127.0.0.1:5984", "basic", False),
        ("http://localhost:5984", "basic", False),
        ("http://[::1]:5984", "basic", False),
    ],
)
def test_credentials_over_plain_http_to_another_host_are_warned_about(
    tmp_path, dirs, url, auth, warned
):
    statusdb = {"url": url, "database": "runs", "username": "bob", "auth": auth}
    path = config_file(tmp_path, dirs, statusdb=statusdb)
    config = load_config(path, environ={PASSWORD_ENV: "Secr3t-xyzzy"})
    expected = [
        f"{path}: statusdb.url: {url} is plain http://, so statusdb.username and "
        f"statusdb.password ({auth} auth) cross the network unencrypted; use https://"
    ]
    assert plaintext_credentials(config) == (expected if warned else [])
    anonymous = config_file(tmp_path, dirs, statusdb={"url": url, "database": "runs"})
    assert plaintext_credentials(load_config(anonymous, environ={})) == []


def test_the_plain_http_warning_reaches_the_user_at_start_up(tmp_path, dirs):
    statusdb = {"url": "http://couch.invalid:5984", "database": "runs", "username": "bob"}
    path = config_file(tmp_path, dirs, statusdb=statusdb)
    result = subprocess.run(
        [str(Path(sys.executable).parent / "dfarchive"), "status", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, PASSWORD_ENV: "Secr3t-xyzzy"},
    )
    assert result.returncode == 2  # couch.invalid does not resolve
    assert result.stderr.splitlines()[0].endswith(
        f"{path}: statusdb.url: http://couch.invalid:5984 is plain http://, so "
        "statusdb.username and statusdb.password (basic auth) cross the network "
        "unencrypted; use https://"
    )
    assert "Secr3t" not in result.stderr


def test_validate_is_overlapped_by_default_or_after_and_reaches_the_pipeline(tmp_path, dirs):
    default = load_config(write(tmp_path, minimal(dirs)), environ={})
    assert default.validate == "overlapped"
    after = load_config(write(tmp_path, minimal(dirs) + "    validate: after\n"), environ={})
    assert after.archive_settings().validate == "after"
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, minimal(dirs) + "    validate: later\n"), environ={})
    assert "validate: expected one of overlapped, after; got 'later'" in str(caught.value)
