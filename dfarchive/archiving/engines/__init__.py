"""Archiving engines: turn a run folder into ``<run>.tar.gpg`` (see :class:`Engine`)."""

from __future__ import annotations

from dfarchive.archiving.engines.base import EncryptResult, Engine
from dfarchive.archiving.engines.gpg import GpgEngine
from dfarchive.archiving.engines.inprocess import InProcessEngine

_ENGINES: dict[str, type[GpgEngine] | type[InProcessEngine]] = {
    InProcessEngine.name: InProcessEngine,
    GpgEngine.name: GpgEngine,
}
ENGINE_NAMES = tuple(_ENGINES)


def get_engine(name: str) -> Engine:
    """A new engine called ``name`` (one of :data:`ENGINE_NAMES`).

    Raises:
        ValueError: no engine has that name.
    """
    try:
        return _ENGINES[name]()
    except KeyError:
        raise ValueError(
            f"unknown engine {name!r}; expected one of {', '.join(ENGINE_NAMES)}"
        ) from None


__all__ = ["ENGINE_NAMES", "EncryptResult", "Engine", "get_engine"]
