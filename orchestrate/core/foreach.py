"""Fan-out (pure): one declared agent -> one instance per item.

A declaration with `foreach` is a template. Its instances are ordinary
agents named `agent.key`; a fan-in names the declaration and means every
instance. Static lists (glob, values) are expanded when the workspace is
loaded; a dynamic list (json + from) is expanded from the record the engine
wrote when `from` finished (see fanout.py), so the same function turns
"declarations + known items" into agents, in every process.

An item is data: it is substituted as a whole string into prompt, inputs,
outputs, env values, description and the elements of an argv command, never
into a shell command, and the substitution is one pass (an item that
contains `{key}` stays as it is).
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

DEFAULT_MAX_ITEMS = 1000
KEY_LENGTH = 40
PLACEHOLDER_RE = re.compile(r"\{(item(?:\.[A-Za-z0-9_-]+)?|key)\}")
_SLUG_RUN = re.compile(r"[^A-Za-z0-9_]+")
KINDS = ("glob", "values", "json", "each_of")
# Keys whose strings may hold placeholders (command only as a list).
PLACEHOLDER_KEYS = ("prompt", "inputs", "outputs", "env", "description", "command")
KEY_FIELDS = ("key", "id", "name")


class ListProblem(Exception):
    """Why a list of items cannot become instances (no instance is made)."""

    def __init__(self, message: str, agent: str | None = None):
        super().__init__(message)
        self.agent = agent


@dataclass(frozen=True)
class ForEach:
    kind: str                          # one of KINDS
    glob: str | None = None
    values: tuple[str, ...] = ()
    json: str | None = None            # path of the list `source` writes
    source: str | None = None          # `from`: the agent that writes the list
    each_of: str | None = None
    max_items: int = DEFAULT_MAX_ITEMS


@dataclass(frozen=True)
class Item:
    """One element of a list: the text `{item}` stands for, its key, its
    fields (a JSON object element) or None."""
    text: str
    key: str
    fields: tuple[tuple[str, str], ...] | None = None


def check_foreach(value: Any) -> ForEach:
    """The `foreach` table -> ForEach; ValueError says what was expected."""
    expected = ('expected a table with one of glob = "PATTERN", values = [...], '
                'json = "FILE" with from = "AGENT", or each_of = "AGENT"')
    if not isinstance(value, dict):
        raise ValueError(expected)
    unknown = sorted(set(value) - {"glob", "values", "json", "from", "each_of", "max_items"})
    if unknown:
        raise ValueError(f"unknown key '{unknown[0]}' in foreach ({expected})")
    kinds = [k for k in KINDS if k in value]
    if len(kinds) != 1:
        raise ValueError(expected)
    kind = kinds[0]
    max_items = value.get("max_items", DEFAULT_MAX_ITEMS)
    if isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1:
        raise ValueError(f"max_items: expected an integer >= 1, got {max_items!r}")
    if ("from" in value) != (kind == "json"):
        raise ValueError('json = "FILE" needs from = "AGENT" (the agent that writes it), '
                         "and from only goes with json")
    fields: dict[str, Any] = {"kind": kind, "max_items": max_items}
    if kind == "values":
        values = value["values"]
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ValueError("values: expected a list of strings")
        if len(set(values)) != len(values):
            raise ValueError("values: lists a value twice")
        fields["values"] = tuple(values)
    else:
        for key in (("json", "from") if kind == "json" else (kind,)):
            if not isinstance(value[key], str) or not value[key]:
                raise ValueError(f"{key}: expected a non-empty string")
        fields.update({"glob": value.get("glob"), "json": value.get("json"),
                       "source": value.get("from"), "each_of": value.get("each_of")})
        if kind == "json":
            _check_relative(value["json"], "json")
    return ForEach(**fields)


def _check_relative(path: str, what: str) -> None:
    if Path(path).is_absolute() or ".." in Path(path).parts:
        raise ValueError(f"{what}: '{path}' must be a path inside the workspace "
                         "(relative, without '..')")


# -- placeholders ----------------------------------------------------------
def placeholders_in(value: Any) -> list[str]:
    """Every placeholder token in a TOML value (strings, lists, tables)."""
    if isinstance(value, str):
        return PLACEHOLDER_RE.findall(value)
    if isinstance(value, list):
        return [t for v in value for t in placeholders_in(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in placeholders_in(v)]
    return []


def placeholder_problems(table: dict[str, Any], is_fanout: bool) -> list[tuple[str, str]]:
    """(key, message) for each placeholder used where it is not allowed."""
    problems = []
    for key, value in table.items():
        tokens = placeholders_in(value)
        if not tokens or key == "foreach":
            continue
        token = "{" + tokens[0] + "}"
        if not is_fanout:
            problems.append((key, f"placeholder {token} only works in an agent with foreach"))
        elif key == "command" and isinstance(value, str):
            problems.append((key, f"placeholder {token} in a string command (run by "
                             '/bin/sh): use "$ORCHESTRATE_ITEM" or "$ORCHESTRATE_KEY", '
                             "or a list command"))
        elif key not in PLACEHOLDER_KEYS:
            problems.append((key, f"placeholder {token} is not allowed here (only in "
                             f"{', '.join(PLACEHOLDER_KEYS[:-1])} and a list command)"))
    return problems


def substitute(text: str, item: Item) -> str:
    """One pass over `text`: what an item contains is never read as a placeholder."""
    if "{" not in text:
        return text
    def one(match: re.Match[str]) -> str:
        token = match.group(1)
        if token == "key":
            return item.key
        if token == "item":
            return item.text
        field = token[len("item."):]
        fields = dict(item.fields or ())
        if field not in fields:
            raise ListProblem(f"item {item.text} has no field '{field}'")
        return fields[field]
    return PLACEHOLDER_RE.sub(one, text)


# -- keys -------------------------------------------------------------------
def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def slug(text: str) -> tuple[str, bool]:
    """(slug, was cut): runs of other characters become one '-', edge dashes go."""
    full = _SLUG_RUN.sub("-", text).strip("-")
    if len(full) <= KEY_LENGTH:
        return full, False
    return full[:KEY_LENGTH - 9].rstrip("-"), True


def assign_keys(sources: list[tuple[str, str]]) -> list[str]:
    """(text to slug, text identifying the item) per item -> keys. A slug
    that was cut, is empty, or is shared by two items gets '-<hash>' (so
    every colliding item gets one and the order of the list does not matter)."""
    slugs = [slug(s) for s, _ in sources]
    counts: dict[str, int] = {}
    for text, _ in slugs:
        counts[text] = counts.get(text, 0) + 1
    keys = []
    for (text, cut), (_, ident) in zip(slugs, sources):
        if not text:
            keys.append(short_hash(ident))
        elif cut or counts[text] > 1:
            keys.append(f"{text}-{short_hash(ident)}")
        else:
            keys.append(text)
    if len(set(keys)) != len(keys):
        seen = {k for k in keys if keys.count(k) > 1}
        raise ListProblem(f"two items have the same key '{sorted(seen)[0]}' "
                          "(the same item twice?)")
    return keys


def string_items(values: list[str]) -> list[Item]:
    return [Item(v, k) for v, k in zip(values, assign_keys([(v, v) for v in values]))]


def parse_list(text: str, max_items: int) -> list[Item]:
    """The JSON a planner wrote -> items, or ListProblem saying what is wrong."""
    try:
        data = json.loads(text)
    except ValueError as err:
        raise ListProblem(f"not valid JSON ({err})") from None
    if not isinstance(data, list):
        raise ListProblem("expected a JSON array of strings or flat objects, "
                          f"got {type(data).__name__}")
    if len(data) > max_items:
        raise ListProblem(f"{len(data)} items, more than max_items ({max_items})")
    sources: list[tuple[str, str]] = []
    made: list[tuple[str, tuple[tuple[str, str], ...] | None]] = []
    for number, element in enumerate(data, 1):
        if isinstance(element, str):
            sources.append((element, element))
            made.append((element, None))
        elif isinstance(element, dict):
            fields = _flat_fields(number, element)
            compact = json.dumps(element, separators=(",", ":"), ensure_ascii=False)
            named = next((fields[f] for f in KEY_FIELDS if f in fields), None)
            sources.append((named if named is not None else compact, compact))
            made.append((compact, tuple(fields.items())))
        else:
            raise ListProblem(f"element {number}: expected a string or a flat object, "
                              f"got {json.dumps(element)[:40]}")
    keys = assign_keys(sources)
    return [Item(text, key, fields) for (text, fields), key in zip(made, keys)]


def _flat_fields(number: int, element: dict[str, Any]) -> dict[str, str]:
    fields = {}
    for name, value in element.items():
        if isinstance(value, (dict, list)):
            raise ListProblem(f"element {number}: field '{name}' is nested (expected "
                              "strings, numbers, booleans or null)")
        fields[name] = value if isinstance(value, str) else json.dumps(value)
    return fields


# -- instances ----------------------------------------------------------------
def instance(template: Any, item: Item, extra_inputs: tuple[str, ...] = (),
             after: tuple[str, ...] = (), awaits: tuple[str, ...] = ()) -> Any:
    """The agent `template.name + '.' + key` for one item (ListProblem if a
    placeholder cannot be filled or an output would leave the workspace)."""
    def sub(text: str | None) -> str | None:
        return None if text is None else substitute(text, item)
    command = template.command
    if isinstance(command, tuple):
        command = tuple(sub(part) for part in command)
    outputs = tuple(sub(p) for p in template.outputs)
    for path in outputs:
        if not path or Path(path).is_absolute() or ".." in Path(path).parts:
            raise ListProblem(f"item {item.text}: output '{path}' would be outside the "
                              "workspace")
    env = tuple(sorted({**{k: sub(v) for k, v in template.env},
                        "ORCHESTRATE_ITEM": item.text, "ORCHESTRATE_KEY": item.key}.items()))
    return copy_with(template, name=f"{template.name}.{item.key}", command=command,
                     prompt=sub(template.prompt), description=sub(template.description),
                     inputs=tuple(sub(p) for p in template.inputs) + extra_inputs,
                     outputs=outputs, env=env, after=template.after + after,
                     awaits=template.awaits + awaits, foreach=None, fanout=template.name,
                     key=item.key)


def copy_with(template: Any, **changes: Any) -> Any:
    """`dataclasses.replace` for a frozen dataclass without its __init__: a
    fan-out of thousands makes thousands of agents on every load, and
    replace() would check every field of each again (the template's fields
    were checked when it was parsed). Cached properties are not copied."""
    made = object.__new__(type(template))
    fields = {k: v for k, v in template.__dict__.items()
              if k in template.__dataclass_fields__}
    fields.update(changes)
    made.__dict__.update(fields)
    return made


def gate(template: Any, waits_on: str) -> Any:
    """The `pipeline:agent` row of a dynamic fan-out: never launched; waiting
    until its list is known, failed if the list is invalid, else done."""
    foreach = template.foreach
    what = (f"each element of {foreach.json} (from {foreach.source})" if foreach.kind == "json"
            else f"each instance of {foreach.each_of}")
    return replace(template, after=(), after_any=(), awaits=(waits_on,), inputs=(),
                   outputs=(), fanout=template.name, gate=True,
                   description=f"fan-out: one instance per {what}")


@dataclass(frozen=True)
class Expansion:
    """What a fan-out declaration became: its instances' names by key, and
    whether a gate row stands for it (a dynamic list)."""
    keys: tuple[str, ...]
    dynamic: bool


def expand_agents(declared: tuple[Any, ...], static_items: dict[str, list[Item]],
                  dynamic_items: dict[str, list[Item] | None]) -> tuple[Any, ...]:
    """Declarations -> agents. `static_items`: items of glob/values fan-outs;
    `dynamic_items`: a json fan-out's recorded items (None: not yet known).
    each_of fan-outs follow their upstream fan-out's items; fan-ins name
    every instance (and wait on a dynamic fan-out's gate). ListProblem if an
    item cannot be substituted."""
    by_name = {a.name: a for a in declared}
    expansions: dict[str, Expansion] = {}
    items_of: dict[str, list[Item]] = {}
    for agent in declared:
        _items_for(agent.name, by_name, static_items, dynamic_items, items_of, expansions)
    result = []
    for agent in declared:
        if agent.foreach is None:
            result.append(_fan_in(agent, expansions))
            continue
        expansion = expansions[agent.name]
        template = _fan_in(agent, expansions)
        if expansion.dynamic:
            result.append(gate(template, _gate_waits_on(agent)))
        try:
            result.extend(_instance_of(template, item, by_name, expansions)
                          for item in items_of[agent.name])
        except ListProblem as err:
            raise ListProblem(str(err), agent.name) from None
    from .bestof import expand_candidates
    return expand_candidates(tuple(result))


def _items_for(name: str, by_name: dict[str, Any], static_items: dict[str, Any],
               dynamic_items: dict[str, Any], items_of: dict[str, Any],
               expansions: dict[str, Any]) -> None:
    agent = by_name[name]
    if name in items_of or agent.foreach is None:
        return
    foreach = agent.foreach
    if foreach.kind == "each_of":
        _items_for(foreach.each_of, by_name, static_items, dynamic_items, items_of, expansions)
        items = items_of[foreach.each_of]
        dynamic = expansions[foreach.each_of].dynamic
    elif foreach.kind == "json":
        items, dynamic = dynamic_items.get(name) or [], True
    else:
        items, dynamic = static_items.get(name, []), False
    items_of[name] = items
    expansions[name] = Expansion(tuple(i.key for i in items), dynamic)


def _gate_waits_on(agent: Any) -> str:
    """A json fan-out's gate waits on its `from`; an each_of gate on its upstream gate."""
    if agent.foreach.kind == "json":
        return str(agent.foreach.source)
    return str(agent.foreach.each_of)


def _instance_of(template: Any, item: Item, by_name: dict[str, Any], expansions: dict[str, Any]
                 ) -> Any:
    foreach = by_name[template.name].foreach
    extra_inputs = (item.text,) if foreach.kind == "glob" else ()
    after: tuple[str, ...] = ()
    awaits: tuple[str, ...] = ()
    if foreach.kind == "each_of":
        after = (f"{foreach.each_of}.{item.key}",)
    origin = foreach
    while origin.kind == "each_of":
        origin = by_name[origin.each_of].foreach
    if origin.kind == "json":
        awaits = (origin.source,)    # waits for the planner, never consumes its signal
    return instance(template, item, extra_inputs, after, awaits)


def _fan_in(agent: Any, expansions: dict[str, Expansion]) -> Any:
    """`after`/`after_any` naming a fan-out -> every instance of it; a dynamic
    one's gate is waited on (not consumed), so the fan-in waits for the list."""
    if not any(u in expansions for u in agent.after + agent.after_any):
        return agent
    def names(upstream: tuple[str, ...]) -> tuple[str, ...]:
        out: list[str] = []
        for name in upstream:
            if name in expansions:
                out.extend(f"{name}.{k}" for k in expansions[name].keys)
            else:
                out.append(name)
        return tuple(out)
    awaits = tuple(u for u in agent.after + agent.after_any
                   if u in expansions and expansions[u].dynamic)
    return replace(agent, after=names(agent.after), after_any=names(agent.after_any),
                   awaits=agent.awaits + awaits, fans_in=tuple(
                       u for u in agent.after + agent.after_any if u in expansions))


def fanout_problems(declared: dict[str, dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(agent, key, message) for foreach tables that name a wrong agent."""
    problems = []
    for name, fields in declared.items():
        base = fields.get("base")
        if base in declared and declared[base].get("foreach") is not None:
            problems.append((name, "base", f"'{base}' is a fan-out (it has no one branch "
                             "to start from)"))
        foreach = fields.get("foreach")
        if foreach is None:
            continue
        other = foreach.source if foreach.kind == "json" else foreach.each_of
        key = "foreach.from" if foreach.kind == "json" else "foreach.each_of"
        if foreach.kind in ("glob", "values"):
            continue
        if other == name:
            problems.append((name, key, "a fan-out cannot take its items from itself"))
        elif other not in declared:
            problems.append((name, key, f"unknown agent '{other}' (agents in this "
                             f"pipeline: {', '.join(declared)})"))
        elif foreach.kind == "json" and declared[other].get("foreach") is not None:
            problems.append((name, key, f"'{other}' is a fan-out; from must be a "
                             "single agent (the planner)"))
        elif foreach.kind == "each_of" and declared[other].get("foreach") is None:
            problems.append((name, key, f"'{other}' is not a fan-out (each_of follows "
                             "the instances of an agent with foreach)"))
    return problems
