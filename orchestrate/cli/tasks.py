"""Pipelines -> doit task dicts, one group per pipeline, one task per agent.

doit owns the task model (`doit list`, `info`, `clean`, `forget`, task
selection); orchestrate owns staleness, through an `uptodate` object that
reads the state files, so that deleting doit's database loses nothing.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from ..core.errors import UserError
from ..core.spec import Agent, Workspace
from ..runtime import worktree
from ..runtime.state import Layout, SchedulingLock, expand_patterns, remove_inside
from ..runtime.workspace import load_workspace
from ..runtime.worktree import output_root

_loaded: dict[tuple[Path, bool], Workspace] = {}


def workspace_at(root: Path, lenient: bool = False) -> Workspace:
    """The workspace at `root`, parsed once per process. Lenient: the valid
    pipelines only (to look at, cancel, enforce limits); never to launch."""
    key = (root.resolve(), lenient)
    if key not in _loaded:
        other = _loaded.get((key[0], not lenient))
        # a valid workspace reads the same either way: parse the files once
        _loaded[key] = other if other is not None and not other.problems else \
            load_workspace(key[0], lenient)
    return _loaded[key]


def invalid_warning(workspace: Workspace) -> str:
    if not workspace.problems:
        return ""
    left_out = ", ".join(workspace.invalid) or "none"
    return (f"warning: invalid pipeline (left out: {left_out}; nothing launches until "
            "it is fixed):\n" + "\n".join(workspace.problems) + "\n")


def forget_workspace(root: Path) -> None:
    """The next `workspace_at(root)` reads the pipeline files again: a
    long-lived process (the MCP server) must see edits between its calls."""
    for lenient in (False, True):
        _loaded.pop((root.resolve(), lenient), None)


def describe_command(agent: Agent) -> str:
    if agent.preset:
        return f"{agent.preset} agent" + (f" ({agent.model})" if agent.model else "")
    command = agent.command or ""
    text = command if isinstance(command, str) else " ".join(command)
    return text if len(text) <= 60 else text[:57] + "..."


class AgentIsCurrent:
    """doit `uptodate` check: is the agent's signal current? Says why not."""

    def __init__(self, workspace: Workspace, agent: Agent):
        self.workspace = workspace
        self.agent = agent
        self.reason = "not checked"

    def __call__(self) -> bool:
        from ..core.selection import upstream_closure
        from ..runtime.engine import Engine
        engine = Engine(self.workspace)
        decision = engine.evaluate(upstream_closure(self.workspace, {self.agent.task}))[
            self.agent.task]
        self.reason = f"{decision.state}: {decision.reason}"
        return decision.state == "done"

    def __str__(self) -> str:
        return f"orchestrate: {self.reason}"


def _refuse_plain_run(task: str):
    """The action doit's own `run` would execute: fail, saying what to configure."""
    from doit.exceptions import TaskFailed
    return TaskFailed(f"{task}: agents are launched by orchestrate's run command; add "
            '[tool.doit.plugins.command] run = "orchestrate.commands:Run" '
            "to pyproject.toml (python -m orchestrate init does it)")


def clean_agent(root: str, pipeline: str, agent: str, dryrun: bool = False):
    """`doit clean`: remove the agent's signal, outputs, status and earlier
    logs (and its worktree and branch, for isolation = "worktree").

    Under the scheduling lock, and never for a running agent: a second copy
    would start while the first runs, and it would finish on truncated
    outputs. Every path is checked to be inside the workspace as it is removed.
    """
    from doit.exceptions import TaskFailed
    spec = workspace_at(Path(root), lenient=True).pipeline(pipeline).agent(agent)
    layout = Layout(Path(root))
    try:
        return _clean_under_lock(layout, spec, dryrun, Path(root))
    except UserError as err:
        return TaskFailed(f"{spec.task}: {err}\n")


