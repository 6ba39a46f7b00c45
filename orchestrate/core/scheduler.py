"""Decide, for every selected agent, what it is and whether it may launch now.

Pure: a pass takes what the state files said (`AgentFacts`) and returns one
`Decision` per agent. Running and gated agents are set aside, never failed;
failed and cancelled agents stay as they are until their fingerprint changes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .bestof import contest_decision, mark_losers
from .checks import is_feedback_relaunch
from .fallback import Route, route
from .fanout_gate import gate_decision
from .landing import MERGE_POLL, merge_pending
from .fingerprint import Fingerprint, config_digest, stale_reason
from .spec import Agent, Workspace
from .records import ACTIVE, RunState, StatusRecord

RETRY_REQUESTED = "retry requested (doit retry)"   # the reason shown; the record's flag decides


@dataclass(frozen=True)
class AgentFacts:
    """What the files say about one agent at the start of a pass."""
    record: StatusRecord | None
    signal_digest: str | None            # digest of the `.done` content, None if absent
    inputs: dict[str, list[Any]] = field(default_factory=dict)  # path -> [mtime_ns, size, digest]
    # declared outputs of a done agent that name no file now (a glob: that match
    # nothing); as a missing target in make, each makes the agent stale
    missing_outputs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Decision:
    """What an agent is at this pass, and whether it may launch now (then
    its state is `pending`, and `launch` says so)."""
    agent: Agent
    state: RunState
    reason: str                # for people only: nothing decides on its words
    fingerprint: Fingerprint | None = None
    upstream_used: str | None = None
    blocked: bool = False      # cannot advance without a user's action
    external: bool = False     # waiting on an external signal
    timed: bool = False        # waiting for a retry's backoff to pass
    wake_at: float | None = None
    attempt: int = 1           # the attempt a launch would be
    blocked_by: str | None = None   # the failed or cancelled task this one waits behind
    launch: bool = False       # ready: the pass launches it (its state is pending)
    signal: str | None = None  # the external signal it waits on (`doit signal NAME`)
    via: str | None = None     # a fallback preset launches it (`agent` is that variant): why
    lost: bool = False         # a best_of candidate that ended badly once its contest was over

    @property
    def cause(self) -> str | None:
        """The failed or cancelled task that this dead end goes back to."""
        if self.lost:   # not a dead end: its agent's row says how the contest went
            return None
        if self.state in (RunState.FAILED, RunState.CANCELLED):
            return self.agent.task
        return self.blocked_by

    @property
    def settled(self) -> bool:
        """Nothing more will happen to it unless a user acts."""
        return self.state in (RunState.DONE, RunState.FAILED, RunState.CANCELLED) or self.blocked


@dataclass
class Capacity:
    """Running counts against max_parallel caps and pools; money spent against
    budgets; presets resting after a rate limit."""
    workspace: Workspace
    running: dict[str, int] = field(default_factory=dict)
    spent: dict[str, float] = field(default_factory=dict)          # pipeline or "*" -> $
    rate_limited: dict[str, float] = field(default_factory=dict)   # preset -> until (epoch)
    now: float = 0.0
    unknown_reset: frozenset[str] = frozenset()   # limited presets whose CLI said no reset

    def held(self, agent: Agent, record: StatusRecord | None = None
             ) -> tuple[str, bool, float | None] | None:
        """(reason, blocked, wake at) if a budget or a rate limit holds `agent`
        back (a rate limit: of its own preset and of every fallback that would
        take over, `fallback.route`)."""
        pipeline = self.workspace.pipeline(agent.pipeline)
        for key, budget, label in ((agent.pipeline, pipeline.budget_usd, "pipeline"),
                                   ("*", self.workspace.budget_usd, "workspace")):
            if budget is not None and self.spent.get(key, 0.0) >= budget:
                return (f"budget reached: ${self.spent.get(key, 0.0):.2f} of ${budget:.2f} "
                        f"({label})", True, None)
        routed = self.route(agent, record)
        if routed.held is not None:
            return routed.held, False, routed.until
        return None

    def route(self, agent: Agent, record: StatusRecord | None) -> Route:
        """The preset `agent`'s launch uses now (its own, or a fallback's)."""
        return route(agent, record, self.rate_limited, self.unknown_reset, self.now)

    def _limits(self, agent: Agent) -> list[tuple[str, int, str]]:
        limits = []
        if self.workspace.max_parallel:
            limits.append(("*", self.workspace.max_parallel, "workspace max_parallel"))
        pipeline = self.workspace.pipeline(agent.pipeline)
        if pipeline.max_parallel:
            limits.append((f"p:{agent.pipeline}", pipeline.max_parallel,
                           f"max_parallel of pipeline {agent.pipeline}"))
        if agent.pool:
            size = dict(self.workspace.pools).get(agent.pool)
            if size:
                limits.append((f"pool:{agent.pool}", size, f"pool {agent.pool}"))
        return limits

    def take(self, agent: Agent) -> None:
        for key, _, _ in self._limits(agent):
            self.running[key] = self.running.get(key, 0) + 1

    def full(self, agent: Agent) -> str | None:
        for key, size, label in self._limits(agent):
            if self.running.get(key, 0) >= size:
                return f"queued: {label} ({size}) reached"
        return None


def _upstream_gate(agent: Agent, decided: dict[str, Decision],
                   signals: dict[str, str | None], present: set[str],
                   record: StatusRecord | None) -> tuple[Decision | None, dict[str, str], str | None]:
    """(a waiting decision or None, upstream digests to consume, after_any used)."""
    consumed: dict[str, str] = {}
    for name in agent.awaits:   # a fan-out's planner or gate: waited for, not consumed
        upstream = decided[f"{agent.pipeline}:{name}"]
        if upstream.state != RunState.DONE:
            return _waiting_on(agent, name, upstream), {}, None
    for name in agent.after:
        upstream = decided[f"{agent.pipeline}:{name}"]
        if upstream.state != RunState.DONE:
            return _waiting_on(agent, name, upstream), {}, None
        consumed[name] = signals[upstream.agent.task] or ""
    used = None
    if agent.after_any:
        ready = [n for n in agent.after_any
                 if decided[f"{agent.pipeline}:{n}"].state == RunState.DONE]
        if not ready:
            ups = [decided[f"{agent.pipeline}:{n}"] for n in agent.after_any]
            blocked = all(u.settled for u in ups)
            return Decision(agent, RunState.WAITING, "waiting on any of " + ", ".join(agent.after_any)
                            + (" (none can finish)" if blocked else ""), blocked=blocked,
                            blocked_by=next((u.cause for u in ups if u.cause), None)
                            if blocked else None), {}, None
        previous = record.upstream_used if record else None
        used = previous if previous in ready else ready[0]
        consumed[used] = signals[f"{agent.pipeline}:{used}"] or ""
    missing = [s for s in agent.wait_for if s not in present]
    if missing:
        return Decision(agent, RunState.WAITING, f"waiting on signal {missing[0]} "
                        f"(doit signal {missing[0]})", external=True,
                        signal=missing[0]), {}, None
    return None, consumed, used


def _waiting_on(agent: Agent, name: str, upstream: Decision) -> Decision:
    if upstream.settled:
        why = upstream.state if upstream.state != RunState.WAITING else "blocked"
        return Decision(agent, RunState.WAITING, f"waiting on {name} ({why})", blocked=True,
                        blocked_by=upstream.cause)
    return Decision(agent, RunState.WAITING, f"waiting on {name}", external=upstream.external)


def decide(agent: Agent, facts: AgentFacts, decided: dict[str, Decision],
           signals: dict[str, str | None], present: set[str],
           capacity: Capacity, now: float) -> Decision:
    record = facts.record
    if agent.stand_in is not None:
        return _in_flight(agent, record)
    if agent.gate:
        gated: Decision = gate_decision(agent, record, decided, signals)
        return gated
    if agent.candidates:
        contest: Decision = contest_decision(agent, record, decided, facts.signal_digest,
                                             facts.missing_outputs, now)
        return contest
    if record and record.state in ACTIVE:
        return Decision(agent, RunState.RUNNING, record.reason or "running")
    if record and record.state == RunState.CANCELLED and record.fingerprint is None:
        # cancelled while gated (it never had a fingerprint): until doit retry
        return Decision(agent, RunState.CANCELLED, record.reason)
    gate, consumed, used = _upstream_gate(agent, decided, signals, present, record)
    if gate:
        return gate
    fingerprint = Fingerprint(config_digest(agent),
                              {p: v[2] for p, v in facts.inputs.items()}, consumed)
    # the record, when it was made for this very fingerprint (else None)
    current = record if record is not None and recorded_fingerprint_matches(
        record, fingerprint) else None
    if current and current.state == RunState.DONE and facts.signal_digest is not None \
            and not facts.missing_outputs:
        return Decision(agent, RunState.DONE, current.reason or "done", fingerprint, used)
    if current and current.state in (RunState.FAILED, RunState.CANCELLED):
        return Decision(agent, current.state, current.reason, fingerprint, used)
    if current is not None and agent.merge and merge_pending(current):   # done, not landed
        return Decision(agent, RunState.WAITING, current.reason, fingerprint, used, timed=True,
                        wake_at=now + MERGE_POLL)
    attempt = 1
    reason = _why_stale(record, facts, fingerprint, _upstream_states(agent, record, decided))
    if current and current.state == RunState.WAITING and current.retry_at is not None:
        if now < current.retry_at:
            return Decision(agent, RunState.WAITING, current.reason, fingerprint, used, timed=True,
                            wake_at=current.retry_at, attempt=current.attempt + 1)
        attempt = current.attempt + 1
        reason = f"attempt {attempt} of {agent.retries + 1}"
        if is_feedback_relaunch(current):   # its reason says what failed, and why
            reason = current.reason
    if hold := capacity.held(agent, current):
        reason, blocked, wake_at = hold
        return Decision(agent, RunState.QUEUED, reason, fingerprint, used, attempt=attempt,
                        blocked=blocked, timed=wake_at is not None, wake_at=wake_at)
    if full := capacity.full(agent):
        return Decision(agent, RunState.QUEUED, full, fingerprint, used, attempt=attempt)
    capacity.take(agent)
    routed = capacity.route(agent, current)
    return Decision(routed.agent, RunState.PENDING, reason, fingerprint, used, attempt=attempt,
                    launch=True, via=routed.via)


def _in_flight(agent: Agent, record: StatusRecord | None) -> Decision:
    """A run whose declaration is gone: shown, watched, never launched."""
    if record is None:   # forgotten meanwhile: nothing of it is left
        return Decision(agent, RunState.REMOVED, agent.stand_in or "")
    if record.state in ACTIVE:
        return Decision(agent, RunState.RUNNING, f"{record.reason or 'running'} ({agent.stand_in})")
    return Decision(agent, record.state, record.reason)


def not_started_as(decision: Decision) -> str:
    """What an agent that never started was doing, as a cancel reports it."""
    if decision.signal is not None:
        return f"waiting on signal {decision.signal}"
    if decision.state == RunState.WAITING and decision.timed:
        return "waiting to retry"
    if decision.state == RunState.QUEUED:
        return "queued"
    return "not started"


def recorded_fingerprint_matches(record: StatusRecord, fingerprint: Fingerprint) -> bool:
    """Same verdict as comparing digests, without hashing on every pass: the
    record keeps the parts the digest was made of."""
    if record.fingerprint is None or record.config_digest != fingerprint.config:
        return False
    if record.upstream != fingerprint.upstream or len(record.inputs) != len(fingerprint.inputs):
        return False
    return all(record.inputs.get(path, (None, None, None))[2] == digest
               for path, digest in fingerprint.inputs.items())


def _upstream_states(agent: Agent, record: StatusRecord | None,
                     decided: dict[str, Decision]) -> dict[str, str]:
    """The state of each upstream the agent's last run consumed, if still decided."""
    if record is None:
        return {}
    found = (decided.get(f"{agent.pipeline}:{name}") for name in record.upstream)
    return {d.agent.name: d.state for d in found if d is not None}


