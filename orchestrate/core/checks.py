"""Checks: an agent that exits 0 is done only when its check says so (pure).

What a verdict is, where its files are, what the feedback file says, the
reasons, and what a check relaunch carries over from the run whose check
failed. The check itself runs inside the agent's wrapper (`checkrun`).
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .records import RunState, StatusRecord
from .spec import Agent

FEEDBACK_LINES = 200     # lines of the check's output the agent gets back
CHECKING = "checking"    # the reason shown while a check runs (the record's `checking` decides)


@dataclass(frozen=True)
class Verdict:
    """What one check said: its exit code (None: timed out or never ended)."""
    command: str
    exit_code: int | None
    last_line: str
    tail: tuple[str, ...] = ()
    timed_out: bool = False

    @property
    def passed(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    def to_json(self) -> dict[str, Any]:
        return {"command": self.command, "exit_code": self.exit_code,
                "last_line": self.last_line, "tail": list(self.tail),
                "timed_out": self.timed_out}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Verdict":
        return cls(str(data.get("command", "")), data.get("exit_code"),
                   str(data.get("last_line", "")), tuple(data.get("tail", ())),
                   bool(data.get("timed_out")))


# -- paths ---------------------------------------------------------------------
def feedback_relpath(pipeline: str, agent: str) -> str:
    """Relative to the workspace root, as the status record keeps it."""
    return f".orchestrate/feedback/{pipeline}/{agent}.md"


# -- pure ----------------------------------------------------------------------
def command_text(command: str | tuple[str, ...]) -> str:
    return command if isinstance(command, str) else shlex.join(command)


def last_line(lines: list[str] | tuple[str, ...]) -> str:
    """The last non-blank line, shortened: what a reason can carry."""
    for line in reversed(lines):
        if line.strip():
            text = line.strip()
            return text if len(text) <= 200 else text[:197] + "..."
    return "(no output)"


def feedback_text(verdict: Verdict, number: int, of: int) -> str:
    """The feedback file: the check's command, exit code and last lines."""
    status = ("timed out (killed)" if verdict.timed_out
              else f"exit code {verdict.exit_code}")
    tail = "\n".join(verdict.tail)
    return (f"# Check {number} of {of} failed\n\n"
            "Your previous run ended, but the check that decides whether it is done "
            "failed. Fix what it reports; the check runs again after you exit.\n\n"
            f"Command: `{verdict.command}`\n"
            f"Result: {status}\n\n"
            f"Last {len(verdict.tail)} lines of its output:\n\n```\n{tail}\n```\n")


def failed_reason(verdict: Verdict, number: int, of: int) -> str:
    return f"check {number} of {of} failed: {verdict.last_line}"


def check_said_no(record: StatusRecord) -> bool:
    """Did the run's check run and fail (its verdict is in the record)?"""
    verdict = record.check
    return bool(verdict) and (verdict.get("exit_code") != 0 or bool(verdict.get("timed_out")))


def is_check_relaunch(record: StatusRecord | None) -> bool:
    """Is this record an agent waiting to be relaunched after a failed check?"""
    return record is not None and record.state == RunState.WAITING and check_said_no(record)


def is_feedback_relaunch(record: StatusRecord | None) -> bool:
    """Is this record an agent waiting to be relaunched with feedback in its
    own session: after a failed check, a merge sent back or a person's review?"""
    return is_check_relaunch(record) or (
        record is not None and record.state == RunState.WAITING and record.relaunch is not None)


