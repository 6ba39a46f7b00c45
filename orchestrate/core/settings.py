"""The executor keys, validated (pure): `executor`, agent `resources`,
`[tool.orchestrate.slurm]` and `[tool.orchestrate.ray]`, and what they become
on sbatch's command line and in a Ray job's entrypoint resources.

Checks raise ValueError with the message `spec` puts after file, agent and
key, like every other key's check.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

EXECUTORS = ("local", "slurm", "ray")
RESOURCE_KEYS = ("cpus", "mem", "gpus", "time")
SLURM_KEYS = ("partition", "account", "qos", "sbatch_args", "poll")
RAY_KEYS = ("address", "poll")
DEFAULT_POLL = 2.0
_MEMORY_RE = re.compile(r"[1-9][0-9]*[KMGT]?", re.IGNORECASE)
_MEMORY_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


@dataclass(frozen=True)
class SlurmSettings:
    """`[tool.orchestrate.slurm]`: where jobs go and how often Slurm is asked."""
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    sbatch_args: tuple[str, ...] = ()
    poll: float = DEFAULT_POLL


@dataclass(frozen=True)
class RaySettings:
    """`[tool.orchestrate.ray]`: the cluster's Jobs API and how often it is
    asked. `address` None: RAY_ADDRESS, else http://127.0.0.1:8265 (the
    environment is the runtime's to read)."""
    address: str | None = None
    poll: float = DEFAULT_POLL


def check_executor(value: Any) -> str:
    if value not in EXECUTORS:
        raise ValueError(f'expected one of "local", "slurm", "ray", got {value!r}')
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


def check_ray_address(value: Any) -> str:
    """The Jobs API's address: the dashboard's http(s) URL (not the GCS port)."""
    if not isinstance(value, str) or not value.startswith(("http://", "https://")) \
            or len(value.split("://", 1)[1].strip("/")) == 0:
        raise ValueError(f'expected the Jobs API\'s URL like "http://127.0.0.1:8265", '
                         f'got {value!r}')
    return value.rstrip("/")


def _poll(item: Any, parse_duration: Callable[[Any], float]) -> float:
    poll = parse_duration(item)
    if poll <= 0:
        raise ValueError("expected a duration > 0")
    return poll


def parse_ray_table(table: Any, parse_duration: Callable[[Any], float],
                    add: Callable[[str, str], None]) -> RaySettings:
    """`[tool.orchestrate.ray]`; each problem goes to `add(key, message)`."""
    if not isinstance(table, dict):
        add("tool.orchestrate.ray", "expected a table")
        return RaySettings()
    fields: dict[str, Any] = {}
    checks: dict[str, Callable[[Any], Any]] = {
        "address": check_ray_address, "poll": lambda item: _poll(item, parse_duration)}
    for key, item in table.items():
        where = f"tool.orchestrate.ray.{key}"
        if key not in checks:
            add(where, f"unknown key (known keys: {', '.join(sorted(RAY_KEYS))})")
            continue
        try:
            fields[key] = checks[key](item)
        except ValueError as err:
            add(where, str(err))
    return RaySettings(**fields)


def memory_bytes(size: str) -> int:
    """A checked memory size ("512M", "4G", "100") -> bytes (no suffix: megabytes)."""
    unit = size[-1].upper()
    if unit in _MEMORY_UNITS:
        return int(size[:-1]) * _MEMORY_UNITS[unit]
    return int(size) * _MEMORY_UNITS["M"]


def ray_entrypoint_resources(resources: tuple[tuple[str, Any], ...]) -> dict[str, int]:
    """An agent's `resources` as a Ray job's entrypoint resources: cpus ->
    entrypoint_num_cpus, gpus -> entrypoint_num_gpus, mem -> entrypoint_memory
    (bytes). `time` has no Ray counterpart: the agent's `timeout` limits it."""
    wanted = dict(resources)
    fields = {}
    if "cpus" in wanted:
        fields["entrypoint_num_cpus"] = wanted["cpus"]
    if wanted.get("gpus"):
        fields["entrypoint_num_gpus"] = wanted["gpus"]
    if "mem" in wanted:
        fields["entrypoint_memory"] = memory_bytes(wanted["mem"])
    return fields


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
