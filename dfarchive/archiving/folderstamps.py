"""Did the run folder change while it was archived? Stamps of its entries, before and after.

tar notices a file that changes while it reads it ("file changed as we read it") and a
directory that changes while it is inside it, but nothing that happens behind it: an
entry added to or removed from a directory it has already left, a file rewritten after
it was read. The archive would then differ, silently, from the folder marked archived.

So the pre-flight walk stamps every entry (type, inode, size, modification and change
times; the change time moves with any change to a file's content or metadata, and
nothing can set it back), and just before the archive is published the same walk
again must find every archived directory and regular file with the same stamp (to the
file system's time resolution). Entries tar did not archive (``tar_exclusions``) may
change freely; so may symbolic links and other special entries, whose replacement
changes their directory.

The same check makes sure the archive holds this run folder and nothing else: every
name tar reported (members, and hard links' targets) must be an entry the pre-flight
walk stamped. A name it never saw is either not in the run folder at all (tar archived
something else) or appeared since (a change).

Memory: one stamp per entry of the run folder, about 250 bytes (25 MB for 100,000
files).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from dfarchive.errors import RunFolderChanged, ToolError

Stamp = tuple[int, int, int, int, int]
"""File type (``stat.S_IFMT``), inode, size, mtime and ctime in nanoseconds."""

Stamps = dict[bytes, Stamp]
"""Stamps by tar member name (relative to the run folder's parent, no trailing slash)."""


def stamp_folder(run_path: Path, onerror: Callable[[OSError], None] | None = None) -> Stamps:
    """The stamp of every entry in ``run_path`` and of the folder itself (links not followed).

    ``onerror`` is called for a directory that can't be listed (as ``os.walk``'s); an
    entry that vanishes during the walk is left out: its absence is the change.
    """
    stamps: Stamps = {}
    parent = run_path.parent
    _stamp(stamps, parent, str(run_path))
    for directory, dirnames, filenames in os.walk(run_path, onerror=onerror):
        for name in (*dirnames, *filenames):
            _stamp(stamps, parent, os.path.join(directory, name))
    return stamps


def check_unchanged(
    run_path: Path, before: Stamps, archived: frozenset[bytes], *, others: frozenset[bytes]
) -> None:
    """Raise unless the archive holds entries of the run folder only, and every
    ``archived`` entry (directory or regular file) is still as ``before`` stamped it.

    ``others`` are the archive's other names (links, FIFOs, hard links' targets): they
    must be stamped entries too, but may have changed.

    Raises: ToolError naming the first name that is not an entry of the run folder, or
    else RunFolderChanged naming the first changed entry (in name order).
    """
    after = stamp_folder(run_path)
    unstamped = {name for name in others if name not in before}
    checked = sorted(archived | unstamped)
    strangers = [name for name in checked if name not in before and name not in after]
    if strangers:
        more = f" (and {len(strangers) - 1} more)" if len(strangers) > 1 else ""
        raise ToolError(
            f"tar archived {os.fsdecode(strangers[0])!r}{more}, which is not an entry of "
            f"run folder {run_path}: the archive would not hold exactly that folder; "
            "not archived"
        )
    for name in checked:
        old, new = before.get(name), after.get(name)
        if old == new:
            continue
        either = old or new
        assert either is not None  # they differ
        kind = "directory" if stat.S_ISDIR(either[0]) else "file"
        if old is None:
            what = "appeared"
        elif new is None:
            what = "disappeared"
        elif kind == "directory":
            what = "had entries added, removed or renamed"
        else:
            what = "was modified"
        raise RunFolderChanged(
            f"run folder {run_path} changed while it was archived: {kind} "
            f"{os.fsdecode(name)!r} {what}; not archived (retried later)"
        )


def _stamp(stamps: Stamps, parent: Path, path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    name = os.fsencode(os.path.relpath(path, parent))
    stamps[name] = (stat.S_IFMT(st.st_mode), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
