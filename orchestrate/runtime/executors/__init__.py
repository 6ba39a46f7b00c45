"""Where an agent runs: the executor interface, and the executor of a run.

An executor knows about the runs it holds, and nothing about scheduling:
`submit` starts the wrapped agent and returns a handle that the status record
keeps; `observe` answers for many runs in ONE call (one look at /proc
locally, one `squeue` on Slurm, one job listing on Ray); `track` says what stopping a run will need
(locally its descendants) or that the record does not prove the process is
ours; `stop` signals many runs with everything they started, and
`remaining` says which of many stopped runs still have a process, each in
one round (one `scancel`, one `squeue`; on Ray a stop per job, one listing); `find` locates a run by its run id
alone, after a crash that lost its handle; `reap` collects the processes it
started in this process that have exited (no zombie outlives a pass).
`local` is this machine's process table (`processes`; the advancer sleeps
on its wrappers' pidfds through `pidwatch`); `slurm` submits batch jobs;
`ray` submits Ray jobs through the Jobs REST API;
`fake` is a fake with a fake clock, for tests.

Outcomes stay the wrapper's: its exit record on the (shared) filesystem.
The executor says whether the run has ended (a polled executor's runs are
settled only once it says so, since a remote job's log is complete only
then) and, when it ended without an exit record or by a signal orchestrate
did not send, why. Nothing outside the executors signals a run's process
or reads /proc (tests/test_stopping.py checks the source).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Protocol

from ...core.records import Handle
from ..stopping import CannotTell

if TYPE_CHECKING:
    from ...core.checks import Followup
    from ...core.spec import Agent
    from ..state import StatusRecord

__all__ = ["Handle", "Observation", "SubmitError", "Unavailable", "Executor", "is_remote"]


@dataclass(frozen=True)
class Observation:
    """One run as its executor sees it: alive or not, and, when it ended
    without the wrapper's exit record, why (None: nothing to add)."""
    alive: bool
    ended_as: str | None = None
    known: bool = True   # False: the executor no longer knows the run at all


class Unavailable(CannotTell):
    """The executor cannot answer now (a controller down): nothing may be
    concluded about its runs; ask again at the next pass."""


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
    # Is a run gone without having claimed itself proof that its agent never
    # ran (so the attempt is owed)? Locally yes; a Slurm job cancelled while
    # pending is the scheduler's doing, and the user sees it as a failure.
    unclaimed_means_never_ran: bool
    # Must it be asked every `poll` (it cannot wake us, as a pidfd does)?
    polled: bool

    def submit(self, agent: "Agent", run_id: str, attempt: int, log_path: Path,
               upstream: Path, followup: "Followup | None" = None) -> Handle:
        """Start the run (a check relaunch: with its feedback and session)."""

    def observe(self, records: Iterable["StatusRecord"]) -> dict[str, Observation]:
        """run id -> observation, for every record given, in one call."""

    def track(self, record: "StatusRecord") -> tuple | None:
        """What `stop` will need later (recorded before the first signal), or
        None when the record's process is alive but provably not this run."""

    def stop(self, records: list["StatusRecord"], sig: int) -> None:
        """`sig` to every process of each run it can prove is the run's, in one round."""

    def remaining(self, records: list["StatusRecord"]) -> set[str]:
        """The run ids of those that still have a process, in one round;
        raises `Unavailable` when it cannot tell (never taken as gone)."""

    def find(self, run_id: str) -> Handle | None: ...

    def reap(self) -> None:
        """Collect what this process started and has exited (exit statuses
        stay the wrappers' exit records)."""


def is_remote(record: "StatusRecord") -> bool:
    """Runs whose life the local process table cannot see."""
    return record.executor in ("slurm", "ray")
