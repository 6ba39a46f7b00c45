"""Everything a user reads: one line per agent, the status table, the live view.

The scheduler and launcher never print; commands hand decisions and status
records to these functions.
"""
from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone
from typing import Iterable

from ..core.scheduler import Decision
from ..runtime.state import StatusRecord
from .reporter import Reporter

LABELS = {"launching": "launching", "running": "running",
          "waiting": "waiting", "queued": "queued", "done": "done", "failed": "failed",
          "cancelled": "cancelled", "pending": "pending"}
STYLES = {"running": "cyan", "launched": "cyan", "done": "green", "failed": "red",
          "cancelled": "magenta", "waiting": "yellow", "queued": "yellow", "pending": "dim"}


def label(decision: Decision) -> str:
    return "launched" if decision.launch else LABELS.get(decision.state, decision.state)


def way_out(decision: Decision) -> str | None:
    """The command that moves a dead end on, for a person who meets it."""
    if decision.cause:
        return f"doit retry {decision.cause}"
    if decision.state == "queued" and decision.blocked:
        return "raise budget_usd, then doit retry"
    return None


def decision_line(decision: Decision) -> str:
    reason = decision.reason
    if decision.state in ("done", "running") and reason in ("done", "running"):
        reason = ""
    if decision.launch and decision.via:   # launched with a fallback preset: which, and why
        reason = f"{reason}; {decision.via}"
    line = f"{label(decision):<9} {decision.agent.task}" + (f"  ({reason})" if reason else "")
    hint = way_out(decision)
    return line + (f"  -> {hint}" if hint else "")


def worth_a_line(decision: Decision) -> bool:
    """What `doit` reports without -v: what it launched, and what needs a person
    (failed, cancelled, blocked, or gated on an external signal)."""
    return (decision.launch or decision.state in ("failed", "cancelled") or decision.blocked
            or decision.signal is not None)


def write_decisions(out: Reporter, decisions: Iterable[Decision]) -> None:
    for decision in decisions:
        out.line(decision_line(decision))
    out.flush()


RUN_ORDER = ("launched", "running", "queued", "waiting", "pending", "failed", "cancelled",
             "done", "up to date")


def run_summary(decisions: Iterable[Decision], current: set[str] | None = None) -> str:
    """One line: "1,998 up to date, 2 launched". With `current` (the tasks
    that were done before a wait began), the others that are done now are
    "done": they ran during the wait."""
    counts = state_counts(decisions, done_before=current, fresh="done", stale="up to date")
    order = [*RUN_ORDER, *sorted(set(counts) - set(RUN_ORDER))]
    return ", ".join(f"{counts[s]:,} {s}" for s in order if s in counts)


def state_counts(decisions: Iterable[Decision], launched: str = "launched",
                 done_before: set[str] | None = None, fresh: str = "done",
                 stale: str = "done") -> dict[str, int]:
    """How many agents are in each state: the one count that `doit`, `doit
    wait`, `doit status`, the live view and the report all print.

    Agents only: a planned fan-out's `pipeline:agent` row is not an agent
    (its instances are), so it is never counted. `launched` names the ready
    agents ("pending" in status); a done agent is `stale` ("up to date" for
    `doit`), unless `done_before` is given and it was not done then: `fresh`."""
    counts: dict[str, int] = {}
    for decision in decisions:
        if decision.agent.gate:
            continue
        state = launched if decision.launch else label(decision)
        if decision.state == "done":
            new = done_before is not None and decision.agent.task not in done_before
            state = fresh if new else stale
        counts[state] = counts.get(state, 0) + 1
    return counts


# Which state a group of agents shows: the one that most needs an eye.
ROLLUP_RANK = ("failed", "cancelled", "running", "launching", "launched", "queued", "waiting",
               "pending", "done", "removed")


