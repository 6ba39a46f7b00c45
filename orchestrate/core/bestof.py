"""Best of N (pure): one declared agent -> N candidates and the agent's own row.

`best_of = 3` (or a list of presets) makes candidates `agent@1` ... `agent@3`
(`agent@claude`, ...): ordinary isolated agents, each with its own worktree,
branch, log, status record, check and fix loop. The agent's own row is
never launched: it stands for the contest. It waits on every candidate (so
selecting it selects them) and is done once a winner is chosen; the runtime
step (`runtime/bestof.py`) chooses, records the choice, and makes the
winner's worktree and branch the agent's. Downstream agents name the agent,
never a candidate.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .records import RunState, StatusRecord

MIN_CANDIDATES = 2
MAX_CANDIDATES = 16
# Keys a candidate of another preset does not inherit: they belong to the
# declared preset's CLI (a claude model name means nothing to codex).
PRESET_OWN_KEYS = ("model", "executable", "extra_args", "allowed_tools", "permission_mode")
# A candidate's record in one of these states has ended: it will not change by itself.
ENDED = frozenset({RunState.DONE, RunState.FAILED, RunState.CANCELLED, RunState.REMOVED})


def check_best_of(value: Any, presets: tuple[str, ...]) -> tuple[str, ...]:
    """`best_of` -> the candidates' labels ("1".."N", or preset names);
    ValueError says what was expected."""
    expected = (f"expected an integer from {MIN_CANDIDATES} to {MAX_CANDIDATES} or a list "
                f"of presets (one candidate each: {', '.join(presets)})")
    if isinstance(value, int) and not isinstance(value, bool):
        if not MIN_CANDIDATES <= value <= MAX_CANDIDATES:
            raise ValueError(f"{expected}, got {value}")
        return tuple(str(n) for n in range(1, value + 1))
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(expected)
    unknown = [v for v in value if v not in presets]
    if unknown:
        raise ValueError(f"unknown preset '{unknown[0]}' (presets: {', '.join(presets)})")
    if len(set(value)) != len(value):
        raise ValueError("lists a preset twice (best_of = N runs one preset N times)")
    if not MIN_CANDIDATES <= len(value) <= MAX_CANDIDATES:
        raise ValueError(f"{expected}, got a list of {len(value)}")
    return tuple(value)


def best_of_problems(fields: dict[str, Any]) -> list[tuple[str, str]]:
    """(key, message) for a best_of or judge declaration that cannot work."""
    problems = []
    labels = fields.get("best_of")
    if "judge" in fields and not labels:
        problems.append(("judge", "only applies with best_of"))
    if not labels:
        return problems
    if fields.get("isolation") != "worktree":
        problems.append(("best_of", 'needs isolation = "worktree" (each candidate works '
                                    "in its own worktree)"))
    if fields.get("foreach") is not None:
        problems.append(("best_of", "cannot be combined with foreach"))
    if not labels[0].isdigit() and "command" in fields:
        problems.append(("best_of", "a list of presets needs prompt or prompt_file instead "
                                    "of command (each preset gets the same prompt)"))
    return problems


def candidate_name(name: str, label: str) -> str:
    return f"{name}@{label}"


def expand_candidates(agents: tuple[Any, ...]) -> tuple[Any, ...]:
    """Each best_of declaration -> its candidates, then its own row."""
    if not any(a.best_of for a in agents):
        return agents
    from .foreach import copy_with
    result: list[Any] = []
    for agent in agents:
        if not agent.best_of or agent.candidate_of or agent.candidates:
            result.append(agent)
            continue
        names = tuple(candidate_name(agent.name, label) for label in agent.best_of)
        result.extend(_candidate(agent, name, label, copy_with)
                      for name, label in zip(names, agent.best_of))
        result.append(copy_with(agent, candidates=names, awaits=agent.awaits + names))
    return tuple(result)


def _candidate(agent: Any, name: str, label: str, copy_with: Any) -> Any:
    changes: dict[str, Any] = {"name": name, "candidate_of": agent.name, "best_of": (),
                               "judge": None, "merge": False}   # the winner lands as the agent
    if not label.isdigit() and label != agent.preset:   # one candidate per preset
        changes["preset"] = label
        changes.update({k: (() if k in ("extra_args", "allowed_tools") else None)
                        for k in PRESET_OWN_KEYS})
    return copy_with(agent, **changes)


# -- the contest -----------------------------------------------------------------
def contest_key(records: dict[str, StatusRecord | None]) -> dict[str, str]:
    """Candidate -> the run it is judged on (its run id; "" before any): a
    relaunch of any candidate is a new contest."""
    return {name: (r.run_id or "") if r is not None else "" for name, r in records.items()}


@dataclass(frozen=True)
class Outcome:
    """What a contest came to: a winner and how it was chosen, no winner
    (why), or a judge to ask among `good` (then `winner` is None)."""
    winner: str | None = None
    how: str = ""
    reason: str = ""
    good: tuple[str, ...] = ()
    cancelled: bool = False    # no winner because a person cancelled candidates

    @property
    def needs_judge(self) -> bool:
        return self.winner is None and len(self.good) > 1


def outcome(agent: Any, records: dict[str, StatusRecord | None]) -> Outcome | None:
    """The contest's outcome from its candidates' records, or None while it
    is open. Without a judge the first to pass wins as soon as it passes;
    with one, every candidate runs to its end first."""
    good = sorted((r.ended_at or "", name) for name, r in records.items()
                  if r is not None and r.state == RunState.DONE)
    if good and agent.judge is None:
        return Outcome(good[0][1], "first to pass")
    ended = all(r is not None and r.state in ENDED for r in records.values())
    if not ended:
        return None
    if not good:
        if any(r is not None and r.state == RunState.CANCELLED for r in records.values()):
            return Outcome(reason="cancelled: its candidates were cancelled", cancelled=True)
        return Outcome(reason="no candidate passed")
    if len(good) == 1:
        return Outcome(good[0][1], "the only one to pass")
    return Outcome(good=tuple(name for _, name in good))


def winner_reason(agent: Any, winner: str, how: str) -> str:
    return f"winner {agent.pipeline}:{winner} of {len(agent.candidates)}, {how}"


def named_candidate(agent: Any, answer: str, good: tuple[str, ...]) -> str | None:
    """The good candidate a judge's last line names (`p:a@2`, `a@2` or `2`), else None."""
    answer = answer.strip()
    for name in good:
        label = name.rpartition("@")[2]
        if answer in (f"{agent.pipeline}:{name}", name, label):
            return name
    return None


