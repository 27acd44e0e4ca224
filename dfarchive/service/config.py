"""Load and validate the YAML configuration into a typed :class:`Config`.

Every key of the original ``dataflow_archive`` tool is accepted with its meaning; the
rest are dfarchive's additions, all optional with defaults. Every error is a
:class:`~dfarchive.errors.ConfigError` naming the file, the key and what was expected.
Relative paths are taken relative to the config file's directory; ``~`` is expanded.
"""

from __future__ import annotations

import base64
import difflib
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml

from dfarchive.archiving.engines import ENGINE_NAMES
from dfarchive.archiving.pipeline import ArchiveSettings
from dfarchive.archiving.validate import VALIDATE_MODES, VALIDATION_METHODS
from dfarchive.coordination import runstate
from dfarchive.errors import ConfigError
from dfarchive.plumbing.logs import add_secret

DEFAULT_CONFIG_PATH = "~/conf/df_archive.yaml"
CONFIG_ENV = "ARCHIVE_CONFIG"
#: Overrides ``statusdb.password`` so the password need not sit in the file.
PASSWORD_ENV = "DFARCHIVE_STATUSDB_PASSWORD"
DEFAULT_STATE_FILE = "~/.local/state/dfarchive/runs.sqlite3"

AUTH_METHODS = ("basic", "session")
LOG_LEVELS = ("DEBUG", "INFO", "WARN", "WARNING", "ERROR", "CRITICAL")


@dataclass(frozen=True, kw_only=True)
class CouchDBSettings:
    """Where the run documents live when they live in CouchDB."""

    url: str
    database: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    auth: str = "basic"


@dataclass(frozen=True, kw_only=True)
class Config:
    """The validated configuration. Paths are absolute.

    Each default is written once: here, or for what the pipeline and the store take,
    as theirs (:class:`ArchiveSettings`, :mod:`~dfarchive.coordination.runstate`);
    :func:`parse_config` reads them from here.
    """

    source: str
    sequencing_path: Path
    destination_path: Path
    gpg_receiver: str
    keys_path: Path
    couchdb: CouchDBSettings | None = None
    state_file: Path | None = None  # SQLite file, when couchdb is None
    ignore: tuple[str, ...] = ()
    tar_exclusions: tuple[str, ...] = ArchiveSettings.tar_exclusions
    log_file: Path | None = None
    log_level: str = "INFO"
    broker_url: str | None = field(default=None, repr=False)
    engine: str = ArchiveSettings.engine
    validate_with: str = ArchiveSettings.validate_with
    validate: str = ArchiveSettings.validate
    validate_from_device: bool = ArchiveSettings.validate_from_device
    direct_io: bool = ArchiveSettings.direct_io
    max_attempts: int = runstate.DEFAULT_MAX_ATTEMPTS
    sentinel: str = ArchiveSettings.sentinel
    scan_interval: float = 30.0
    concurrency: int = 2
    lease_seconds: float = runstate.DEFAULT_LEASE_SECONDS
    legacy_lease_seconds: float = runstate.DEFAULT_LEGACY_LEASE_SECONDS
    gnupg_home: Path | None = ArchiveSettings.gnupg_home
    metrics_port: int | None = None
    # -- fixity audits (dfarchive.coordination.fixity) --
    fixity_interval_days: float = 0.0  # 0: scheduled audits off
    fixity_max_rate: float = 200.0  # MB/s read for audits, per worker process

    def archive_settings(self) -> ArchiveSettings:
        """What the archiving pipeline needs from this configuration: each of
        :class:`ArchiveSettings`' fields, taken from the field of the same name here."""
        return ArchiveSettings(**{f.name: getattr(self, f.name) for f in fields(ArchiveSettings)})


TOP_KEYS = (
    "statusdb",
    "sequencing_path",
    "destination_path",
    "gpg_receiver",
    "ignore",
    "tar_exclusions",
    "log_file",
    "log_level",
    "keys_path",
    "broker_url",
    "engine",
    "validate_with",
    "validate",
    "validate_from_device",
    "direct_io",
    "max_attempts",
    "sentinel",
    "scan_interval",
    "concurrency",
    "lease_seconds",
    "legacy_lease_seconds",
    "gnupg_home",
    "metrics_port",
    # fixity audits
    "fixity_interval_days",
    "fixity_max_rate",
)
STATUSDB_KEYS = ("url", "database", "username", "password", "auth")


