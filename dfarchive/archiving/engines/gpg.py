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
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from dfarchive.archiving.engines.base import EncryptResult
from dfarchive.archiving.engines.meter import PlaintextMeter
from dfarchive.archiving.engines.output import ArchiveOutput
from dfarchive.archiving.gpgcli import GPG_EXIT_TIMEOUT, symmetric_encrypt_command
from dfarchive.archiving.tarstream import TarStream
from dfarchive.errors import ToolError
from dfarchive.plumbing.childproc import Child, pump, secret_pipe
from dfarchive.plumbing.writeprogress import WriteProgress


class GpgEngine:
    """Encrypts with the system ``gpg`` (see the module docstring and :class:`Engine`)."""

    name = "gpg"

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
        what = f"gpg encryption of run folder {str(run_path)!r}"
        plaintext = PlaintextMeter(what, progress)
        with (
            ArchiveOutput(out_fd, written=written) as archive,
            secret_pipe(passphrase + b"\n") as passphrase_fd,
            TarStream(run_path, exclusions=exclusions, cancel=cancel) as tar,
            Child(
                symmetric_encrypt_command(passphrase_fd),
                what=what,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                pass_fds=(passphrase_fd,),
            ) as gpg,
        ):
            complete = pump(
                gpg, tar.fd, on_input=plaintext.update, on_output=archive, cancel=cancel
            )
            if not complete:
                gpg.check(gpg.wait(cancel=cancel, timeout=GPG_EXIT_TIMEOUT))
                raise ToolError(f"{what}: gpg stopped before reading all of tar's output")
            tar.finish()
            gpg.check(gpg.wait(cancel=cancel, timeout=GPG_EXIT_TIMEOUT))
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