JUDGE_POLL = 0.5   # seconds between a judging row's looks for the judge's answer


def contest_decision(agent: Any, record: StatusRecord | None, decided: dict[str, Any],
                     signal_digest: str | None, missing_outputs: tuple[str, ...],
                     now: float) -> Any:
    """The agent's own row: done or failed as its contest came out, else
    waiting on its candidates. A candidate about to (re)launch opens a new
    contest: the old winner no longer stands for the agent."""
    from .landing import MERGE_POLL, merge_pending
    from .scheduler import Decision
    candidates = [decided[f"{agent.pipeline}:{c}"] for c in agent.candidates]
    reopening = any(d.launch or d.state in (RunState.PENDING, RunState.QUEUED)
                    for d in candidates)
    if record is not None and not reopening:
        if record.state == RunState.DONE and signal_digest is not None and not missing_outputs:
            return Decision(agent, RunState.DONE, record.reason)
        if record.state in (RunState.FAILED, RunState.CANCELLED):
            return Decision(agent, record.state, record.reason)
        if record.checking:   # its judge runs (detached): look for the answer soon
            return Decision(agent, RunState.WAITING, record.reason, timed=True,
                            wake_at=now + JUDGE_POLL)
        if merge_pending(record):   # the winner's branch is in the merge queue
            return Decision(agent, RunState.WAITING, record.reason, timed=True,
                            wake_at=now + MERGE_POLL)
    if candidates and all(d.blocked for d in candidates):
        first = candidates[0]
        return Decision(agent, RunState.WAITING, f"waiting on {first.agent.name} (blocked)",
                        blocked=True, blocked_by=first.blocked_by)
    done = sum(1 for d in candidates if d.state == RunState.DONE)
    return Decision(agent, RunState.WAITING,
                    f"waiting on candidates ({done} of {len(candidates)} passed)")


def mark_losers(agent: Any, decided: dict[str, Any]) -> None:
    """Once the agent's row is done or failed, its candidates that ended
    badly are no dead end: they lost (a cancelled loser is the plan)."""
    from dataclasses import replace
    row = decided[agent.task]
    if row.state not in (RunState.DONE, RunState.FAILED):
        return
    for name in agent.candidates:
        task = f"{agent.pipeline}:{name}"
        if decided[task].state in (RunState.FAILED, RunState.CANCELLED):
            decided[task] = replace(decided[task], lost=True)
