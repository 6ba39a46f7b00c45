"""Crash points: where the chaos test kills an orchestrator process on purpose.

`ORCHESTRATE_CRASH_AT="launch-recorded:3"` makes a process SIGKILL itself
the third time it reaches `crash_point("launch-recorded")` (counted per
process; a forked child inherits its parent's counts). Random sleeps find
some interleavings; named points find the rest on every run, from a seed.
Unset (always, outside tests), a crash point costs one dict lookup.
"""
from __future__ import annotations

import os
import signal

POINTS = ("launch-recorded", "launch-spawned", "finish-signal-written", "finish-saved",
          "stop-recorded", "advancer-forked", "pass-settled", "hook-recorded",
          "fanout-recorded", "merge-recorded", "merge-advanced", "bestof-chosen")


def _plan() -> dict[str, int]:
    plan = {}
    for item in filter(None, os.environ.get("ORCHESTRATE_CRASH_AT", "").split(",")):
        name, _, count = item.partition(":")
        plan[name] = int(count or 1)
    return plan


_PLAN = _plan()
_SEEN: dict[str, int] = {}


def crash_point(name: str) -> None:
    if not _PLAN or name not in _PLAN:
        return
    _SEEN[name] = _SEEN.get(name, 0) + 1
    if _SEEN[name] == _PLAN[name]:
        os.kill(os.getpid(), signal.SIGKILL)
