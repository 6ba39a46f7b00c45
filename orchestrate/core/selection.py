"""Task names on the command line -> the agents they select (pure)."""
from __future__ import annotations

from typing import Any, Callable

from .errors import UserError
from .spec import Agent, Workspace


class SelectionError(UserError):
    """A task name on the command line that matches no pipeline or agent."""


def select(workspace: Workspace, names: list[str]) -> list[Agent]:
    """Task names -> the agents they name plus everything upstream, upstream-first."""
    return upstream_closure(workspace, {a.task for a in match(workspace, names)})


def match(workspace: Workspace, names: list[str]) -> list[Agent]:
    """The agents task names name: `review` a pipeline, `review:plan` one agent;
    shell-style wildcards work as in doit (`review:impl_*`). None = everything.
    A fan-out's name selects all of it (`review:fix`); `review:fix.*` its
    instances (and, for a planned list, its own `review:fix` row). A best_of
    agent's name selects it and its candidates; `review:fix@2` one candidate."""
    from fnmatch import fnmatchcase
    wanted: set[str] = set()
    for name in names or [p.name for p in workspace.pipelines]:
        pipeline_name, _, agent_name = name.partition(":")
        matched = [a.task for p in workspace.pipelines if fnmatchcase(p.name, pipeline_name)
                   for a in p.agents if not agent_name or _named(a, agent_name, fnmatchcase)]
        if not matched and any(fnmatchcase(p, pipeline_name) for p in workspace.invalid):
            raise SelectionError(f"'{name}': its pipeline file is invalid (see above)")
        if not matched:
            known = ", ".join(p.name for p in workspace.pipelines) or "none"
            raise SelectionError(f"no pipeline or agent matches '{name}' (pipelines: {known})")
        wanted.update(matched)
    return [workspace.agents_by_task[t] for t in sorted(wanted)]


def doit_names(names: list[str] | None, known: dict[str, Any]) -> list[str] | None:
    """For doit's own commands that take exact names (forget): `p:a.*` and a
    fan-out's name `p:a` -> the task names they stand for."""
    from fnmatch import fnmatchcase
    if not names:
        return names
    result: list[str] = []
    for name in names:
        if "*" in name:
            result.extend(t for t in known if fnmatchcase(t, name))
        elif name not in known and any(t.startswith(name + ".") for t in known):
            result.extend(t for t in known if t.startswith(name + "."))
        else:
            result.append(name)
            result.extend(t for t in known if t.startswith(name + "@"))   # best_of candidates
    return result


def _named(agent: Agent, pattern: str, fnmatchcase: Callable[[str, str], bool]) -> bool:
    if fnmatchcase(agent.name, pattern):
        return True
    if agent.candidate_of is not None:   # `p:a` names a best_of agent and its candidates
        return fnmatchcase(agent.candidate_of, pattern)
    if agent.fanout is None:
        return False
    return fnmatchcase(agent.fanout, pattern) or (bool(agent.gate) and
                                                  fnmatchcase(agent.name + ".", pattern))


def upstream_closure(workspace: Workspace, tasks: set[str]) -> list[Agent]:
    """`tasks` and everything upstream of them, upstream first, in declaration
    order otherwise. Iterative: a chain of thousands of agents is fine."""
    ordered: list[Agent] = []
    seen: set[str] = set()
    for pipeline in workspace.pipelines:
        for root in pipeline.agents:
            if root.task not in tasks or root.task in seen:
                continue
            seen.add(root.task)
            stack = [(root, iter(root.upstream))]
            while stack:
                agent, pending = stack[-1]
                for name in pending:
                    upstream = workspace.agents_by_task[f"{agent.pipeline}:{name}"]
                    if upstream.task not in seen:
                        seen.add(upstream.task)
                        stack.append((upstream, iter(upstream.upstream)))
                        break
                else:
                    ordered.append(agent)
                    stack.pop()
    return ordered
