"""A description of the machine and tools a benchmark ran on (for the JSON report)."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import cryptography
from cryptography.hazmat.backends.openssl.backend import backend as openssl_backend


def _first_line(argv: list[str]) -> str:
    """The first line ``argv`` prints, or why it could not run."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except OSError as error:
        return f"unavailable ({error})"
    return (out.stdout or out.stderr).splitlines()[0] if (out.stdout or out.stderr) else ""


def _meminfo_bytes(key: str) -> int | None:
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    match = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _filesystem(path: Path) -> str:
    """The filesystem type and device holding ``path`` (from ``df``)."""
    try:
        out = subprocess.run(
            ["df", "--output=fstype,source", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout
    except OSError as error:
        return f"unavailable ({error})"
    return " ".join(out.split()[2:])  # skip the header line


def code_version(repo: Path) -> dict[str, Any]:
    """The commit measured, and the package files that differ from it (working tree)."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", "-C", str(repo), *args],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except OSError:
            return None
        return out.stdout if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    changed = git("status", "--porcelain", "--", "dfarchive") or ""
    return {
        "commit": commit.strip() if commit else None,
        "dfarchive_changes": [line[3:] for line in changed.splitlines() if len(line) > 3],
    }


def package_tunables() -> dict[str, Any]:
    """dfarchive's buffer and chunk sizes in force for this run (None: no longer there)."""
    import inspect

    from dfarchive.archiving import validate
    from dfarchive.archiving.engines import inprocess
    from dfarchive.plumbing import childproc

    pump = getattr(childproc, "pump", None)
    return {
        "inprocess.CHUNK_SIZE": getattr(inprocess, "CHUNK_SIZE", None),
        "childproc.PIPE_SIZE": getattr(childproc, "PIPE_SIZE", None),
        "childproc.pump chunk_size": (
            inspect.signature(pump).parameters["chunk_size"].default if pump else None
        ),
        "validate.READ_SIZE": getattr(validate, "READ_SIZE", None),
    }


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded."""
    return [round(x, 2) for x in os.getloadavg()]


def describe(data_dir: Path) -> dict[str, Any]:
    """Cores, memory, CPU, kernel and tool versions; the filesystem of ``data_dir``."""
    gpg_lines = (
        subprocess.run(
            ["gpg", "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout.splitlines()
        if shutil.which("gpg")
        else []
    )
    return {
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "memory_bytes": _meminfo_bytes("MemTotal"),
        "memory_available_bytes": _meminfo_bytes("MemAvailable"),
        "cpu_model": _cpu_model(),
        "cpu_flags_aes": "aes" in (_read("/proc/cpuinfo") or "").split(),
        "kernel": platform.release(),
        "os": _first_line(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "python": sys.version.split()[0],
        "gpg": gpg_lines[0] if gpg_lines else "unavailable",
        "libgcrypt": next((line for line in gpg_lines if "libgcrypt" in line), ""),
        "tar": _first_line(["tar", "--version"]),
        "cryptography": cryptography.__version__,
        "openssl": openssl_backend.openssl_version_text(),
        "node": _first_line(["node", "--version"]) if shutil.which("node") else None,
        "pipe_max_size": int(_read("/proc/sys/fs/pipe-max-size") or 0) or None,
        "data_filesystem": _filesystem(data_dir),
    }
