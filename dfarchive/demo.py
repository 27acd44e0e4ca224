"""``python -m dfarchive.demo DIR``: a self-contained playground for newcomers.

Creates under DIR: two small sequencing run folders (one complete, one still
"transferring" without its sentinel), a throwaway GnuPG home with a recipient key
(no passphrase: demo only), output folders, and ``DIR/df_archive.yaml`` on embedded
defaults (SQLite state, in-process archiving). Safe to run again: existing parts are
kept. Prints the commands to try next.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import yaml

from dfarchive.archiving.pipeline import SENTINEL

DEMO_UID = "dfarchive demo <demo@dfarchive.invalid>"


def make_run(root: Path, name: str, *, complete: bool) -> None:
    run = root / name
    lane = run / "Data" / "Intensities" / "BaseCalls" / "L001" / "C1.1"
    if run.exists():
        return
    lane.mkdir(parents=True)
    (run / "RunInfo.xml").write_text(f'<?xml version="1.0"?>\n<RunInfo Id="{name}"/>\n')
    for tile in range(1, 9):
        (lane / f"L001_{tile}.cbcl").write_bytes(os.urandom(256 * 1024))
    (run / "InterOp").mkdir()
    (run / "InterOp" / "QMetricsOut.bin").write_bytes(bytes(4096))
    if complete:
        (run / SENTINEL).write_text("0\n")


def make_gnupg_home(home: Path) -> None:
    """A GnuPG home holding one passphrase-less recipient key (made once)."""
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    env = {**os.environ, "GNUPGHOME": str(home)}

    def gpg(*args: str) -> str:
        return subprocess.run(
            ["gpg", "--batch", "--passphrase", "", *args],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    try:
        gpg("--list-keys", DEMO_UID)
        return
    except subprocess.CalledProcessError:
        pass
    gpg("--quick-gen-key", DEMO_UID, "ed25519", "sign", "never")
    colons = gpg("--with-colons", "--list-keys", DEMO_UID)
    fingerprint = next(line.split(":")[9] for line in colons.splitlines() if line[:4] == "fpr:")
    gpg("--quick-add-key", fingerprint, "cv25519", "encr", "never")


def create_demo(root: Path) -> Path:
    """Build the playground under ``root``; return the config file's path."""
    root = root.resolve()
    sequencer = root / "sequencing" / "NovaSeq_A"
    sequencer.mkdir(parents=True, exist_ok=True)
    make_run(sequencer, "240101_A00001_0001_AHDEMOXXXX", complete=True)
    make_run(sequencer, "240102_A00001_0002_BHDEMOXXXX", complete=False)
    for name in ("archives", "state"):
        (root / name).mkdir(exist_ok=True)
    (root / "run_keys").mkdir(mode=0o700, exist_ok=True)
    make_gnupg_home(root / "gnupg")
    config = root / "df_archive.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "statusdb": {"url": "sqlite:state/runs.sqlite3"},
                "sequencing_path": "sequencing",
                "destination_path": "archives",
                "keys_path": "run_keys",
                "gnupg_home": "gnupg",
                "gpg_receiver": DEMO_UID,
                "scan_interval": 5,
            },
            sort_keys=False,
        )
    )
    return config


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m dfarchive.demo", description=__doc__)
    parser.add_argument("dir", nargs="?", default="demo", help="where to build it (./demo)")
    args = parser.parse_args()
    config = create_demo(Path(args.dir))
    print(f"demo ready: {config}", file=sys.stderr)


if __name__ == "__main__":
    main()
