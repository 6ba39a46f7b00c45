"""Fallback presets: which CLI an agent launches with while its own is rate limited (pure).

An agent declares a chain (`fallback = ["codex", {agent = "gemini", model =
"..."}]`). Rate limits are per preset and shared by every agent of the
workspace (`ratelimits/<preset>.json`): when the agent's own preset is
limited and its reset is further away than `fallback_after` (an unknown
reset counts as further), the launch uses the first preset of the chain
that is not limited itself; once the reset has passed, the agent's own
preset is used again. A session never moves between CLIs: a relaunch that
resumes a session (after a failed check) stays with the preset that ran
last while that one is not limited, and starts fresh elsewhere.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from difflib import get_close_matches
from typing import TYPE_CHECKING, Any

from .causes import suggestion
from .records import RunState, StatusRecord, clock_text

if TYPE_CHECKING:
    from .spec import Agent

PRESET_NAMES = ("claude", "codex", "gemini", "aider")
ENTRY_KEYS = ("agent", "model", "executable", "extra_args")
DEFAULT_AFTER = 300.0   # fallback_after: 5m


@dataclass(frozen=True)
class FallbackPreset:
    """One link of the chain: a preset and, optionally, its own invocation."""
    agent: str
    model: str | None = None
    executable: str | None = None
    extra_args: tuple[str, ...] = ()


def check_fallback(value: Any) -> tuple[FallbackPreset, ...]:
    """The `fallback` key: a list of preset names or tables; ValueError says what is wrong."""
    if not isinstance(value, list) or not value:
        raise ValueError('expected a non-empty list of presets, e.g. ["codex", '
                         '{ agent = "gemini", model = "gemini-2.5-pro" }]')
    chain = tuple(_entry(item, number) for number, item in enumerate(value, 1))
    seen = [(entry.agent, entry.model) for entry in chain]
    for name, model in seen:
        if seen.count((name, model)) > 1:
            raise ValueError(f"lists preset {name!r}" + (f" with model {model!r}" if model else "")
                             + " twice")
    return chain


def _entry(item: Any, number: int) -> FallbackPreset:
    if isinstance(item, str):
        return FallbackPreset(_preset(item, number))
    if not isinstance(item, dict):
        raise ValueError(f"entry {number}: expected a preset name or a table "
                         f"{{ agent, model, executable, extra_args }}, got {item!r}")
    for key in item:
        if key not in ENTRY_KEYS:
            raise ValueError(f"entry {number}: key '{key}': {suggestion(key, ENTRY_KEYS)}")
    if "agent" not in item:
        raise ValueError(f"entry {number}: missing key 'agent' (one of {', '.join(PRESET_NAMES)})")
    for key in ("model", "executable"):
        if key in item and not isinstance(item[key], str):
            raise ValueError(f"entry {number}: key '{key}': expected a string")
    extra = item.get("extra_args", [])
    if not isinstance(extra, list) or not all(isinstance(a, str) for a in extra):
        raise ValueError(f"entry {number}: key 'extra_args': expected a list of strings")
    return FallbackPreset(_preset(item["agent"], number), item.get("model"),
                          item.get("executable"), tuple(extra))


def _preset(name: Any, number: int) -> str:
    if name not in PRESET_NAMES:
        close = get_close_matches(str(name), PRESET_NAMES, n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'?" if close else f"expected one of {', '.join(PRESET_NAMES)}"
        raise ValueError(f"entry {number}: unknown preset {name!r} ({hint})")
    return str(name)


def check_after(value: Any, parse_duration: Any) -> float:
    """`fallback_after`: a duration (0: fall back at any rate limit)."""
    return float(parse_duration(value))


# -- which preset a launch uses ---------------------------------------------------
def variant(agent: Agent, entry: FallbackPreset) -> Agent:
    """The agent as it runs with `entry`'s preset: same prompt, the entry's
    model, executable and extra arguments (the primary's are for its own CLI)."""
    return replace(agent, preset=entry.agent, model=entry.model, executable=entry.executable,
                   extra_args=entry.extra_args,
                   permission_mode=agent.permission_mode if entry.agent == "claude" else None)


def as_ran(agent: Agent, record: StatusRecord | None) -> Agent:
    """The agent as its recorded run was launched: a fallback run is watched,
    parsed and rested as the preset (and model) that ran (`record.preset`,
    and the model its launch limits kept)."""
    ran = record.preset if record is not None else None
    if ran is None or agent.stand_in is not None or record is None:
        return agent
    model = record.limits.get("model", agent.model if ran == agent.preset else None)
    if (ran, model) == (agent.preset, agent.model):
        return agent
    entries = [e for e in agent.fallback if e.agent == ran]
    exact = [e for e in entries if e.model == model]
    chosen = exact or entries
    return variant(agent, chosen[0]) if chosen else agent


def limit_key(preset: str, family: str | None) -> str:
    """The name of a rate limit (ratelimits/<key>.json): the preset's, or
    `preset@family` when the CLI said it is for one model family only."""
    return f"{preset}@{family}" if family else preset


def limit_until(preset: str | None, model: str | None, limited: dict[str, float]
                ) -> tuple[float | None, str]:
    """Until when `preset` with `model` is rate limited (None: it is not
    known to be), and the key of that limit. A model family's limit applies
    to a model that names it, and to no model given (the CLI's default may be it)."""
    if preset is None:
        return None, ""
    found: tuple[float | None, str] = (limited.get(preset), preset)
    for key, until in limited.items():
        name, _, family = key.partition("@")
        if name == preset and family and (model is None or family in model.lower()):
            if found[0] is None or until > found[0]:
                found = (until, key)
    return found


@dataclass(frozen=True)
class Route:
    """How the next launch goes: with `agent` (a variant when `via` says why),
    or held until `until` because every preset of the chain is limited."""
    agent: Agent
    via: str | None = None
    held: str | None = None      # the reason it waits
    until: float | None = None


def route(agent: Agent, record: StatusRecord | None, limited: dict[str, float],
          unknown_reset: frozenset[str], now: float) -> Route:
    """The preset the next launch of `agent` uses, given the workspace's rate
    limits (`limited`: preset -> until; `unknown_reset`: presets whose CLI
    did not say when)."""
    primary = agent.preset
    resumed = _resumed(agent, record, limited, now)
    if resumed is not None:
        return resumed
    until, key = limit_until(primary, agent.model, limited)
    if primary is None or until is None or until <= now:
        return Route(agent)
    far = key in unknown_reset or until - now > agent.fallback_after
    chain = [(entry, limit_until(entry.agent, entry.model, limited)[0] or 0.0)
             for entry in agent.fallback]
    if far:
        for entry, entry_until in chain:
            if entry_until <= now:
                return Route(variant(agent, entry),
                             via=f"via {_named(entry, primary)}: {_limit_named(key)} rate "
                                 "limited " + ("(reset unknown)" if key in unknown_reset
                                               else f"until {clock_text(until)}"))
    if chain and far:   # the whole chain is limited: wait for the first reset
        first = min([until] + [entry_until for _, entry_until in chain])
        return Route(agent, held=f"rate limited until {clock_text(first)} ({_limit_named(key)} "
                     f"and its fallback {', '.join(_named(e, primary) for e, _ in chain)})",
                     until=first)
    return Route(agent, held=f"rate limited until {clock_text(until)} ({_limit_named(key)})",
                 until=until)


def _named(entry: FallbackPreset, primary: str) -> str:
    """A fallback as a reason names it: `codex`; `claude (sonnet)` for
    another model of the agent's own preset."""
    return entry.agent + (f" ({entry.model})" if entry.agent == primary and entry.model else "")


def _limit_named(key: str) -> str:
    """`claude`, or `claude (opus)` for a limit of one model family."""
    preset, _, family = key.partition("@")
    return f"{preset} ({family})" if family else preset


def _resumed(agent: Agent, record: StatusRecord | None, limited: dict[str, float],
             now: float) -> Route | None:
    """A relaunch that resumes a session stays with the CLI that holds it
    (a fallback preset), while that one is not limited."""
    if record is None or record.state != RunState.WAITING or not record.resume_session:
        return None
    ran = as_ran(agent, record)
    if ran is agent or (limit_until(ran.preset, ran.model, limited)[0] or 0.0) > now:
        return None
    return Route(ran, via=f"via {ran.preset}: resuming its session")


def ends_in_fallback(agent: Agent, reset_known: bool, until: float, now: float) -> bool:
    """After a rate-limited run: is the next launch a fallback's (now) rather
    than a rest until the reset? The chain's own limits are the scheduler's."""
    return bool(agent.fallback) and (not reset_known or until - now > agent.fallback_after)
