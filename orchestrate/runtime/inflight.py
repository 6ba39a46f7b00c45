"""Runs in flight whose declaration is gone, found from their status records.

An agent that is launching, running or being checked stays visible and
controllable when its pipeline file is deleted, renamed or made invalid, or
the agent is removed from it (DESIGN.md, "Running agents are never lost").
`with_stand_ins` adds a stand-in for each such run (`core.standin`, built
from the limits its record kept at launch) to a loaded workspace, so
status, logs, cancel and the advancer's passes reach it by its task name
like any agent; the scheduler never launches it.
"""
from __future__ import annotations

import os
from dataclasses import replace
from fnmatch import fnmatchcase

from ..core.scheduler import ACTIVE
from ..core.selection import SelectionError, select
from ..core.spec import Agent, Pipeline, Workspace
from ..core.standin import NO_LONGER_DECLARED, PIPELINE_INVALID, stand_in
from .state import Layout, StateFileError, StatusRecord, parse_status


def runs_in_flight(workspace: Workspace) -> list[tuple[StatusRecord, str]]:
    """Active records that no agent of `workspace` declares, with why: their
    pipeline file is invalid, or they are no longer declared. Only records
    of undeclared names are read (a listing of status/ and a dict lookup per
    declared agent)."""
    found = []
    status_dir = Layout(workspace.root).status_dir
    try:
        folders = sorted(e.name for e in os.scandir(status_dir) if e.is_dir())
    except OSError:
        return []
    for pipeline in folders:
        why = PIPELINE_INVALID if pipeline in workspace.invalid else NO_LONGER_DECLARED
        try:
            names = {n[:-len(".json")] for n in os.listdir(status_dir / pipeline)
                     if n.endswith(".json") and not n.startswith(".")}
        except OSError:
            continue
        # declared (an invalid file's last valid declaration, say): not in flight here
        names.difference_update(_declared(workspace, pipeline))
        for name in sorted(names):
            try:
                record = parse_status(status_dir / pipeline / f"{name}.json")
            except StateFileError:   # said where the agent is declared, if it is
                continue
            if record is not None and record.state in ACTIVE:
                found.append((record, why))
    return found


def _declared(workspace: Workspace, pipeline: str) -> set[str]:
    for declared in workspace.pipelines:
        if declared.name == pipeline:
            return {a.name for a in declared.agents}
    return set()


def with_stand_ins(workspace: Workspace) -> Workspace:
    """`workspace` with a stand-in agent for each run in flight it does not
    declare (in its pipeline, or a pipeline of the same name)."""
    found = runs_in_flight(workspace)
    if not found:
        return workspace
    extra: dict[str, list[Agent]] = {}
    for record, why in found:
        extra.setdefault(record.pipeline, []).append(stand_in(record, why))
    pipelines = [replace(p, agents=p.agents + tuple(extra.pop(p.name))) if p.name in extra
                 else p for p in workspace.pipelines]
    pipelines += [Pipeline(name=name, path=f"pipelines/{name}.toml", agents=tuple(agents))
                  for name, agents in sorted(extra.items())]
    return replace(workspace, pipelines=tuple(pipelines), agents_by_task={})


def select_watched(workspace: Workspace, names: list[str]) -> list[Agent]:
    """An advancer's selection after its pipelines changed: what still
    matches, plus every stand-in of a pipeline it names (a run it may have
    launched, upstream of a name that is gone); SelectionError only when
    nothing is left to advance or watch."""
    wanted = {n.partition(":")[0] for n in names}
    in_flight = [a for a in workspace.agents_by_task.values() if a.stand_in is not None
                 and (not names or any(fnmatchcase(a.pipeline, w) for w in wanted))]
    try:
        agents = select(workspace, names)
    except SelectionError:
        if not in_flight:
            raise
        return in_flight
    tasks = {a.task for a in agents}
    return agents + [a for a in in_flight if a.task not in tasks]
