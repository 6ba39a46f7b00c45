"""`doit plan`: what `doit` would launch and why, with a forecast of time and
cost against every budget that applies; launches nothing, writes nothing."""
from __future__ import annotations

import json
from pathlib import Path

from ..core.forecast import (
    PastRun,
    Plan as Forecast,
    Planned,
    make_plan,
    past_runs,
    spend_by_preset,
)
from ..core.exitcodes import ExitCode
from ..core.fallback import route
from ..core.spec import Agent
from ..runtime.engine import Engine
from ..runtime.inflight import with_stand_ins
from ..runtime.state import Layout, event_objects
from ..core.selection import select
from .cmd_base import OrchestrateCommand, opt_json
from .reporter import Reporter
from .tasks import workspace_at


def history(layout: Layout, last_bytes: int | None = None) -> list[PastRun]:
    """Every ended run in events.jsonl (read only); `last_bytes`: only the
    runs in that much of its end (the first, cut line is skipped)."""
    try:
        with open(layout.events_path, "rb") as handle:
            size = handle.seek(0, 2)
            start = 0 if last_bytes is None else max(size - last_bytes, 0)
            handle.seek(start)
            data = handle.read()
    except FileNotFoundError:
        return []
    if start:
        data = data[data.find(b"\n") + 1:]
    return past_runs(event_objects(data))


BURN_WINDOWS = ((1, "last hour"), (5, "last 5 hours"))
BURN_TAIL = 16 << 20   # bytes of events.jsonl read for it: hours of a busy workspace


def burn(layout: Layout, now: float) -> dict[str, dict[str, float]]:
    """Per preset: dollars spent by the runs that ended in the last hour and
    the last five hours (`doit status`)."""
    runs = history(layout, BURN_TAIL)
    windows = {hours: spend_by_preset(runs, now, hours) for hours, _ in BURN_WINDOWS}
    presets = sorted(set().union(*windows.values()))
    return {p: {"last_hour_usd": round(windows[1].get(p, 0.0), 6),
                "last_5h_usd": round(windows[5].get(p, 0.0), 6)} for p in presets}


def burn_lines(spend: dict[str, dict[str, float]]) -> list[str]:
    return [f"{preset}: ${s['last_hour_usd']:.4f} in the last hour, "
            f"${s['last_5h_usd']:.4f} in the last 5 hours" for preset, s in spend.items()]


def plan_of(root: Path, names: list[str]) -> Forecast:
    """The plan for the selection `names` (none: every pipeline): the
    engine's decision as a pass would make it now, nothing settled or written."""
    workspace = with_stand_ins(workspace_at(root, lenient=False))
    engine = Engine(workspace, make_dirs=False)
    decisions = engine.preview(select(workspace, names))
    files = engine.rate_limit_files()
    limits, unknown, now = engine.rate_limits(files), engine.unknown_resets(files), engine.clock()

    def launch_as(agent: Agent) -> Agent:
        return route(agent, None, limits, unknown, now).agent
    return make_plan(workspace, decisions, history(engine.layout), engine.spent(), launch_as)


def duration_text(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes}m" if hours else (f"{minutes}m {secs}s" if minutes else f"{secs}s")


def planned_line(planned: Planned) -> str:
    agent, decision, guess = planned.decision.agent, planned.decision, planned.forecast
    how = agent.preset + (f" ({agent.model})" if agent.model else "") if agent.preset else "command"
    if guess.known:
        cost = "$?" if guess.cost_usd is None else f"${guess.cost_usd:.2f}"
        told = f"~{duration_text(guess.duration_s)}, {cost} ({guess.basis})"
    else:
        told = "forecast unknown"
    return f"{agent.task}  {planned.action}: {decision.reason}  [{how}]  {told}"


def print_plan(out: Reporter, plan: Forecast) -> None:
    if not plan.agents:
        out.line("nothing to launch: every selected agent is done, running or held")
        return
    out.lines(planned_line(p) for p in plan.agents)
    total = plan.to_json()["total"]
    unknown = f" ({total['unknown']} unknown)" if total["unknown"] else ""
    out.line(f"total: {total['agents']} agents, forecast ~{duration_text(total['duration_s'])} "
             f"of agent time, ${total['cost_usd']:.2f}{unknown}")
    out.lines(b.text() for b in plan.budgets)


class Plan(OrchestrateCommand):
    name = "plan"
    doc_purpose = "say what doit would launch and why, with a forecast of time and cost"
    doc_usage = "[TASK ...] [--json]"
    doc_description = ("Launches nothing and writes nothing. Forecasts come from each agent's\n"
                       "last five successful runs (median), else from the workspace's runs\n"
                       "of the same preset and model, else \"unknown\".\n"
                       "Exit: 0; 1 if a forecast exceeds what is left of a budget; "
                       "3 on an invalid pipeline or an unknown task.")
    cmd_options = (dict(opt_json, help="print the plan as JSON"),)
    launches = True   # an invalid workspace is refused with the whole error

    def _execute(self, pos_args, as_json):
        plan = plan_of(self.root, pos_args)
        if as_json:
            self.report.write(json.dumps(plan.to_json(), indent=1) + "\n")
        else:
            print_plan(self.report, plan)
        return ExitCode.FAILED if plan.exceeded else ExitCode.OK
