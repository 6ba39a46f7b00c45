"""doit's own commands as an orchestrate user meets them.

`help` lists orchestrate's commands first. doit commands that act on doit's
database of task runs (`ignore`, `reset-dep`) or on task actions (`strace`)
mean nothing for agents, whose state is in `.orchestrate/`: `ignore` used to
say "ignoring" and the agent ran anyway. They now answer in one line why not,
and what to use instead (exit 3). Registered, like `run`, in the workspace's
pyproject.toml [tool.doit.plugins.command] (see scaffold.PLUGINS).
"""
from __future__ import annotations

import inspect
import sys

from doit.action import PythonAction
from doit.cmd_clean import Clean as DoitClean
from doit.cmd_help import Help as DoitHelp
from doit.cmd_ignore import Ignore as DoitIgnore
from doit.cmd_resetdep import ResetDep as DoitResetDep
from doit.cmd_strace import Strace as DoitStrace
from doit.exceptions import BaseFail, InvalidCommand
from doit.task import clean_targets


def _ours(cmd) -> bool:
    """An orchestrate command (not one of doit's, answered or re-used)."""
    return cmd.__module__.startswith("orchestrate.") and not issubclass(
        cmd, (_NotForAgents, Help, Clean))


class Help(DoitHelp):
    """doit's help, orchestrate's commands first."""

    doc_purpose = "show help: doit help COMMAND for its options and exit codes"

    def print_usage(self, cmds):
        name = self.bin_name
        print("doit with orchestrate: Make-style pipelines of AI agents "
              "(the README is the manual)\n")
        print("orchestrate's commands")
        for cmd_name in sorted(n for n, c in cmds.items() if _ours(c)):
            print(f"  {name} {cmd_name:16s}  {cmds[cmd_name].doc_purpose}")
        print("\ndoit's own commands")
        for cmd_name in sorted(n for n, c in cmds.items() if not _ours(c)):
            print(f"  {name} {cmd_name:16s}  {cmds[cmd_name].doc_purpose}")
        print(f"\n  {name} help <command>    options and exit codes of a command")
        print(f"  {name} help <task-name>  an agent's description")


class _NotForAgents:
    """Answers in one line why the command does not apply, exit 3."""

    why = ""

    def execute(self, params, args):
        raise InvalidCommand(self.why)


class Ignore(_NotForAgents, DoitIgnore):
    doc_purpose = "not for agents (says why): leave an agent out with a selection or doit cancel"
    why = ("ignore does not apply to agents: orchestrate decides from .orchestrate/, not doit's "
           "database; run a selection (doit PIPELINE:AGENT ...) or stop one with doit cancel")


class ResetDep(_NotForAgents, DoitResetDep):
    doc_purpose = "not for agents (says why): doit forget makes an agent run again"
    why = ("reset-dep does not apply to agents: their inputs are compared by content in "
           ".orchestrate/, never through doit's database; doit forget TASK re-runs one")


class Strace(_NotForAgents, DoitStrace):
    doc_purpose = "not for agents (says why): an agent's output is in doit logs TASK"
    why = ("strace traces doit actions, and agents are not run as doit actions; "
           "see an agent's output with doit logs PIPELINE:AGENT")


class Clean(DoitClean):
    """doit's clean, where a refusal is an answer, not noise.

    doit's own clean prints "TASK - executing 'Python: function ...'" for
    every task, writes a failed clean action as "TaskFailed" and its message,
    and exits 0 whatever happened. orchestrate's clean actions refuse (a
    running agent, a path outside the workspace, a read-only state folder):
    each refusal is one line on stderr and the command exits 1; nothing else
    is printed (DESIGN: "A command that refuses ... exits non-zero with one
    line per refusal, and nothing else").
    """

    doc_purpose = "remove agents' signals, outputs and records (never a running agent's)"

    def clean_tasks(self, tasks, dryrun, cleanforget):
        self.refusals: list[str] = []
        cleaned: set[str] = set()
        for task in tasks:
            if task.name in cleaned:
                continue
            cleaned.add(task.name)
            refused = _refusals(task, dryrun, self.outstream)
            self.refusals.extend(refused)
            if cleanforget and not dryrun and not refused:
                self.dep_manager.remove(task.name)
        self.dep_manager.close()

    def _execute(self, dryrun, cleandep, cleanall, cleanforget, pos_args=None):
        self.refusals = []
        super()._execute(dryrun, cleandep, cleanall, cleanforget, pos_args)
        for line in self.refusals:
            sys.stderr.write(line + "\n")
        return 1 if self.refusals else 0


def _refusals(task, dryrun: bool, out) -> list[str]:
    """Run `task`'s clean actions quietly; the lines of those that refused."""
    task.init_options()
    if task._remove_targets is True:       # a task of the user's own dodo.py
        clean_targets(task, dryrun)
        return []
    refused = []
    for action in task.clean_actions:
        if isinstance(action, PythonAction) and \
                "dryrun" in inspect.signature(action.py_callable).parameters:
            action.kwargs["dryrun"] = dryrun
        elif dryrun:
            continue
        result = action.execute(out=out)
        if isinstance(result, BaseFail):
            refused.extend(line for line in str(result.message).splitlines() if line.strip())
    return refused
