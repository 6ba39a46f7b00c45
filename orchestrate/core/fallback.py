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
    names = [entry.agent for entry in chain]
    for name in names:
        if names.count(name) > 1:
            raise ValueError(f"lists preset {name!r} twice (rate limits are per preset)")
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
    parsed and rested as the preset that ran (`record.preset`)."""
    ran = record.preset if record is not None else None
    if ran is None or ran == agent.preset or agent.stand_in is not None:
        return agent
    for entry in agent.fallback:
        if entry.agent == ran:
            return variant(agent, entry)
    return agent


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
    until = limited.get(primary or "")
    if primary is None or until is None or until <= now:
        return Route(agent)
    far = primary in unknown_reset or until - now > agent.fallback_after
    if far:
        for entry in agent.fallback:
            if limited.get(entry.agent, 0.0) <= now:
                return Route(variant(agent, entry),
                             via=f"via {entry.agent}: {primary} rate limited "
                                 + ("(reset unknown)" if primary in unknown_reset
                                    else f"until {clock_text(until)}"))
    if agent.fallback and far:   # the whole chain is limited: wait for the first reset
        chain = [until] + [limited[e.agent] for e in agent.fallback]
        first = min(chain)
        return Route(agent, held=f"rate limited until {clock_text(first)} ({primary} and "
                     f"its fallback {', '.join(e.agent for e in agent.fallback)})", until=first)
    return Route(agent, held=f"rate limited until {clock_text(until)} ({primary})", until=until)


def _resumed(agent: Agent, record: StatusRecord | None, limited: dict[str, float],
             now: float) -> Route | None:
    """A relaunch that resumes a session stays with the CLI that holds it
    (a fallback preset), while that one is not limited."""
    if (record is None or record.state != RunState.WAITING or not record.resume_session
            or record.preset in (None, agent.preset)):
        return None
    ran = as_ran(agent, record)
    if ran is agent or limited.get(ran.preset or "", 0.0) > now:
        return None
    return Route(ran, via=f"via {ran.preset}: resuming its session")


def ends_in_fallback(agent: Agent, reset_known: bool, until: float, now: float) -> bool:
    """After a rate-limited run: is the next launch a fallback's (now) rather
    than a rest until the reset? The chain's own limits are the scheduler's."""
    return bool(agent.fallback) and (not reset_known or until - now > agent.fallback_after)
