"""What cases need beyond Python and the package, checked before the first case runs.

A case (or the scan benchmark, or the chart) whose requirement is missing is skipped
with one line saying how to enable it; the others run and their results are written.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from benchmarks.couchserver import server_missing


@dataclass(frozen=True)
class Requirement:
    """Something a case needs: ``missing()`` returns how to enable it, or None."""

    name: str
    missing: Callable[[], str | None]


def _gpg_missing() -> str | None:
    if shutil.which("gpg") and shutil.which("gpgconf"):
        return None
    return "needs GnuPG: install it (Debian/Ubuntu: `apt-get install gnupg`)"


def _matplotlib_missing() -> str | None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "needs matplotlib: `pip install -e '.[bench]'`"
    return None


REQUIREMENTS = {
    requirement.name: requirement
    for requirement in (
        Requirement("gpg", _gpg_missing),
        Requirement("couchdb", server_missing),
        Requirement("matplotlib", _matplotlib_missing),
    )
}


def unmet(needs: Iterable[str]) -> str | None:
    """How to enable what ``needs`` names and is missing (joined), or None if all is there."""
    reasons = [why for name in needs if (why := REQUIREMENTS[name].missing()) is not None]
    return "; ".join(reasons) or None
