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
                 old_upstream: dict[str, str], new: Fingerprint) -> str:
    """Say, as a user would want to read it, why `new` differs from the old run."""
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
    for name in sorted(set(old_upstream) | set(new.upstream)):
        if old_upstream.get(name) != new.upstream.get(name):
            return f"upstream {name} has a new result"
    return "up to date"
