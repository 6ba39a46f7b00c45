"""Fan-out at the edges: globbing at load time, and the engine step that
turns a planner's list into instances when the planner finishes.

The expansion of a dynamic list is recorded in
`.orchestrate/fanout/<pipeline>/<agent>.json` (atomically, fsynced) before
anything of it can launch, and every process builds its instances from that
record, so after kill -9 at any moment an instance is neither launched
twice (its status record is the usual guard) nor forgotten (the record says
it exists). Retiring the instances of removed items happens before the new
record is written, so a crash in between retires them again, harmlessly.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from .faults import crash_point
from ..core.fingerprint import digest_text
from ..core.records import RunState
from ..core.spec import Workspace
from ..core.transitions import Effects, gate_row
from ..core.foreach import Item, ListProblem, expand_agents, parse_list, string_items
from .state import (
    FileCache,
    Layout,
    StateFolderReadOnly,
    StatusRecord,
    append_event,
    expand_patterns,
    is_inside,
    read_json,
    write_json,
)
from .worktree import output_root


def record_path(layout: Layout, pipeline: str, agent: str) -> Path:
    return layout.base / "fanout" / pipeline / f"{agent}.json"


def record_items(record: dict[str, Any] | None) -> list[Item] | None:
    """The items an expansion record holds (None: no list read yet)."""
    if not record or not isinstance(record.get("items"), list):
        return None
    return [Item(i["text"], i["key"], tuple(i["fields"].items()) if i.get("fields") is not None
                 else None) for i in record["items"]]


def items_json(items: list[Item]) -> list[dict[str, Any]]:
    return [{"text": i.text, "key": i.key,
             "fields": dict(i.fields) if i.fields is not None else None} for i in items]


def static_items(root: Path, agent: Any) -> list[Item]:
    foreach = agent.foreach
    if foreach.kind == "values":
        items = string_items(list(foreach.values))
    else:
        found, _ = expand_patterns(root, (foreach.glob,))
        items = string_items(sorted(found))
    if len(items) > foreach.max_items:
        raise ListProblem(f"{len(items)} items, more than max_items ({foreach.max_items})")
    return items


def expand_loaded(root: Path, pipeline: Any, problems: Any,
                  records: dict[str, dict | None] | None = None) -> Any:
    """A parsed pipeline with its fan-outs expanded (static lists globbed now,
    dynamic ones from their records); None if an item cannot fill a placeholder."""
    declared = pipeline.declared or pipeline.agents
    if not any(a.foreach for a in declared):
        return pipeline
    layout = Layout(root)
    static: dict[str, list[Item]] = {}
    dynamic: dict[str, list[Item] | None] = {}
    basis: dict[str, str | None] = {}
    failed = False
    for agent in declared:
        if agent.foreach is None or agent.foreach.kind == "each_of":
            continue
        if agent.foreach.kind == "json":
            record = (records or {}).get(agent.name) if records is not None else \
                read_json(record_path(layout, pipeline.name, agent.name))
            dynamic[agent.name] = record_items(record)
            basis[agent.name] = (record or {}).get("items_digest")
            continue
        try:
            static[agent.name] = static_items(root, agent)
        except ListProblem as err:
            problems.add(pipeline.path, agent.name, "foreach", str(err))
            failed = True
    if failed:
        return None
    try:
        agents = expand_agents(declared, static, dynamic)
    except ListProblem as err:
        problems.add(pipeline.path, err.agent, "foreach", str(err))
        return None
    agents = tuple(replace(a, expanded_from=basis.get(a.name)) if a.gate else a for a in agents)
    return replace(pipeline, agents=agents, declared=declared)


class FanoutHost(Protocol):
    """All the fan-out step reads of the engine, and all it asks of it
    (`engine.FanoutRequests`): nothing of the engine's insides."""

    @property
    def workspace(self) -> Workspace: ...

    def record_at(self, pipeline: str, name: str) -> StatusRecord | None: ...

    def signal_digest(self, pipeline: str, name: str) -> str | None: ...

    def clock(self) -> float: ...

    def apply_change(self, record: StatusRecord, effects: Effects) -> None:
        """Run a pure constructor's effects (a fan-out's row) through the effect runner."""

    def retire(self, record: StatusRecord, task: str, reason: str) -> None:
        """Stop an instance whose item is gone, move its outputs aside, mark it removed."""

    def use_workspace(self, workspace: Workspace) -> None:
        """From now on the pass works on `workspace` (instances rebuilt from the records)."""


