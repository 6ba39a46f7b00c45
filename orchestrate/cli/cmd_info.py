"""`doit info`: doit's own, with orchestrate's verdict on staleness and where
the agent runs."""
from __future__ import annotations

import os
from pathlib import Path

from doit.cmd_info import Info as DoitInfo
from doit.exceptions import InvalidCommand

from ..core.errors import UserError
from ..core.settings import where_it_runs
from .cmd_base import selection_of
from .reporter import Reporter
from .tasks import workspace_at


def staleness(root: Path, task: str) -> tuple[bool, list[str]] | None:
    """(up to date?, why) for one agent, as `doit info` shows it; None for a group."""
    agent = workspace_at(root, lenient=True).agents_by_task.get(task)
    if agent is None:
        return None
    engine, agents = selection_of(root, [task], lenient=True)
    decision = engine.evaluate(agents)[task]
    where = [where_it_runs(agent)]
    if decision.state == "done":
        return True, ["its signal is current", *where]
    if decision.launch:
        return False, [f"stale: {decision.reason}", *where]
    return False, [f"{decision.state}: {decision.reason}", *where]


class Info(DoitInfo):
    """doit's info, with orchestrate's verdict on staleness instead of doit's.

    doit's own verdict would come from its database, which orchestrate keeps
    only as a cache; the state files say why an agent is or is not current.
    """

    @property
    def report(self) -> Reporter:
        return Reporter(self.outstream)

    doc_purpose = "show an agent's inputs, upstream signals and why it would run"

    def _execute(self, pos_args, hide_status=False):
        super()._execute(pos_args, hide_status=True)
        self._how_it_runs(pos_args[0] if pos_args else "")
        if hide_status:
            return 0
        try:
            verdict = staleness(Path(os.getcwd()), pos_args[0])
        except UserError as err:
            raise InvalidCommand(str(err)) from None
        if verdict is None:
            return 0
        up_to_date, lines = verdict
        self.report.write("\n{:11s}: {}\n".format("status", "up-to-date" if up_to_date else "run"))
        for line in lines:
            self.report.line(f" * {line}")
        return 0 if up_to_date else 1

    def _how_it_runs(self, task: str) -> None:
        from .agent_info import info_lines
        agent = workspace_at(Path(os.getcwd()), lenient=True).agents_by_task.get(task)
        if agent is not None:
            self.report.line("\n" + "\n".join(info_lines(agent)))
