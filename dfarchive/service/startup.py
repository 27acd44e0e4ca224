"""Start-up checks: everything that would make every run fail is found before any work.

Each problem is a :class:`StartupError` with one line saying what is wrong and where;
the commands print it and exit 2.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar, overload

from dfarchive.archiving.keys import Recipient, resolve_recipient
from dfarchive.archiving.pipeline import ArchiveSettings
from dfarchive.coordination.store import RunStore
from dfarchive.errors import RecipientError, StartupError, StoreError
from dfarchive.service.config import Config
from dfarchive.service.stores import open_store

R = TypeVar("R", bound="Recipient | None")


@dataclass
class Runtime(Generic[R]):
    """What a worker needs, checked and ready: a ``Runtime[Recipient]`` for workers,
    which wrap keys; a ``Runtime[None]`` for commands that never do."""

    config: Config
    store: RunStore
    recipient: R
    settings: ArchiveSettings
    worker_id: str


#: Names this host in run documents instead of its host name (tests, containers).
WORKER_ID_ENV = "DFARCHIVE_WORKER_ID"


def worker_id() -> str:
    """The run documents' ``worker_id``: the host name, as the original tool writes it
    (its start-up reset compares it with the host name), or ``$DFARCHIVE_WORKER_ID``.
    Which process and thread holds a claim is recorded beside it (``claimed_by``)."""
    return os.environ.get(WORKER_ID_ENV) or socket.gethostname()


def check_tools() -> None:
    for tool, package in (("tar", "tar"), ("gpg", "gnupg")):
        if shutil.which(tool) is None:
            raise StartupError(f"{tool} not found on PATH; install it (apt-get install {package})")


def check_directories(config: Config) -> None:
    for key, path in (
        ("sequencing_path", config.sequencing_path),
        ("destination_path", config.destination_path),
    ):
        if not path.is_dir():
            raise StartupError(f"{config.source}: {key}: {path} does not exist")
    if not os.access(config.sequencing_path, os.R_OK | os.X_OK):
        raise StartupError(f"{config.source}: sequencing_path: {config.sequencing_path} unreadable")
    if not os.access(config.destination_path, os.W_OK | os.X_OK):
        raise StartupError(
            f"{config.source}: destination_path: {config.destination_path} is not writable"
        )
    check_keys_path(config)


def check_keys_path(config: Config) -> None:
    """Create ``keys_path`` (0700) if missing; refuse one that others can read."""
    path = config.keys_path
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        raise StartupError(f"{config.source}: keys_path: cannot create {path}: {error}") from None
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o007:
        raise StartupError(
            f"{config.source}: keys_path: {path} is accessible to all users (mode {mode:o}); "
            f"run: chmod o-rwx {path}"
        )
    if not os.access(path, os.W_OK | os.X_OK):
        raise StartupError(f"{config.source}: keys_path: {path} is not writable")


def open_checked_store(config: Config) -> RunStore:
    """Open the store and make sure its database and design documents exist."""
    store = open_store(config)
    try:
        store.setup()
    except StoreError as error:
        store.close()
        raise StartupError(f"{config.source}: statusdb: {error}") from None
    return store


def check_recipient(config: Config) -> Recipient:
    try:
        return resolve_recipient(
            config.gpg_receiver,
            gnupg_home=str(config.gnupg_home) if config.gnupg_home else None,
        )
    except RecipientError as error:
        raise StartupError(f"{config.source}: gpg_receiver: {error}") from None


@overload
def prepare(config: Config, *, need_recipient: Literal[True] = ...) -> Runtime[Recipient]: ...
@overload
def prepare(config: Config, *, need_recipient: Literal[False]) -> Runtime[None]: ...
def prepare(config: Config, *, need_recipient: bool = True) -> Runtime[Any]:
    """Run every start-up check; return the ready runtime (a ``Runtime[Recipient]``
    unless ``need_recipient`` is False, as the overloads above tell callers).

    Raises: StartupError (one line: what is wrong, which key, what to do).
    """
    check_tools()
    check_directories(config)
    recipient = check_recipient(config) if need_recipient else None
    store = open_checked_store(config)
    return Runtime(
        config=config,
        store=store,
        recipient=recipient,
        settings=config.archive_settings(),
        worker_id=worker_id(),
    )
