"""What every case needs to know, handed from the parent to each case's process."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class CaseContext:
    """Paths and facts shared by all cases of one benchmark run.

    Attributes:
        run_path, tar_bytes: the benchmark run folder and the size of its tar stream.
        small_run_path, small_tar_bytes: a run ten times smaller (peak RSS vs run size).
        work_dir: where cases write their archives (same filesystem as the data);
            every case removes what it wrote.
        gnupg_home, fingerprint: the throwaway keyring and its recipient key.
        quick: a ``--quick`` smoke run (see :meth:`benchmarks.cases.Case.arguments`).
        round: the round being run, from 0 (a case measuring two things alternates
            their order with it).
    """

    run_path: str
    tar_bytes: int
    small_run_path: str
    small_tar_bytes: int
    work_dir: str
    gnupg_home: str
    fingerprint: str
    quick: bool = False
    round: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> CaseContext:
        return cls(**json.loads(text))

    def run(self, which: str = "run") -> tuple[Path, int]:
        """``(path, tar bytes)`` of the ``"run"`` or the ``"small"`` run folder."""
        if which == "small":
            return Path(self.small_run_path), self.small_tar_bytes
        return Path(self.run_path), self.tar_bytes
