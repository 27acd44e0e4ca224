"""Find complete run folders: ``sequencing_path/<sequencer>/<run>/<sentinel>``.

A pure function of the directory tree and the settings. It reads directory listings
and checks for the sentinel; it never opens, changes or follows into run folders.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .store.base import NewRun


@dataclass(frozen=True)
class SkippedFolder:
    """A complete-looking folder that can't be registered, and why (for the log)."""

    path: str
    reason: str


@dataclass(frozen=True)
class ScanResult:
    runs: list[NewRun] = field(default_factory=list)
    skipped: list[SkippedFolder] = field(default_factory=list)


def run_id_problem(name: str) -> str | None:
    """Why a folder name can't be a run document id, or None if it can."""
    if name.startswith("_"):
        return "names starting with '_' are reserved by CouchDB"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "the name is not valid UTF-8"
    if any(ord(c) < 32 for c in name):
        return "the name contains control characters"
    return None


def _subdirectories(
    path: str, ignore: frozenset[str], *, links: bool = False
) -> Iterable[os.DirEntry[str]]:
    """Directories in ``path`` by name; with ``links``, symbolic links to them too."""
    try:
        with os.scandir(path) as entries:
            found = [
                entry
                for entry in entries
                if entry.name not in ignore
                and (
                    entry.is_dir(follow_symlinks=False)
                    or (links and entry.is_symlink() and entry.is_dir())
                )
            ]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(found, key=lambda entry: entry.name)


def _link_target(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError as error:  # changed since it was listed
        return f"? ({error.strerror})"


def scan_runs(sequencing_path: Path, *, sentinel: str, ignore: Iterable[str] = ()) -> ScanResult:
    """Complete run folders, sorted by sequencer then run name.

    ``ignore`` names are skipped at both levels (sequencer and run folders). A run name
    seen under two sequencers is registered once (the first sequencer in name order)
    and the other copy is reported in ``skipped``, never dropped silently. A sequencer
    folder may be a symbolic link (a mounted instrument share) and is followed; a
    complete run folder reached through a symbolic link is not (tar would archive the
    link, not the folder): it is reported in ``skipped``.
    Raises OSError only if ``sequencing_path`` itself can't be listed.
    """
    ignored = frozenset(ignore)
    result = ScanResult()
    seen: dict[str, str] = {}
    with os.scandir(sequencing_path):  # fail loudly if the top level is unreadable
        pass
    for sequencer in _subdirectories(os.fspath(sequencing_path), ignored, links=True):
        for run in _subdirectories(sequencer.path, ignored, links=True):
            if not os.path.lexists(os.path.join(run.path, sentinel)):
                continue
            problem = run_id_problem(run.name)
            if problem is None and run.is_symlink():
                problem = (
                    f"is a symbolic link (to {_link_target(run.path)!r}), not followed; "
                    "run folders must be real directories"
                )
            if problem is None and run.name in seen:
                problem = f"run name already seen at {seen[run.name]}; run ids must be unique"
            if problem is not None:
                result.skipped.append(SkippedFolder(path=run.path, reason=problem))
                continue
            seen[run.name] = run.path
            result.runs.append(NewRun(run_id=run.name, path=run.path, sequencer=sequencer.name))
    return result
