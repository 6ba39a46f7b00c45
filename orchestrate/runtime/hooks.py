"""Hooks: a detached pipeline says when to look.

After every scheduling pass (which runs under the scheduling lock) the engine
hands its decisions to `HookKeeper.observe`, which looks at each pipeline the
pass touched as a whole: an agent that failed for good (`on_failure`), every
agent done (`on_done`), nothing able to move without a person (`on_blocked`).

Exactly once, across any number of orchestrator processes and kill -9:

- Each occurrence has a deterministic id: `on_failure.<run id>`, or the
  event, the pipeline and a digest of the pipeline's state that defines the
  occurrence (every agent's state, reason and run id), so repeated passes over
  the same state find the same id and a re-run pipeline gets a new one.
- "The event happened" is `hooks/pending/<id>.json`, written atomically and
  fsynced under the scheduling lock, before any hook is started. An id is new
  only if neither `pending/<id>.json` nor `fired/<id>.json` exists.
- "The hook ran" is the rename of `pending/<id>.json` to `fired/<id>.json`,
  made by the hook's own supervisor (`orchestrate.runtime.hookrun`) right before it
  starts the hook. rename is atomic: of any number of supervisors started for
  one id, one renames and runs the hook, the others find nothing and exit.
- Every pass starts a supervisor for each pending record it has not already
  started one for, so a record left by a process killed after recording
  (or a supervisor that died before its rename) is run by the next process
  that looks: the advancer, a later `doit`, `doit wait` or `doit status`.

Nothing here changes an agent's state or an exit code: observing only reads
status records and writes under `.orchestrate/hooks/`.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .faults import crash_point
from ..core.fallback import limit_until
from ..core.records import RunState
from ..core.scheduler import AgentFacts, Decision, plan
from ..core.selection import upstream_closure
from ..core.spec import Pipeline, Workspace
from .state import Layout, StateFileError, StatusRecord, append_event, utc_now, write_json

if TYPE_CHECKING:
    from .engine import StateView

# For tests only: SIGKILL this process right after recording an event of this
# name, as a crash between "event recorded" and "hook started" would.
_PRIVATE_FIELDS = ("inputs", "upstream", "config_digest", "launches", "pid_create_time",
                   "descendants", "fingerprint", "signal_digest", "stop_reason", "kill_at",
                   "stop_kind")


@dataclass(frozen=True)
class HookEvent:
    """One occurrence of an event of a pipeline; `data` is what the hook gets on stdin."""
    id: str
    event: str
    pipeline: str
    reason: str
    task: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


# -- deciding (pure) ------------------------------------------------------
def failures(pipeline: Pipeline, records: dict[str, StatusRecord | None]) -> list[HookEvent]:
    """Agents that failed for good: a failed record is final, since a failed
    attempt that will be retried (or rests after a rate limit) is `waiting`."""
    found = []
    for agent in pipeline.agents:
        record = records.get(agent.task)
        if record is None or record.state != RunState.FAILED:
            continue
        run = record.run_id or _digest([agent.task, record.ended_at, record.reason])
        found.append(HookEvent(
            id=f"on_failure.{run}", event="on_failure", pipeline=pipeline.name,
            reason=record.reason, task=agent.task,
            data={"run_id": record.run_id, "exit_code": record.exit_code,
                  "attempt": record.attempt, "ended_at": record.ended_at,
                  "log": record.log}))
    return found


def standing(decision: Decision, rate_limited: dict[str, float], now: float) -> str:
    """done; stuck (needs a person, or a rate limit to pass); follows (waits on
    an upstream that can still move); moving (runs, is ready, queued behind a
    cap, or waits out a retry's backoff)."""
    if decision.state == RunState.DONE or decision.lost:   # a best_of loser: as planned
        return "done"
    if decision.state in (RunState.FAILED, RunState.CANCELLED) or decision.blocked or decision.external:
        return "stuck"
    agent = decision.agent
    if decision.timed and (limit_until(agent.preset, agent.model, rate_limited)[0] or 0.0) > now:
        return "stuck"
    if decision.state == RunState.WAITING and not decision.timed:
        return "follows"
    return "moving"


def verdict(pipeline: Pipeline, decisions: dict[str, Decision],
            records: dict[str, StatusRecord | None], rate_limited: dict[str, float],
            now: float) -> HookEvent | None:
    """on_done when every agent is done, on_blocked when nothing moves and
    something is stuck; None while the pipeline can still move by itself."""
    tasks = [a.task for a in pipeline.agents]
    standings = {t: standing(decisions[t], rate_limited, now) for t in tasks}
    if "moving" in standings.values():
        return None
    if all(s == "done" for s in standings.values()):
        event, reason = "on_done", f"all {len(tasks)} agents done"
    elif "stuck" in standings.values():
        event = "on_blocked"
        reason = "; ".join(f"{t} {decisions[t].state}: {decisions[t].reason}"
                           for t in tasks if standings[t] == "stuck")
    else:
        return None
    occurrence = [[t, decisions[t].state, decisions[t].reason,
                   (records.get(t) or _NO_RECORD).run_id] for t in tasks]
    states: dict[str, int] = {}
    for t in tasks:
        states[decisions[t].state] = states.get(decisions[t].state, 0) + 1
    return HookEvent(id=f"{event}.{pipeline.name}.{_digest(occurrence)}", event=event,
                     pipeline=pipeline.name, reason=reason, data={"states": states})


_NO_RECORD = StatusRecord(state=RunState.PENDING, pipeline="", agent="")


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def status_entries(pipeline: Pipeline, records: dict[str, StatusRecord | None],
                   decisions: dict[str, Decision]) -> list[dict[str, Any]]:
    """The pipeline's status records as `doit status --json` shows them."""
    entries = []
    for agent in pipeline.agents:
        record = records.get(agent.task)
        entry = record.to_json() if record else {
            "pipeline": agent.pipeline, "agent": agent.name, "attempt": 0, "pid": None,
            "started_at": None, "ended_at": None, "exit_code": None, "log": "",
            "state": "pending", "reason": "never run"}
        for private in _PRIVATE_FIELDS:
            entry.pop(private, None)
        decision = decisions.get(agent.task)
        if decision is not None:
            entry["state"] = decision.state
            entry["reason"] = decision.reason
        entry["task"] = agent.task
        entries.append(entry)
    return entries


# -- recording and starting (I/O) -------------------------------------------
class HookKeeper:
    """Observes passes of one engine; remembers, for this process only, which
    ids it knows to be recorded and which pending ones it started."""

    def __init__(self, workspace: Workspace, layout: Layout):
        """`workspace`: whether any hook is configured (the pipelines
        themselves are read from the view at each pass, a fan-out's new
        instances with them)."""
        self.layout = layout
        self.directory = layout.base / "hooks"
        self.known: set[str] = set()
        self.started: set[str] = set()
        self.errors: set[str] = set()
        self.configured = bool(workspace.hooks) or any(p.hooks for p in workspace.pipelines)

    def pending_path(self, event_id: str) -> Path:
        return self.directory / "pending" / f"{event_id}.json"

    def fired_path(self, event_id: str) -> Path:
        return self.directory / "fired" / f"{event_id}.json"

    def observe(self, view: "StateView", decisions: dict[str, Decision],
                facts: dict[str, AgentFacts]) -> None:
        """Record each new event of the pipelines the pass touched, then start
        a supervisor for every pending hook. Called under the scheduling lock."""
        try:
            if self.configured:
                for name in dict.fromkeys(d.agent.pipeline for d in decisions.values()):
                    self._observe_pipeline(view, view.workspace.pipeline(name), decisions,
                                           facts)
            self.start_pending()
        except (OSError, StateFileError) as err:
            # A full disk, or a corrupt status file of an agent the command did
            # not select, must not stop the pipeline or change an exit code:
            # the event is not recorded, so a later pass tries again.
            if str(err) not in self.errors:
                self.errors.add(str(err))
                append_event(self.layout, "hook_error", reason=str(err))

    def _observe_pipeline(self, view: "StateView", pipeline: Pipeline,
                          decisions: dict[str, Decision], facts: dict[str, AgentFacts]) -> None:
        hooks = pipeline.hooks.over(view.workspace.hooks)
        if not hooks:
            return
        records = {a.task: facts[a.task].record if a.task in facts else view.record(a)
                   for a in pipeline.agents}
        events = failures(pipeline, records) if hooks.on_failure else []
        known = decisions
        # Something of the selection runs or launches: no pipeline verdict
        # (the common pass, so it costs no plan over the whole pipeline).
        if (hooks.on_done or hooks.on_blocked) and not any(
                decisions[a.task].launch or decisions[a.task].state == RunState.RUNNING
                for a in pipeline.agents if a.task in decisions):
            known = self._whole(view, pipeline, decisions)
            found = verdict(pipeline, known, records, view.rate_limits(), view.clock())
            events += [found] if found else []
        for event in events:
            command = getattr(hooks, event.event)
            if command and self._is_new(event.id):
                self.record(event, command, status_entries(pipeline, records, known))

    def _whole(self, view: "StateView", pipeline: Pipeline,
               decisions: dict[str, Decision]) -> dict[str, Decision]:
        """Decisions for every agent of the pipeline, not only the selected ones."""
        if all(a.task in decisions for a in pipeline.agents):
            return decisions
        workspace = view.workspace
        agents = upstream_closure(workspace, {a.task for a in pipeline.agents})
        facts = view.facts(agents, view.records(agents))
        return plan(workspace, agents, facts, view.external_signals(),
                    now=view.clock(), spent=view.spent(), rate_limited=view.rate_limits())

    def _is_new(self, event_id: str) -> bool:
        if event_id in self.known:
            return False
        # pending first: a supervisor renames pending -> fired at any moment,
        # so an id seen in neither, in this order, was never recorded.
        if self.pending_path(event_id).exists() or self.fired_path(event_id).exists():
            self.known.add(event_id)
            return False
        return True

    def record(self, event: HookEvent, command: str | tuple[str, ...],
               statuses: list[dict[str, Any]]) -> None:
        """"The event happened", durably, before any hook of it can start."""
        fired = self.fired_path(event.id)
        data = {"id": event.id, "event": event.event, "pipeline": event.pipeline,
                **({"task": event.task} if event.task else {}), "reason": event.reason,
                "at": utc_now(), "root": str(self.layout.root),
                "status_file": str(fired.with_name(f"{event.id}.status.json")),
                **event.data}
        record = {"event": data, "command": command if isinstance(command, str)
                  else list(command), "agents": statuses}
        self.pending_path(event.id).parent.mkdir(parents=True, exist_ok=True)
        fired.parent.mkdir(exist_ok=True)
        write_json(self.pending_path(event.id), record, durable=True)
        self.known.add(event.id)
        append_event(self.layout, "hook", hook=event.event, id=event.id,
                     pipeline=event.pipeline, **({"task": event.task} if event.task else {}))
        crash_point("hook-recorded")

    def start_pending(self) -> None:
        """A supervisor for each pending hook this process has not started one for."""
        try:
            names = os.listdir(self.directory / "pending")
        except FileNotFoundError:
            return
        for name in sorted(names):
            event_id = name[:-len(".json")]
            if name.startswith(".") or not name.endswith(".json") or event_id in self.started:
                continue
            self.started.add(event_id)
            start_supervisor(self.layout.root, event_id)


def start_supervisor(root: Path, event_id: str) -> None:
    """`python -m orchestrate.runtime.hookrun ROOT ID`, orphaned at once (a shell puts it
    in the background and exits): init reaps it, so no orchestrator process
    waits for a hook or must outlive it, and the caller's pipes stay free."""
    argv = [sys.executable, "-m", "orchestrate.runtime.hookrun", str(root), event_id]
    subprocess.run(["/bin/sh", "-c", '"$@" </dev/null >/dev/null 2>&1 &', "orchestrate-hook",
                    *argv], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, start_new_session=True, check=False)
