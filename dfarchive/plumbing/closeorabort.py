"""Context managers that finish on success and give up on an error."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class CloseOrAbort:
    """Leaving the ``with`` block normally calls :meth:`close` (finish the work, raising
    if that fails); leaving it with an exception calls :meth:`abort` (drop the work)."""

    def close(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