def with_fanout_rows_rolled_up(decisions: dict[str, Decision]) -> dict[str, Decision]:
    """A planned fan-out's row is decided `done` as soon as its list is read;
    shown that way it said `done` while its instances still ran. Shown, the
    row is as far along as its instances: `running` while one runs, `failed`
    if one failed, `done` once all are, its reason counting them."""
    members: dict[tuple[str, str], list[Decision]] = {}
    for decision in decisions.values():
        agent = decision.agent
        if agent.fanout is not None and not agent.gate:
            members.setdefault((agent.pipeline, agent.fanout), []).append(decision)
    shown = dict(decisions)
    for task, decision in decisions.items():
        agent = decision.agent
        instances = members.get((agent.pipeline, agent.fanout or ""), [])
        if not agent.gate or decision.state != "done" or not instances:
            continue
        state = min(("launched" if d.launch else d.state for d in instances),
                    key=lambda s: ROLLUP_RANK.index(s) if s in ROLLUP_RANK else len(ROLLUP_RANK))
        if state != "done":
            shown[task] = replace(decision, state="running" if state == "launched" else state,
                                  reason=f"{decision.reason} ({summary_line(instances)})")
    return shown


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def elapsed(record: StatusRecord | None, now: datetime | None = None) -> str:
    if record is None or not record.started_at:
        return ""
    start = _parse_time(record.started_at)
    end = _parse_time(record.ended_at) if not record.active else None
    seconds = max(0.0, ((end or now or datetime.now(timezone.utc)) - start).total_seconds())
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def status_row(decision: Decision, record: StatusRecord | None) -> tuple[str, ...]:
    """A status table row; an agent ready to launch is pending."""
    state = label(decision) if not decision.launch else "pending"
    reason = decision.reason if not decision.launch else f"ready ({decision.reason})"
    current = decision.state in ("running", "done", "failed", "cancelled")
    attempt = str(record.attempt) if current and record and record.attempt else ""
    if record is not None and record.job_id and not decision.launch:
        reason = f"{reason}, slurm job {record.job_id}".lstrip(", ")
    return (decision.agent.task, state, elapsed(record) if current else "", attempt, reason,
            *usage_cells(record))


def usage_cells(record: StatusRecord | None) -> tuple[str, str]:
    """Cost (all runs so far) and tokens (latest run) of a preset agent."""
    if record is None or not record.result:
        return "", ""
    result = record.result
    cost = f"${record.spent_usd:.4f}" if result.get("cost_usd") is not None else ""
    tokens = (f"{result.get('input_tokens', 0):,} in / {result.get('output_tokens', 0):,} out"
              + (f" / {result['cache_tokens']:,} cache" if result.get("cache_tokens") else ""))
    return cost, tokens


def pipeline_totals(records: Iterable[StatusRecord | None]) -> dict[str, dict[str, float]]:
    """Per pipeline: dollars spent and tokens used by its preset agents."""
    totals: dict[str, dict[str, float]] = {}
    for record in records:
        if record is None or not record.result:
            continue
        total = totals.setdefault(record.pipeline, {"cost_usd": 0.0, "input_tokens": 0,
                                                    "output_tokens": 0})
        total["cost_usd"] += record.spent_usd
        total["input_tokens"] += record.result.get("input_tokens", 0)
        total["output_tokens"] += record.result.get("output_tokens", 0)
    return totals


def totals_lines(totals: dict[str, dict[str, float]], budgets: dict[str, float | None]
                 ) -> list[str]:
    """One line per pipeline with spend (against its budget) and tokens;
    `budgets` maps pipeline names, and "*" the workspace, to budget_usd."""
    lines = []
    for name, total in sorted(totals.items()):
        budget = budgets.get(name)
        lines.append(f"{name}: ${total['cost_usd']:.4f} spent"
                     + (f" of ${budget:.2f} budget" if budget is not None else "")
                     + f", {int(total['input_tokens']):,} tokens in, "
                       f"{int(total['output_tokens']):,} out")
    if budgets.get("*") is not None:
        spent = sum(t["cost_usd"] for t in totals.values())
        lines.append(f"workspace: ${spent:.4f} spent of ${budgets['*']:.2f} budget")
    return lines


def status_lines(rows: list[tuple[str, ...]], colour: bool = False,
                 width: int | None = None) -> list[str]:
    """The status table as plain padded columns (see table.py: rich's Table
    was three quarters of `doit status` on 2,000 agents); reason last, so a
    long one is what gets cut when `width` is given."""
    from ..core.table import columns
    usage = any(row[5] or row[6] for row in rows)
    header = ("agent", "state", "elapsed", "attempt") + (("cost", "tokens") if usage else ()) \
        + ("reason",)
    cells = [row[:4] + (row[5:7] if usage else ()) + (row[4],) for row in rows]
    return columns(header, cells, STYLES, colour, width)


def summary_line(decisions: Iterable[Decision], launched: str = "launched") -> str:
    """"3 done, 1 running, ..."; `launched` names the ready agents (pending in status)."""
    counts = state_counts(decisions, launched)
    order = ["done", "running", "launched", "queued", "waiting", "pending", "failed",
             "cancelled"]
    order += sorted(set(counts) - set(order))
    return ", ".join(f"{counts[s]} {s}" for s in order if s in counts)
