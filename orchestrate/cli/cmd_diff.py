"""`doit diff TASK [--stat]`: what an isolated agent changed, for a person to
review before it lands (and to answer with `doit retry TASK --feedback FILE`)."""
from __future__ import annotations

from pathlib import Path

from doit.exceptions import InvalidCommand

from ..core.errors import UserError
from ..runtime import worktree
from .cmd_base import EXIT_OK, OrchestrateCommand
from .reporter import Reporter
from .tasks import workspace_at

opt_stat = {"name": "stat", "long": "stat", "type": bool, "default": False,
            "help": "only the summary: files changed, lines added and removed"}


def print_diff(root: Path, task: str, out: Reporter, stat: bool = False) -> int:
    workspace = workspace_at(root, lenient=True)
    agent = workspace.agents_by_task.get(task)
    if agent is None:
        raise UserError(f"'{task}' is not an agent (expected pipeline:agent)")
    if agent.isolation != "worktree":
        raise UserError(f"{task} has no branch of its own: doit diff is for an agent with "
                        'isolation = "worktree"')
    if not worktree.has_branch(workspace.root, worktree.branch(agent)):
        out.line(f"{task} has no branch yet (it has not run)")
        return EXIT_OK
    try:
        text = worktree.diff(workspace.root, agent, stat)
    except worktree.WorktreeError as err:
        raise UserError(f"{task}: {err}") from None
    out.write(text if text else f"{task} changed nothing against its base\n")
    return EXIT_OK


class Diff(OrchestrateCommand):
    name = "diff"
    doc_purpose = "show an isolated agent's changes against its base"
    doc_usage = "PIPELINE:AGENT [--stat]"
    doc_description = ("What is committed on the agent's branch (orchestrate/PIPELINE/AGENT) "
                       "since it left its base (the merge-base with HEAD, or with its base "
                       "agent's branch). --stat prints the summary only.\n"
                       "Exit: 0; 3 if TASK is not an agent with isolation = \"worktree\".")
    cmd_options = (opt_stat,)

    def _execute(self, pos_args, stat):
        if len(pos_args) != 1:
            raise InvalidCommand("diff takes one agent, e.g. doit diff feature:implement")
        return print_diff(self.root, pos_args[0], self.report, stat)