def _why_stale(record: StatusRecord | None, facts: AgentFacts, new: Fingerprint,
               upstream_states: dict[str, str] | None = None) -> str:
    if record is not None and record.retry_requested:
        return RETRY_REQUESTED
    if record is None or record.fingerprint is None:
        return "never run"
    if record.state == RunState.DONE and facts.signal_digest is None:
        return "signal missing"
    if record.state == "done" and facts.missing_outputs:
        return f"output missing: {facts.missing_outputs[0]}"
    old_inputs = {p: v[2] for p, v in record.inputs.items()}
    return stale_reason(record.config_digest, old_inputs, record.upstream, new,
                        upstream_states)


def plan(workspace: Workspace, agents: list[Agent], facts: dict[str, AgentFacts],
         present_signals: set[str], running_elsewhere: tuple[Agent, ...] = (),
         now: float = 0.0, spent: dict[str, float] | None = None,
         rate_limited: dict[str, float] | None = None,
         unknown_reset: frozenset[str] = frozenset()) -> dict[str, Decision]:
    """One scheduling pass over `agents` (upstream-first order) -> decisions by task.

    `running_elsewhere`: running agents outside the selection, which still
    count against workspace-wide caps and pools.
    """
    capacity = Capacity(workspace, spent=spent or {}, rate_limited=rate_limited or {}, now=now,
                        unknown_reset=unknown_reset)
    for agent in running_elsewhere:
        capacity.take(agent)
    for task, fact in facts.items():
        if fact.record and fact.record.state in ACTIVE:
            capacity.take(workspace.agents_by_task[task])
    signals = {task: fact.signal_digest for task, fact in facts.items()}
    decided: dict[str, Decision] = {}
    for agent in agents:
        decided[agent.task] = decide(agent, facts[agent.task], decided, signals,
                                     present_signals, capacity, now)
        if agent.candidates:
            mark_losers(agent, decided)
    return decided
