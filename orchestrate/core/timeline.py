"""Every attempt of every agent, from the events log (pure).

`events.jsonl` holds one `launch` per launch (each attempt, and each
relaunch after a rate limit) and one `finish`, `fail` or `cancel` when that
run is settled, matched by run id; a `stop` says orchestrate stopped the run
(timeout, stall, cancel). A launch with no end yet is running, unless the
agent's status record says how it ended.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable

from .records import RunState, StatusRecord

END_STATES = {"finish": "done", "fail": "failed", "cancel": "cancelled"}


def parse_time(text: object) -> float | None:
    """ISO-8601 UTC (as `utc_now` writes it) -> epoch seconds; None if unreadable."""
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@dataclass
class Attempt:
    """One launch of an agent and how it ended."""
    task: str
    run_id: str
    attempt: int
    start: float
    end: float | None = None
    state: str = "running"          # running, done, failed, cancelled
    reason: str = ""
    exit_code: int | None = None
    stop_reason: str | None = None  # timeout, stall or cancel that ended it
    relaunched: bool = False        # a retry or a rate-limit rest followed
    check: str | None = None        # "passed" or "failed: <last line>" when a check ran

    def duration(self, now: float) -> float:
        return max(0.0, (self.end if self.end is not None else now) - self.start)


@dataclass
class Timeline:
    attempts: list[Attempt] = field(default_factory=list)

    def by_task(self) -> dict[str, list[Attempt]]:
        """Agents in the order they first launched, each with its attempts."""
        rows: dict[str, list[Attempt]] = {}
        for attempt in sorted(self.attempts, key=lambda a: a.start):
            rows.setdefault(attempt.task, []).append(attempt)
        return rows

    def span(self, now: float) -> tuple[float, float] | None:
        """(first start, last end); a running attempt ends now."""
        if not self.attempts:
            return None
        start = min(a.start for a in self.attempts)
        end = max(a.end if a.end is not None else now for a in self.attempts)
        return start, max(end, start)


def build(events: Iterable[dict[str, Any]], tasks: set[str],
          records: dict[str, StatusRecord | None]) -> Timeline:
    """The attempts of `tasks` from their events; `records` (current status
    by task) give the exact end of the latest run and settle unended ones."""
    runs: dict[str, Attempt] = {}
    for item in events:
        task, run_id = item.get("task"), item.get("run_id")
        if task not in tasks or not isinstance(run_id, str):
            continue
        kind = item.get("event")
        when = parse_time(item.get("ts"))
        if when is None:
            continue
        if kind == "launch":
            runs[run_id] = Attempt(task, run_id, _int(item.get("attempt"), 1), when,
                                   reason="running")
        elif kind in ("check_passed", "check_failed") and run_id in runs:
            runs[run_id].check = ("passed" if kind == "check_passed"
                                  else f"failed: {item.get('last_line') or ''}")
        elif kind == "stop" and run_id in runs:
            runs[run_id].stop_reason = str(item.get("reason") or "stopped")
        elif kind in END_STATES:
            attempt = runs.get(run_id)
            if attempt is None:   # it never started ("could not start"): a zero-length attempt
                attempt = runs[run_id] = Attempt(task, run_id, _int(item.get("attempt"), 1), when)
            attempt.end, attempt.state = when, END_STATES[kind]
            attempt.reason = str(item.get("reason") or attempt.state)
            attempt.exit_code = item.get("exit_code")
            attempt.relaunched = item.get("retry_at") is not None
    for attempt in runs.values():
        _settle_from_record(attempt, records.get(attempt.task))
    return Timeline(list(runs.values()))


def _int(value: object, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _settle_from_record(attempt: Attempt, record: StatusRecord | None) -> None:
    if record is None or record.run_id != attempt.run_id:
        return
    ended = parse_time(record.ended_at)
    if ended is not None and attempt.end is not None and ended <= attempt.end:
        attempt.end = max(ended, attempt.start)   # the exit time, not when it was noticed
    if attempt.end is None and record.state in (RunState.DONE, RunState.FAILED, RunState.CANCELLED) and ended:
        attempt.end, attempt.state, attempt.reason = ended, record.state, record.reason


# -- the time axis -----------------------------------------------------------
STEPS = (0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600,
         43200, 86400, 172800, 604800)


def ticks(span: float, most: int = 10) -> list[float]:
    """Offsets (seconds from the start) for at most `most` + 1 round ticks."""
    step = next((s for s in STEPS if span / s <= most), None) or (
        86400 * math.ceil(span / most / 86400))
    count = int(span / step + 1e-9)
    return [round(i * step, 6) for i in range(count + 1)]


def offset_label(seconds: float) -> str:
    """0.5s, 45s, 2m, 1m30s, 1h, 2h15m, 3d."""
    if 0 < seconds < 10 and abs(seconds - round(seconds)) > 1e-6:
        return f"{seconds:.2f}".rstrip("0") + "s"
    seconds = int(round(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    text = "".join(f"{n}{unit}" for n, unit in parts if n)
    return text or "0s"


def duration_label(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    return offset_label(seconds)
