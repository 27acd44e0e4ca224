"""Child processes (tar, gpg) that never outlive the work that started them.

Every child runs in its own process group, so it and anything it forks can be killed
together. Every wait here is bounded and checks a cancel event: Dramatiq's ``Shutdown``
and ``TimeLimit`` are asynchronous exceptions that only land while Python bytecode
runs, so nothing may sit in a blocking syscall for long. A :class:`Child` used as a
context manager kills its process group when the block exits before the child ended.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import IO

from dfarchive.errors import Cancelled, ToolError

POLL_SECONDS = 0.2
"""Longest single wait on a pipe or a child: how often cancel events are looked at."""

TERM_GRACE_SECONDS = 1.0
"""Time a process group gets between SIGTERM and SIGKILL."""

KILL_WAIT_SECONDS = 5.0
"""Time allowed for a SIGKILLed child to be reaped before giving up on it."""

PIPE_SIZE = 1 << 20
"""Capacity asked for the pipes between children and us (Linux ``F_SETPIPE_SZ``)."""

STDERR_KEEP = 8192
"""Bytes of a child's stderr kept from its start and from its end, for error messages."""

SECRET_ENVIRONMENT = frozenset({"DFARCHIVE_STATUSDB_PASSWORD", "DFARCHIVE_BROKER_URL"})
"""dfarchive's own secrets in its environment (the status database password, a broker URL
that may hold credentials): children (tar, gpg, the gpg-agent gpg starts) never get them."""


