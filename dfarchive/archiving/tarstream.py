"""GNU tar as a child process producing the archive stream of one run folder.

The command is ``tar --format=gnu --no-unquote -C <parent> [--exclude=PATTERN ...] -cf -
-- <run>``: member names start with the run folder's name, and ``--exclude`` patterns are
the configuration's ``tar_exclusions`` verbatim, so they match exactly as they would for
``tar`` on the command line.

``--no-unquote`` makes tar take the run folder's name as it is: by default GNU tar
decodes backslash escapes in file names, so a folder named ``victim\\061`` would be
archived as its neighbour ``victim1``, one named ``\\056`` as the whole sequencer folder,
and a name holding a real backslash not at all. The option changes neither ``-C``'s
directory, which tar never unquotes, nor ``--exclude`` patterns, which keep their
``fnmatch`` meaning, backslash escapes included.

Any non-zero exit, including 1 ("file changed as we read it"), is a
:class:`~dfarchive.errors.ToolError`, and so is any warning tar prints while exiting 0:
GNU tar only warns, with status 0, when it skips a socket or when a directory changed
while it was read (a file added or removed) — either way the archive would not hold the
run folder as it is.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path

from dfarchive.errors import ToolError
from dfarchive.plumbing.childproc import Child, prepare_pipe, read_full

TAR = "tar"
TAR_FORMAT = "--format=gnu"
TAR_VERBATIM_NAMES = "--no-unquote"
TAR_CHDIR = "-C"
TAR_EXCLUDE = "--exclude={}"
TAR_CREATE_TO_STDOUT = "-cf"
TAR_STDOUT = "-"
TAR_END_OF_OPTIONS = "--"

TAR_EXIT_TIMEOUT = 60.0
"""Seconds tar may take to exit once its output reached end of file."""


def tar_command(run_path: Path, exclusions: Sequence[str] = ()) -> list[str]:
    """The tar argument list archiving ``run_path`` (names relative to its parent)."""
    run_path = Path(run_path)
    return [
        TAR,
        TAR_FORMAT,
        TAR_VERBATIM_NAMES,
        TAR_CHDIR,
        str(run_path.parent),
        *(TAR_EXCLUDE.format(pattern) for pattern in exclusions),
        TAR_CREATE_TO_STDOUT,
        TAR_STDOUT,
        TAR_END_OF_OPTIONS,
        run_path.name,
    ]


class TarStream:
    """tar of one run folder as a readable stream; a context manager.

    Use::

        with TarStream(run_path, exclusions=excl, cancel=ev) as tar:
            while n := tar.read_into(buf):
                ...
            tar.finish()

    Leaving the block before :meth:`finish` returned (error, cancel, asynchronous
    exception) kills tar's process group. Parameters as for :func:`tar_command`;
    ``cancel`` is checked at least every ``childproc.POLL_SECONDS`` while waiting.

    Raises:
        ToolError: from the constructor if tar cannot be started.
    """

    def __init__(
        self,
        run_path: Path,
        *,
        exclusions: Sequence[str] = (),
        cancel: threading.Event | None = None,
    ) -> None:
        self.run_path = Path(run_path)
        self._cancel = cancel
        self._child = Child(
            tar_command(self.run_path, exclusions),
            what=f"tar of run folder {str(self.run_path)!r}",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
        )
        try:
            stdout = self._child.proc.stdout
            if stdout is None:  # not with stdout=PIPE
                raise RuntimeError("tar was started without a stdout pipe")
            self.fd = stdout.fileno()
            """tar's stdout, non-blocking: for callers that poll it themselves."""
            prepare_pipe(self.fd)
        except BaseException:
            self._child.kill()
            raise

    def __enter__(self) -> TarStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._child.__exit__(*exc_info)

    @property
    def pid(self) -> int:
        """tar's process id (and process group id)."""
        return self._child.pid

    def read_into(self, buf: memoryview) -> int:
        """Fill ``buf`` with the next bytes of the archive; fewer only at its end.

        Returns the byte count, 0 once the stream is exhausted.

        Raises:
            Cancelled: the cancel event was set.
        """
        return read_full(self.fd, buf, self._cancel)

    def finish(self) -> None:
        """Wait (bounded) for tar to exit after its output ended; check its status.

        Raises:
            ToolError: tar exited non-zero or printed a warning (the message names the run
                folder and quotes tar's stderr) or did not exit within ``TAR_EXIT_TIMEOUT``.
            Cancelled: the cancel event was set while waiting.
        """
        self._child.check(self._child.wait(cancel=self._cancel, timeout=TAR_EXIT_TIMEOUT))
        warnings = self._child.stderr_text()
        if warnings:
            raise ToolError(f"{self._child.what} warned (exit status 0): {warnings}")
