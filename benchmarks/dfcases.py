"""dfarchive measured through its real code.

* :func:`end_to_end` — ``pipeline.archive_run`` (pre-flight, archive, fsync, validate,
  key wrap, publish) for one run, or for several at once: on a thread pool, the way
  ``dataflow_archive`` runs ``concurrency`` runs in one process (and a worker its
  ``--threads``), or each in a process of its own, the way ``dramatiq dfarchive.actors
  --processes N --threads 1`` runs them.
* :func:`engine_steps` — one engine's ``encrypt`` into a file + ``fsync`` (the archive
  step alone), then ``validate_archive`` with each method on that archive.
* :func:`gpg_engine_relay` — the ``gpg`` engine with its relay's chunk size changed
  (``childproc.pump(chunk_size=...)``); :func:`splice_relay` — the same tar and gpg
  commands joined by ``os.splice`` (no copy through Python, but nothing measured on
  the way: a lower bound on the relay's cost, not a working engine).
* :func:`inprocess_chunk` — the ``inprocess`` engine with another ``CHUNK_SIZE`` (read
  size and OpenPGP partial-body size).
* :func:`restore` — restoring one archive with the stock tools' pipeline and with
  dfarchive's ``restore``, one after the other.

The two sweeps set one module attribute of the package in the case's own process;
they fail loudly if the package no longer has it.
"""

from __future__ import annotations

import fcntl
import functools
import multiprocessing
import os
import shutil
import subprocess
import threading
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

from benchmarks.harness import CaseContext, CaseResult, Phases, peak_rss_kib
from dfarchive.archiving.engines import get_engine
from dfarchive.archiving.engines.base import EncryptResult
from dfarchive.archiving.gpgcli import symmetric_encrypt_command
from dfarchive.archiving.keys import (
    Recipient,
    new_run_key,
    resolve_recipient,
    unwrap_key,
    wrap_key,
)
from dfarchive.archiving.pipeline import ArchiveSettings, archive_run
from dfarchive.archiving.tarstream import tar_command
from dfarchive.archiving.validate import validate_archive
from dfarchive.ops.restore import restore_archive
from dfarchive.plumbing import childproc
from dfarchive.plumbing.childproc import secret_pipe
from dfarchive.plumbing.directio import open_direct

SPLICE_CHUNK = 1 << 20
TOOL_TIMEOUT = 3600


def default_settings(work_dir: Path, gnupg_home: str) -> ArchiveSettings:
    """The pipeline's settings with the package defaults (engine, validation)."""
    return ArchiveSettings(
        destination_path=work_dir / "archives",
        keys_path=work_dir / "keys",
        gnupg_home=Path(gnupg_home),
    )


def end_to_end(
    ctx: CaseContext,
    *,
    engine: str | None = None,
    validate_with: str | None = None,
    runs: int = 1,
    processes: bool = False,
    data: str = "run",
) -> CaseResult:
    """``archive_run`` for ``runs`` runs of the same folder at once (None: defaults);
    ``processes``: each run in a worker process of its own instead of a thread."""
    run_path, _ = ctx.run(data)
    work = Path(ctx.work_dir)
    settings = default_settings(work, ctx.gnupg_home)
    settings = replace(
        settings,
        engine=engine or settings.engine,
        validate_with=validate_with or settings.validate_with,
    )
    for folder in (settings.destination_path, settings.keys_path):
        folder.mkdir(mode=0o700)
    recipient = resolve_recipient(ctx.fingerprint, gnupg_home=ctx.gnupg_home)
    archive = functools.partial(_archive_one, run_path, settings, recipient)
    run_ids = [f"{run_path.name}-{i}" for i in range(runs)]
    phases = Phases()
    try:
        with phases("all"):
            if runs == 1:
                done = [archive(run_ids[0])]
            else:
                with _pool(runs, processes) as pool:  # exits once its workers are reaped
                    done = list(pool.map(archive, run_ids))
    finally:
        shutil.rmtree(settings.destination_path, ignore_errors=True)
        shutil.rmtree(settings.keys_path, ignore_errors=True)
    records = [record for record, _ in done]
    return CaseResult(
        bytes=sum(record["plaintext_size"] for record in records),
        phases=phases.record,
        extra={
            "engine": settings.engine,
            "validate_with": settings.validate_with,
            "archive_bytes": records[0]["size"],
            "run_seconds": [record["seconds"] for record in records],
        },
        worker_peak_rss_kib=max(rss for _, rss in done) if processes else 0,
    )


