"""When a running agent must be stopped, and whether a failed one is retried (pure).

Times are wall-clock epoch seconds, since any orchestrator process may be the
one that looks: the advancer, a later `doit`, `doit wait` or `doit status`.
"""
from __future__ import annotations

from enum import Enum

from .spec import Agent
from .records import RunState, StatusRecord
from .stopping import SIGKILL as SIGKILL, SIGTERM as SIGTERM   # the stop policy's, named once

MAX_BACKOFF = 300.0   # retry_backoff doubles per attempt, up to five minutes


class StopKind(str, Enum):
    """Why orchestrate stopped a run (the status record's `stop_kind`): a
    cancelled run ends `cancelled`, the others `failed`, and those are
    retried whatever their exit code."""
    CANCEL = "cancel"
    TIMEOUT = "timeout"
    STALL = "stall"


def limit_exceeded(agent: Agent, record: StatusRecord, now: float,
                   last_output: float | None) -> tuple[StopKind, str] | None:
    """Why to stop a running agent now, or None."""
    started = record.started_epoch
    if started is None:
        return None
    if agent.timeout is not None and now - started >= agent.timeout:
        return StopKind.TIMEOUT, f"timeout after {agent.timeout:g}s"
    if agent.stall_timeout is not None:
        quiet_since = max(started, last_output or started)
        if now - quiet_since >= agent.stall_timeout:
            return StopKind.STALL, f"stalled: no output for {agent.stall_timeout:g}s"
    return None


def next_limit(agent: Agent, record: StatusRecord, last_output: float | None) -> float | None:
    """When `limit_exceeded` may next become true (for the advancer's sleep)."""
    started = record.started_epoch
    if started is None:
        return None
    times = []
    if record.kill_at is not None:
        times.append(record.kill_at)
    if agent.timeout is not None:
        times.append(started + agent.timeout)
    if agent.stall_timeout is not None:
        times.append(max(started, last_output or started) + agent.stall_timeout)
    return min(times) if times else None


def backoff(agent: Agent, attempt: int) -> float:
    """Seconds before attempt `attempt + 1`: retry_backoff, doubling, capped."""
    return float(min(agent.retry_backoff * 2 ** (attempt - 1), MAX_BACKOFF))


def should_retry(agent: Agent, record: StatusRecord, stopped: bool) -> bool:
    """A failed attempt is retried while attempts remain, unless its exit code
    is in fail_fast_exit, or retry_on_exit lists codes and this is not one of
    them. A timeout or stall is retried whatever the exit code."""
    if record.state != RunState.FAILED or record.attempt >= agent.retries + 1:
        return False
    if stopped:
        return True
    code = record.exit_code
    if code is not None and code in agent.fail_fast_exit:
        return False
    if agent.retry_on_exit:
        return code in agent.retry_on_exit
    return True
