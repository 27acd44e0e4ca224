"""Seeded generator of realistic sequencing run folders for the benchmarks.

Usage (either form)::

    python benchmarks/make_run.py 300MiB --seed 1 [--root benchmarks/data]
    python -m benchmarks.make_run 3GiB --seed 1

The folder looks like an Illumina run: ``Data/Intensities/BaseCalls/L00x/C*.1/`` with
40 large incompressible ``.cbcl`` files (most of the bytes), thousands of small files
(thumbnails, ``.filter``/``.locs``, InterOp, XML and logs; the text ones compressible),
empty marker files, an empty folder, two symlinks and the sentinel
``.metadata_rsync_exitcode``. The small files are the same whatever the size (as in real
runs, where the file count does not grow with the yield) unless the size is too small
to hold them, then they are thinned out.

The same size and seed give byte-identical contents, names and mtimes, so the tar
stream is identical too. A folder already built with the same parameters is reused
(its manifest ``<name>.manifest.json`` sits beside it).

This module imports nothing from the rest of ``benchmarks`` so it also runs as a script.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

GENERATOR_VERSION = 1
SENTINEL = ".metadata_rsync_exitcode"
SENTINEL_BODY = b"0\n"
FIXED_MTIME = 1_735_000_000
LANES = 4
BIG_CYCLES = 5  # cycles holding .cbcl files
SURFACES = 2
BIG_FILES = LANES * BIG_CYCLES * SURFACES  # 40
THUMB_CYCLES = 30
THUMB_TILES = 6
TILES = 100
INTEROP_CYCLES = 150
LOG_FILES = 200
EMPTY_FILES = 24
#: Share of the run size the small files may take at most (they are thinned out beyond).
SMALL_SHARE = 0.15
WRITE_CHUNK = 8 << 20
DEFAULT_ROOT = Path(__file__).resolve().parent / "data"

_UNITS = {"": 1, "B": 1}
for _power, _letter in enumerate("KMGT", start=1):
    _UNITS[_letter] = _UNITS[f"{_letter}B"] = 1000**_power
    _UNITS[f"{_letter}IB"] = 1024**_power


@dataclass(frozen=True)
class RunManifest:
    """What :func:`build_run` made."""

    path: str
    name: str
    size: int  # requested size
    seed: int
    bytes: int  # sum of regular file sizes
    files: int  # regular files
    big_files: int
    small_files: int
    empty_files: int
    symlinks: int
    directories: int
    generator_version: int = GENERATOR_VERSION


def parse_size(text: str) -> int:
    """``"300MiB"``, ``"3GiB"``, ``"1.5G"``, ``"1000000"`` → bytes.

    Raises:
        ValueError: not a size.
    """
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).upper() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(f"not a size: {text!r} (e.g. 300MiB, 3GiB, 1.5G)")
    return int(float(match.group(1)) * _UNITS[unit])


def run_name(size: int, seed: int) -> str:
    """An Illumina-style run folder name unique to (size, seed)."""
    return f"250301_A01234_{seed % 10000:04d}_BH{size >> 20}MXBENCH"


def build_run(size: int, *, seed: int, root: Path = DEFAULT_ROOT) -> RunManifest:
    """Build (or reuse) the run folder of ``size`` bytes for ``seed`` under ``root``."""
    root = Path(root)
    name = run_name(size, seed)
    path = root / name
    manifest_path = root / f"{name}.manifest.json"
    if path.is_dir() and manifest_path.is_file():
        stored = json.loads(manifest_path.read_text())
        if stored.get("generator_version") == GENERATOR_VERSION and stored.get("path") == str(path):
            return RunManifest(**stored)
    if path.exists():
        shutil.rmtree(path)
    manifest_path.unlink(missing_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    builder = _Builder(path, seed)
    builder.small_files(size)
    builder.big_files(max(size - builder.bytes - len(SENTINEL_BODY), BIG_FILES))
    builder.finish()
    manifest = RunManifest(
        path=str(path),
        name=name,
        size=size,
        seed=seed,
        bytes=builder.bytes,
        files=builder.files,
        big_files=BIG_FILES,
        small_files=builder.files - BIG_FILES - builder.empty,
        empty_files=builder.empty,
        symlinks=builder.symlinks,
        directories=builder.directories,
    )
    manifest_path.write_text(json.dumps(asdict(manifest), indent=2) + "\n")
    return manifest


class _Builder:
    """Writes the files of one run folder, deterministically from ``seed``."""

    def __init__(self, path: Path, seed: int) -> None:
        self.path = path
        self.seed = seed
        self.rng = random.Random(seed)
        self.bytes = self.files = self.empty = self.symlinks = 0
        self.directories = 0
        self._made: set[Path] = set()

    # -- content -------------------------------------------------------------------

    def _key(self, rel: str) -> bytes:
        return hashlib.sha256(f"{self.seed}/{rel}".encode()).digest()

    def _write(self, rel: str, chunks: list[bytes] | bytes) -> None:
        target = self.path / rel
        if target.parent not in self._made:
            target.parent.mkdir(parents=True, exist_ok=True)
            self._made.add(target.parent)
        data = [chunks] if isinstance(chunks, bytes) else chunks
        with open(target, "wb") as f:
            for chunk in data:
                f.write(chunk)
        size = sum(len(chunk) for chunk in data)
        self.bytes += size
        self.files += 1
        self.empty += size == 0

    def random_file(self, rel: str, size: int) -> None:
        """Incompressible bytes (AES-CTR keystream keyed by seed and path)."""
        encryptor = Cipher(algorithms.AES(self._key(rel)), modes.CTR(bytes(16))).encryptor()
        target = self.path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        zeros = bytes(min(size, WRITE_CHUNK))
        with open(target, "wb") as f:
            left = size
            while left:
                n = min(left, WRITE_CHUNK)
                f.write(encryptor.update(zeros[:n]))
                left -= n
        self.bytes += size
        self.files += 1

    def text_file(self, rel: str, lines: int, template: str) -> None:
        """Compressible text: ``template`` formatted with a counter and seeded numbers."""
        rng = random.Random(self._key(rel))
        body = "".join(
            template.format(i=i, t=1000 + i * 7, v=rng.randrange(100000), w=rng.random())
            for i in range(lines)
        )
        self._write(rel, body.encode())

    def records_file(self, rel: str, records: int) -> None:
        """InterOp-like binary: fixed-layout records with small random fields."""
        rng = random.Random(self._key(rel))
        out = bytearray(b"\x06\x0a")
        for i in range(records):
            out += (i % 65536).to_bytes(2, "little") + bytes((1, 0, i % 251, 0))
            out += rng.randrange(1 << 16).to_bytes(2, "little") + bytes(2)
        self._write(rel, bytes(out))

    # -- layout ----------------------------------------------------------------------

    def small_files(self, size: int) -> None:
        """Everything but the .cbcl files, thinned to fit SMALL_SHARE of ``size``."""
        keep = min(1.0, SMALL_SHARE * size / (40 << 20))  # the full plan is about 37 MiB
        rng = self.rng

        def take(count: int) -> int:
            return max(1, round(count * keep))

        calls = "Data/Intensities/BaseCalls"
        self.text_file("RunInfo.xml", 40, '<Read Number="{i}" NumCycles="{v}" />\n')
        self.text_file("RunParameters.xml", 300, "  <Setting{i}>{v}</Setting{i}>\n")
        self.text_file("Config/SampleSheet.csv", 400, "S{i},Sample_{v},A{v}T,index{i}\n")
        self.text_file("Config/Effective.cfg", 120, "key_{i} = {w:.6f}\n")
        self.text_file("Recipe/recipe.xml", 800, '<Step id="{i}" time="{t}" reagent="{v}"/>\n')
        for marker in ("RTAComplete.txt", "CopyComplete.txt", "SequenceComplete.txt"):
            self.text_file(marker, 1, "done {t}\n")
        for i in range(take(LOG_FILES)):
            self.text_file(
                f"Logs/{i:04d}_Instrument.log",
                rng.randrange(50, 1200),
                "2025-03-01 10:{i:05d} INFO  cycle {i} temperature {w:.3f} flow {v}\n",
            )
        for i in range(take(EMPTY_FILES)):
            self._write(f"Logs/markers/step_{i:02d}.done", b"")
        for name in ("ExtractionMetricsOut", "QMetricsOut", "TileMetricsOut", "IndexMetricsOut"):
            self.records_file(f"InterOp/{name}.bin", rng.randrange(4000, 30000))
        for cycle in range(1, take(INTEROP_CYCLES) + 1):
            for name in ("ErrorMetricsOut", "CorrectedIntMetricsOut", "ImageMetricsOut"):
                self.records_file(f"InterOp/C{cycle}.1/{name}.bin", rng.randrange(100, 800))
        for lane in range(1, LANES + 1):
            for tile in range(1, take(TILES) + 1):
                stem = f"s_{lane}_{1100 + tile}"
                self.random_file(f"{calls}/L00{lane}/{stem}.filter", rng.randrange(2000, 8000))
                self.random_file(
                    f"Data/Intensities/L00{lane}/{stem}.locs", rng.randrange(4000, 16000)
                )
            for cycle in range(1, take(THUMB_CYCLES) + 1):
                for tile in range(1, THUMB_TILES + 1):
                    for base in "acgt":
                        self.random_file(
                            f"Thumbnail_Images/L00{lane}/C{cycle}.1/"
                            f"s_{lane}_{1100 + tile}_{base}.jpg",
                            rng.randrange(3000, 12000),
                        )
        (self.path / "Data/Intensities/Offsets").mkdir(parents=True)  # an empty folder
        os.symlink("Config/SampleSheet.csv", self.path / "SampleSheet.csv")
        os.symlink("C1.1", self.path / calls / "L001" / "first_cycle")
        self.symlinks = 2

    def big_files(self, total: int) -> None:
        """The 40 .cbcl files sharing ``total`` bytes, sizes varied by up to ±20 %."""
        weights = [self.rng.uniform(0.8, 1.2) for _ in range(BIG_FILES)]
        scale = total / sum(weights)
        sizes = [max(1, int(w * scale)) for w in weights]
        sizes[-1] += total - sum(sizes)
        i = 0
        for lane in range(1, LANES + 1):
            for cycle in range(1, BIG_CYCLES + 1):
                for surface in range(1, SURFACES + 1):
                    self.random_file(
                        f"Data/Intensities/BaseCalls/L00{lane}/C{cycle}.1/L00{lane}_{surface}.cbcl",
                        sizes[i],
                    )
                    i += 1

    def finish(self) -> None:
        """Write the sentinel; give every entry a fixed mtime (children first)."""
        self._write(SENTINEL, SENTINEL_BODY)
        entries = sorted(self.path.rglob("*"), key=lambda p: len(p.parts), reverse=True)
        self.directories = sum(1 for e in entries if e.is_dir() and not e.is_symlink())
        for i, entry in enumerate([*entries, self.path]):
            os.utime(entry, (FIXED_MTIME, FIXED_MTIME + i % 86400), follow_symlinks=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("size", help="total size, e.g. 300MiB or 3GiB")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="parent folder")
    args = parser.parse_args(argv)
    try:
        size = parse_size(args.size)
    except ValueError as error:
        parser.error(str(error))
    manifest = build_run(size, seed=args.seed, root=args.root)
    json.dump(asdict(manifest), sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