def config_path(cli_path: str | None = None, environ: Mapping[str, str] = os.environ) -> Path:
    """The file to read: ``-c PATH`` > ``$ARCHIVE_CONFIG`` > ``~/conf/df_archive.yaml``."""
    chosen = cli_path or environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH
    return Path(chosen).expanduser()


def load_config(path: str | Path, environ: Mapping[str, str] = os.environ) -> Config:
    """Read and validate a config file.

    Raises: ConfigError (one line naming the file, the key and what was expected).
    """
    path = Path(path).expanduser()
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            source, None, f"no such config file (give -c PATH or set {CONFIG_ENV})"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(source, None, f"cannot read the config file: {error}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(source, None, f"{where}not valid YAML: {problem}") from None
    return parse_config(raw, source=source, base_dir=path.resolve().parent, environ=environ)


def parse_config(
    raw: Any, *, source: str, base_dir: Path, environ: Mapping[str, str] = os.environ
) -> Config:
    """Validate an already-parsed YAML document (see :func:`load_config`).

    Its secrets (the status database's password, the broker URL's) are masked in every
    log line and error message from now on (:func:`dfarchive.plumbing.logs.add_secret`).
    """
    reader = _Reader(source, base_dir)
    if not isinstance(raw, dict):
        raise ConfigError(source, None, "expected a mapping of keys to values at the top level")
    reader.reject_unknown(raw, TOP_KEYS, prefix="")

    couchdb, state_file = reader.statusdb(raw.get("statusdb"), environ)
    return Config(
        source=source,
        sequencing_path=reader.directory(raw, "sequencing_path", required=True),
        destination_path=reader.directory(raw, "destination_path", required=True),
        gpg_receiver=reader.string(raw, "gpg_receiver", required=True),
        keys_path=reader.path(raw, "keys_path", default="~/run_keys"),
        couchdb=couchdb,
        state_file=state_file,
        ignore=reader.string_list(raw, "ignore"),
        tar_exclusions=reader.string_list(raw, "tar_exclusions"),
        log_file=reader.log_file(raw),
        log_level=reader.choice(raw, "log_level", LOG_LEVELS, default=Config.log_level, upper=True),
        broker_url=reader.broker_url(raw),
        engine=reader.choice(raw, "engine", ENGINE_NAMES, default=Config.engine),
        validate_with=reader.choice(
            raw, "validate_with", VALIDATION_METHODS, default=Config.validate_with
        ),
        validate=reader.choice(raw, "validate", VALIDATE_MODES, default=Config.validate),
        validate_from_device=reader.boolean(
            raw, "validate_from_device", default=Config.validate_from_device
        ),
        direct_io=reader.boolean(raw, "direct_io", default=Config.direct_io),
        max_attempts=reader.integer(raw, "max_attempts", default=Config.max_attempts, minimum=1),
        sentinel=reader.string(raw, "sentinel", default=Config.sentinel),
        scan_interval=reader.number(
            raw, "scan_interval", default=Config.scan_interval, minimum=0.1
        ),
        concurrency=reader.integer(raw, "concurrency", default=Config.concurrency, minimum=1),
        lease_seconds=reader.number(
            raw, "lease_seconds", default=Config.lease_seconds, minimum=1.0
        ),
        legacy_lease_seconds=reader.number(
            raw, "legacy_lease_seconds", default=Config.legacy_lease_seconds, minimum=1.0
        ),
        gnupg_home=reader.optional_directory(raw, "gnupg_home"),
        metrics_port=reader.port(raw, "metrics_port"),
        # fixity audits
        fixity_interval_days=reader.number(
            raw, "fixity_interval_days", default=Config.fixity_interval_days, minimum=0.0
        ),
        fixity_max_rate=reader.number(
            raw, "fixity_max_rate", default=Config.fixity_max_rate, minimum=0.001
        ),
    )


def broker_url_problem(url: str) -> str | None:
    """What is wrong with an AMQP URL, in words that quote no part of it (a password
    with an unencoded ``/`` or ``#`` would otherwise show up as the "port"), or None."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in ("amqp", "amqps"):
        return "expected an amqp:// or amqps:// URL"
    if port == -1 or not parts.hostname:
        return (
            "not a valid amqp:// URL (expected amqp:// then USER:PASSWORD@HOST:PORT/VHOST, "
            "with characters such as / # ? @ : and spaces in the user name and password "
            "percent-encoded)"
        )
    return None


def add_broker_secrets(url: str) -> None:
    """Mask the password of a broker URL in logs and messages, as written and decoded."""
    # not urlsplit: an unencoded / or # in the password would end its netloc early
    userinfo, at, _ = url.partition("://")[2].rpartition("@")
    if at and ":" in userinfo:
        password = userinfo.partition(":")[2]
        add_secret(password)
        add_secret(unquote(password))


def plaintext_credentials(config: Config) -> list[str]:
    """Warnings, naming the key, for credentials the config sends unencrypted to
    another host: a CouchDB password over plain ``http://``."""
    couch = config.couchdb
    if couch is None or couch.username is None:
        return []
    parts = urlsplit(couch.url)
    if parts.scheme != "http" or _is_loopback(parts.hostname or ""):
        return []
    return [
        f"{config.source}: statusdb.url: {couch.url} is plain http://, so statusdb.username "
        f"and statusdb.password ({couch.auth} auth) cross the network unencrypted; "
        "use https://"
    ]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _type_name(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
    }.get(type(value), type(value).__name__)


class _Reader:
    """Typed accessors that turn every mistake into a ConfigError for ``source``."""

    def __init__(self, source: str, base_dir: Path) -> None:
        self.source = source
        self.base_dir = base_dir

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(self.source, key, message)

    def reject_unknown(self, raw: Mapping[str, Any], known: tuple[str, ...], prefix: str) -> None:
        for key in raw:
            if key not in known:
                guess = difflib.get_close_matches(str(key), known, n=1)
                if guess:
                    hint = f"; did you mean {guess[0]!r}?"
                else:
                    hint = f"; known keys: {', '.join(known)}"
                raise self.error(f"{prefix}{key}", f"unknown key{hint}")

    def value(self, raw: Mapping[str, Any], key: str, *, required: bool, name: str = "") -> Any:
        value = raw.get(key)
        if value is None and required:
            raise self.error(name or key, "missing; this key is required")
        return value

    def string(
        self,
        raw: Mapping[str, Any],
        key: str,
        *,
        required: bool = False,
        default: str | None = None,
        name: str = "",
    ) -> Any:
        value = self.value(raw, key, required=required, name=name)
        if value is None:
            return default
        if not isinstance(value, str) or not value.strip():
            raise self.error(name or key, f"expected a non-empty string, got {_type_name(value)}")
        return value

    def string_list(self, raw: Mapping[str, Any], key: str) -> tuple[str, ...]:
        value = raw.get(key)
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self.error(key, f"expected a list of strings, got {_type_name(value)}")
        for index, item in enumerate(value):
            if not isinstance(item, str) or not item:
                raise self.error(
                    f"{key}[{index}]", f"expected a non-empty string, got {_type_name(item)}"
                )
        return tuple(value)

    def choice(
        self,
        raw: Mapping[str, Any],
        key: str,
        choices: tuple[str, ...],
        *,
        default: str,
        upper: bool = False,
    ) -> str:
        value = self.string(raw, key, default=default)
        normalised = value.upper() if upper else value
        if normalised not in choices:
            raise self.error(key, f"expected one of {', '.join(choices)}; got {value!r}")
        return "WARNING" if normalised == "WARN" else normalised

    def boolean(self, raw: Mapping[str, Any], key: str, *, default: bool) -> bool:
        value = raw.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {_type_name(value)}")
        return value

    def integer(self, raw: Mapping[str, Any], key: str, *, default: int, minimum: int) -> int:
        wanted = f"a whole number >= {minimum}"
        value = self._at_least(raw, key, minimum, wanted, wanted, whole=True)
        return default if value is None else int(value)

    def number(self, raw: Mapping[str, Any], key: str, *, default: float, minimum: float) -> float:
        value = self._at_least(
            raw, key, minimum, "a number of seconds", f"a number >= {minimum:g}", whole=False
        )
        return default if value is None else float(value)

    def _at_least(
        self,
        raw: Mapping[str, Any],
        key: str,
        minimum: float,
        wanted_type: str,
        wanted_value: str,
        *,
        whole: bool,
    ) -> int | float | None:
        """``raw[key]``, a number (an int if ``whole``; never a bool) >= ``minimum``."""
        value = raw.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int if whole else int | float):
            raise self.error(key, f"expected {wanted_type}, got {_type_name(value)}")
        if value < minimum:
            raise self.error(key, f"expected {wanted_value}, got {value}")
        return value

    def port(self, raw: Mapping[str, Any], key: str) -> int | None:
        value = raw.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
            raise self.error(key, f"expected a TCP port number (1-65535), got {value!r}")
        return value

    def resolve(self, text: str) -> Path:
        path = Path(text).expanduser()
        return path if path.is_absolute() else (self.base_dir / path)

    def path(self, raw: Mapping[str, Any], key: str, *, default: str) -> Path:
        path = self.resolve(self.string(raw, key, default=default))
        if path.exists() and not path.is_dir():
            raise self.error(key, f"{path} exists but is not a directory")
        return path

    def directory(self, raw: Mapping[str, Any], key: str, *, required: bool) -> Path:
        path = self.resolve(self.string(raw, key, required=required))
        if not path.is_dir():
            problem = "is not a directory" if path.exists() else "does not exist"
            raise self.error(key, f"{path} {problem}")
        return path

    def optional_directory(self, raw: Mapping[str, Any], key: str) -> Path | None:
        return self.directory(raw, key, required=False) if raw.get(key) is not None else None

    def log_file(self, raw: Mapping[str, Any]) -> Path | None:
        text = self.string(raw, "log_file")
        if text is None:
            return None
        path = self.resolve(text)
        if not path.parent.is_dir():
            raise self.error("log_file", f"directory {path.parent} does not exist")
        if path.is_dir():
            raise self.error("log_file", f"{path} is a directory, expected a file")
        return path

    def broker_url(self, raw: Mapping[str, Any]) -> str | None:
        url = self.string(raw, "broker_url")
        if url is not None:
            add_broker_secrets(url)
            problem = broker_url_problem(url)
            if problem:
                raise self.error("broker_url", problem)
        return url

    def statusdb(
        self, value: Any, environ: Mapping[str, str]
    ) -> tuple[CouchDBSettings | None, Path | None]:
        if value is None:
            return None, Path(DEFAULT_STATE_FILE).expanduser()
        if not isinstance(value, dict):
            raise self.error("statusdb", f"expected a mapping, got {_type_name(value)}")
        self.reject_unknown(value, STATUSDB_KEYS, prefix="statusdb.")
        url = self.string(value, "url", required=True, name="statusdb.url")
        if url.startswith("sqlite:"):
            return None, self._sqlite_file(url)
        database = self.string(value, "database", required=True, name="statusdb.database")
        username = self.string(value, "username", name="statusdb.username")
        password = environ.get(PASSWORD_ENV) or self.string(
            value, "password", name="statusdb.password"
        )
        auth = self.string(value, "auth", default="basic", name="statusdb.auth")
        if auth not in AUTH_METHODS:
            raise self.error("statusdb.auth", f"expected one of {', '.join(AUTH_METHODS)}")
        add_secret(password)
        if username is not None and password is not None:  # as HTTP basic auth sends them
            add_secret(base64.b64encode(f"{username}:{password}".encode()).decode())
        if (username is None) != (password is None):
            missing = "statusdb.password" if password is None else "statusdb.username"
            raise self.error(missing, "missing; username and password go together")
        if "://" not in url:
            url = "https://" + url  # as the original tool does
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise self.error("statusdb.url", f"expected an http(s) URL or host name, got {url!r}")
        if parts.username or parts.password:
            raise self.error(
                "statusdb.url",
                "must not contain credentials; use statusdb.username and statusdb.password",
            )
        return (
            CouchDBSettings(
                url=url.rstrip("/"),
                database=database,
                username=username,
                password=password,
                auth=auth,
            ),
            None,
        )

    def _sqlite_file(self, url: str) -> Path:
        """``sqlite:PATH``, ``sqlite://PATH`` or ``sqlite:///ABS/PATH``."""
        rest = url[len("sqlite:") :]
        if rest.startswith("//"):
            rest = rest[2:]
        if not rest:
            raise self.error("statusdb.url", "expected sqlite:PATH naming the state file")
        path = self.resolve(rest)
        if not path.parent.is_dir():
            raise self.error("statusdb.url", f"directory {path.parent} does not exist")
        return path
