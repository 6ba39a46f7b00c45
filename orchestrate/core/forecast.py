"""Forecasts: how long and how much a launch will take, from the runs before it (pure).

The history is the end events of events.jsonl (`finish`: a success; each
carries its `duration_s` and, for a preset agent, `preset`, `model` and
`cost_usd`). An agent's forecast is the median of its own last five
successful runs; without any, of the last five of the workspace's agents
of the same preset and model; else unknown. `doit plan` adds them up
against every budget that applies; `doit status` adds the spend of the
last hours per preset (burn rate).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from statistics import median
from typing import Any, Callable, Iterable

from .scheduler import Decision
from .spec import Agent, Workspace

LAST_RUNS = 5
ENDS = ("finish", "fail", "cancel")


@dataclass(frozen=True)
class PastRun:
    task: str
    ok: bool
    ended: float | None                 # epoch seconds
    duration_s: float | None
    preset: str | None = None
    model: str | None = None
    cost_usd: float | None = None


def epoch(stamp: Any) -> float | None:
    """An event's `ts` (ISO-8601 UTC) as epoch seconds."""
    if not isinstance(stamp, str):
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else None


def past_runs(events: Iterable[dict[str, Any]]) -> list[PastRun]:
    """Every ended run of events.jsonl, oldest first. An end event written
    before runs carried their duration takes it from its launch event."""
    launched: dict[str, float] = {}
    runs = []
    for item in events:
        kind, run_id = item.get("event"), item.get("run_id")
        if kind == "launch" and isinstance(run_id, str):
            launched[run_id] = epoch(item.get("ts")) or 0.0
        if kind not in ENDS or not isinstance(item.get("task"), str):
            continue
        ended = epoch(item.get("ts"))
        duration = _number(item.get("duration_s"))
        if duration is None and ended is not None and run_id in launched:
            duration = max(ended - launched[str(run_id)], 0.0)
        preset, model = item.get("preset"), item.get("model")
        runs.append(PastRun(item["task"], kind == "finish", ended, duration,
                            preset if isinstance(preset, str) else None,
                            model if isinstance(model, str) else None,
                            _number(item.get("cost_usd"))))
    return runs


@dataclass(frozen=True)
class Forecast:
    duration_s: float | None
    cost_usd: float | None
    basis: str            # "its last 3 runs", "5 runs of claude (sonnet)", "unknown"

    @property
    def known(self) -> bool:
        return self.duration_s is not None or self.cost_usd is not None

    def to_json(self) -> dict[str, Any]:
        return {"duration_s": self.duration_s, "cost_usd": self.cost_usd, "basis": self.basis}


UNKNOWN = Forecast(None, None, "unknown")


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(median(known), 6) if known else None


def forecast(task: str, preset: str | None, model: str | None, runs: list[PastRun]) -> Forecast:
    """The median of the agent's last five successful runs, else of the same
    preset and model's (a preset agent), else unknown."""
    own = [r for r in runs if r.ok and r.task == task][-LAST_RUNS:]
    if own:
        return Forecast(_median([r.duration_s for r in own]), _median([r.cost_usd for r in own]),
                        f"its last {len(own)} run{'s' if len(own) > 1 else ''}")
    if preset is None:
        return UNKNOWN
    alike = [r for r in runs if r.ok and r.preset == preset and r.model == model][-LAST_RUNS:]
    if not alike:
        return UNKNOWN
    what = preset + (f" ({model})" if model else "")
    return Forecast(_median([r.duration_s for r in alike]), _median([r.cost_usd for r in alike]),
                    f"{len(alike)} run{'s' if len(alike) > 1 else ''} of {what}")


def candidate_forecast(agent: Agent, runs: list[PastRun]) -> Forecast:
    """A best_of candidate: its own runs, else its agent's (from before it
    was a contest, or its other candidates') of the same preset, else the
    preset's."""
    guess = forecast(agent.task, agent.preset, agent.model, runs)
    if guess.basis.startswith("its ") or not agent.candidate_of:
        return guess
    family = f"{agent.pipeline}:{agent.candidate_of}"
    kin = [r for r in runs if r.ok and r.preset == agent.preset and r.model == agent.model
           and (r.task == family or r.task.startswith(family + "@"))][-LAST_RUNS:]
    if not kin:
        return guess
    return Forecast(_median([r.duration_s for r in kin]), _median([r.cost_usd for r in kin]),
                    f"{len(kin)} run{'s' if len(kin) > 1 else ''} of {family}")


def contest_forecast(candidates: list[Forecast]) -> Forecast:
    """A best_of agent: every candidate runs (at once) and counts toward
    budgets, so N times a candidate's cost, as long as the longest."""
    costs = [f.cost_usd for f in candidates if f.cost_usd is not None]
    durations = [f.duration_s for f in candidates if f.duration_s is not None]
    if not costs and not durations:
        return UNKNOWN
    return Forecast(max(durations) if durations else None,
                    round(sum(costs), 6) if costs else None,
                    f"{len(candidates)} candidates")


# -- the plan -------------------------------------------------------------------
@dataclass(frozen=True)
class Planned:
    """An agent `doit` would launch (`launch`), hold for a cap (`queued`) or
    that waits on one of those (`waits`), and its forecast."""
    decision: Decision
    action: str
    forecast: Forecast

    def to_json(self) -> dict[str, Any]:
        agent = self.decision.agent
        return {"task": agent.task, "action": self.action, "state": self.decision.state,
                "reason": self.decision.reason, "preset": agent.preset, "model": agent.model,
                "via": self.decision.via, "forecast": self.forecast.to_json()}


