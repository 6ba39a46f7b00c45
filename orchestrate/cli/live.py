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

from ..core.records import clock_text
from ..core.scheduler import Decision
from ..core.table import columns
from ..runtime.causes import last_line
from ..runtime.state import Layout, event_objects
from .reporter import Reporter
from .ui import (
    STYLES,
    decision_line,
    elapsed,
    label,
    run_summary,
    summary_line,
    with_fanout_rows_rolled_up,
    worth_a_line,
)

# lower sorts first; done agents are not rows at all
ORDER = {"failed": 0, "cancelled": 1, "running": 2, "launching": 2, "launched": 3,
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
                  key=lambda d: ORDER.get("launched" if d.launch else d.state, 7))
    room = max(1, height - 1) - 2            # the header and the column names
    shown = rows if len(rows) <= room else rows[:max(0, room - 1)]
    lines = [header[:width]]
    if not rows:   # everything done: the counts say it; column names over nothing do not
        return lines
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


class EventTail:
    """The events log from a given offset on: what happened since then.

    Every launch, failure, finish and cancel is appended to events.jsonl by
    whichever process saw it (this wait, the advancer, another `doit`), so
    reading it from where it ended when the wait began misses none of them
    and shows none from before."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.offset = path.stat().st_size
        except FileNotFoundError:
            self.offset = 0

    def read(self) -> list[dict]:
        """The whole lines appended since the last read (a line being written is left)."""
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                chunk = handle.read()
        except FileNotFoundError:
            return []
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        return event_objects(chunk[:end])


def event_line(item: dict) -> str | None:
    """One line for an event that a piped `doit wait` reports: a launch, a
    manual retry, a failure (saying when it will run again, if it will), an
    end; None for the others (hooks, signals, the advancer's own)."""
    kind, task = item.get("event"), item.get("task", "")
    reason = item.get("reason") or ""
    if kind == "launch":
        return f"{'launched':<9} {task}" + (f"  ({reason})" if reason else "")
    if kind == "retry":
        return f"{'retrying':<9} {task}  (was {item.get('was', 'failed')}; doit retry)"
    if kind == "finish" and item.get("merge") == "queued":   # done once merged
        return f"{'to merge':<9} {task}  ({reason})"
    if kind == "finish":
        return f"{'done':<9} {task}" + (f"  ({reason})" if reason not in ("", "done") else "")
    if kind == "merged":
        return f"{'merged':<9} {task}  (into {item.get('into')} at {str(item.get('sha'))[:12]})"
    if kind == "merge_conflict":
        files = ", ".join(item.get("files") or ())
        return f"{'conflict':<9} {task}  (merging into {item.get('into')}: {files})"
    if kind == "merge_check_failed":
        return (f"{'rejected':<9} {task}  (merged into {item.get('into')}, the merge check "
                f"failed: {item.get('last_line')})")
    if kind in ("fail", "cancel"):
        state = "failed" if kind == "fail" else "cancelled"
        line = f"{state:<9} {task}" + (f"  ({reason})" if reason else "")
        if item.get("retry_at") is not None:
            return line + f"; runs again at {clock_text(float(item['retry_at']))}"
        return line + f"  -> doit retry {task}"
    if kind == "fanout" and item.get("problem"):
        return f"{'failed':<9} {task}  (invalid list {item['problem']})  -> doit retry {task}"
    if kind == "fanout":
        return f"{'planned':<9} {task}  ({item.get('items', 0)} instances)"
    if kind == "removed":
        return f"{'removed':<9} {task}  (its item left the list)"
    return None


class PlainProgress:
    """Piped `doit wait`: a complete record of this wait, each thing once.

    Every launch, retry, failure and end during the wait comes from the
    events log (read from where it ended when the wait began); an agent that
    was already done, failed or waiting is in the summary only, unless it
    needs a person (blocked behind a failure, gated on a signal), which is
    said once, and again only if its reason changes."""

    def __init__(self, out: Reporter, events: EventTail, started: dict[str, Decision]):
        self.out = out
        self.events = events
        self.said: dict[str, str] = {}
        # done when the wait began: up to date (the summary counts them)
        self.current = {t for t, d in started.items() if d.state == "done"}
        # failed or cancelled before the wait: said once, as `doit` says them
        self.ended_before = {t for t, d in started.items()
                             if d.state in ("failed", "cancelled")}
        # running since before the wait: said once, so the reader knows what it waits on
        self.running_before = [d for d in started.values() if d.state == "running"]

    def update(self, decisions: dict[str, Decision], records: dict) -> None:
        ours = set(decisions)
        for decision in self.running_before:
            self.out.write(decision_line(decision) + "  (since before this wait)\n")
        self.running_before = []
        for item in self.events.read():
            task = item.get("task", "")
            if task in ours or task.rpartition(".")[0] in ours:
                line = event_line(item)
                if line is not None:
                    self.out.line(line)
                    self.ended_before.discard(task)
        for task, decision in decisions.items():
            if not self._needs_a_person(decision):
                continue
            line = decision_line(decision)
            if self.said.get(task) != line:
                self.said[task] = line
                self.out.line(line)
        self.out.flush()

    def _needs_a_person(self, decision: Decision) -> bool:
        if decision.state in ("failed", "cancelled"):   # ended in this wait: its event said it
            return decision.agent.task in self.ended_before
        return (not decision.launch and decision.state not in ("done", "running")
                and worth_a_line(decision))

    def finish(self, decisions: dict[str, Decision]) -> None:
        self.out.line(run_summary(decisions.values(), self.current))

    def close(self) -> None:
        pass
