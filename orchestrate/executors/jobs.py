"""The lifecycle's side of remote runs (Slurm jobs): asked about all at once
per poll, settled from the exit record first, recovered by name after a crash.

Functions of the lifecycle's host (the `Engine`): they use its `_finish`,
`_owe_attempt`, `_enforce_limits`, `_save`, `layout`, `clock` and `jobs`.
Kept apart from `lifecycle` so the local path there is untouched.
"""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Iterable

from ..faults import crash_point
from ..policy import backoff, should_retry
from ..spec import Agent
from ..state import StatusRecord
from ..wrapper import abandon_run, exit_time, read_exit_code
from . import Observation, is_remote
from .slurm import LIVE_STATES, SlurmExecutor, SlurmUnavailable, query_states

RUNNING_STATES = ("running", "launching")


class JobWatch:
    """What Slurm said about the workspace's running jobs at the last poll.

    `refresh` asks at most once per `every` seconds, in one call for every
    job whose exit record is not there yet; between polls a job counts as alive."""

    def __init__(self, executor: SlurmExecutor):
        self.executor = executor
        self.seen: dict[str, Observation] = {}
        self.last = float("-inf")
        self.active = 0    # Slurm runs in flight at the last refresh

    def refresh(self, records: Iterable[StatusRecord | None], layout, now: float,
                every: float) -> float | None:
        """Poll if due; returns when the next poll is due (None: no jobs)."""
        jobs = [r for r in records if r is not None and is_remote(r)
                and r.state in RUNNING_STATES]
        self.active = len(jobs)
        if not jobs:
            self.seen = {}
            return None
        if now - self.last >= every:
            self.last = now
            asked = [r for r in jobs if r.job_id and not layout.exit_file(r.run_id or "").exists()]
            self.seen = self.executor.observe(asked) if asked else {}
        else:
            self.seen = {}
        return self.last + every


def settle_job(host, agent: Agent, record: StatusRecord, code: int | None) -> StatusRecord:
    """A running Slurm run: from its exit record (`code`) first, else from
    what the last poll saw (see `RunLifecycle.settle`)."""
    exit_path = host.layout.exit_file(record.run_id or "")
    if code is not None:
        said = ended_by(record, code)
        if said is STILL_ENDING:
            return record      # Slurm is still ending the job: its state is not final
        return host._finish(agent, record, code, exit_time(exit_path), said)
    if record.state == "launching" and record.job_id is None:
        return recover_job(host, agent, record)
    seen = host.jobs.seen.get(record.run_id or "")
    if seen is not None and not seen.alive:
        code = read_exit_code(exit_path)   # it may have been written since we looked
        return host._finish(agent, record, code, exit_time(exit_path),
                            seen.ended_as)
    return host._enforce_limits(agent, record)


STILL_ENDING = "still ending"


def ended_by(record: StatusRecord, code: int) -> str | None:
    """Why a Slurm job whose wrapper recorded death by a signal ended, when
    orchestrate did not stop it: Slurm's state (`slurm: CANCELLED` for an
    scancel from outside, `slurm: TIMEOUT` for its time limit). One squeue
    call, only for such runs. STILL_ENDING while squeue says COMPLETING
    (it shows that instead of CANCELLED until the job's processes are gone)."""
    if not is_remote(record) or code <= 128 or record.stop_reason or not record.job_id:
        return None
    try:
        state = query_states([record.job_id]).get(record.job_id)
    except SlurmUnavailable:
        return None
    if state in LIVE_STATES:
        return STILL_ENDING
    return f"slurm: {state}" if state else None


def recover_job(host, agent: Agent, record: StatusRecord) -> StatusRecord:
    """A pass died between recording the launch and recording sbatch's answer.

    The job's name is the run id: found, it is re-attached (never submitted
    again). Not found, the run's claim is taken: if sbatch did queue it after
    all, its wrapper finds the claim taken and runs nothing, so relaunching
    makes no second copy of the agent's work."""
    run_id = record.run_id or ""
    exit_path = host.layout.exit_file(run_id)
    try:
        handle = host.jobs.executor.find(run_id)
        if handle is None and abandon_run(exit_path):
            return host._owe_attempt(record)
        handle = handle or host.jobs.executor.find(run_id)
    except SlurmUnavailable:
        return record          # ask again at the next pass
    if handle is None:         # it ran and ended, and Slurm has forgotten it
        return host._finish(agent, record, read_exit_code(exit_path), exit_time(exit_path))
    record = replace(record, state="running", job_id=handle.job_id, reason="running")
    host._save(record)
    return record


def failed_submission(agent: Agent, record: StatusRecord, now: float) -> StatusRecord:
    """sbatch refused or was missing: a failed attempt, retried like any other."""
    crash_point("submit-failed")
    if not should_retry(agent, record, stopped=True):
        return record
    at = now + backoff(agent, record.attempt)
    return replace(record, state="waiting", retry_at=at, reason=(
        f"retry {record.attempt + 1} of {agent.retries + 1} at "
        f"{time.strftime('%H:%M:%S', time.localtime(at))} after: {record.reason}"))