class FanoutKeeper:
    """The engine's fan-out step: read a planner's list when it has finished,
    record the expansion, retire removed instances, keep the workspace's
    instances in line with the records (whoever wrote them)."""

    def __init__(self, layout: Layout):
        self.layout = layout
        self.records: FileCache[dict] = FileCache(read_json)

    def dynamic(self, workspace: Any) -> list[tuple[Any, Any]]:
        return [(p, a) for p in workspace.pipelines for a in p.declared
                if a.foreach is not None and a.foreach.kind == "json"]

    def step(self, host: FanoutHost, agents: list[Any]) -> list[Any] | None:
        """The selection again (with new instances, if any) when this step
        wrote or found a changed record, else None."""
        workspace = host.workspace
        fanouts = self.dynamic(workspace)
        if not fanouts:
            return None
        rebuild = wrote = False
        for pipeline, declared in fanouts:
            path = record_path(self.layout, pipeline.name, declared.name)
            record = self.records.get(path)
            signal_digest = self._finished(host, pipeline.name, declared.foreach.source)
            if signal_digest is not None and not self._current(host, pipeline.name,
                                                              declared, record, signal_digest):
                record = self.expand(host, pipeline, declared, record, signal_digest)
                wrote = True
            gate = workspace.agents_by_task.get(f"{pipeline.name}:{declared.name}")
            if gate is not None and gate.expanded_from != (record or {}).get("items_digest"):
                rebuild = True
        if not rebuild:   # records written this pass must be read again
            return list(agents) if wrote else None
        return self.rebuild(host, agents)

    def _finished(self, host: FanoutHost, pipeline: str, source: str) -> str | None:
        """The digest of `source`'s signal if it is done, else None."""
        record = host.record_at(pipeline, source)
        if record is None or record.state != RunState.DONE:
            return None
        return host.signal_digest(pipeline, source)

    def _current(self, host: FanoutHost, pipeline: str, declared: Any, record: dict | None,
                 signal_digest: str) -> bool:
        if record is None or record.get("from_signal") != signal_digest:
            return False
        gate = host.record_at(pipeline, declared.name)
        return (gate is not None and gate.state in (RunState.DONE, RunState.FAILED)
                and gate.upstream.get(declared.foreach.source) == signal_digest)

    def expand(self, host: FanoutHost, pipeline: Any, declared: Any, record: dict | None,
               signal_digest: str) -> dict:
        """Read and check the list; retire removed items; record; say so."""
        foreach = declared.foreach
        old = record_items(record) or []
        try:
            items = self._read_list(host.workspace.root, pipeline, declared)
        except ListProblem as err:
            problem = f"{foreach.json}: {err}"
            new = {**(record or {}), "from_signal": signal_digest, "problem": problem}
            self._write(host, pipeline, declared, new, RunState.FAILED,
                        f"invalid list {problem}; nothing of it launched", signal_digest)
            append_event(self.layout, "fanout", task=f"{pipeline.name}:{declared.name}",
                         problem=problem)
            return new
        keys = {i.key for i in items}
        removed = [i.key for i in old if i.key not in keys]
        self.retire(host, pipeline, declared, removed)
        listed = items_json(items)
        new = {"from_signal": signal_digest, "json": foreach.json, "problem": None,
               "items": listed, "items_digest": digest_text(json.dumps(listed, sort_keys=True))}
        self._write(host, pipeline, declared, new, RunState.DONE,
                    f"{len(items)} instance{'s' if len(items) != 1 else ''} "
                    f"from {foreach.json}", signal_digest)
        before = {i.key for i in old}
        append_event(self.layout, "fanout", task=f"{pipeline.name}:{declared.name}",
                     items=len(items), added=sorted(keys - before), removed=removed)
        return new

    def _read_list(self, root: Path, pipeline: Any, declared: Any) -> list[Item]:
        """The items, checked against every declaration they will fill."""
        foreach = declared.foreach
        try:
            text = (root / foreach.json).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ListProblem(f"missing (agent {foreach.source} did not write it)") from None
        except (OSError, UnicodeDecodeError) as err:
            raise ListProblem(f"cannot read ({err})") from None
        items = parse_list(text, foreach.max_items)
        others = {a.name: record_items(read_json(record_path(self.layout, pipeline.name,
                                                             a.name)))
                  for a in pipeline.declared if a.foreach and a.foreach.kind == "json"}
        expand_agents(pipeline.declared, {}, {**others, declared.name: items})
        return items

    def _write(self, host: FanoutHost, pipeline: Any, declared: Any, record: dict,
               state: RunState, reason: str, signal_digest: str) -> None:
        path = record_path(self.layout, pipeline.name, declared.name)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json(path, record)
        except OSError as err:
            raise StateFolderReadOnly(path.parent, err) from None
        self.records.forget(path)
        crash_point("fanout-recorded")
        host.apply_change(*gate_row(pipeline.name, declared.name, declared.foreach.source,
                                    signal_digest, state, reason, host.clock()))

    def retire(self, host: FanoutHost, pipeline: Any, declared: Any, keys: list[str]) -> None:
        """Instances of removed items (and their each_of chains): state
        `removed`, outputs moved aside; a running one is killed first (its
        item is gone)."""
        names = chain_of(pipeline.declared, declared.name)
        for key in keys:
            for name in names:
                record = host.record_at(pipeline.name, f"{name}.{key}")
                if record is None or record.state == RunState.REMOVED:
                    continue
                host.retire(record, f"{pipeline.name}:{name}.{key}",
                              f"removed: its item left {declared.foreach.json}")

    def rebuild(self, host: FanoutHost, agents: list[Any]) -> list[Any]:
        """A workspace whose instances match the records now on disk, and the
        selection `agents` mapped onto it (a fan-out's gate brings its instances)."""
        from ..core.selection import upstream_closure
        workspace = host.workspace
        pipelines = []
        for pipeline in workspace.pipelines:
            records = {a.name: self.records.get(record_path(self.layout, pipeline.name, a.name))
                       for a in pipeline.declared if a.foreach and a.foreach.kind == "json"}
            expanded = expand_loaded(workspace.root, pipeline, _Ignore(), records) \
                if records else pipeline
            if expanded is not None and expanded is not pipeline:   # runs in flight stay
                expanded = replace(expanded, agents=expanded.agents + tuple(
                    a for a in pipeline.agents if a.stand_in is not None))
            pipelines.append(expanded or pipeline)
        fresh = replace(workspace, pipelines=tuple(pipelines), agents_by_task={})
        host.use_workspace(fresh)
        tasks = {a.task for a in agents}
        gates = {(a.pipeline, a.fanout) for a in agents if a.gate}   # a planned fan-out
        wanted = {t for t in tasks if t in fresh.agents_by_task}
        wanted |= {a.task for a in fresh.agents_by_task.values()
                   if a.fanout and (a.pipeline, a.fanout) in gates}
        return upstream_closure(fresh, wanted)


def move_outputs_aside(layout: Layout, agent: Any) -> None:
    """Move a retired instance's outputs to `.orchestrate/removed/<pipeline>/<agent>/`
    (same relative paths, a later retirement overwriting an earlier one's
    files), so that a fan-in reading or globbing the instances' folder finds
    the current items' results only. Idempotent: what is gone is not moved."""
    root = output_root(layout, agent)
    aside = layout.removed_outputs(agent.pipeline, agent.name)
    found, _ = expand_patterns(root, agent.outputs)
    for rel in found:
        source = root / rel
        if not is_inside(root, source):
            continue
        target = aside / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(source, target)


def chain_of(declared: tuple[Any, ...], name: str) -> list[str]:
    """`name` and every each_of fan-out that follows it, transitively."""
    names = [name]
    grew = True
    while grew:
        grew = False
        for agent in declared:
            if (agent.foreach and agent.foreach.kind == "each_of"
                    and agent.foreach.each_of in names and agent.name not in names):
                names.append(agent.name)
                grew = True
    return names


class _Ignore:
    """Problems while rebuilding cannot happen (the records were checked when written)."""

    def add(self, *args: Any) -> None:
        pass
