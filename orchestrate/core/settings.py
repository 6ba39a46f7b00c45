"""The executor keys, validated (pure): `executor`, agent `resources` and
`[tool.orchestrate.slurm]`, and what they become on sbatch's command line.

Checks raise ValueError with the message `spec` puts after file, agent and
key, like every other key's check.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

EXECUTORS = ("local", "slurm")
RESOURCE_KEYS = ("cpus", "mem", "gpus", "time")
SLURM_KEYS = ("partition", "account", "qos", "sbatch_args", "poll")
DEFAULT_POLL = 2.0
_MEMORY_RE = re.compile(r"[1-9][0-9]*[KMGT]?", re.IGNORECASE)


@dataclass(frozen=True)
class SlurmSettings:
    """`[tool.orchestrate.slurm]`: where jobs go and how often Slurm is asked."""
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    sbatch_args: tuple[str, ...] = ()
    poll: float = DEFAULT_POLL


def check_executor(value: Any) -> str:
    if value not in EXECUTORS:
        raise ValueError(f'expected one of "local", "slurm", got {value!r}')
    return str(value)


def check_memory(value: Any) -> str:
    """Slurm's --mem: a whole number of megabytes, or with a K, M, G or T suffix."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return f"{value}M"
    if isinstance(value, str) and _MEMORY_RE.fullmatch(value):
        return value.upper()
    raise ValueError(f'expected a memory size like "512M", "4G" or a number of '
                     f'megabytes, got {value!r}')


def _count(minimum: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"expected an integer >= {minimum}, got {value!r}")
        return value
    return check


def check_resources(value: Any, parse_duration: Callable[[Any], float]
                    ) -> tuple[tuple[str, Any], ...]:
    """`resources = { cpus = 2, mem = "4G", gpus = 1, time = "2h" }`; sorted pairs
    (the Agent is frozen and hashable); `time` in seconds."""
    if not isinstance(value, dict):
        raise ValueError(f"expected a table like {{ cpus = 2, mem = \"4G\" }}, got {value!r}")
    checks: dict[str, Callable[[Any], Any]] = {
        "cpus": _count(1), "gpus": _count(0), "mem": check_memory, "time": parse_duration}
    result = []
    for key, item in value.items():
        if key not in checks:
            raise ValueError(f"unknown resource '{key}' (known: {', '.join(RESOURCE_KEYS)})")
        try:
            result.append((key, checks[key](item)))
        except ValueError as err:
            raise ValueError(f"{key}: {err}") from None
    return tuple(sorted(result))


def parse_slurm_table(table: Any, parse_duration: Callable[[Any], float],
                      add: Callable[[str, str], None]) -> SlurmSettings:
    """`[tool.orchestrate.slurm]`; each problem goes to `add(key, message)`."""
    if not isinstance(table, dict):
        add("tool.orchestrate.slurm", "expected a table")
        return SlurmSettings()
    fields: dict[str, Any] = {}
    for key, item in table.items():
        where = f"tool.orchestrate.slurm.{key}"
        if key not in SLURM_KEYS:
            add(where, f"unknown key (known keys: {', '.join(sorted(SLURM_KEYS))})")
        elif key == "sbatch_args":
            if not isinstance(item, list) or not all(isinstance(v, str) for v in item):
                add(where, "expected a list of strings")
            else:
                fields[key] = tuple(item)
        elif key == "poll":
            try:
                fields[key] = parse_duration(item)
                if fields[key] <= 0:
                    add(where, "expected a duration > 0")
            except ValueError as err:
                add(where, str(err))
        elif not isinstance(item, str) or not item:
            add(where, f"expected a non-empty string, got {item!r}")
        else:
            fields[key] = item
    return SlurmSettings(**fields)


def slurm_time(seconds: float) -> str:
    """Seconds -> Slurm's D-HH:MM:SS, rounded up to a whole minute (Slurm's unit)."""
    minutes = max(1, -(-int(seconds) // 60))
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    return f"{days}-{hours:02d}:{minutes:02d}:00"


def resource_args(resources: tuple[tuple[str, Any], ...]) -> list[str]:
    """An agent's `resources` as sbatch options."""
    wanted = dict(resources)
    args = []
    if "cpus" in wanted:
        args.append(f"--cpus-per-task={wanted['cpus']}")
    if "mem" in wanted:
        args.append(f"--mem={wanted['mem']}")
    if wanted.get("gpus"):
        args.append(f"--gres=gpu:{wanted['gpus']}")
    if "time" in wanted:
        args.append(f"--time={slurm_time(wanted['time'])}")
    return args


def describe_resources(resources: tuple[tuple[str, Any], ...]) -> str:
    """"cpus=2 mem=4G time=2h0m" for status and info (shown, not enforced, on local)."""
    parts = []
    for key, value in resources:
        if key == "time":
            minutes = int(value // 60)
            value = f"{minutes // 60}h{minutes % 60}m" if minutes >= 60 else f"{value:g}s"
        parts.append(f"{key}={value}")
    return " ".join(parts)


def where_it_runs(agent: Any) -> str:
    """`doit info`'s line: the executor, and the resources (not enforced on local)."""
    line = f"runs on {agent.executor}"
    if agent.resources:
        line += f", resources {describe_resources(agent.resources)}"
        if agent.executor == "local":
            line += " (shown, not enforced, on local)"
    return line


def sbatch_options(settings: SlurmSettings, resources: tuple[tuple[str, Any], ...]) -> list[str]:
    """Options from the workspace's slurm table and the agent's resources;
    `sbatch_args` last, so a user's own option wins."""
    args = [f"--{key}={getattr(settings, key)}" for key in ("partition", "account", "qos")
            if getattr(settings, key)]
    return args + resource_args(resources) + list(settings.sbatch_args)


# -- [tool.orchestrate.telemetry] ----------------------------------------------
TELEMETRY_KEYS = ("endpoint",)


@dataclass(frozen=True)
class TelemetrySettings:
    """`[tool.orchestrate.telemetry]`: where runs are exported as traces
    (OTLP/HTTP, e.g. "http://localhost:4318"; None: only if the environment says)."""
    endpoint: str | None = None


def parse_telemetry_table(table: Any, add: Callable[[str, str], None]) -> TelemetrySettings:
    """`[tool.orchestrate.telemetry]`; each problem goes to `add(key, message)`."""
    if not isinstance(table, dict):
        add("tool.orchestrate.telemetry", "expected a table")
        return TelemetrySettings()
    endpoint = None
    for key, item in table.items():
        where = f"tool.orchestrate.telemetry.{key}"
        if key not in TELEMETRY_KEYS:
            add(where, f"unknown key (known keys: {', '.join(TELEMETRY_KEYS)})")
        elif not isinstance(item, str) or not item.startswith(("http://", "https://")):
            add(where, f'expected an OTLP/HTTP address like "http://localhost:4318", '
                       f'got {item!r}')
        else:
            endpoint = item
    return TelemetrySettings(endpoint)
