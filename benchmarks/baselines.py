"""What a facility would run instead of dfarchive, and the machine's ceilings.

Re-implemented from published behaviour (no third-party code copied):

* :func:`original` — the ``dataflow_archive`` tool's pipeline: ``tar`` into a Python
  asyncio relay moving 8 KiB chunks (``read(8192)``, ``write``, ``drain``) into
  ``gpg --symmetric --cipher-algo aes256 --passphrase-file KEY --batch --compress-algo
  none --output FILE``, then validation by ``gpg --decrypt ... FILE`` to ``/dev/null``,
  then the key wrapped with ``gpg --encrypt`` and the key file deleted. Several runs
  go through one event loop (``asyncio.gather``), as in the original worker.
  The original writes 256 random bytes as the key file; here it is 64 hex characters,
  because a binary passphrase file fails about 1 time in 128 (DESIGN.md). The key file
  lives in a private temporary folder and is deleted afterwards: baseline only.
* :func:`shell_gpg` — ``tar -cf - RUN | gpg --symmetric`` as an operator types it,
  with gpg's default compression or with ``--compress-algo none`` (the kernel pipes
  tar straight into gpg: no relay at all).
* :func:`ceiling_read`, :func:`ceiling_cipher`, :func:`ceiling_disk` — the limits of
  one run: ``tar -cf - | cat > /dev/null``; AES-256-CFB (OpenPGP's cipher mode) in
  ``cryptography`` over the same byte count, in memory; writing that many bytes to a
  file and ``fsync``, the fastest way the machine can (``O_DIRECT``: no page cache);
  and :func:`cost_hashes` and :func:`ceiling_disk` with ``direct=False``, what SHA-256
  and SHA-1, and writing through the page cache, cost here.
* :func:`ceiling_readback` — the disk's limit for what overlapped validation asks of
  it: the same fsync'd direct writes while a reader trails them, reading each block
  back from the device once it is written (no tar, no cipher, no hash); with
  ``streams=2``, two such files at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import mmap
import os
import secrets
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from benchmarks.harness import CaseContext, CaseResult, Phases
from dfarchive.plumbing.directio import DIRECT_ALIGNMENT

ORIGINAL_RELAY_CHUNK = 8192
CEILING_CHUNK = 4 << 20
TOOL_TIMEOUT = 3600


def tar_argv(run_path: Path) -> list[str]:
    """The tar command dfarchive runs (GNU format, names relative to the parent)."""
    return ["tar", "--format=gnu", "-C", str(run_path.parent), "-cf", "-", "--", run_path.name]


def _check(proc: subprocess.Popen[bytes] | asyncio.subprocess.Process, what: str) -> None:
    if proc.returncode != 0:
        raise RuntimeError(f"{what} exited with status {proc.returncode}")


@contextlib.contextmanager
def key_file(work_dir: Path) -> Iterator[Path]:
    """A passphrase file (64 hex characters, mode 0600) in a private temporary folder,
    removed with its folder when the block exits. For the baselines only."""
    folder = Path(tempfile.mkdtemp(prefix="baseline-key-", dir=work_dir))
    try:
        path = folder / "run.key"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# -- ceilings ----------------------------------------------------------------------------


def ceiling_read(ctx: CaseContext, *, data: str = "run") -> CaseResult:
    """``tar -cf - RUN | cat > /dev/null`` (tar skips reading files when it writes to
    /dev/null itself, hence cat)."""
    run_path, size = ctx.run(data)
    phases = Phases()
    with phases("read"):
        tar = subprocess.Popen(tar_argv(run_path), stdout=subprocess.PIPE)
        assert tar.stdout is not None
        cat = subprocess.Popen(["cat"], stdin=tar.stdout, stdout=subprocess.DEVNULL)
        tar.stdout.close()
        cat.wait(TOOL_TIMEOUT)
        tar.wait(TOOL_TIMEOUT)
    _check(tar, "tar")
    _check(cat, "cat")
    return CaseResult(bytes=size, phases=phases.record)


def ceiling_cipher(ctx: CaseContext, *, data: str = "run") -> CaseResult:
    """AES-256-CFB over as many bytes as the tar stream, one thread, in memory."""
    _, size = ctx.run(data)
    block = memoryview(os.urandom(CEILING_CHUNK))
    out = bytearray(CEILING_CHUNK + 15)
    encryptor = Cipher(algorithms.AES(os.urandom(32)), modes.CFB(bytes(16))).encryptor()
    phases = Phases()
    with phases("encrypt"):
        left = size
        while left:
            n = min(left, CEILING_CHUNK)
            encryptor.update_into(block[:n], out)
            left -= n
        encryptor.finalize()
    return CaseResult(bytes=size, phases=phases.record)


def ceiling_disk(ctx: CaseContext, *, direct: bool = True, data: str = "run") -> CaseResult:
    """Write as many bytes as the tar stream to a new file in 4 MiB writes, fsync;
    ``direct``: with ``O_DIRECT`` from a page-aligned buffer (the tail rounded up to a
    whole block, a few KiB more than the others write)."""
    _, size = ctx.run(data)
    block = mmap.mmap(-1, CEILING_CHUNK)
    block.write(os.urandom(CEILING_CHUNK))
    path = Path(ctx.work_dir) / "ceiling-disk.bin"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | (os.O_DIRECT if direct else 0)
    phases = Phases()
    try:
        with phases("write"), memoryview(block) as view:
            fd = os.open(path, flags, 0o600)
            try:
                left = -(-size // DIRECT_ALIGNMENT) * DIRECT_ALIGNMENT if direct else size
                while left:
                    left -= os.write(fd, view[: min(left, CEILING_CHUNK)])
                os.fsync(fd)
            finally:
                os.close(fd)
    finally:
        path.unlink(missing_ok=True)
    return CaseResult(bytes=size, phases=phases.record)


def ceiling_readback(ctx: CaseContext, *, streams: int = 1, data: str = "run") -> CaseResult:
    """:func:`ceiling_disk` (``O_DIRECT``) into ``streams`` new files at once, each read back
    with ``O_DIRECT`` by a thread that reads a block as soon as its write has returned,
    the way overlapped validation trails the archive's writer; every file is fsynced
    and read to its end when the phase ends. Whole 4 MiB blocks: the last one is
    written whole, up to 4 MiB more than the tar stream."""
    _, size = ctx.run(data)
    blocks = -(-size // CEILING_CHUNK)
    paths = [Path(ctx.work_dir) / f"ceiling-readback-{i}.bin" for i in range(streams)]
    phases = Phases()
    try:
        with phases("write"), contextlib.ExitStack() as stack:
            pool = stack.enter_context(ThreadPoolExecutor(max_workers=2 * streams))
            trails = [_Trail() for _ in paths]
            jobs = [pool.submit(_write_blocks, path, blocks, trail)
                    for path, trail in zip(paths, trails, strict=True)]
            jobs += [pool.submit(_read_back, path, blocks, trail)
                     for path, trail in zip(paths, trails, strict=True)]
            for job in jobs:
                job.result()
    finally:
        for path in paths:
            path.unlink(missing_ok=True)
    return CaseResult(bytes=size * streams, phases=phases.record)


class _Trail:
    """Blocks written so far (or -1: the writer failed), for the trailing reader."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.written = 0

    def advance(self, count: int) -> None:
        with self.changed:
            self.written = count
            self.changed.notify_all()

    def wait_for(self, count: int) -> None:
        with self.changed:
            while 0 <= self.written < count:
                self.changed.wait(TOOL_TIMEOUT)
            if self.written < 0:
                raise RuntimeError("the writer failed")