@dataclass(frozen=True)
class BudgetLine:
    scope: str                 # "pipeline" or "workspace"
    name: str | None           # the pipeline's
    budget_usd: float
    spent_usd: float
    forecast_usd: float

    @property
    def left_usd(self) -> float:
        return max(self.budget_usd - self.spent_usd, 0.0)

    @property
    def exceeded(self) -> bool:
        return self.forecast_usd > self.left_usd + 1e-9

    def text(self) -> str:
        who = f"pipeline {self.name}" if self.scope == "pipeline" else "workspace"
        verdict = ": exceeds what is left" if self.exceeded else ""
        return (f"{who}: forecast ${self.forecast_usd:.2f}, ${self.left_usd:.2f} of "
                f"${self.budget_usd:.2f} left{verdict}")

    def to_json(self) -> dict[str, Any]:
        return {"scope": self.scope, "name": self.name, "budget_usd": self.budget_usd,
                "spent_usd": round(self.spent_usd, 6), "left_usd": round(self.left_usd, 6),
                "forecast_usd": round(self.forecast_usd, 6), "exceeded": self.exceeded}


@dataclass
class Plan:
    agents: list[Planned] = field(default_factory=list)
    budgets: list[BudgetLine] = field(default_factory=list)

    @property
    def exceeded(self) -> bool:
        return any(b.exceeded for b in self.budgets)

    @property
    def running(self) -> list[Planned]:
        """What runs: a best_of agent's own row is its candidates' sum, not a run."""
        return [p for p in self.agents if not p.decision.agent.candidates]

    def cost(self, pipeline: str | None = None) -> float:
        return sum(p.forecast.cost_usd or 0.0 for p in self.running
                   if pipeline is None or p.decision.agent.pipeline == pipeline)

    def to_json(self) -> dict[str, Any]:
        durations = [p.forecast.duration_s for p in self.running]
        return {"agents": [p.to_json() for p in self.agents],
                "budgets": [b.to_json() for b in self.budgets],
                "total": {"agents": len(self.running), "cost_usd": round(self.cost(), 6),
                          "duration_s": round(sum(d or 0.0 for d in durations), 3),
                          "unknown": sum(1 for p in self.running if not p.forecast.known)},
                "exceeds_budget": self.exceeded}


def _action(decision: Decision, decided: dict[str, str]) -> str | None:
    """launch, queued, waits (on an agent that will run), or None: not part of the plan."""
    if decision.launch:
        return "launch"
    if decision.state == "queued":   # a cap, a rate limit, or a budget holds it
        return "queued"
    if decision.state == "waiting" and not decision.timed:
        agent = decision.agent
        upstream = (f"{agent.pipeline}:{name}" for name in agent.upstream)
        if any(task in decided for task in upstream):
            return "waits"
    return None


def make_plan(workspace: Workspace, decisions: dict[str, Decision], runs: list[PastRun],
              spent: dict[str, float],
              launch_as: Callable[[Agent], Agent] = lambda agent: agent) -> Plan:
    """What `doit` would run of `decisions` (upstream first), forecast, and
    the totals against each budget (pipeline, workspace) that applies.
    `launch_as`: the agent as it would launch now (a fallback's preset while
    its own is rate limited), for those the scheduler has not routed yet."""
    plan = Plan()
    decided: dict[str, str] = {}
    for task, decision in decisions.items():
        action = _action(decision, decided)
        if action is None:
            continue
        decided[task] = action
        if not decision.launch:
            decision = replace(decision, agent=launch_as(decision.agent))
        agent = decision.agent
        if agent.candidates:   # N times: every candidate runs and counts
            mine = [p.forecast for p in plan.agents
                    if p.decision.agent.pipeline == agent.pipeline
                    and p.decision.agent.candidate_of == agent.name]
            guess = contest_forecast(mine) if mine else Forecast(0.0, 0.0, "no candidate to run")
        elif agent.candidate_of:
            guess = candidate_forecast(agent, runs)
        else:
            guess = forecast(task, agent.preset, agent.model, runs)
        plan.agents.append(Planned(decision, action, guess))
    pipelines = sorted({p.decision.agent.pipeline for p in plan.agents})
    for name in pipelines:
        budget = workspace.pipeline(name).budget_usd
        if budget is not None:
            plan.budgets.append(BudgetLine("pipeline", name, budget, spent.get(name, 0.0),
                                           plan.cost(name)))
    if workspace.budget_usd is not None and plan.agents:
        plan.budgets.append(BudgetLine("workspace", None, workspace.budget_usd,
                                       spent.get("*", 0.0), plan.cost()))
    return plan


# -- burn rate ------------------------------------------------------------------
def spend_by_preset(runs: list[PastRun], now: float, hours: float) -> dict[str, float]:
    """Dollars per preset of the runs that ended in the last `hours`."""
    since = now - hours * 3600
    spend: dict[str, float] = {}
    for run in runs:
        if run.preset and run.ended is not None and run.ended >= since:
            spend[run.preset] = spend.get(run.preset, 0.0) + (run.cost_usd or 0.0)
    return spend