def _clean_under_lock(layout: Layout, spec: Agent, dryrun: bool, root: Path):
    from doit.exceptions import TaskFailed

    from ..runtime.engine import Engine
    pipeline, agent = spec.pipeline, spec.name
    with SchedulingLock(layout):   # the status record first: refused while it runs
        refusal = Engine(workspace_at(root, lenient=True)).forget(pipeline, agent, "cleaned",
                                                                  dryrun)
        if refusal:
            return TaskFailed(refusal + "\n")
        where = output_root(layout, spec)
        outputs, _ = expand_patterns(where, spec.outputs)
        state = [layout.signal(pipeline, agent), layout.status(pipeline, agent),
                 *layout.earlier_logs(pipeline, agent), layout.check_log(pipeline, agent),
                 layout.setup_log(pipeline, agent), layout.merge_log(pipeline, agent),
                 layout.feedback(pipeline, agent)]
        if spec.candidates:   # a best_of agent: its contest's choice goes too
            from ..runtime.bestof import contest_files
            state += contest_files(layout, pipeline, agent)
        paths = [*((where, where / rel) for rel in outputs),
                 *((layout.root, path) for path in state)]
        if dryrun:
            print("\n".join(f"would remove {p}" for _, p in paths if p.exists()))
            return None
        refused = [str(p) for inside, p in paths if p.exists() and not remove_inside(inside, p)]
        if spec.isolation == "worktree":
            worktree.remove(layout, spec)
    if refused:
        return TaskFailed(f"{spec.task}: not removed, outside the workspace: "
                          f"{', '.join(refused)}\n")
    return None


def clean_gate(root: str, pipeline: str, agent: str, dryrun: bool = False):
    """`doit clean` of a planned fan-out's row: its record and what its list
    expanded to, so the list is read again (its instances are cleaned by
    name, `doit clean p:agent.*`; their logs are not the row's)."""
    from ..runtime.engine import Engine
    from ..runtime.fanout import record_path
    layout = Layout(Path(root))
    paths = [layout.status(pipeline, agent), record_path(layout, pipeline, agent)]
    with SchedulingLock(layout):
        if not dryrun:   # the row's record goes the way every record goes
            Engine(workspace_at(Path(root), lenient=True)).forget(pipeline, agent, "cleaned")
        for path in paths:
            if path.exists():
                if dryrun:
                    print(f"would remove {path}")
                else:
                    remove_inside(layout.root, path)
    return None


def agent_task(workspace: Workspace, agent: Agent) -> dict[str, Any]:
    layout = Layout(workspace.root)
    rel = layout.relative
    return {
        "basename": agent.pipeline,
        "name": agent.name,
        "doc": agent.description or describe_command(agent),
        "actions": [(_refuse_plain_run, [agent.task])],
        "targets": [rel(layout.signal(agent.pipeline, agent.name))],
        "file_dep": sorted(expand_patterns(workspace.root, agent.inputs)[0])
        + [rel(layout.signal(agent.pipeline, u)) for u in agent.after],
        "task_dep": [f"{agent.pipeline}:{u}" for u in agent.upstream],
        "uptodate": [AgentIsCurrent(workspace, agent)],
        "clean": [(clean_gate if agent.gate else clean_agent,
                   [str(workspace.root), agent.pipeline, agent.name])],
        "verbosity": 0,
    }


def pipeline_tasks(root: Path) -> Iterator[dict[str, Any]]:
    """Everything doit needs to know about every pipeline of the workspace."""
    import sys
    workspace = workspace_at(root, lenient=True)
    if workspace.problems:
        sys.stderr.write(invalid_warning(workspace))
    Layout(workspace.root).make_dirs([p.name for p in workspace.pipelines])
    for pipeline in workspace.pipelines:
        yield {"basename": pipeline.name, "name": None,
               "doc": pipeline.description or f"pipeline {pipeline.name}"}
        for agent in pipeline.agents:
            yield agent_task(workspace, agent)


def ensure_state_folder(root: Path) -> None:
    """Run as the dodo file loads (only doit's own commands load it):
    refuse them when started below the root (see where.py), then make sure
    doit's database has its folder."""
    from .where import refuse_doit_command_below
    refuse_doit_command_below(root)
    make_state_folder(root)


def make_state_folder(root: Path) -> None:
    (root / ".orchestrate").mkdir(exist_ok=True)
