"""Where an agent runs: the executor interface, and the executor of a run.

An executor knows four things about the runs it holds, and nothing about
scheduling: `submit` starts the wrapped agent and returns a handle that the
status record keeps; `observe` answers for many runs in ONE call (one /proc
look locally, one `squeue` on Slurm); `stop` signals a run with everything it
started; `find` locates a run by its run id alone, after a crash that lost
its handle. `local` is the launcher and the process checks orchestrate has
always had; `slurm` submits batch jobs (see `slurm`).

Outcomes stay the wrapper's: its exit record on the (shared) filesystem is
read first; an executor's answer matters only when there is none.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Protocol

if TYPE_CHECKING:
    from ..checks import Followup
    from ..spec import Agent
    from ..state import StatusRecord


@dataclass(frozen=True)
class Handle:
    """What the status record keeps to find a run again."""
    executor: str
    pid: int | None = None
    create_time: float | None = None
    job_id: str | None = None


@dataclass(frozen=True)
class Observation:
    """One run as its executor sees it: alive or not, and, when it ended
    without the wrapper's exit record, why (None: nothing to add)."""
    alive: bool
    ended_as: str | None = None


class SubmitError(OSError):
    """The executor refused the run (sbatch missing or failing): its message,
    as the agent's reason; the run failed, and retries apply."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class Executor(Protocol):
    name: str

    def submit(self, agent: "Agent", run_id: str, attempt: int, log_path: Path,
               upstream: Path, followup: "Followup | None" = None) -> Handle:
        """Start the run (a check relaunch: with its feedback and session)."""

    def observe(self, records: Iterable["StatusRecord"]) -> dict[str, Observation]:
        """run id -> observation, for every record given, in one call."""

    def stop(self, record: "StatusRecord", sig: int) -> None: ...

    def find(self, run_id: str) -> Handle | None: ...


def is_remote(record: "StatusRecord") -> bool:
    """Runs whose life the local process table cannot see."""
    return record.executor == "slurm"
