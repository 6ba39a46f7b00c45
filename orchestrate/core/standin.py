"""Running agents are never lost: a stand-in for a run whose declaration is gone.

An agent launching, running or being checked stays watched and stoppable
when its pipeline file is deleted, renamed or made invalid, or the agent is
removed from it. Its status record keeps what that needs (`launch_limits`,
written at launch); `stand_in` makes from it an `Agent` that the scheduler
never launches and that `transitions` watches, stops and settles like any
run. A run no longer declared ends `removed` (its outputs stay, no signal is
written); one whose file is only invalid keeps its outcome for when the file
is fixed (`transitions`).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from .records import RunState, StatusRecord
from .spec import Agent

NO_LONGER_DECLARED = "no longer declared"
PIPELINE_INVALID = "pipeline file invalid"
DEFAULT_GRACE = 10.0
CHECK_AS_LAUNCHED = "(the check as launched)"   # it runs in the wrapper, not here


def launch_limits(agent: Agent) -> dict[str, Any]:
    """What the status record keeps at launch to watch and stop the run
    without its declaration."""
    return {"timeout": agent.timeout, "stall_timeout": agent.stall_timeout,
            "kill_grace": agent.kill_grace, "check": agent.check is not None,
            "preset": agent.preset, "model": agent.model}


def stand_in(record: StatusRecord, why: str) -> Agent:
    """The agent as far as its record knows it: the limits of its launch
    (a record written before they were kept: no time limits, the default
    grace), never retried, never relaunched."""
    limits = record.limits
    grace = _seconds(limits.get("kill_grace"))
    return Agent(pipeline=record.pipeline, name=record.agent,
                 timeout=_seconds(limits.get("timeout")),
                 stall_timeout=_seconds(limits.get("stall_timeout")),
                 kill_grace=grace if grace is not None else DEFAULT_GRACE,
                 check=CHECK_AS_LAUNCHED if limits.get("check") else None, check_retries=0,
                 preset=limits.get("preset") if isinstance(limits.get("preset"), str) else None,
                 executor=record.executor, stand_in=why)


def _seconds(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else None


def ended_undeclared(record: StatusRecord) -> StatusRecord:
    """How a run no longer declared ends, whatever its outcome: `removed`,
    saying how it ended; nothing of it is current (no fingerprint, no retry)."""
    return _removed(record, f"removed: {NO_LONGER_DECLARED}; it ended: {record.reason}")


def _removed(record: StatusRecord, reason: str) -> StatusRecord:
    return replace(record, state=RunState.REMOVED, fingerprint=None, retry_at=None, reason=reason)