def _write_blocks(path: Path, blocks: int, trail: _Trail) -> None:
    block = mmap.mmap(-1, CEILING_CHUNK)
    block.write(os.urandom(CEILING_CHUNK))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_DIRECT, 0o600)
    try:
        for i in range(blocks):
            os.write(fd, block)
            trail.advance(i + 1)
        os.fsync(fd)
    except BaseException:
        trail.advance(-1)
        raise
    finally:
        os.close(fd)


def _read_back(path: Path, blocks: int, trail: _Trail) -> None:
    block = mmap.mmap(-1, CEILING_CHUNK)
    trail.wait_for(1)  # the file exists once the first block is written
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECT)
    try:
        for i in range(blocks):
            trail.wait_for(i + 1)
            if os.readv(fd, [block]) != CEILING_CHUNK:
                raise RuntimeError(f"{path}: short read of block {i}")
    finally:
        os.close(fd)


def cost_hashes(ctx: CaseContext, *, data: str = "run") -> CaseResult:
    """SHA-256 then SHA-1 (the OpenPGP MDC) in ``hashlib`` over the same byte count:
    not a ceiling, the price of each digest an archiver takes on the way."""
    _, size = ctx.run(data)
    block = memoryview(os.urandom(CEILING_CHUNK))
    phases = Phases()
    for name in ("sha256", "sha1"):
        digest = hashlib.new(name)
        with phases(name):
            left = size
            while left:
                n = min(left, CEILING_CHUNK)
                digest.update(block[:n])
                left -= n
    return CaseResult(bytes=size, phases=phases.record)


# -- the original tool ---------------------------------------------------------------------


