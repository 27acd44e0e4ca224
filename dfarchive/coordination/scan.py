"""Find complete run folders: ``sequencing_path/<sequencer>/<run>/<sentinel>``.

A pure function of the directory tree and the settings. It reads directory listings
and checks for the sentinel; it never opens, changes or follows into run folders.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from dfarchive.archiving.partialfile import PARTIAL_SUFFIX
from dfarchive.archiving.pipeline import ARCHIVE_SUFFIX, KEY_SUFFIX
from dfarchive.coordination.store.base import NewRun


@dataclass(frozen=True)
class SkippedFolder:
    """A complete-looking folder that can't be registered, and why (for the log)."""

    path: str
    reason: str


@dataclass(frozen=True)
class ScanResult:
    runs: list[NewRun] = field(default_factory=list)
    skipped: list[SkippedFolder] = field(default_factory=list)


#: Longest run id, in bytes: ``<id>.tar.gpg.partial`` and ``<id>.key.gpg.partial``
#: must fit in a file name (255 bytes on every common filesystem).
MAX_RUN_ID_BYTES = 255 - len(max(ARCHIVE_SUFFIX, KEY_SUFFIX, key=len) + PARTIAL_SUFFIX)


def run_id_problem(name: object) -> str | None:
    """Why ``name`` can't be a run id, or None if it can.

    A run id becomes a document id and an output file name: it must be one safe file
    name component. The scanner skips folders with such names; an attempt refuses a
    stored document with one.
    """
    if not isinstance(name, str) or not name:
        return f"a run id must be a non-empty string (found {name!r})"
    if name in (".", ".."):
        return f"{name!r} is not a folder name"
    if "/" in name:
        return "the name contains '/'"
    if name.startswith("_"):
        return "names starting with '_' are reserved by CouchDB"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "the name is not valid UTF-8"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "the name contains control characters"
    if size > MAX_RUN_ID_BYTES:
        return (
            f"the name is {size} bytes long; at most {MAX_RUN_ID_BYTES} fit in the output "
            f"file names (<run>{ARCHIVE_SUFFIX}{PARTIAL_SUFFIX})"
        )
    return None


def run_path_problem(stored: object, run_id: str, sequencing_path: Path) -> str | None:
    """Why a run document's ``path`` is not run ``run_id``'s folder, or None if it is.

    It must be, once normalised, ``sequencing_path/<sequencer>/<run_id>``, as the
    scanner registers it. Symbolic links are not resolved: a sequencer folder may be
    a link (the scanner follows those); the run folder itself is checked before tar.
    """
    if not isinstance(stored, str) or not stored:
        return f"the run document has no usable 'path' (found {stored!r})"
    if "\0" in stored or not os.path.isabs(stored):
        return f"the run document's path {stored!r} is not an absolute path"
    sequencer, name = os.path.split(os.path.normpath(stored))
    if name != run_id or os.path.dirname(sequencer) != os.path.normpath(sequencing_path):
        return (
            f"the run document's path {stored!r} is not this run's folder "
            f"{os.path.join(sequencing_path, '<sequencer>', run_id)!r}"
        )
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
