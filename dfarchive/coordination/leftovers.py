"""The original tool's crash leftovers: a plaintext ``<run>.key`` beside the archives.

``dataflow_archive`` wrote each run key to ``destination_path/<run>.key`` and deleted it
once the key was wrapped; a crash in between left it there, in plaintext. dfarchive
removes it when it archives or adopts that run, and ``dfarchive status`` flags the
ones it finds.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from dfarchive.archiving.partialfile import fsync_directory
from dfarchive.coordination.scan import run_id_problem

log = logging.getLogger(__name__)

LEGACY_KEY_SUFFIX = ".key"
"""The original tool's plaintext key next to the archive (deleted unless it crashed)."""


def remove_legacy_key_leftover(destination_path: Path, run_id: str) -> Path | None:
    """Delete ``destination_path/<run_id>.key``, the plaintext run key the original tool
    leaves behind when it crashes; return its path if it was removed.

    Only a regular file of exactly that name is removed (a symbolic link or anything
    else is left alone and logged); the removal is logged with its path. Never raises
    for a file problem: a leftover that can't be removed is logged as an error.
    """
    if run_id_problem(run_id) is not None:
        return None
    path = destination_path / f"{run_id}{LEGACY_KEY_SUFFIX}"
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as error:
        log.error("[%s] cannot check for a plaintext key %s: %s", run_id, path, error.strerror)
        return None
    if not stat.S_ISREG(found.st_mode):
        log.warning("[%s] %s is not a regular file; left alone", run_id, path)
        return None
    try:
        os.unlink(path)  # never follows a link: at worst removes one put there meanwhile
        fsync_directory(destination_path)
    except OSError as error:
        log.error(
            "[%s] cannot remove the plaintext run key %s left by dataflow_archive: %s",
            run_id,
            path,
            error.strerror,
        )
        return None
    log.warning("[%s] removed the plaintext run key %s left by dataflow_archive", run_id, path)
    return path


def legacy_key_leftovers(destination_path: Path, run_ids: Iterable[str]) -> dict[str, Path]:
    """The plaintext ``<run>.key`` files (regular files) in ``destination_path`` of the
    given runs, by run id.

    Raises: OSError if ``destination_path`` can't be listed.
    """
    wanted = set(run_ids)
    found = {}
    with os.scandir(destination_path) as entries:
        for entry in entries:
            run_id = entry.name.removesuffix(LEGACY_KEY_SUFFIX)
            if run_id != entry.name and run_id in wanted and entry.is_file(follow_symlinks=False):
                found[run_id] = Path(entry.path)
    return dict(sorted(found.items()))