async def _original_archive(run_path: Path, output: Path, key: Path) -> None:
    tar = await asyncio.create_subprocess_exec(
        "tar", "-cf", "-", "-C", str(run_path.parent), run_path.name,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    gpg = await asyncio.create_subprocess_exec(
        "gpg", "--symmetric", "--cipher-algo", "aes256", "--passphrase-file", str(key),
        "--batch", "--compress-algo", "none", "--output", str(output),
        stdin=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert tar.stdout is not None and gpg.stdin is not None
    try:
        while chunk := await tar.stdout.read(ORIGINAL_RELAY_CHUNK):
            gpg.stdin.write(chunk)
            await gpg.stdin.drain()
    finally:
        gpg.stdin.close()
        await gpg.stdin.wait_closed()
    await tar.wait()
    await gpg.wait()
    _check(tar, "tar")
    _check(gpg, "gpg --symmetric")


async def _original_validate(output: Path, key: Path) -> None:
    gpg = await asyncio.create_subprocess_exec(
        "gpg", "--decrypt", "--cipher-algo", "aes256", "--passphrase-file", str(key),
        "--batch", "--quiet", str(output),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    await gpg.wait()
    _check(gpg, "gpg --decrypt")


async def _original_wrap(key: Path, wrapped: Path, fingerprint: str) -> None:
    gpg = await asyncio.create_subprocess_exec(
        "gpg", "--batch", "--trust-model", "always", "--encrypt", "--recipient", fingerprint,
        "--output", str(wrapped), str(key),
    )  # fmt: skip
    await gpg.wait()
    _check(gpg, "gpg --encrypt")


async def _original_run(
    run_path: Path, run_id: str, ctx: CaseContext, phases: Phases | None
) -> None:
    work = Path(ctx.work_dir)
    output = work / f"{run_id}.tar.gpg"
    with key_file(work) as key:
        with phases("archive") if phases else contextlib.nullcontext():
            await _original_archive(run_path, output, key)
        with phases("validate") if phases else contextlib.nullcontext():
            await _original_validate(output, key)
        with phases("wrap") if phases else contextlib.nullcontext():
            await _original_wrap(key, work / f"{run_id}.key.gpg", ctx.fingerprint)


def original(ctx: CaseContext, *, runs: int = 1, data: str = "run") -> CaseResult:
    """The original pipeline for ``runs`` runs at once in one event loop (see module doc)."""
    run_path, size = ctx.run(data)
    run_ids = [f"original-{i}" for i in range(runs)]
    phases = Phases()
    detail = Phases() if runs == 1 else None  # per-step times only mean something alone

    async def main() -> None:
        await asyncio.gather(*(_original_run(run_path, r, ctx, detail) for r in run_ids))

    try:
        with phases("all"):
            asyncio.run(main())
        archive_bytes = (Path(ctx.work_dir) / f"{run_ids[0]}.tar.gpg").stat().st_size
    finally:
        for run_id in run_ids:
            for suffix in (".tar.gpg", ".key.gpg"):
                (Path(ctx.work_dir) / f"{run_id}{suffix}").unlink(missing_ok=True)
    if detail is not None:
        phases.record.update(detail.record)
    return CaseResult(
        bytes=size * runs,
        phases=phases.record,
        extra={"archive_bytes": archive_bytes},
    )


# -- tar | gpg ---------------------------------------------------------------------------


def shell_gpg(ctx: CaseContext, *, compress: bool, data: str = "run") -> CaseResult:
    """``tar -cf - RUN | gpg --batch --symmetric --cipher-algo AES256 -o FILE``, with
    gpg's default compression or ``--compress-algo none``."""
    run_path, size = ctx.run(data)
    output = Path(ctx.work_dir) / "shell.tar.gpg"
    compression = [] if compress else ["--compress-algo", "none"]
    phases = Phases()
    try:
        with key_file(Path(ctx.work_dir)) as key, phases("archive"):
            tar = subprocess.Popen(
                ["tar", "-cf", "-", "-C", str(run_path.parent), run_path.name],
                stdout=subprocess.PIPE,
            )
            assert tar.stdout is not None
            gpg = subprocess.Popen(
                ["gpg", "--batch", "--symmetric", "--cipher-algo", "AES256",
                 "--passphrase-file", str(key), *compression, "-o", str(output)],
                stdin=tar.stdout,
            )  # fmt: skip
            tar.stdout.close()
            gpg.wait(TOOL_TIMEOUT)
            tar.wait(TOOL_TIMEOUT)
        _check(tar, "tar")
        _check(gpg, "gpg --symmetric")
        archive_bytes = output.stat().st_size
    finally:
        output.unlink(missing_ok=True)
    return CaseResult(
        bytes=size,
        phases=phases.record,
        extra={"archive_bytes": archive_bytes, "compression_ratio": size / archive_bytes},
    )
