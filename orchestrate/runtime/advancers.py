"""Which advancer is keeping a gated agent's pipeline going, for `doit status`.

An advancer whose selection waits only on an external signal sits idle until
`doit signal NAME`; status names it ("waiting for signal approved, advancer
pid N"), so that a person knows something is still waiting there, and
`doit cancel TASK` lets it go.
"""
from __future__ import annotations

import fcntl
import json
import os
from dataclasses import replace

from ..core.scheduler import Decision
from .state import Layout


def live_advancers(layout: Layout) -> dict[int, list[str]]:
    """pid -> selection (empty: every agent) of each advancer holding its slot."""
    directory = layout.base / "advancers"
    pids = []
    for lock in directory.glob("*.lock") if directory.is_dir() else ():
        try:
            fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            continue               # nobody holds it: no advancer there
        except BlockingIOError:
            text = os.read(fd, 32).decode(errors="replace").strip()
            if text.isdigit():
                pids.append(int(text))
        finally:
            os.close(fd)
    return {pid: _selection_of(layout, pid) for pid in pids}


def _selection_of(layout: Layout, pid: int) -> list[str]:
    """The selection the advancer `pid` announced when it started (last match)."""
    selection: list[str] = []
    try:
        with open(layout.events_path, "rb") as handle:
            for line in handle:
                if b'"advancer_start"' in line and str(pid).encode() in line:
                    data = json.loads(line)
                    if data.get("pid") == pid:
                        selection = data.get("selection") or []
    except (OSError, ValueError):
        pass
    return selection


def _covers(selection: list[str], agent) -> bool:
    return not selection or agent.task in selection or agent.pipeline in selection or any(
        name.endswith(":*") and name[:-2] == agent.pipeline for name in selection)


def name_advancers(layout: Layout, decisions: dict[str, Decision]) -> dict[str, Decision]:
    """Agents waiting on an external signal get the advancer that waits with them."""
    gated = {t: d for t, d in decisions.items() if d.signal is not None}
    if not gated:
        return decisions
    advancers = live_advancers(layout)
    if not advancers:
        return decisions
    named = dict(decisions)
    for task, decision in gated.items():
        pid = next((p for p, sel in advancers.items() if _covers(sel, decision.agent)), None)
        if pid is not None:
            signal = decision.signal
            named[task] = replace(decision, reason=f"waiting for signal {signal}, advancer pid "
                                  f"{pid} (doit signal {signal}, or doit cancel {task})")
    return named
