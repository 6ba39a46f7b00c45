"""The status record: an agent's state as `status/<pipeline>/<agent>.json` holds it.

Data only (the files are read and written by `state`), so the pure modules
(scheduler, policy, transitions) can speak of records without any I/O.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any


class RunState(StrEnum):
    """The contract's status states (str-valued: the JSON says the word)."""
    PENDING = "pending"       # stale or never run
    WAITING = "waiting"       # gated: upstream, a signal, a retry's backoff
    QUEUED = "queued"         # ready, held by a cap, a budget or a rate limit
    LAUNCHING = "launching"   # recorded; the executor has not answered yet
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REMOVED = "removed"       # no longer declared (a fan-out item gone, a pipeline edited)


# A run in these states has (or may have) a process: it is watched, never launched again.
ACTIVE: frozenset[RunState] = frozenset({RunState.LAUNCHING, RunState.RUNNING})
# What a user can retry: the run ended, and not by success.
ENDED_BADLY: frozenset[RunState] = frozenset({RunState.FAILED, RunState.CANCELLED})


@dataclass(frozen=True)
class Handle:
    """What the status record keeps to find a run again: where its executor
    holds it (a local pid and its start time, or a cluster's job id)."""
    pid: int | None = None
    create_time: float | None = None
    job_id: str | None = None


@dataclass
class AgentResult:
    """What an agent CLI reported, once `agents.results` has read its log."""
    final_message: str = ""
    session_id: str | None = None
    turns: int | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_tokens: int = 0
    cost_usd: float | None = None
    is_error: bool = False
    error: str | None = None
    rate_limited: bool = False       # the CLI hit a rate limit or an overload
    reset_at: float | None = None    # when it said the limit resets (epoch seconds)
    limit_model: str | None = None   # the model family the limit is for ("opus"), if it said

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class StatusRecord:
    """An agent's current state, as `status/<pipeline>/<agent>.json` holds it."""
    state: RunState
    pipeline: str
    agent: str
    attempt: int = 0
    pid: int | None = None
    started_at: str | None = None
    ended_at: str | None = None
    exit_code: int | None = None
    reason: str = ""
    log: str = ""
    task: str = ""
    run_id: str | None = None
    trace_id: str | None = None         # the pipeline run's trace this run belongs to (telemetry)
    launches: int = 0
    pid_create_time: float | None = None
    fingerprint: str | None = None
    config_digest: str | None = None
    inputs: dict[str, list[Any]] = field(default_factory=dict)
    upstream: dict[str, str] = field(default_factory=dict)
    upstream_used: str | None = None
    signal_digest: str | None = None
    started_epoch: float | None = None
    stop_reason: str | None = None      # set when orchestrate began stopping the run
    stop_kind: str | None = None        # why: "cancel", "timeout" or "stall" (policy.StopKind)
    kill_at: float | None = None        # when SIGKILL follows the SIGTERM
    descendants: list[Any] = field(default_factory=list)   # [[pid, create_time], ...]
    retry_at: float | None = None       # a failed attempt waits until then
    result: dict[str, Any] = field(default_factory=dict)   # what a preset CLI reported (results.py)
    spent_usd: float = 0.0              # cost of every attempt and run so far
    rate_limit_hits: int = 0            # rate-limited attempts in a row (not retries)
    check: dict[str, Any] = field(default_factory=dict)   # the last check's verdict (checks.py)
    check_attempts: int = 0             # failed checks in this series (not retries)
    feedback: str | None = None         # the feedback file a check relaunch gets
    resume_session: str | None = None   # the CLI session a check relaunch resumes
    executor: str = "local"             # where the run lives: "local" or "slurm"
    job_id: str | None = None           # the Slurm job, once sbatch has answered
    # what watching and stopping the run needs, as declared at its launch
    # (timeout, stall_timeout, kill_grace, check, preset): a run whose
    # declaration is gone is still watched and stopped by these (`standin`)
    limits: dict[str, Any] = field(default_factory=dict)
    checking: bool = False              # the agent exited 0 and its check runs
    retry_requested: bool = False       # `doit retry` asked for a fresh launch
    preset: str | None = None           # the CLI preset the run launched with (a fallback's?)
    via: str | None = None              # why a fallback preset ran: "via codex: claude ..."
    # the next launch is a relaunch with feedback that resumes the session:
    # "review" (`doit retry --feedback`) or "merge" (a merge sent back)
    relaunch: str | None = None
    merge: dict[str, Any] = field(default_factory=dict)   # its landing (core/landing.py)
    candidate_of: str | None = None     # a best_of candidate: the task it competes for
    winner: str | None = None           # a best_of agent's row: the candidate task that won

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "StatusRecord":
        """A record as read; TypeError if it is not one (corrupt)."""
        known = _STATUS_NAMES
        if data.get("stop_reason") and "stop_kind" not in data:
            data = {**data, "stop_kind": _legacy_stop_kind(data["stop_reason"])}
        if "checking" not in data or "retry_requested" not in data:
            data = {**data, **_legacy_flags(data)}
        if len(data) == len(known) and known.issuperset(data):
            # the usual case, a record this version wrote: every field is
            # there, so set them as __init__ would (it only assigns), without
            # its matching of ~40 keyword arguments by name (~40 times slower),
            # paid for each record a pass reads
            record = cls.__new__(cls)
            record.__dict__.update(data)
        elif known.issuperset(data):
            record = cls(**data)
        else:
            record = cls(**{k: v for k, v in data.items() if k in known})
        # RunState(word) without the cost of the enum's call, paid for each record read
        state = _STATE_BY_WORD.get(record.state) if isinstance(record.state, str) else None
        if state is None:
            raise TypeError(f"unknown state {record.state!r}")
        record.state = state
        return record

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _STATUS_FIELDS}


def _legacy_stop_kind(reason: str) -> str:
    """A run being stopped when orchestrate was upgraded kept only its reason."""
    return "cancel" if reason.startswith("cancelled") else (
        "stall" if reason.startswith("stalled") else "timeout")


def _legacy_flags(data: dict[str, Any]) -> dict[str, bool]:
    """A record written before the phases had fields of their own said them
    in its reason only."""
    reason = data.get("reason")
    return {"checking": bool(data.get("checking", reason == LEGACY_CHECKING)),
            "retry_requested": bool(data.get("retry_requested",
                                             reason == LEGACY_RETRY_REQUESTED))}


LEGACY_CHECKING = "checking"
LEGACY_RETRY_REQUESTED = "retry requested (doit retry)"

_STATUS_FIELDS = tuple(f.name for f in fields(StatusRecord))
_STATE_BY_WORD: dict[object, RunState] = {state.value: state for state in RunState}
_STATUS_NAMES = frozenset(_STATUS_FIELDS)


def iso(epoch: float) -> str:
    """Epoch seconds as the status record writes times (UTC, milliseconds)."""
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


def clock_text(epoch: float) -> str:
    """A time of day in a reason: UTC, so a reason reads the same whatever
    the TZ of the process that wrote it (an advancer, a cluster node)."""
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%H:%M:%S UTC")
