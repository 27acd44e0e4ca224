"""The ``inprocess`` engine: tar → :class:`~dfarchive.openpgp.SymmetricWriter` → file.

The work is spread over both cores of a small host, the way the benchmarks showed it
pays (``benchmarks/README.md``); only one child process (tar) is involved:

* a read-ahead thread (:class:`~dfarchive.plumbing.readahead.ReadAhead`) collects tar's output
  into 1 MiB blocks;
* this thread walks each block's tar headers
  (:class:`~dfarchive.archiving.engines.meter.PlaintextMeter`) and encrypts it (AES-CFB:
  ``cryptography`` holds the GIL while it runs, so the fewer other jobs this thread
  has, the faster the whole);
* helper threads take the tar stream's SHA-256 and the OpenPGP MDC's SHA-1 meanwhile
  (hashlib releases the GIL);
* the writer thread of :class:`~dfarchive.archiving.engines.output.ArchiveOutput` writes the
  encrypted bytes, directly to the device when the file allows it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from dfarchive.archiving.engines.base import EncryptResult
from dfarchive.archiving.engines.meter import PlaintextMeter
from dfarchive.archiving.engines.output import ArchiveOutput
from dfarchive.archiving.tarstream import TarStream
from dfarchive.openpgp import SymmetricWriter
from dfarchive.plumbing.readahead import ReadAhead
from dfarchive.plumbing.writeprogress import WriteProgress

CHUNK_SIZE = 1 << 20  # larger chunks are no faster (benchmarks/results); this keeps RSS lowest
"""Bytes of tar output handled per step (and the OpenPGP partial body size)."""

READ_BLOCKS = 3
"""Blocks of tar output in flight: one being encrypted, the others being read."""


class InProcessEngine:
    """Encrypts with dfarchive's own OpenPGP writer (see :class:`Engine`)."""

    name = "inprocess"

    def encrypt(
        self,
        run_path: Path,
        out_fd: int,
        passphrase: bytes,
        *,
        exclusions: Sequence[str] = (),
        progress: Callable[[int], None] | None = None,
        cancel: threading.Event | None = None,
        written: WriteProgress | None = None,
    ) -> EncryptResult:
        """See :meth:`dfarchive.archiving.engines.base.Engine.encrypt`."""
        started = time.monotonic()
        run_path = Path(run_path)
        what = f"in-process encryption of run folder {str(run_path)!r}"
        # exits run bottom-up: the writer completes the message, then the output is flushed
        with (
            PlaintextMeter(what, progress, threaded=True) as plaintext,
            ArchiveOutput(out_fd, written=written) as archive,
            TarStream(run_path, exclusions=exclusions, cancel=cancel) as tar,
            ReadAhead(tar.fd, block_size=CHUNK_SIZE, blocks=READ_BLOCKS, cancel=cancel) as stream,
            SymmetricWriter(archive, passphrase, chunk_size=CHUNK_SIZE) as writer,
        ):
            while chunk := stream.read():
                hashed = plaintext.update(chunk)
                writer.write(chunk)
                plaintext.wait(hashed)  # the next read recycles the block
            tar.finish()  # before the writer's exit completes the message
        plaintext_sha256, summary = plaintext.finish()
        return EncryptResult(
            engine=self.name,
            plaintext_size=plaintext.size,
            plaintext_sha256=plaintext_sha256,
            archive_size=archive.size,
            members=summary.members,
            members_sha256=summary.members_sha256,
            seconds=time.monotonic() - started,
            archived_names=plaintext.archived_names,
            other_names=plaintext.other_names,
        )
