"""Pipelines -> doit task dicts, one group per pipeline, one task per agent.

doit owns the task model (`doit list`, `info`, `clean`, `forget`, task
selection); orchestrate owns staleness, through an `uptodate` object that
reads the state files, so that deleting doit's database loses nothing.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from . import worktree
from .spec import Agent, PipelineError, Workspace, load_workspace
from .state import Layout, expand_patterns
from .worktree import output_root

_loaded: dict[Path, Workspace] = {}


def workspace_at(root: Path) -> Workspace:
    """The workspace at `root`, parsed once per process."""
    root = root.resolve()
    if root not in _loaded:
        _loaded[root] = load_workspace(root)
    return _loaded[root]


def forget_workspace(root: Path) -> None:
    """The next `workspace_at(root)` reads the pipeline files again: a
    long-lived process (the MCP server) must see edits between its calls."""
    _loaded.pop(root.resolve(), None)


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
        from .engine import Engine
        from .selection import upstream_closure
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


def clean_agent(root: str, pipeline: str, agent: str) -> None:
    """`doit clean`: remove the agent's signal, outputs and status (and its
    worktree and branch, for isolation = "worktree")."""
    spec = workspace_at(Path(root)).pipeline(pipeline).agent(agent)
    layout = Layout(Path(root))
    where = output_root(layout, spec)
    outputs, _ = expand_patterns(where, spec.outputs)
    for path in [*(where / rel for rel in outputs), layout.signal(pipeline, agent),
                 layout.status(pipeline, agent)]:
        path.unlink(missing_ok=True)
    if spec.isolation == "worktree":
        worktree.remove(layout, spec)


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
        "clean": [(clean_agent, [str(workspace.root), agent.pipeline, agent.name])],
        "verbosity": 0,
    }


def pipeline_tasks(root: Path) -> Iterator[dict[str, Any]]:
    """Everything doit needs to know about every pipeline of the workspace."""
    from doit.exceptions import InvalidDodoFile
    try:
        workspace = workspace_at(root)
    except PipelineError as err:
        raise InvalidDodoFile("invalid pipeline:\n" + str(err)) from None
    Layout(workspace.root).make_dirs([p.name for p in workspace.pipelines])
    for pipeline in workspace.pipelines:
        yield {"basename": pipeline.name, "name": None,
               "doc": pipeline.description or f"pipeline {pipeline.name}"}
        for agent in pipeline.agents:
            yield agent_task(workspace, agent)


def ensure_state_folder(root: Path) -> None:
    (root / ".orchestrate").mkdir(exist_ok=True)
