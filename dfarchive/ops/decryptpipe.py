"""Decryption on a thread, handing the decrypted pieces over to the extracting thread.

:class:`Decryption` decrypts a run archive with dfarchive's OpenPGP reader on a thread of
its own and hands the plaintext over in pieces, through a few reused buffers, to the
thread that extracts it (:mod:`dfarchive.ops.restore`).
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import BinaryIO

from dfarchive.archiving.tarheaders import TarStreamTally
from dfarchive.errors import (
    Cancelled,
    CryptoError,
    RestoreError,
    RestoreIntegrityError,
    ValidationError,
)
from dfarchive.openpgp import decrypt
from dfarchive.openpgp.reader import PIECE_SIZE

READ_SIZE = 4 << 20
"""Bytes read from the archive per step."""
PIECES_IN_FLIGHT = 16
"""Decrypted pieces (of up to ``PIECE_SIZE``) handed over to extraction at a time: room
for decryption to run ahead while many small files are created (fewer were slower, more
no faster: ``benchmarks/results``)."""


@dataclass
class _Piece:
    """A decrypted piece in one of the hand-off buffers."""

    buffer: bytearray
    view: memoryview


class _Pieces:
    """Decrypted pieces handed from the decrypting thread to the extracting one through
    a few buffers reused all along: one copy per piece, no pipe, no new memory."""

    def __init__(self, buffers: int, size: int) -> None:
        self._free = [bytearray(size) for _ in range(buffers)]
        self._ready: deque[_Piece] = deque()
        self._changed = threading.Condition()
        self._closed = False  # no more pieces will come
        self._stopped = False  # the extracting side gave up

    def put(self, chunk: memoryview) -> memoryview:
        """Copy ``chunk`` into a free buffer (waiting for one) and queue it; return a view
        of the copy for the caller (only the caller's next call reuses the buffer).

        Raises: Cancelled once :meth:`stop` was called.
        """
        with self._changed:
            while not self._free and not self._stopped:
                self._changed.wait()
            if self._stopped:
                raise Cancelled("restore stopped")
            buffer = self._free.pop()
        size = len(chunk)
        buffer[:size] = chunk  # same length: copied in place, never resized
        with self._changed:
            self._ready.append(_Piece(buffer, memoryview(buffer)[:size]))
            self._changed.notify_all()
        return memoryview(buffer)[:size]

    def close(self) -> None:
        """No more pieces (the decrypting side ended)."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def get(self) -> _Piece | None:
        """The next piece, waiting for it; None once the decryption ended."""
        with self._changed:
            while not self._ready and not self._closed:
                self._changed.wait()
            return self._ready.popleft() if self._ready else None

    def release(self, piece: _Piece) -> None:
        """Hand a piece's buffer back for reuse."""
        piece.view.release()
        with self._changed:
            self._free.append(piece.buffer)
            self._changed.notify_all()

    def stop(self) -> None:
        """The extracting side gives up: a waiting :meth:`put` raises Cancelled."""
        with self._changed:
            self._stopped = True
            self._changed.notify_all()


class Decryption:
    """Decrypts ``source`` on a thread into :attr:`pieces`, counting, hashing and walking
    the tar headers of the plaintext on the way. Nothing handed over is verified until
    :meth:`join` returned without error.

    The SHA-256 is taken on this thread, after a piece is handed over: it waits for the
    extracting thread most of the time (creating files is most of a restore's work), and
    a hash on a helper of its own made the extracting thread wait for that helper
    whenever the machine was busy.
    """

    def __init__(self, source: BinaryIO, passphrase: bytes, *, where: str) -> None:
        self.where = where
        self.plaintext = TarStreamTally(sha256=True)  # hashed on this thread, see above
        self.pieces = _Pieces(PIECES_IN_FLIGHT, PIECE_SIZE)
        self.error: Exception | None = None
        self._source = source
        self._passphrase = passphrase
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, name="restore-decrypt", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            decrypt(
                self._source,
                self._passphrase,
                self._sink,
                read_size=READ_SIZE,
                cancel=self._cancel,
            )
        except Exception as error:  # handed to the extracting thread by join()/failure()
            self.error = error
        finally:
            self._passphrase = b""
            self.pieces.close()

    def _sink(self, chunk: bytes | memoryview) -> None:
        view = memoryview(chunk).cast("B")
        while view:
            copy = self.pieces.put(view[:PIECE_SIZE])
            self.plaintext.feed(copy)
            view = view[PIECE_SIZE:]

    def stop(self) -> None:
        """Stop decrypting and wait for the thread; safe to call more than once."""
        self._cancel.set()
        self.pieces.stop()
        self._thread.join()

    def failure(self) -> RestoreError | None:
        """Why decryption failed (after :meth:`stop` or the thread's end), if it did
        for a reason of its own rather than being stopped."""
        error = self.error
        if isinstance(error, CryptoError):
            return RestoreIntegrityError(
                f"{self.where}: fails the integrity check ({error}); the archive is damaged "
                "or tampered with, or the key is not this archive's"
            )
        if isinstance(error, ValidationError):
            return RestoreError(f"{self.where}: the decrypted tar stream is corrupt: {error}")
        return None

    def join(self) -> None:
        """Wait for the end of decryption; raise if it did not verify."""
        self._thread.join()
        failure = self.failure()
        if failure is not None:
            raise failure
        if self.error is not None:
            raise RestoreError(f"{self.where}: cannot decrypt: {self.error}")
