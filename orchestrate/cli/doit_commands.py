"""doit's own commands as an orchestrate user meets them.

`help` lists orchestrate's commands first. doit commands that act on doit's
database of task runs (`ignore`, `reset-dep`) or on task actions (`strace`)
mean nothing for agents, whose state is in `.orchestrate/`: `ignore` used to
say "ignoring" and the agent ran anyway. They now answer in one line why not,
and what to use instead (exit 3). Registered, like `run`, in the workspace's
pyproject.toml [tool.doit.plugins.command] (see scaffold.PLUGINS).
"""
from __future__ import annotations

from doit.cmd_help import Help as DoitHelp
from doit.cmd_ignore import Ignore as DoitIgnore
from doit.cmd_resetdep import ResetDep as DoitResetDep
from doit.cmd_strace import Strace as DoitStrace
from doit.exceptions import InvalidCommand


def _ours(cmd) -> bool:
    """An orchestrate command (not one of doit's, answered or re-used)."""
    return cmd.__module__.startswith("orchestrate.") and not issubclass(
        cmd, (_NotForAgents, Help))


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
