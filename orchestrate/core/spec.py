"""Pipeline files (TOML) -> validated, frozen dataclasses.

Pure: the text is parsed here; `runtime.workspace.load_workspace` reads the
files, expands fan-outs and checks what needs the disk (prompt files, paths
through symlinks).
Every user mistake becomes one `PipelineError` line naming the file, the
agent and the key, so a user can fix all of them in one go.
"""
from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

from .bestof import best_of_problems, check_best_of, expand_candidates
from .causes import suggestion
from .errors import UserError
from .fallback import DEFAULT_AFTER, FallbackPreset, check_after, check_fallback
from .foreach import ForEach, check_foreach, fanout_problems, placeholder_problems
from .sandbox import Sandbox, check_sandbox
from .settings import (
    RaySettings,
    SlurmSettings,
    TelemetrySettings,
    check_executor,
    check_resources,
    parse_ray_table,
    parse_slurm_table,
    parse_telemetry_table,
)

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}

PRESETS = ("claude", "codex", "gemini", "aider")
# Keys that only mean something with `agent = "<preset>"`.
PRESET_ONLY_KEYS = ("prompt", "prompt_file", "model", "extra_args", "executable",
                    "allowed_tools", "permission_mode", "fallback", "fallback_after")


class PipelineError(UserError):
    """One or more mistakes in pipeline files or the workspace config."""

    def __init__(self, problems: list[str]):
        super().__init__("invalid pipeline:\n" + "\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Agent:
    pipeline: str
    name: str
    command: str | tuple[str, ...] | None = None
    description: str = ""
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    after_any: tuple[str, ...] = ()
    wait_for: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    cwd: str = "."
    timeout: float | None = None
    stall_timeout: float | None = None
    kill_grace: float = 10.0
    retries: int = 0
    retry_backoff: float = 5.0
    retry_on_exit: tuple[int, ...] = ()
    fail_fast_exit: tuple[int, ...] = ()
    pool: str | None = None
    isolation: str | None = None
    base: str | None = None
    preset: str | None = None           # `agent = "claude"` etc., instead of `command`
    prompt: str | None = None
    prompt_file: str | None = None      # also one of `inputs`
    model: str | None = None
    extra_args: tuple[str, ...] = ()
    executable: str | None = None
    allowed_tools: tuple[str, ...] = ()
    permission_mode: str | None = None
    fallback: tuple[FallbackPreset, ...] = ()   # presets to use while its own is rate limited
    fallback_after: float = DEFAULT_AFTER
    check: str | tuple[str, ...] | None = None   # decides whether an exit-0 run is done
    check_timeout: float = 600.0
    check_retries: int = 2
    setup: str | tuple[str, ...] | None = None   # runs once in a fresh worktree
    merge: bool = False                 # land its branch once done (see `landing`)
    merge_into: str | None = None       # default orchestrate-merged/<pipeline>
    merge_check: str | tuple[str, ...] | None = None   # default: `check`
    merge_retries: int = 2
    foreach: ForEach | None = None      # a fan-out declaration (a template, never run)
    fanout: str | None = None           # instances and gate rows: the declaration's name
    key: str | None = None              # an instance's key
    gate: bool = False                  # the `pipeline:agent` row of a dynamic fan-out
    awaits: tuple[str, ...] = ()        # upstream waited for, its signal not consumed
    fans_in: tuple[str, ...] = ()       # fan-outs named in after/after_any (as declared)
    expanded_from: str | None = None    # a gate: digest of the items it was expanded from
    executor: str = "local"          # where it runs: pipeline's, else workspace's
    resources: tuple[tuple[str, Any], ...] = ()   # cpus, mem, gpus, time
    sandbox: Sandbox | None = None      # None: not sandboxed (see `core.sandbox`)
    # A run in flight whose declaration is gone (see `standin`): why, else None
    stand_in: str | None = None
    best_of: tuple[str, ...] = ()       # the candidates' labels ("1".."N" or presets)
    judge: str | tuple[str, ...] | None = None
    candidate_of: str | None = None     # a candidate: the name of the agent it competes for
    candidates: tuple[str, ...] = ()    # the agent's own row of a best_of: its candidates

    @cached_property
    def task(self) -> str:
        return f"{self.pipeline}:{self.name}"

    @cached_property
    def upstream(self) -> tuple[str, ...]:
        named = self.after + tuple(u for u in self.after_any if u not in self.after)
        return named + tuple(u for u in self.awaits if u not in named)

    @property
    def merge_target(self) -> str:
        """The branch `merge = true` lands this agent's branch on."""
        return self.merge_into or f"orchestrate-merged/{self.pipeline}"

    @property
    def merge_command(self) -> str | tuple[str, ...] | None:
        """What checks a merged tree: `merge_check`, else the agent's `check`."""
        return self.merge_check if self.merge_check is not None else self.check

    def config_identity(self) -> dict[str, Any]:
        """What, when changed, makes the agent stale (doit's config_changed).
        For a preset: the invocation's parts, not the executable's path."""
        identity: dict[str, Any] = {"env": dict(self.env), "cwd": self.cwd,
                                    "outputs": list(self.outputs)}
        if self.preset is None:
            command = self.command
            identity["command"] = command if isinstance(command, str) else list(command or ())
        else:
            identity["agent"] = {"preset": self.preset, "prompt": self.prompt,
                                 "prompt_file": self.prompt_file, "model": self.model,
                                 "extra_args": list(self.extra_args),
                                 "allowed_tools": list(self.allowed_tools),
                                 "permission_mode": self.permission_mode}
        if self.check is not None:   # what "done" means: changing it makes the agent stale
            check = self.check
            identity["check"] = check if isinstance(check, str) else list(check)
        return identity


HOOK_EVENTS = ("on_failure", "on_done", "on_blocked")


@dataclass(frozen=True)
class Hooks:
    """The command (a /bin/sh string or an argv tuple) run on each event, if any."""
    on_failure: str | tuple[str, ...] | None = None
    on_done: str | tuple[str, ...] | None = None
    on_blocked: str | tuple[str, ...] | None = None

    def over(self, fallback: "Hooks") -> "Hooks":
        """These hooks, each missing one taken from `fallback` (per event)."""
        return Hooks(*(getattr(self, e) or getattr(fallback, e) for e in HOOK_EVENTS))

    def __bool__(self) -> bool:
        return any(getattr(self, e) for e in HOOK_EVENTS)


@dataclass(frozen=True)
class Pipeline:
    name: str
    path: str
    agents: tuple[Agent, ...]
    description: str = ""
    max_parallel: int | None = None
    budget_usd: float | None = None
    hooks: Hooks = Hooks()
    declared: tuple[Agent, ...] = ()    # as written (fan-outs unexpanded); agents: expanded
    executor: str | None = None

    def agent(self, name: str) -> Agent:
        for agent in self.agents:
            if agent.name == name:
                return agent
        raise KeyError(name)


@dataclass(frozen=True)
class Workspace:
    root: Path
    pipelines: tuple[Pipeline, ...]
    max_parallel: int | None = None
    pools: tuple[tuple[str, int], ...] = ()
    budget_usd: float | None = None
    hooks: Hooks = Hooks()
    executor: str = "local"
    slurm: SlurmSettings = SlurmSettings()
    ray: RaySettings = RaySettings()
    sandbox: Sandbox | None = None      # the default of every agent
    telemetry: TelemetrySettings = TelemetrySettings()
    agents_by_task: dict[str, Agent] = field(default_factory=dict, compare=False,
                                             repr=False)
    # Only from `load_workspace(root, lenient=True)`: what is wrong, and the
    # pipelines left out because their file is invalid.
    problems: tuple[str, ...] = field(default=(), compare=False)
    invalid: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        for pipeline in self.pipelines:
            for agent in pipeline.agents:
                self.agents_by_task[agent.task] = agent

    def pipeline(self, name: str) -> Pipeline:
        for pipeline in self.pipelines:
            if pipeline.name == name:
                return pipeline
        raise KeyError(name)


def parse_duration(value: Any) -> float:
    """"90s", "10m", "2h", "1h30m" or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("expected a duration of 0 or more")
        return float(value)
    if isinstance(value, str):
        text = value.replace(" ", "")
        parts = _DURATION_RE.findall(text)
        if text and "".join(n + u for n, u in parts) == text:
            return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    raise ValueError('expected a duration like "90s", "10m", "2h" or a number of seconds')


def parse_limit(value: Any) -> float:
    """A time limit: a duration above 0 (no limit is said by leaving the key out)."""
    seconds = parse_duration(value)
    if seconds == 0:
        raise ValueError("0 is no time at all: omit the key for no limit")
    return seconds


class Problems:
    """Collects error lines that each name file, agent and key."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, path: str, agent: str | None, key: str | None, message: str) -> None:
        where = [path]
        if agent is not None:
            where.append(f"agent '{agent}'")
        if key is not None:
            where.append(f"key '{key}'")
        self.lines.append(": ".join(where) + ": " + message)


def _type_name(value: Any) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "a boolean",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)


