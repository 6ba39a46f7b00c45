"""Reading pipeline files from disk into a `Workspace` (the parsing itself is
pure, in `core.spec`): the TOML files, fan-outs' globs and recorded lists,
prompt files, and outputs that symlinks would take outside the workspace."""
from __future__ import annotations

import os
import tomllib
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from ..core.spec import (
    Pipeline,
    clashes_with_other_pipelines,
    PipelineError,
    Problems,
    Workspace,
    parse_pipeline,
    parse_workspace_config,
)
from .fanout import expand_loaded


def _read_toml(path: Path, shown: str, problems: Problems) -> dict[str, Any] | None:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        problems.add(shown, None, None, f"invalid TOML: {err}")
    except (OSError, UnicodeDecodeError) as err:
        problems.add(shown, None, None, f"cannot read: {err}")
    return None


def load_workspace(root: Path, lenient: bool = False) -> Workspace:
    """Read pyproject.toml's [tool.orchestrate] and every pipelines/*.toml.

    Strict (to launch anything): any problem raises PipelineError. Lenient
    (to look, cancel, enforce limits): the valid pipelines, with the problems
    and the names of the pipelines left out recorded in the workspace.
    """
    problems = Problems()
    config: dict[str, Any] = {"pools": ()}
    pyproject = root / "pyproject.toml"
    if pyproject.exists():
        data = _read_toml(pyproject, "pyproject.toml", problems)
        if data is not None:
            config = parse_workspace_config("pyproject.toml", data, problems)
    pools = dict(config.get("pools", ()))
    pipelines, invalid = [], []
    owners: dict[str, str] = {}   # output -> pipeline:agent, across pipelines
    for path in sorted((root / "pipelines").glob("*.toml")):
        shown = f"pipelines/{path.name}"
        before = len(problems.lines)
        data = _read_toml(path, shown, problems)
        pipeline = None
        if data is not None:
            pipeline = parse_pipeline(path.stem, shown, data, problems, pools,
                                      config.get("executor", "local"), config.get("sandbox"))
        if pipeline is not None:
            pipeline = expand_loaded(root, pipeline, problems)
        if pipeline is not None:
            _check_paths_resolve_inside(root, pipeline, problems)
            check_prompt_files(root, pipeline, problems)
            for agent, message in clashes_with_other_pipelines(pipeline, owners):
                problems.add(shown, agent, "outputs", message)
        if len(problems.lines) > before:
            invalid.append(path.stem)
        else:
            pipelines.append(pipeline)
    if problems.lines and not lenient:
        raise PipelineError(problems.lines)
    return Workspace(root=root, pipelines=tuple(pipelines), problems=tuple(problems.lines),
                     invalid=tuple(invalid), **config)


def _check_paths_resolve_inside(root: Path, pipeline: Pipeline, problems: Problems) -> None:
    """`outputs` and `cwd` must stay inside the workspace once symlinks are
    resolved (`out -> /elsewhere` with outputs = ["out/x"] would otherwise let
    `doit clean` delete /elsewhere/x). A worktree agent's paths live in its
    worktree, which does not exist yet: `clean` checks those when it removes."""
    real_root = os.path.realpath(root)
    resolved: dict[str, str] = {}   # most agents share their cwd and output folders
    for agent in pipeline.agents:
        if agent.isolation == "worktree":
            continue
        for key, paths in (("outputs", agent.outputs), ("cwd", (agent.cwd,))):
            for path in paths:
                prefix = _fixed_prefix(path)
                if prefix not in resolved:
                    resolved[prefix] = os.path.realpath(os.path.join(root, prefix))
                where = resolved[prefix]
                if os.path.commonpath([real_root, where]) != real_root:
                    problems.add(pipeline.path, agent.name, key, f"'{path}' resolves to "
                                 f"{where}, outside the workspace (through a symlink)")


def _fixed_prefix(pattern: str) -> str:
    """The part of a glob before its first wildcard component."""
    parts = []
    for part in Path(pattern).parts:
        if any(c in part for c in "*?["):
            break
        parts.append(part)
    return os.path.join(*parts) if parts else "."


def check_prompt_files(root: Path, pipeline: Pipeline, problems: Problems) -> None:
    """A preset agent's prompt_file must exist before anything launches,
    unless an agent of its pipeline declares it as an output (it is made)."""
    made = [pattern for agent in pipeline.agents for pattern in agent.outputs]
    for agent in pipeline.agents:
        name = agent.prompt_file
        if not name or (root / name).is_file():
            continue
        if any(fnmatch(name, pattern) or name == pattern for pattern in made):
            continue
        problems.add(pipeline.path, agent.name, "prompt_file",
                     f"'{name}' does not exist (expected a file, relative to the workspace)")
