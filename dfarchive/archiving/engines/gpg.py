"""The ``gpg`` engine: tar → Python relay → ``gpg --symmetric`` → relay → output file.

One thread moves both streams with non-blocking pipes and ``poll``: tar's stdout is
measured (:class:`~dfarchive.archiving.engines.meter.PlaintextMeter`) and written to gpg's stdin;
gpg's stdout goes to the output descriptor through the writer thread of
:class:`~dfarchive.archiving.engines.output.ArchiveOutput`. Relaying gpg's output instead of
handing gpg the output file lets it be written in large blocks with direct I/O (gpg
itself writes 8 KiB at a time through the page cache, which costs it more than its
AES). The passphrase reaches gpg through a pipe named by ``--passphrase-fd``.
"""

from __future__ import annotations

import subprocess

from dfarchive.archiving.engines.base import Encryption, Engine
from dfarchive.archiving.gpgcli import GPG_EXIT_TIMEOUT, symmetric_encrypt_command
from dfarchive.archiving.tarstream import TarStream
from dfarchive.errors import ToolError
from dfarchive.plumbing.childproc import Child, pump, secret_pipe


class GpgEngine(Engine):
    """Encrypts with the system ``gpg`` (see the module docstring and :class:`Engine`)."""

    name = "gpg"
    doing = "gpg encryption"

    def _encrypt(self, job: Encryption) -> None:
        with (
            secret_pipe(job.passphrase + b"\n") as passphrase_fd,
            TarStream(job.run_path, exclusions=job.exclusions, cancel=job.cancel) as tar,
            Child(
                symmetric_encrypt_command(passphrase_fd),
                what=job.what,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                pass_fds=(passphrase_fd,),
            ) as gpg,
        ):
            complete = pump(
                gpg, tar.fd, on_input=job.plaintext.update, on_output=job.archive, cancel=job.cancel
            )
            if not complete:
                gpg.check(gpg.wait(cancel=job.cancel, timeout=GPG_EXIT_TIMEOUT))
                raise ToolError(f"{job.what}: gpg stopped before reading all of tar's output")
            tar.finish()
            gpg.check(gpg.wait(cancel=job.cancel, timeout=GPG_EXIT_TIMEOUT))
