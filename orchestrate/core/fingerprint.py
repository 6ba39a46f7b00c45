"""What an agent's result depends on, as one digest (pure).

The staleness record (config, input contents, consumed upstream signals) is
kept in the status record, apart from the `.done` signal, so that the signal
itself can stay deterministic in the outputs and give early cutoff.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any

from .spec import Agent


def digest_text(text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()


def _canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


@lru_cache(maxsize=None)
def config_digest(agent: Agent) -> str:
    return digest_text(_canonical(agent.config_identity()))


@dataclass(frozen=True)
class Fingerprint:
    config: str
    inputs: dict[str, str]      # path -> content digest
    upstream: dict[str, str]    # upstream agent -> its signal's digest

    @cached_property
    def digest(self) -> str:
        return digest_text(_canonical(
            {"config": self.config, "inputs": self.inputs, "upstream": self.upstream}))


def stale_reason(old_config: str | None, old_inputs: dict[str, str],
                 old_upstream: dict[str, str], new: Fingerprint,
                 upstream_states: dict[str, str] | None = None) -> str:
    """Say, as a user would want to read it, why `new` differs from the old run.
    `upstream_states`: the state of each upstream agent still declared (by
    name), so that a retired or failing upstream is not called a new result."""
    if old_config is None:
        return "never run"
    if old_config != new.config:
        return "command, env, cwd or outputs changed"
    changed = sorted(p for p in set(old_inputs) | set(new.inputs)
                     if old_inputs.get(p) != new.inputs.get(p))
    if changed:
        more = f" (+{len(changed) - 1} more)" if len(changed) > 1 else ""
        verb = "removed" if changed[0] not in new.inputs else (
            "added" if changed[0] not in old_inputs else "changed")
        return f"input {changed[0]} {verb}{more}"
    return _upstream_change(old_upstream, new.upstream, upstream_states or {}) or "up to date"


def _upstream_change(old: dict[str, str], new: dict[str, str], states: dict[str, str]
                     ) -> str | None:
    """The first upstream whose consumed signal differs, said truly: one the
    agent no longer consumes (a fan-out instance whose item left the list, an
    `after_any` upstream that is no longer done), one it consumes for the
    first time, or one that has a new result."""
    added = sorted(name for name in new if name not in old)
    for name in sorted(set(old) | set(new)):
        if old.get(name) == new.get(name):
            continue
        if name not in new:
            state = states.get(name)
            if state is None or state == "removed":
                return f"upstream {name} removed"
            if added:
                return f"uses upstream {added[0]} now ({name} is {state})"
            return f"upstream {name} no longer used ({state})"
        if name not in old:
            return f"new upstream {name}"
        return f"upstream {name} has a new result"
    return None
