"""`doit status`: settle what ended and show every agent; `--json` for scripts."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ..core.scheduler import Decision
from ..runtime.state import (
    Layout,
    SchedulingLock,
    StateFolderReadOnly,
)
from .cmd_plan import burn, burn_lines
from .cmd_base import NO_PIPELINES, OrchestrateCommand, budgets, opt_json, selection_of
from .reporter import Reporter
from .ui import (
    pipeline_totals,
    status_lines,
    status_row,
    summary_line,
    totals_lines,
    with_fanout_rows_rolled_up,
)


def status(root: Path, names: list[str], report: Reporter | None = None
           ) -> tuple[dict[str, Decision], dict]:
    """Settle finished runs (under the lock) and report; launches nothing.
    A read-only state folder is shown as recorded, without settling (and
    `report` notes it)."""
    engine, agents = selection_of(root, names, lenient=True)
    try:
        with SchedulingLock(engine.layout):
            result = engine.run_pass(agents)
    except StateFolderReadOnly:
        (report or Reporter(sys.stdout)).note(
            f"note: {engine.layout.base} is read-only: states as recorded "
            "(runs that ended since are not settled)")
        records = engine.records(agents)
        decisions = engine.evaluate(agents)
        return with_fanout_rows_rolled_up(decisions), records
    from ..runtime.advancers import name_advancers
    return (with_fanout_rows_rolled_up(name_advancers(engine.layout, result.decisions)),
            {t: f.record for t, f in result.facts.items()})


def status_json(decisions: dict[str, Decision], records: dict) -> dict:
    agents = []
    for task, decision in decisions.items():
        record = records.get(task)
        base = record.to_json() if record else {
            "pipeline": decision.agent.pipeline, "agent": decision.agent.name, "attempt": 0,
            "pid": None, "started_at": None, "ended_at": None, "exit_code": None,
            "log": "", "task": task}
        for private in ("inputs", "upstream", "config_digest", "launches", "pid_create_time"):
            base.pop(private, None)
        agents.append({**base, "state": decision.state, "reason": decision.reason, "task": task})
    return {"agents": agents, "pipelines": pipeline_totals(records.values())}


def print_status(out: Reporter, decisions: dict[str, Decision], records: dict,
                 budgets: dict[str, float | None]) -> None:
    if not decisions:
        out.write(NO_PIPELINES)
        return
    rows = [status_row(d, records.get(t)) for t, d in decisions.items()]
    lines = status_lines(rows, colour=out.terminal)
    lines.append(summary_line(decisions.values(), launched="pending"))
    lines.extend(totals_lines(pipeline_totals(records.values()), budgets))
    out.line("\n".join(lines))


class Status(OrchestrateCommand):
    name = "status"
    doc_purpose = "show each agent's state, elapsed time, attempt and reason"
    doc_usage = "[TASK ...] [--json]"
    doc_description = ("Settles runs that ended, launches nothing.\n"
                       "Exit: 0; 3 on an unknown task.")
    cmd_options = (opt_json,)

    def _execute(self, pos_args, as_json):
        decisions, records = status(self.root, pos_args, self.report)
        spend = burn(Layout(self.root), time.time())
        if as_json:
            answer = {**status_json(decisions, records), "presets": spend}
            self.report.write(json.dumps(answer, indent=1) + "\n")
        else:
            print_status(self.report, decisions, records, budgets(self.root))
            if decisions:
                self.report.lines(burn_lines(spend))
        return 0
