"""The ``inprocess`` engine: tar → :class:`~dfarchive.openpgp.SymmetricWriter` → file.

The work is spread over both cores of a small host, the way the benchmarks showed it
pays (``benchmarks/README.md``); only one child process (tar) is involved:

* this thread reads tar's output into one of two buffers, walks its tar headers
  (:class:`~dfarchive.engines.tap.PlaintextTap`) and encrypts it (AES-CFB:
  ``cryptography`` holds the GIL while it runs, so this is the thread to give it);
* a helper thread takes the tar stream's SHA-256 meanwhile, another the OpenPGP MDC's
  SHA-1 (hashlib releases the GIL), while the next buffer is read;
* the writer thread of :class:`~dfarchive.engines.output.ArchiveOutput` writes the
  encrypted bytes, directly to the device when the file allows it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from dfarchive.childproc import check_cancel
from dfarchive.engines.base import EncryptResult
from dfarchive.engines.output import ArchiveOutput
from dfarchive.engines.tap import PlaintextTap
from dfarchive.openpgp import SymmetricWriter
from dfarchive.tarstream import TarStream
from dfarchive.threadhash import Ticket

CHUNK_SIZE = 1 << 20  # benchmarked: 1, 4 and 16 MiB tie on speed; 1 MiB keeps RSS lowest
"""Bytes of tar output handled per step (and the OpenPGP partial body size)."""

READ_BUFFERS = 2
"""One buffer is read into while the previous one is still being hashed."""


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
    ) -> EncryptResult:
        """See :meth:`dfarchive.engines.base.Engine.encrypt`."""
        started = time.monotonic()
        run_path = Path(run_path)
        what = f"in-process encryption of run folder {str(run_path)!r}"
        buffers = [memoryview(bytearray(CHUNK_SIZE)) for _ in range(READ_BUFFERS)]
        tickets: list[Ticket] = [None] * READ_BUFFERS
        # exits run bottom-up: the writer completes the message, then the output is flushed
        with (
            PlaintextTap(what, progress, threaded=True) as plaintext,
            ArchiveOutput(out_fd) as archive,
            TarStream(run_path, exclusions=exclusions, cancel=cancel) as tar,
            SymmetricWriter(archive, passphrase, chunk_size=CHUNK_SIZE) as writer,
        ):
            turn = 0
            while True:
                plaintext.wait(tickets[turn])  # the buffer is free again
                n = tar.read_into(buffers[turn])
                if not n:
                    break
                check_cancel(cancel)
                chunk = buffers[turn][:n]
                tickets[turn] = plaintext.update(chunk)
                writer.write(chunk)
                turn = (turn + 1) % READ_BUFFERS
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
            directories=plaintext.directories,
        )