def _check_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {_type_name(value)}")
    return value


def _check_str_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a list of strings, got {_type_name(value)}")
    return tuple(value)


def _check_name_list(value: Any) -> tuple[str, ...]:
    names = _check_str_list(value)
    for name in names:
        if not NAME_RE.fullmatch(name):
            raise ValueError(f"'{name}' is not a valid name (expected letters, digits, '_' or '-')")
    if len(set(names)) != len(names):
        raise ValueError("lists a name twice")
    return names


def _check_positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"expected a duration > 0, got {value!r}")
    return seconds


def _check_int(value: Any, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"expected an integer >= {minimum}, got {value!r}")
    return value


def _check_positive_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"expected a number > 0, got {value!r}")
    return float(value)


def _check_int_list(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ValueError(f"expected a list of exit codes (integers), got {value!r}")
    return tuple(value)


def _check_command(value: Any) -> str | tuple[str, ...]:
    if isinstance(value, str):
        if not value.strip():
            raise ValueError("expected a non-empty command")
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError("expected a string (run by /bin/sh) or a non-empty list of strings (argv)")


def _check_env(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise ValueError(f"expected a table of strings, got {_type_name(value)}")
    for key, item in value.items():
        if not isinstance(item, str):
            raise ValueError(f"expected a string for {key}, got {_type_name(item)}")
        if key.startswith("ORCHESTRATE_"):
            raise ValueError(f"{key} is set by orchestrate and cannot be overridden")
    return tuple(sorted(value.items()))


def _check_inside(text: str) -> str:
    """The one rule for paths orchestrate may write or delete: relative, no '..'
    (symlinks are resolved against the workspace by `load_workspace`)."""
    if not text or Path(text).is_absolute() or ".." in Path(text).parts:
        raise ValueError(f"'{text}' must be a path inside the workspace "
                         "(relative, without '..')")
    return text


def _check_cwd(value: Any) -> str:
    return _check_inside(_check_str(value))


def _check_outputs(value: Any) -> tuple[str, ...]:
    return tuple(_check_inside(path) for path in _check_str_list(value))


def _check_preset(value: Any) -> str:
    if value not in PRESETS:
        raise ValueError(f"expected one of {', '.join(PRESETS)}, got {value!r}")
    return str(value)


def _check_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _check_branch(value: Any) -> str:
    """A branch name git accepts (the rules of git check-ref-format, in short)."""
    text = _check_str(value)
    bad = (not text or text.startswith(("-", "/")) or text.endswith(("/", ".", ".lock"))
           or ".." in text or "//" in text or "@{" in text or text == "@"
           or any(c in text for c in " ~^:?*[\\") or any(ord(c) < 32 or ord(c) == 127 for c in text)
           or any(part.startswith(".") for part in text.split("/")))
    if bad:
        raise ValueError(f"{text!r} is not a valid git branch name")
    return text


def _check_isolation(value: Any) -> str:
    if value != "worktree":
        raise ValueError('expected "worktree"')
    return str(value)


# keys of an isolated agent's worktree and branch (README "Landing the work")
LANDING_KEYS = ("setup", "merge", "merge_into", "merge_check", "merge_retries")

AGENT_KEYS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "command": ("command", _check_command),
    "description": ("description", _check_str),
    "inputs": ("inputs", _check_str_list),
    "outputs": ("outputs", _check_outputs),
    "after": ("after", _check_name_list),
    "after_any": ("after_any", _check_name_list),
    "wait_for": ("wait_for", _check_name_list),
    "env": ("env", _check_env),
    "cwd": ("cwd", _check_cwd),
    "timeout": ("timeout", parse_limit),
    "stall_timeout": ("stall_timeout", parse_limit),
    "kill_grace": ("kill_grace", parse_duration),
    "retries": ("retries", _check_int),
    "retry_backoff": ("retry_backoff", parse_duration),
    "retry_on_exit": ("retry_on_exit", _check_int_list),
    "fail_fast_exit": ("fail_fast_exit", _check_int_list),
    "pool": ("pool", _check_str),
    "isolation": ("isolation", _check_isolation),
    "base": ("base", _check_str),
    "agent": ("preset", _check_preset),
    "prompt": ("prompt", _check_str),
    "prompt_file": ("prompt_file", _check_cwd),
    "model": ("model", _check_str),
    "extra_args": ("extra_args", _check_str_list),
    "executable": ("executable", _check_str),
    "allowed_tools": ("allowed_tools", _check_str_list),
    "permission_mode": ("permission_mode", _check_str),
    "fallback": ("fallback", check_fallback),
    "fallback_after": ("fallback_after", lambda value: check_after(value, parse_duration)),
    "check": ("check", _check_command),
    "check_timeout": ("check_timeout", _check_positive_duration),
    "check_retries": ("check_retries", _check_int),
    "setup": ("setup", _check_command),
    "merge": ("merge", _check_bool),
    "merge_into": ("merge_into", _check_branch),
    "merge_check": ("merge_check", _check_command),
    "merge_retries": ("merge_retries", _check_int),
    "foreach": ("foreach", check_foreach),
    "best_of": ("best_of", lambda value: check_best_of(value, PRESETS)),
    "judge": ("judge", _check_command),
    "executor": ("executor", check_executor),
    "resources": ("resources", lambda value: check_resources(value, parse_duration)),
    "sandbox": ("sandbox", check_sandbox),
}
PIPELINE_KEYS = ("description", "max_parallel", "budget_usd", "defaults", "agents", "hooks",
                 "executor")
WORKSPACE_KEYS = ("max_parallel", "pools", "budget_usd", "hooks", "executor", "slurm", "ray",
                  "sandbox", "telemetry")


def parse_hooks(path: str, key: str, table: Any, problems: "Problems") -> Hooks:
    """A [hooks] table: each event a command (string or argv list)."""
    if not isinstance(table, dict):
        problems.add(path, None, key, f"expected a table of {', '.join(HOOK_EVENTS)}, "
                     f"got {_type_name(table)}")
        return Hooks()
    commands = {}
    for event, value in table.items():
        if event not in HOOK_EVENTS:
            problems.add(path, None, f"{key}.{event}",
                         f"unknown hook event (known: {_known(HOOK_EVENTS)})")
            continue
        try:
            commands[event] = _check_command(value)
        except ValueError as err:
            problems.add(path, None, f"{key}.{event}", str(err))
    return Hooks(**commands)


def _known(keys: Any) -> str:
    return ", ".join(sorted(keys))


def _agent_fields(path: str, agent: str, table: Any, problems: Problems) -> dict[str, Any]:
    if not isinstance(table, dict):
        problems.add(path, agent, None, f"expected a table [agents.{agent}], got {_type_name(table)}")
        return {}
    fields: dict[str, Any] = {}
    for key, value in table.items():
        if key not in AGENT_KEYS:
            problems.add(path, agent, key, suggestion(key, AGENT_KEYS))
        else:
            attr, check = AGENT_KEYS[key]
            try:
                fields[attr] = check(value)
            except ValueError as err:
                problems.add(path, agent, key, str(err))
    return fields


def _check_how_it_runs(path: str, agent: str, fields: dict[str, Any],
                       problems: Problems, given: frozenset[str] = frozenset()) -> None:
    """Either a `command`, or `agent = "<preset>"` with one of prompt/prompt_file.
    `given`: the keys the table has; one given but invalid (`command = ""`) is
    already reported, never also "missing"."""
    if "preset" not in fields:
        if "command" not in fields and not {"command", "agent"} & given:
            problems.add(path, agent, "command", "missing (expected a string or a list of "
                         f"strings, or agent = one of {', '.join(PRESETS)} with a prompt)")
        for key in PRESET_ONLY_KEYS:
            if key in fields:
                problems.add(path, agent, key, 'only applies with agent = "<preset>"')
        return
    if "command" in fields:
        problems.add(path, agent, "command", "give either command or agent, not both")
    if ("prompt" in fields) == ("prompt_file" in fields):
        problems.add(path, agent, "prompt", "a preset agent needs exactly one of prompt "
                     "or prompt_file")
    if fields.get("permission_mode") and fields["preset"] != "claude":
        problems.add(path, agent, "permission_mode", "only the claude preset has it")
    _own_preset_in_chain(path, agent, fields, problems, "fallback" in given)


def _own_preset_in_chain(path: str, agent: str, fields: dict[str, Any], problems: Problems,
                         own_key: bool) -> None:
    """An agent's own preset and model in its fallback chain: a mistake in
    its own table; from [defaults] (one chain for claude and codex agents
    alike) it is left out of that agent's chain."""
    chain = fields.get("fallback", ())
    own = (fields["preset"], fields.get("model"))
    if not any((entry.agent, entry.model) == own for entry in chain):
        return
    if own_key:
        problems.add(path, agent, "fallback", f"lists the agent's own preset "
                     f"{fields['preset']!r}" + (f" and model {own[1]!r}" if own[1] else "")
                     + " (give another preset, or another model of it)")
    else:
        fields["fallback"] = tuple(e for e in chain if (e.agent, e.model) != own)


def _check_dependencies(path: str, agents: dict[str, dict[str, Any]],
                        problems: Problems, pools: dict[str, int] | None) -> None:
    names = list(agents)
    for name, fields in agents.items():
        for key in ("after", "after_any"):
            for upstream in fields.get(key, ()):
                if upstream == name:
                    problems.add(path, name, key, "an agent cannot depend on itself")
                elif upstream not in agents:
                    problems.add(path, name, key, f"unknown agent '{upstream}' "
                                 f"(agents in this pipeline: {', '.join(names)})")
        base = fields.get("base")
        if base is not None:
            upstream = set(fields.get("after", ())) | set(fields.get("after_any", ()))
            if base not in upstream:
                problems.add(path, name, "base", f"'{base}' must be one of this agent's "
                             "after/after_any agents (its branch is where this one starts)")
            elif agents.get(base, {}).get("isolation") != "worktree":
                problems.add(path, name, "base", f"'{base}' has no worktree branch "
                             '(it needs isolation = "worktree")')
            if fields.get("isolation") != "worktree":
                problems.add(path, name, "base", 'only applies with isolation = "worktree"')
        for key in LANDING_KEYS:
            if key in fields and fields.get("isolation") != "worktree":
                problems.add(path, name, key, 'only applies with isolation = "worktree"')
        pool = fields.get("pool")
        if pool is not None and pools is not None and pool not in pools:
            problems.add(path, name, "pool", f"unknown pool '{pool}' (declare it in "
                         "pyproject.toml [tool.orchestrate] pools = { name = size })")
    cycle = find_cycle({n: tuple(f.get("after", ())) + tuple(f.get("after_any", ()))
                        + _foreach_upstream(f) for n, f in agents.items()})
    if cycle:
        problems.add(path, cycle[0], "after", "dependency cycle: " + " -> ".join(cycle))


def _foreach_upstream(fields: dict[str, Any]) -> tuple[str, ...]:
    foreach = fields.get("foreach")
    if foreach is None:
        return ()
    return tuple(n for n in (foreach.source, foreach.each_of) if n)


def find_cycle(graph: dict[str, tuple[str, ...]]) -> list[str] | None:
    """Return one cycle as [a, b, ..., a], or None. Unknown nodes are ignored.
    Iterative depth-first search: a chain of thousands of agents is fine."""
    state: dict[str, int] = {}      # 1: on the current path, 2: finished
    for start in graph:
        if start in state:
            continue
        path = [start]
        state[start] = 1
        stack = [iter(graph.get(start, ()))]
        while stack:
            for nxt in stack[-1]:
                if nxt not in graph or nxt == path[-1]:
                    continue
                if state.get(nxt) == 1:
                    return path[path.index(nxt):] + [nxt]
                if nxt not in state:
                    state[nxt] = 1
                    path.append(nxt)
                    stack.append(iter(graph.get(nxt, ())))
                    break
            else:
                state[path.pop()] = 2
                stack.pop()
    return None


def _pipeline_scalar(path: str, data: dict[str, Any], problems: Problems,
                     key: str, check: Callable[[Any], Any]) -> Any:
    if key not in data:
        return None
    try:
        return check(data[key])
    except ValueError as err:
        problems.add(path, None, key, str(err))
        return None


def parse_pipeline(name: str, path: str, data: dict[str, Any], problems: Problems,
                   pools: dict[str, int] | None = None, executor: str = "local",
                   sandbox: Sandbox | None = None) -> Pipeline | None:
    """Validate one pipeline's parsed TOML; add problems, return None if any."""
    before = len(problems.lines)
    if not NAME_RE.fullmatch(name):
        problems.add(path, None, None, f"'{name}' is not a valid pipeline name "
                     "(file stem must match [A-Za-z0-9][A-Za-z0-9_-]*)")
    for key in data:
        if key not in PIPELINE_KEYS:
            problems.add(path, None, key, suggestion(key, PIPELINE_KEYS))
    description = _pipeline_scalar(path, data, problems, "description", _check_str) or ""
    max_parallel = _pipeline_scalar(path, data, problems, "max_parallel",
                                    lambda v: _check_int(v, 1))
    budget = _pipeline_scalar(path, data, problems, "budget_usd", _check_positive_number)
    hooks = parse_hooks(path, "hooks", data["hooks"], problems) if "hooks" in data else Hooks()
    own_executor = _pipeline_scalar(path, data, problems, "executor", check_executor)
    defaults = data.get("defaults", {})
    default_fields = _agent_fields(path, "[defaults]", defaults, problems) if defaults else {}
    if "command" in default_fields:
        problems.add(path, "[defaults]", "command", "a command cannot be a default")
    agent_tables = data.get("agents", {})
    if not isinstance(agent_tables, dict) or not agent_tables:
        problems.add(path, None, "agents", "expected at least one [agents.NAME] table")
        agent_tables = {}
    fields_by_agent: dict[str, dict[str, Any]] = {}
    for agent_name, table in agent_tables.items():
        if not NAME_RE.fullmatch(agent_name):
            problems.add(path, agent_name, None, "not a valid agent name "
                         "(expected [A-Za-z0-9][A-Za-z0-9_-]*)")
        fields = {"executor": own_executor or executor, "sandbox": sandbox,
                  **default_fields, **_agent_fields(path, agent_name, table, problems)}
        if fields.get("best_of") and not fields["best_of"][0].isdigit() \
                and "preset" not in fields and "command" not in fields:
            fields["preset"] = fields["best_of"][0]   # each candidate gets its own preset
        for key, message in best_of_problems(fields):
            problems.add(path, agent_name, key, message)
        if isinstance(table, dict):
            _check_how_it_runs(path, agent_name, fields, problems, frozenset(table))
            for key, message in placeholder_problems({**defaults, **table}
                                                     if isinstance(defaults, dict) else table,
                                                     "foreach" in fields):
                problems.add(path, agent_name, key, message)
        if fields.get("prompt_file"):
            fields["inputs"] = tuple(fields.get("inputs", ())) + (fields["prompt_file"],)
        fields_by_agent[agent_name] = fields
    _check_dependencies(path, fields_by_agent, problems, pools)
    for agent_name, key, message in fanout_problems(fields_by_agent):
        problems.add(path, agent_name, key, message)
    for agent_name, message in output_clashes(fields_by_agent, {}):
        problems.add(path, agent_name, "outputs", message)
    if len(problems.lines) > before:
        return None
    agents = tuple(Agent(pipeline=name, name=n, **f) for n, f in fields_by_agent.items())
    return Pipeline(name=name, path=path, agents=expand_candidates(agents),
                    description=description, max_parallel=max_parallel, budget_usd=budget,
                    hooks=hooks, declared=agents, executor=own_executor)


def output_clashes(fields_by_agent: dict[str, dict[str, Any]], owners: dict[str, str],
                   pipeline: str | None = None) -> list[tuple[str, str]]:
    """(agent, message) for each output file that two agents declare: each
    would overwrite the other's result, and the second to finish would make
    the first one's signal lie. `owners` maps outputs already claimed (by
    other pipelines) to their `pipeline:agent`; it is filled as it goes.

    A fan-out's output with a placeholder (`out/{key}.txt`) is one file per
    instance and is not compared; one without would be written by every
    instance. An isolated (worktree) agent's outputs are in its own worktree."""
    found = []
    for name, fields in fields_by_agent.items():
        if fields.get("isolation") == "worktree":
            continue
        fanout = fields.get("foreach") is not None
        for output in fields.get("outputs", ()):
            if "{" in output:
                continue
            if fanout:
                found.append((name, f"'{output}' would be written by every instance of this "
                                    "fan-out (put {key} in it)"))
                continue
            path = posixpath.normpath(output)
            owner = owners.setdefault(path, f"{pipeline}:{name}" if pipeline else name)
            if owner != (f"{pipeline}:{name}" if pipeline else name):
                found.append((name, f"'{output}' is also an output of agent '{owner}' (two "
                                    "agents writing one file overwrite each other's result)"))
    return found


def clashes_with_other_pipelines(pipeline: "Pipeline", owners: dict[str, str]
                                 ) -> list[tuple[str, str]]:
    """output_clashes across pipelines: `owners` holds the outputs of the
    pipelines read before this one."""
    fields = {a.name: {"outputs": a.outputs, "isolation": a.isolation, "foreach": a.foreach}
              for a in pipeline.declared}
    return output_clashes(fields, owners, pipeline.name)


def parse_workspace_config(path: str, data: dict[str, Any], problems: Problems) -> dict[str, Any]:
    """The [tool.orchestrate] table of pyproject.toml."""
    table = data.get("tool", {}).get("orchestrate", {})
    if not isinstance(table, dict):
        problems.add(path, None, "tool.orchestrate", "expected a table")
        return {}
    config: dict[str, Any] = {}
    for key in table:
        if key not in WORKSPACE_KEYS:
            problems.add(path, None, f"tool.orchestrate.{key}",
                         suggestion(key, WORKSPACE_KEYS))
    try:
        if "max_parallel" in table:
            config["max_parallel"] = _check_int(table["max_parallel"], 1)
        if "budget_usd" in table:
            config["budget_usd"] = _check_positive_number(table["budget_usd"])
    except ValueError as err:
        problems.add(path, None, "tool.orchestrate", str(err))
    pools = table.get("pools", {})
    if not isinstance(pools, dict) or not all(
            NAME_RE.fullmatch(k) and isinstance(v, int) and not isinstance(v, bool) and v >= 1
            for k, v in pools.items()):
        problems.add(path, None, "tool.orchestrate.pools",
                     "expected a table of pool names to sizes >= 1, e.g. { llm = 4 }")
        pools = {}
    config["pools"] = tuple(sorted(pools.items()))
    if "hooks" in table:
        config["hooks"] = parse_hooks(path, "tool.orchestrate.hooks", table["hooks"], problems)
    if "executor" in table:
        try:
            config["executor"] = check_executor(table["executor"])
        except ValueError as err:
            problems.add(path, None, "tool.orchestrate.executor", str(err))
    if "sandbox" in table:
        try:
            config["sandbox"] = check_sandbox(table["sandbox"])
        except ValueError as err:
            problems.add(path, None, "tool.orchestrate.sandbox", str(err))
    if "slurm" in table:
        config["slurm"] = parse_slurm_table(table["slurm"], parse_duration,
                                            lambda key, message: problems.add(path, None, key, message))
    if "ray" in table:
        config["ray"] = parse_ray_table(table["ray"], parse_duration,
                                        lambda key, message: problems.add(path, None, key, message))
    if "telemetry" in table:
        config["telemetry"] = parse_telemetry_table(
            table["telemetry"], lambda key, message: problems.add(path, None, key, message))
    return config