def _pool(workers: int, processes: bool) -> Executor:
    """Threads, or freshly started processes (no fork of a process holding threads)."""
    if processes:
        return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    return ThreadPoolExecutor(workers)


def _archive_one(
    run_path: Path, settings: ArchiveSettings, recipient: Recipient, run_id: str
) -> tuple[dict[str, Any], int]:
    """One run's record, and the peak RSS of the process that archived it."""
    return archive_run(run_id, run_path, settings, recipient), peak_rss_kib()


def _encrypt_to(path: Path, engine: str, run_path: Path, passphrase: bytes) -> EncryptResult:
    """The engine into a new file, fsynced (as the pipeline does before validating)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    fd = open_direct(path, flags, 0o640, direct=ArchiveSettings.direct_io)
    try:
        result = get_engine(engine).encrypt(run_path, fd, passphrase)
        os.fsync(fd)
    finally:
        os.close(fd)
    return result


def engine_steps(ctx: CaseContext, *, engine: str, data: str = "run") -> CaseResult:
    """Archive step alone with ``engine``, then each validation method on its output."""
    run_path, _ = ctx.run(data)
    path = Path(ctx.work_dir) / f"steps-{engine}.tar.gpg"
    passphrase = new_run_key()
    phases = Phases()
    try:
        with phases("encrypt"):
            result = _encrypt_to(path, engine, run_path, passphrase)
        for method in ("inprocess", "gpg"):
            with phases(f"validate_{method}"):
                validate_archive(path, passphrase, result, method=method)
    finally:
        path.unlink(missing_ok=True)
    return CaseResult(
        bytes=result.plaintext_size,
        phases=phases.record,
        extra={"archive_bytes": result.archive_size},
    )


def _patched(module: ModuleType, name: str, value: object) -> None:
    if not hasattr(module, name):
        raise RuntimeError(
            f"{module.__name__}.{name} is gone: update benchmarks/dfcases.py to the package"
        )
    setattr(module, name, value)


def _encrypt_only(ctx: CaseContext, engine: str, data: str, **extra: Any) -> CaseResult:
    run_path, _ = ctx.run(data)
    path = Path(ctx.work_dir) / f"sweep-{engine}.tar.gpg"
    phases = Phases()
    try:
        with phases("encrypt"):
            result = _encrypt_to(path, engine, run_path, new_run_key())
    finally:
        path.unlink(missing_ok=True)
    return CaseResult(bytes=result.plaintext_size, phases=phases.record, extra=extra)


def gpg_engine_relay(ctx: CaseContext, *, chunk: int, data: str = "run") -> CaseResult:
    """The ``gpg`` engine (archive step alone) relaying ``chunk`` bytes at a time."""
    from dfarchive.archiving.engines import gpg as gpg_engine

    _patched(gpg_engine, "pump", functools.partial(childproc.pump, chunk_size=chunk))
    return _encrypt_only(ctx, "gpg", data, chunk=chunk, pipe_size=childproc.PIPE_SIZE)


def inprocess_chunk(ctx: CaseContext, *, chunk: int, data: str = "run") -> CaseResult:
    """The ``inprocess`` engine (archive step alone) with ``CHUNK_SIZE = chunk``."""
    from dfarchive.archiving.engines import inprocess

    _patched(inprocess, "CHUNK_SIZE", chunk)
    return _encrypt_only(ctx, "inprocess", data, chunk=chunk)


def _enlarge(fd: int) -> None:
    fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, childproc.PIPE_SIZE)


def _splice_all(source: int, sink: int) -> int:
    moved = 0
    while n := os.splice(source, sink, SPLICE_CHUNK):
        moved += n
    return moved


def splice_relay(ctx: CaseContext, *, data: str = "run") -> CaseResult:
    """tar → ``os.splice`` → gpg (the engine's command) → ``os.splice`` → file, fsync."""
    run_path, _ = ctx.run(data)
    path = Path(ctx.work_dir) / "splice.tar.gpg"
    phases = Phases()
    moved: list[int] = []
    try:
        with phases("encrypt"), secret_pipe(new_run_key() + b"\n") as passphrase_fd:
            tar = subprocess.Popen(
                tar_command(run_path), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE
            )
            gpg = subprocess.Popen(
                symmetric_encrypt_command(passphrase_fd),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                pass_fds=(passphrase_fd,),
            )
            assert tar.stdout and gpg.stdin and gpg.stdout
            for pipe in (tar.stdout, gpg.stdin, gpg.stdout):
                _enlarge(pipe.fileno())

            def feed() -> None:
                try:
                    moved.append(_splice_all(tar.stdout.fileno(), gpg.stdin.fileno()))
                finally:
                    gpg.stdin.close()

            feeder = threading.Thread(target=feed, name="splice-feed")
            feeder.start()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
            try:
                _splice_all(gpg.stdout.fileno(), fd)
                os.fsync(fd)
            finally:
                os.close(fd)
            feeder.join()
            tar.wait(TOOL_TIMEOUT)
            gpg.wait(TOOL_TIMEOUT)
        for proc, what in ((tar, "tar"), (gpg, "gpg")):
            if proc.returncode != 0:
                raise RuntimeError(f"{what} exited with status {proc.returncode}")
    finally:
        path.unlink(missing_ok=True)
    if not moved:
        raise RuntimeError("the splice relay did not finish")
    return CaseResult(bytes=moved[0], phases=phases.record, extra={"chunk": SPLICE_CHUNK})


def _settle(path: Path) -> None:
    """Before a restore: write back what the machine holds dirty (so the other side's
    files are not written back during this one), and make the next reader of ``path``
    read it from the device (an archive being restored is cold)."""
    os.sync()
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _stock_restore(archive: Path, key: Path, into: Path, gnupg_home: str) -> None:
    """The README's stock pipeline: ``gpg -d KEY | gpg --passphrase-fd 0 -d ARCHIVE |
    tar -x -C INTO``."""
    env = {**os.environ, "GNUPGHOME": gnupg_home}
    unwrap = subprocess.Popen(
        ["gpg", "--batch", "--quiet", "-d", str(key)], stdout=subprocess.PIPE, env=env
    )
    decrypt = subprocess.Popen(
        ["gpg", "--batch", "--quiet", "--pinentry-mode", "loopback", "--passphrase-fd", "0",
         "-d", str(archive)],
        stdin=unwrap.stdout, stdout=subprocess.PIPE, env=env,
    )  # fmt: skip
    assert unwrap.stdout is not None and decrypt.stdout is not None
    unwrap.stdout.close()
    tar = subprocess.Popen(["tar", "-x", "-C", str(into)], stdin=decrypt.stdout)
    decrypt.stdout.close()
    for proc, what in ((tar, "tar -x"), (decrypt, "gpg -d ARCHIVE"), (unwrap, "gpg -d KEY")):
        if proc.wait(TOOL_TIMEOUT) != 0:
            raise RuntimeError(f"{what} exited with status {proc.returncode}")


def restore(ctx: CaseContext, *, data: str = "run") -> CaseResult:
    """Restoring one archive (made untimed by the default engine, key wrapped with gpg,
    as ``archive_run`` leaves them), timed twice, each time from a cold archive and with
    nothing left to write back, in turn first (even rounds: stock first): ``stock``, the
    README's ``gpg -d KEY | gpg -d ARCHIVE | tar -x``; ``dfarchive``, what ``dfarchive
    restore`` does (unwrap the key, then :func:`dfarchive.ops.restore.restore_archive` with
    the recorded size and SHA-256: MDC, SHA-256 and safe extraction checked)."""
    run_path, _ = ctx.run(data)
    work = Path(ctx.work_dir) / "restore"
    work.mkdir(mode=0o700)
    archive, key = work / f"{run_path.name}.tar.gpg", work / f"{run_path.name}.key.gpg"
    phases = Phases()
    try:
        passphrase = new_run_key()
        result = _encrypt_to(archive, ArchiveSettings.engine, run_path, passphrase)
        recipient = resolve_recipient(ctx.fingerprint, gnupg_home=ctx.gnupg_home)
        key.write_bytes(wrap_key(passphrase, recipient, gnupg_home=ctx.gnupg_home))

        def stock() -> None:
            (work / "stock").mkdir()
            _stock_restore(archive, key, work / "stock", ctx.gnupg_home)

        def ours() -> None:
            restored = restore_archive(
                archive,
                unwrap_key(key, gnupg_home=ctx.gnupg_home),
                work / "dfarchive",
                run_id=run_path.name,
                plaintext_size=result.plaintext_size,
                plaintext_sha256=result.plaintext_sha256,
            )
            if restored.members != result.members:
                raise RuntimeError(f"restored {restored.members} members of {result.members}")

        sides = [("stock", stock), ("dfarchive", ours)]
        for name, side in sides if ctx.round % 2 == 0 else sides[::-1]:
            _settle(archive)
            with phases(name):
                side()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return CaseResult(
        bytes=result.plaintext_size,
        phases=phases.record,
        extra={"archive_bytes": result.archive_size, "members": result.members},
    )
