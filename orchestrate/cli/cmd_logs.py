"""`doit logs`: an agent's log (or its check's), followed while it runs."""
from __future__ import annotations

import time
from pathlib import Path

from doit.exceptions import InvalidCommand

from ..core.errors import UserError
from ..core.selection import match
from ..runtime.inflight import with_stand_ins
from ..runtime.state import (
    Layout,
    read_status,
)
from .cmd_base import EXIT_OK, OrchestrateCommand, opt_check_log, opt_follow
from .reporter import Reporter
from .tasks import workspace_at


def print_log(root: Path, task: str, follow: bool, out: Reporter, check: bool = False) -> int:
    workspace = with_stand_ins(workspace_at(root, lenient=True))
    agent = workspace.agents_by_task.get(task)
    if agent is None and ":" in task:   # a fan-out or a pattern: each instance's log in turn
        for one in match(workspace, [task]):
            out.line(f"==> {one.task} <==")
            print_log(root, one.task, False, out)
        return EXIT_OK
    if agent is None:
        raise UserError(f"'{task}' is not an agent (expected pipeline:agent)")
    layout = Layout(workspace.root)
    path = (layout.check_log(agent.pipeline, agent.name) if check
            else layout.log(agent.pipeline, agent.name))
    if not path.exists():
        what = 'check log' if check else 'log'
        if not follow:
            out.line(f"{task} has no {what} yet")
            return EXIT_OK
        out.line(f"{task} has not started; waiting for it (Ctrl-C to stop)")
        out.flush()
        while not path.exists():   # until it is launched (its log is made then)
            time.sleep(0.1)
    what = 'check log' if check else 'log'
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(65536)
            if chunk:
                out.write(chunk.decode(errors="replace"))
                out.flush()
                continue
            if not follow:
                break
            record = read_status(layout, agent.pipeline, agent.name)
            if record is None or not record.active:
                out.write(handle.read().decode(errors="replace"))
                break
            time.sleep(0.1)
        if handle.tell() == 0:   # an empty log printed as nothing looked like a broken command
            record = read_status(layout, agent.pipeline, agent.name)
            running = record is not None and record.state in ("running", "launching")
            out.write(f"{task} has written nothing to its {what}"
                      + (" yet (it is running)\n" if running else "\n"))
    return EXIT_OK


class Logs(OrchestrateCommand):
    name = "logs"
    doc_purpose = "print an agent's log (-f: follow it while the agent runs)"
    doc_usage = "PIPELINE:AGENT [-f] [--check]"
    doc_description = ("-f follows the log while the agent runs; on an agent that has not "
                       "started it waits for it to start (Ctrl-C to stop). --check prints "
                       "the output of its check instead.\n"
                       "Exit: 0; 3 if TASK is not an agent; 130 Ctrl-C.")
    cmd_options = (opt_follow, opt_check_log)

    def _execute(self, pos_args, follow, check_log):
        if len(pos_args) != 1:
            raise InvalidCommand("logs takes one agent, e.g. doit logs review:plan")
        return print_log(self.root, pos_args[0], follow, self.report, check_log)
