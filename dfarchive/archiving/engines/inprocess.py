"""The ``inprocess`` engine: tar → :class:`~dfarchive.openpgp.SymmetricWriter` → file.

The work is spread over the host's cores the way the benchmarks showed it pays
(``benchmarks/README.md``); only one child process (tar) is involved:

* a read-ahead thread (:class:`~dfarchive.plumbing.readahead.ReadAhead`) collects tar's output
  into 2 MiB blocks;
* this thread walks each block's tar headers
  (:class:`~dfarchive.archiving.engines.meter.PlaintextMeter`) and encrypts it (AES-CFB
  chains each block to the one before, so this thread is the run's critical path;
  ``cryptography`` releases the GIL while it encrypts);
* the tar stream's SHA-256 and the OpenPGP MDC's SHA-1 are taken on helper threads
  meanwhile where the host has cores to spare for them (hashlib releases the GIL); on
  two cores, which the pipeline keeps busy on its own, this thread hashes each block
  itself while it is still in its cache (:mod:`dfarchive.plumbing.threadhash`);
* the writer thread of :class:`~dfarchive.archiving.engines.output.ArchiveOutput` writes the
  encrypted bytes, directly to the device when the file allows it.
"""

from __future__ import annotations

from dfarchive.archiving.engines.base import Encryption, Engine
from dfarchive.archiving.tarstream import TarStream
from dfarchive.openpgp import SymmetricWriter
from dfarchive.plumbing.readahead import ReadAhead

# 2 MiB, a core's L2 cache on the benchmark host: tar's output, its hashes and its
# encryption then pass over a block while it is still in that cache. Where hashing
# helpers are used, 1 MiB was too small (waking a helper took about a millisecond on a
# busy 2-core VM, as long as a 1 MiB block's AES); benchmarks/README.md.
CHUNK_SIZE = 2 << 20
"""Bytes of tar output handled per step (and the OpenPGP partial body size)."""

READ_BLOCKS = 3
"""Blocks of tar output in flight: one being encrypted, the others being read."""


class InProcessEngine(Engine):
    """Encrypts with dfarchive's own OpenPGP writer (see :class:`Engine`)."""

    name = "inprocess"
    doing = "in-process encryption"
    threaded_hash = None

    def _encrypt(self, job: Encryption) -> None:
        # exits run bottom-up: the writer completes the message before the output closes
        with (
            TarStream(job.run_path, exclusions=job.exclusions, cancel=job.cancel) as tar,
            ReadAhead(
                tar.fd, block_size=CHUNK_SIZE, blocks=READ_BLOCKS, cancel=job.cancel
            ) as stream,
            SymmetricWriter(job.archive, job.passphrase, chunk_size=CHUNK_SIZE) as writer,
        ):
            while chunk := stream.read():
                hashed = job.plaintext.update(chunk)
                writer.write(chunk)
                job.plaintext.wait(hashed)  # the next read recycles the block
            tar.finish()  # before the writer's exit completes the message