def carried(previous: StatusRecord | None) -> dict[str, Any]:
    """What a relaunch keeps of a check series: a retry (of a check or of a
    crash within the series) keeps the count, the feedback and the session
    to resume; a fresh launch (inputs changed, `doit retry`) starts over. A
    merge sent back keeps the count of its merge attempts."""
    if previous is None or previous.state != RunState.WAITING or previous.retry_at is None:
        return {}
    # a resumed run that failed on its own is retried in a fresh session
    # (the CLI may have lost the session), with the feedback in its prompt
    session = previous.resume_session if is_feedback_relaunch(previous) else None
    kept: dict[str, Any] = {"check_attempts": previous.check_attempts,
                            "feedback": previous.feedback, "resume_session": session}
    if previous.merge:   # a merge sent back, or a crash of its relaunch
        kept["merge"] = {"attempts": previous.merge.get("attempts", 0)}
    return kept


def running_reason(previous: StatusRecord | None, record: StatusRecord) -> str:
    """`running`, or what the run answers when it is a check's relaunch."""
    if previous is not None and is_feedback_relaunch(previous):
        return f"running again after {previous.reason}"
    return "running"


@dataclass(frozen=True)
class Followup:
    """How a relaunch after a failed check differs: the feedback file, and the
    CLI session to resume (None: a fresh session with the feedback appended)."""
    feedback: Path
    session: str | None


def followup(root: Path, record: StatusRecord) -> Followup | None:
    if not record.feedback:
        return None
    return Followup(root / record.feedback, record.resume_session)


def prompt_with_feedback(prompt: str, feedback: str, resumed: bool) -> str:
    """A resumed session already holds the prompt: it gets the feedback alone."""
    if resumed:
        return feedback
    return f"{prompt.rstrip()}\n\n---\n\n{feedback}"


# -- the orchestrator's side ---------------------------------------------------
NO_VERDICT = Verdict("", None, "the check ended without a verdict (killed?)")


def judge(record: StatusRecord, verdict: Verdict | None, ended_at: str
          ) -> tuple[StatusRecord, bool]:
    """The record with the check's verdict, and whether it passed (then the
    signal is written); a failed check fails the run."""
    verdict = verdict or NO_VERDICT
    record = replace(record, check=verdict.to_json() | {"tail": []})
    if verdict.passed:
        return record, True
    return replace(record, state=RunState.FAILED, exit_code=0, ended_at=ended_at,
                   reason=f"check failed: {verdict.last_line}"), False


def failed(record: StatusRecord, code: int | None, stopped: bool) -> bool:
    """Did this run end because its check said no (the agent itself exited 0)?"""
    return code == 0 and not stopped and record.state == RunState.FAILED and check_said_no(record)


def verdict_event(agent: Agent, record: StatusRecord) -> tuple[str, dict[str, Any]]:
    """`check_passed` or `check_failed`, with the check's exit code and last line."""
    verdict = record.check
    passed = not check_said_no(record)
    details: dict[str, Any] = {"task": agent.task, "run_id": record.run_id,
                               "exit_code": verdict.get("exit_code"),
                               "last_line": verdict.get("last_line")}
    if verdict.get("timed_out"):
        details["timed_out"] = True
    if not passed:
        details["check"] = record.check_attempts
        details["of"] = agent.check_retries
    return ("check_passed" if passed else "check_failed"), details


def after_failure(agent: Agent, record: StatusRecord, verdict: Verdict | None, now: float
                  ) -> tuple[StatusRecord, str | None]:
    """A failed check: relaunch with feedback while check_retries last, else
    failed. Returns the record and the feedback to write (None: no relaunch).

    The relaunch waits for no backoff and spends none of `retries`: the
    attempt number stays (the scheduler adds one back)."""
    verdict = verdict or NO_VERDICT
    number = record.check_attempts + 1
    of = agent.check_retries
    if number > of:
        return replace(record, check_attempts=number, feedback=None, resume_session=None), None
    session = record.result.get("session_id") or record.resume_session
    return replace(record, state=RunState.WAITING, retry_at=now, attempt=record.attempt - 1,
                   check_attempts=number, feedback=feedback_relpath(agent.pipeline, agent.name),
                   resume_session=session if isinstance(session, str) else None,
                   reason=failed_reason(verdict, number, of)), feedback_text(verdict, number, of)
