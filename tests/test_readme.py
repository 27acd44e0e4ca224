"""The README's quick start, run exactly as a newcomer would: its fenced commands,
verbatim, in a fresh copy of the working tree, with a fresh virtualenv and a fresh
``pip install -e .`` (no reuse of the test environment: that is what is tested).

Then: the demo run is ``encrypted`` in ``dfarchive status --json``, and the restored
tree is identical to the demo run folder (contents, modes, mtimes, links).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.gpg import tree_snapshot

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DEMO_RUN = "240101_A00001_0001_AHDEMOXXXX"


def quick_start_commands(text: str) -> list[str]:
    """The ``sh`` blocks of the "Quick start" section, in order, minus the one that
    runs the test suite (this test is part of it)."""
    section = re.search(r"^## Quick start.*?$(.*?)^## ", text, re.S | re.M)
    assert section, "README.md has no '## Quick start' section"
    blocks = re.findall(r"^```sh\n(.*?)^```", section.group(1), re.S | re.M)
    return [block for block in blocks if ".ci/run" not in block]


def working_tree_copy(dest: Path) -> None:
    """The files of the working tree as git sees them (tracked and new, not ignored)."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    for name in filter(None, listing.decode().split("\0")):
        source = ROOT / name
        if source.is_file():  # (a tracked file deleted in the working tree is skipped)
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


def test_quick_start_parses_into_the_expected_commands():
    commands = quick_start_commands(README.read_text())
    assert len(commands) == 2, commands
    install_and_run, restore = commands
    assert "pip install" in install_and_run and "dataflow_archive" in install_and_run
    assert "dfarchive status" in install_and_run
    assert "dfarchive restore" in restore and DEMO_RUN in restore


@pytest.mark.slow
def test_readme_quick_start_works_on_a_fresh_copy(tmp_path_factory):
    copy = tmp_path_factory.mktemp("readme")  # short: gpg-agent socket paths are limited
    working_tree_copy(copy)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "GNUPGHOME")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    try:
        for command in quick_start_commands(README.read_text()):
            result = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", command],
                cwd=copy,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert result.returncode == 0, (
                f"README command failed ({result.returncode}):\n{command}\n"
                f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
            )
            if "dfarchive status" in command:
                assert DEMO_RUN in result.stdout and "encrypted" in result.stdout

        status = subprocess.run(
            [str(copy / ".venv/bin/dfarchive"), "status", "--json", "-c", "demo/df_archive.yaml"],
            cwd=copy,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        docs = {doc["_id"]: doc for doc in json.loads(status.stdout)}
        assert list(docs) == [DEMO_RUN]  # the other demo run is still "transferring"
        assert docs[DEMO_RUN]["status"] == "encrypted"
        source = copy / "demo" / "sequencing" / "NovaSeq_A" / DEMO_RUN
        restored = copy / "demo" / "restored" / DEMO_RUN
        assert tree_snapshot(restored) == tree_snapshot(source)
    finally:
        if (copy / "demo" / "gnupg").is_dir():
            subprocess.run(
                ["gpgconf", "--kill", "all"],
                env={**env, "GNUPGHOME": str(copy / "demo" / "gnupg")},
                capture_output=True,
                timeout=30,
            )
