"""`doit forget`: doit's own, which also clears orchestrate's record of the agents."""
from __future__ import annotations

import os
from pathlib import Path

from doit.cmd_forget import Forget as DoitForget
from doit.exceptions import InvalidCommand

from ..core.errors import UserError
from ..core.selection import doit_names
from ..runtime.engine import Engine
from ..runtime.state import (
    SchedulingLock,
)
from .reporter import Reporter
from .tasks import workspace_at


def forget_agents(root: Path, tasks: list[str], out: Reporter) -> None:
    """Clear orchestrate's record of finished agents, so the next `doit` re-runs them."""
    forgetter = AgentForgetter(root, out)
    with SchedulingLock(forgetter.engine.layout):
        for task in tasks:
            forgetter.forget(task)


class AgentForgetter:
    """Forgets agents' records through the engine (the one owner of run
    state); a running agent is refused in one line."""

    def __init__(self, root: Path, out: Reporter):
        workspace = workspace_at(root, lenient=True)
        self.workspace, self.engine, self.out = workspace, Engine(workspace), out

    def forget(self, task: str) -> None:
        agent = self.workspace.agents_by_task.get(task)
        refusal = self.engine.forget(agent.pipeline, agent.name) if agent else None
        if refusal:
            self.out.line(refusal)


class Forget(DoitForget):
    """doit's forget, which also clears orchestrate's record of the agents:
    doit selects the tasks as it always does, and each one it removes from
    its database is forgotten by orchestrate first."""

    @property
    def report(self) -> Reporter:
        return Reporter(self.outstream)

    doc_purpose = "forget agents' results and failures, so that they run again"

    def _execute(self, forget_sub, forget_disable_default, forget_all):
        self.sel_tasks = doit_names(self.sel_tasks, {t.name: t for t in self.task_list})
        try:
            forgetter = AgentForgetter(Path(os.getcwd()), self.report)
        except UserError as err:
            raise InvalidCommand(str(err)) from None
        deps = self.dep_manager
        remove, remove_all = deps.remove, deps.remove_all

        def forget_then_remove(name: str) -> None:
            forgetter.forget(name)
            remove(name)

        def forget_all_then_remove() -> None:
            for task in self.task_list:
                forgetter.forget(task.name)
            remove_all()

        deps.remove, deps.remove_all = forget_then_remove, forget_all_then_remove
        try:
            with SchedulingLock(forgetter.engine.layout):
                return super()._execute(forget_sub, forget_disable_default, forget_all)
        except UserError as err:   # a read-only state folder, a corrupt file: one line
            raise InvalidCommand(str(err)) from None
