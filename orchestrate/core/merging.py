"""A merge's outcomes, as pure constructors: (record, effects), run by the
effect runner like every other change of a status record.

The merge itself (git, the merge check) and the queue's order and crash
safety live in `runtime/landing.py`; this decides what each outcome makes of
the agent: landed (done, its signal written at last), sent back to the agent
with feedback in its own session, or failed.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from . import landing
from .checks import feedback_relpath
from .fingerprint import digest_text
from .records import RunState, StatusRecord, iso
from .spec import Agent
from .transitions import Effects, Event, RememberSignal, Save, WriteFeedback, WriteSignal


def merging(record: StatusRecord) -> tuple[StatusRecord, Effects]:
    """Its branch is being merged and checked now."""
    into = record.merge.get("into")
    merge = {**record.merge, "state": landing.MERGING}
    return replace(record, merge=merge, reason=f"merging into {into}"), [Save()]


def landed(record: StatusRecord, agent: Agent, sha: str, now: float
           ) -> tuple[StatusRecord, Effects]:
    """`merge_into` now holds the agent's branch: done means merged."""
    into = record.merge.get("into") or agent.merge_target
    text = str(record.merge.get("signal") or "")
    merge = {k: v for k, v in record.merge.items() if k != "signal"}
    record = replace(record, state=RunState.DONE, reason=landing.landed_reason(into, sha),
                     signal_digest=digest_text(text),
                     merge={**merge, "state": landing.MERGED, "sha": sha, "merged_at": iso(now)})
    return record, [WriteSignal(text), RememberSignal(record.signal_digest), Save(),
                    Event("merged", {"task": agent.task, "run_id": record.run_id,
                                     "into": into, "sha": sha})]


def sent_back(record: StatusRecord, agent: Agent, branch: str, outcome: dict[str, Any],
              now: float) -> tuple[StatusRecord, Effects]:
    """A conflict or a failed merge check: `merge_into` is as it was; the agent
    is relaunched with feedback (its session resumed) while merge_retries
    last, else it is failed with the conflicting files or the check's line."""
    number = int(record.merge.get("attempts", 0)) + 1
    of = agent.merge_retries
    kind = outcome.get("outcome")
    details: dict[str, Any] = {"task": agent.task, "run_id": record.run_id,
                               "into": record.merge.get("into"), "attempt": number, "of": of}
    if kind == landing.CONFLICT:
        details["files"] = list(outcome.get("files") or ())
    elif kind == landing.CHECK_FAILED:
        details["last_line"] = (outcome.get("check") or {}).get("last_line")
    events: Effects = []   # a git failure is neither: the agent just fails, saying so
    if kind in (landing.CONFLICT, landing.CHECK_FAILED):
        events.append(Event("merge_conflict" if kind == landing.CONFLICT
                            else "merge_check_failed", details))
    merge = {k: v for k, v in record.merge.items() if k != "signal"}
    merge.update(state=kind, attempts=number)
    why = landing.failed_reason(outcome)
    if agent.candidates and kind in (landing.CONFLICT, landing.CHECK_FAILED):
        why += f" (a best_of winner is not sent back; its branch {branch} is kept)"
    if kind not in (landing.CONFLICT, landing.CHECK_FAILED) or number > of or agent.candidates:
        failed = replace(record, state=RunState.FAILED, merge=merge, reason=why,
                         ended_at=iso(now), relaunch=None)
        return failed, [Save(), *events, Event("fail", {"task": agent.task,
                                                         "run_id": record.run_id,
                                                         "reason": why})]
    session = record.result.get("session_id") or record.resume_session
    again = replace(record, state=RunState.WAITING, retry_at=now, attempt=record.attempt - 1,
                    merge=merge, relaunch="merge", feedback=feedback_relpath(
                        agent.pipeline, agent.name),
                    resume_session=session if isinstance(session, str) else None,
                    reason=f"merge {number} of {of} sent back: {why}")
    text = landing.feedback_text(agent, branch, outcome, number, of)
    return again, [WriteFeedback(text), Save(), *events]


def refused(record: StatusRecord, agent: Agent, why: str, now: float
            ) -> tuple[StatusRecord, Effects]:
    """The merge cannot be tried (its target is checked out in the user's
    working tree, say): failed, saying why; nothing was touched."""
    merge = {k: v for k, v in record.merge.items() if k != "signal"}
    failed = replace(record, state=RunState.FAILED, reason=why, ended_at=iso(now),
                     merge={**merge, "state": "refused"})
    return failed, [Save(), Event("fail", {"task": agent.task, "run_id": record.run_id,
                                           "reason": why})]
