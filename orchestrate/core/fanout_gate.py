"""The decision for a dynamic fan-out's `pipeline:agent` row (pure).

The row is never launched: it waits until the planner is done and its list
read, then says what the list became (done: N instances; failed: why the
list is invalid). Fan-ins wait on it, so they run once the list is known.
"""
from __future__ import annotations

from typing import Any


def gate_decision(agent: Any, record: Any, decided: dict[str, Any], signals: dict[str, Any]
                  ) -> Any:
    from .records import RunState
    from .scheduler import Decision
    name = agent.awaits[0]
    upstream = decided[f"{agent.pipeline}:{name}"]
    if upstream.state != RunState.DONE:
        if upstream.settled:
            why = upstream.state if upstream.state != RunState.WAITING else "blocked"
            return Decision(agent, RunState.WAITING, f"waiting on {name} ({why})", blocked=True,
                            blocked_by=upstream.cause)
        return Decision(agent, RunState.WAITING, f"waiting on {name} (fan-out)",
                        external=upstream.external)
    if agent.foreach.kind == "each_of":      # follows the fan-out it takes its items from
        return Decision(agent, RunState.DONE, f"one instance per instance of {name}")
    digest = signals.get(f"{agent.pipeline}:{name}")
    if (record is not None and record.state in (RunState.DONE, RunState.FAILED)
            and record.upstream.get(name) == digest):
        return Decision(agent, record.state, record.reason)
    return Decision(agent, RunState.WAITING, f"waiting on {name} (fan-out)")
