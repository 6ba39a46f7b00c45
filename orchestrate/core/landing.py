"""Landing the work: what a `merge = true` agent's record says of its merge (pure).

An isolated agent with `merge = true` that is done (exited 0, its check
passed) is not done yet: its record waits (`waiting`, "waiting to merge
into BRANCH") with its `merge` field saying where it is in the queue:

    queued    done, in the workspace's merge queue (`queued_at`: its place)
    merging   its branch is being merged and checked (runtime/landing.py)
    merged    landed: the record is `done` and its signal written
    conflict, check_failed
              sent back to the agent with feedback, or failed for good
    refused   failed without a merge (its target is checked out in a working
              tree orchestrate does not own, or its branch is gone)

Its signal (kept in `merge["signal"]` meanwhile) is written only once the
branch landed, so downstream agents wait for the merge. The changes of the
record that come with effects are in `merging.py`.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from .checks import FEEDBACK_LINES, Verdict
from .records import RunState, StatusRecord
from .spec import Agent

QUEUED, MERGING, MERGED = "queued", "merging", "merged"
CONFLICT, CHECK_FAILED = "conflict", "check_failed"
PENDING = (QUEUED, MERGING)
MERGE_POLL = 2.0   # seconds: a pass looks at a merge under way at least this often


def merge_pending(record: StatusRecord | None) -> bool:
    """Done, but its branch has not landed yet (queued or being merged)."""
    return (record is not None and record.state == RunState.WAITING
            and record.merge.get("state") in PENDING)


def queued(record: StatusRecord, agent: Agent, signal_text: str, ended_at: str,
           now: float) -> StatusRecord:
    """The run is done: its branch joins the merge queue, in the order agents
    became done; the signal waits for the merge."""
    merge: dict[str, Any] = {"state": QUEUED, "into": agent.merge_target, "queued_at": now,
                             "attempts": record.merge.get("attempts", 0),
                             "signal": signal_text}
    return replace(record, state=RunState.WAITING, exit_code=0, ended_at=ended_at,
                   retry_at=None, merge=merge,
                   reason=f"waiting to merge into {agent.merge_target}")


def queue_order(record: StatusRecord) -> tuple[float, str]:
    return float(record.merge.get("queued_at") or 0.0), record.task


def landed_reason(into: str, sha: str) -> str:
    return f"merged into {into} at {sha[:12]}"


def failed_reason(outcome: dict[str, Any]) -> str:
    """Why a merge was refused: conflicting files, or the merge check's last line."""
    if outcome.get("outcome") == CONFLICT:
        return f"merge conflict in {', '.join(outcome.get('files') or ['(unknown files)'])}"
    if outcome.get("outcome") == CHECK_FAILED:
        return f"merge check failed: {Verdict.from_json(outcome.get('check') or {}).last_line}"
    return f"merge failed: {outcome.get('detail') or 'unknown error'}"


def feedback_text(agent: Agent, branch: str, outcome: dict[str, Any], number: int,
                  of: int) -> str:
    """What the agent is told when its merge is sent back, and what to do."""
    into = agent.merge_target
    todo = (f"Merge `{into}` into your branch (`git merge {into}` in your working "
            "folder), resolve what it reports, commit, and exit; orchestrate then merges "
            "your branch again.")
    if outcome.get("outcome") == CONFLICT:
        files = "\n".join(f"- {name}" for name in outcome.get("files") or ())
        return (f"# Merge {number} of {of} sent back: conflict\n\n"
                f"Your branch `{branch}` could not be merged into `{into}`: other work "
                f"landed there first, and these files conflict:\n\n{files}\n\n{todo}\n")
    verdict = Verdict.from_json(outcome.get("check") or {})
    tail = "\n".join(verdict.tail[-FEEDBACK_LINES:])
    status = "timed out (killed)" if verdict.timed_out else f"exit code {verdict.exit_code}"
    return (f"# Merge {number} of {of} sent back: the merge check failed\n\n"
            f"Your branch `{branch}` merged into `{into}` without conflicts, but the check "
            f"of the merged tree failed.\n\n{todo}\n\n"
            f"Command: `{verdict.command}`\nResult: {status}\n\n"
            f"Last {len(verdict.tail)} lines of its output:\n\n```\n{tail}\n```\n")


def merge_summary(record: StatusRecord) -> str:
    """One phrase for the report and status: where the agent's landing is."""
    merge = record.merge
    state = merge.get("state")
    if not state:
        return ""
    attempts = merge.get("attempts", 0)
    sent_back = f", sent back {attempts}x" if attempts else ""
    if state == MERGED:
        return f"merged into {merge.get('into')} at {str(merge.get('sha', ''))[:12]}{sent_back}"
    return f"{state.replace('_', ' ')} ({merge.get('into')}){sent_back}"