def child_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Our environment without :data:`SECRET_ENVIRONMENT`, plus ``extra``."""
    env = {name: value for name, value in os.environ.items() if name not in SECRET_ENVIRONMENT}
    env.update(extra or {})
    return env


class StderrTail:
    """Drains a pipe on a daemon thread, keeping its first and last ``STDERR_KEEP`` bytes.

    The thread ends when the pipe reaches end of file (the child and its group are
    gone), so it needs no stopping.
    """

    def __init__(self, pipe: IO[bytes], name: str) -> None:
        self._pipe = pipe
        self._head = bytearray()
        self._tail = bytearray()
        self._dropped = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._drain, name=f"{name}-stderr", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        fd = self._pipe.fileno()
        with contextlib.suppress(OSError):
            while chunk := os.read(fd, 65536):
                with self._lock:
                    room = STDERR_KEEP - len(self._head)
                    self._head += chunk[:room]
                    self._tail += chunk[room:]
                    excess = len(self._tail) - STDERR_KEEP
                    if excess > 0:
                        del self._tail[:excess]
                        self._dropped += excess
        with contextlib.suppress(OSError):
            self._pipe.close()

    def text(self, *, wait: float = 1.0) -> str:
        """What the child wrote to stderr, decoded, middle elided if it was long.

        Waits up to ``wait`` seconds for the pipe to close so late lines are included.
        """
        self._thread.join(wait)
        with self._lock:
            middle = f"\n[... {self._dropped} bytes ...]\n" if self._dropped else ""
            return (
                self._head.decode(errors="replace") + middle + self._tail.decode(errors="replace")
            ).strip()


class Child:
    """One child process in its own process group, with its stderr drained.

    Parameters:
        argv: the command, as an argument list (never a shell).
        what: how error messages name the child (e.g. ``"tar of run X"``).
        stdin, stdout: as for :class:`subprocess.Popen` (``PIPE``, a fd, or None).
        pass_fds: file descriptors the child inherits.
        env: the child's environment (default: ours without :data:`SECRET_ENVIRONMENT`).

    Raises:
        ToolError: the program could not be started.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        what: str,
        stdin: int | None = None,
        stdout: int | None = None,
        pass_fds: Sequence[int] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.what = what
        try:
            self.proc = subprocess.Popen(
                list(argv),
                stdin=stdin,
                stdout=stdout,
                stderr=subprocess.PIPE,
                pass_fds=tuple(pass_fds),
                env=child_environment() if env is None else dict(env),
                start_new_session=True,
                bufsize=0,
            )
        except OSError as exc:
            raise ToolError(f"{what}: cannot start {argv[0]}: {exc}") from None
        try:
            stderr = self.proc.stderr
            if stderr is None:  # not with stderr=PIPE
                raise RuntimeError(f"{what}: started without a stderr pipe")
            self._stderr = StderrTail(stderr, argv[0])
        except BaseException:
            self.kill()
            raise

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.kill()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr_text(self) -> str:
        """The child's stderr so far (see :meth:`StderrTail.text`)."""
        return self._stderr.text()

    def wait(self, *, cancel: threading.Event | None = None, timeout: float | None = None) -> int:
        """Wait for the child to exit and return its exit status, in bounded steps.

        Raises:
            Cancelled: ``cancel`` was set while waiting (the child is left running;
                leaving the ``with`` block kills it).
            ToolError: ``timeout`` seconds passed and the child still runs.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            check_cancel(cancel)
            try:
                return self.proc.wait(POLL_SECONDS)
            except subprocess.TimeoutExpired:
                if deadline is not None and time.monotonic() > deadline:
                    raise ToolError(f"{self.what}: still running after {timeout} s") from None

    def check(self, returncode: int) -> None:
        """Raise ToolError naming the child and quoting its stderr unless ``returncode`` is 0."""
        if returncode != 0:
            detail = self.stderr_text() or "(no message)"
            raise ToolError(f"{self.what} failed with exit status {returncode}: {detail}")

    def kill(self) -> None:
        """Kill the child's process group (SIGTERM, then SIGKILL) unless the child ended.

        Never raises; waits at most ``TERM_GRACE_SECONDS + KILL_WAIT_SECONDS``.
        """
        if self.proc.poll() is not None:
            return
        steps = ((signal.SIGTERM, TERM_GRACE_SECONDS), (signal.SIGKILL, KILL_WAIT_SECONDS))
        for sig, grace in steps:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)
                os.killpg(self.proc.pid, signal.SIGCONT)  # a stopped child must see SIGTERM
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(grace)
                return


class LinkedEvent(threading.Event):
    """A stop for one part of a job that also reads as set when the job's ``parent``
    cancel is: either side of overlapped work sets it to stop the other. (:meth:`wait`
    sees the parent within ``POLL_SECONDS``.)
    """

    def __init__(self, parent: threading.Event | None) -> None:
        super().__init__()
        self._parent = parent

    def is_set(self) -> bool:
        return super().is_set() or (self._parent is not None and self._parent.is_set())

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.is_set():
            step = (
                POLL_SECONDS if deadline is None else min(POLL_SECONDS, deadline - time.monotonic())
            )
            if step <= 0:
                return False
            super().wait(step)
        return True


def check_cancel(cancel: threading.Event | None) -> None:
    """Raise Cancelled if ``cancel`` is set."""
    if cancel is not None and cancel.is_set():
        raise Cancelled("cancelled")


def prepare_pipe(fd: int) -> None:
    """Make our end of a pipe non-blocking and ask for a larger pipe buffer."""
    os.set_blocking(fd, False)
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)


def wait_fd(fd: int, events: int, cancel: threading.Event | None) -> None:
    """Wait up to ``POLL_SECONDS`` for ``events`` on ``fd``, after checking ``cancel``."""
    check_cancel(cancel)
    poller = select.poll()
    poller.register(fd, events)
    poller.poll(POLL_SECONDS * 1000)


def read_full(fd: int, buf: memoryview, cancel: threading.Event | None = None) -> int:
    """Fill ``buf`` from the non-blocking pipe ``fd``; stop early only at end of file.

    Returns the number of bytes read (less than ``len(buf)`` only at end of file, 0 at
    end of file with nothing read).

    Raises:
        Cancelled: ``cancel`` was set while waiting for data.
    """
    check_cancel(cancel)
    filled = 0
    size = len(buf)
    while filled < size:
        try:
            n = os.readv(fd, [buf[filled:]])
        except BlockingIOError:
            wait_fd(fd, select.POLLIN, cancel)
            continue
        if n == 0:
            break
        filled += n
    return filled


def write_all(fd: int, data: bytes | memoryview, cancel: threading.Event | None = None) -> None:
    """Write all of ``data`` to ``fd`` (a regular file or a non-blocking pipe).

    Raises:
        Cancelled: ``cancel`` was set while waiting for the reader.
        BrokenPipeError: the reading end is closed.
    """
    view = memoryview(data).cast("B")
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            wait_fd(fd, select.POLLOUT, cancel)
            continue
        view = view[n:]


@contextlib.contextmanager
def secret_pipe(secret: bytes) -> Iterator[int]:
    """A pipe whose read end (yielded, inheritable via ``pass_fds``) holds ``secret``.

    The secret goes into the kernel pipe buffer and is never on disk, in argv or in the
    environment. Both ends are closed when the block exits.

    Raises:
        ValueError: the secret does not fit the pipe buffer atomically.
    """
    if len(secret) > select.PIPE_BUF:
        raise ValueError("secret too long for a pipe")
    read_fd, write_fd = os.pipe()
    try:
        try:
            os.write(write_fd, secret)
        finally:
            os.close(write_fd)
        yield read_fd
    finally:
        with contextlib.suppress(OSError):
            os.close(read_fd)


def pump(
    child: Child,
    source: int,
    *,
    on_input: Callable[[memoryview], object],
    on_output: Callable[[memoryview], object],
    cancel: threading.Event | None = None,
    chunk_size: int = 1 << 20,
) -> bool:
    """Feed ``source`` through ``child`` (stdin → stdout) until the child's stdout ends.

    One thread, non-blocking pipes, ``poll`` waits of at most ``POLL_SECONDS``.
    ``source`` is a non-blocking pipe or a regular file; each chunk read from it is
    passed to ``on_input`` and then written to the child's stdin, which is closed at the
    end of ``source``. Each chunk of the child's stdout is passed to ``on_output``. The
    chunks are views of reused buffers, valid only during the call.

    Returns True if all of ``source`` went into the child, False if the child stopped
    reading early (its stdin closed, or its stdout ended first).

    Raises:
        Cancelled: ``cancel`` was set.
        Whatever ``on_input`` or ``on_output`` raise.
    """
    stdin, stdout = child.proc.stdin, child.proc.stdout
    if stdin is None or stdout is None:
        raise ValueError("pump needs a child started with stdin and stdout pipes")
    sink = stdin.fileno()
    out = stdout.fileno()
    prepare_pipe(sink)
    prepare_pipe(out)
    in_buf = memoryview(bytearray(chunk_size))
    out_buf = memoryview(bytearray(chunk_size))
    pending = in_buf[:0]
    source_open = sink_open = True
    while True:
        check_cancel(cancel)
        moved = False
        if source_open and sink_open and not pending:
            n = _read_some(source, in_buf)
            if n == 0:
                source_open = sink_open = False
                stdin.close()
            elif n is not None:
                on_input(in_buf[:n])
                pending = in_buf[:n]
                moved = True
        if pending and sink_open:
            try:
                written = os.write(sink, pending)
            except BlockingIOError:
                written = 0
            except BrokenPipeError:
                written = 0
                sink_open = False
                with contextlib.suppress(OSError):
                    stdin.close()
            pending = pending[written:]
            moved = moved or written > 0
        n = _read_some(out, out_buf)
        if n == 0:
            return not source_open and not pending
        if n is not None:
            on_output(out_buf[:n])
            moved = True
        if not moved:
            poller = select.poll()
            poller.register(out, select.POLLIN)
            if pending and sink_open:
                poller.register(sink, select.POLLOUT)
            elif source_open and sink_open:
                poller.register(source, select.POLLIN)
            poller.poll(POLL_SECONDS * 1000)


def _read_some(fd: int, buf: memoryview) -> int | None:
    """Read what ``fd`` holds, up to ``len(buf)``; None if a non-blocking pipe is empty."""
    try:
        return os.readv(fd, [buf])
    except BlockingIOError:
        return None
