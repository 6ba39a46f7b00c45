"""The live view of `doit wait` on a terminal, and the summary it ends with.

With more agents than rows, a table in declaration order hid the running
and failed agents behind "...". Here rows are ordered by what needs a
person's eye (failed, running, queued, waiting), done agents are only a
count in the header, the header says how long the wait has run, and what
does not fit is one line of counts. Pure functions of the decisions; the
caller draws them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from ..runtime.causes import last_line
from ..core.scheduler import Decision
from ..runtime.state import Layout
from ..core.table import columns
from .ui import STYLES, elapsed, label, summary_line, with_fanout_rows_rolled_up

# lower sorts first; done agents are not rows at all
ORDER = {"failed": 0, "cancelled": 1, "running": 2, "launching": 2, "launch": 3,
         "queued": 4, "waiting": 5, "pending": 6}


def clock(seconds: float) -> str:
    seconds = int(seconds)
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else (
        f"{minutes}m{secs:02d}s" if minutes else f"{secs}s")


def _row(decision: Decision, record) -> tuple[str, str, str, str]:
    state = label(decision)
    shown = decision.state in ("running", "failed", "cancelled")
    reason = decision.reason if decision.reason not in ("running",) else ""
    return (decision.agent.task, state, elapsed(record) if shown else "", reason)


def live_lines(decisions: dict[str, Decision], records: dict, height: int, width: int,
               seconds: float) -> list[str]:
    """At most `height - 1` lines (the cursor needs the last one), each cut to `width`."""
    decisions = with_fanout_rows_rolled_up(decisions)
    header = f"{summary_line(decisions.values())}  ·  {clock(seconds)} elapsed"
    rows = sorted((d for d in decisions.values() if d.state != "done"),
                  key=lambda d: ORDER.get(d.state, 7))
    room = max(1, height - 1) - 2            # the header and the column names
    shown = rows if len(rows) <= room else rows[:max(0, room - 1)]
    lines = [header[:width]]
    lines += columns(("agent", "state", "elapsed", "reason"),
                     [_row(d, records.get(d.agent.task)) for d in shown],
                     STYLES, colour=False, width=width)
    hidden = rows[len(shown):]
    if hidden:
        lines.append(f"… and {len(hidden)} more: {summary_line(hidden)}")
    return [line[:width] for line in lines]


def failure_summary(root: Path, decisions: Iterable[Decision]) -> list[str]:
    """One line per failed or cancelled agent: its reason, the last line of
    its log, and the command that shows the rest."""
    layout = Layout(root)
    lines = []
    for decision in decisions:
        if decision.state not in ("failed", "cancelled"):
            continue
        agent = decision.agent
        tail = last_line(layout.log(agent.pipeline, agent.name))
        lines.append(f"{decision.state} {agent.task}: {decision.reason}"
                     + (f" | last line: {tail}" if tail else "")
                     + f"  (doit logs {agent.task})")
    return lines
