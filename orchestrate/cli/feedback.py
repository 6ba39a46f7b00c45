"""`doit retry TASK --feedback FILE`: a person's word goes back to the agent.

The agent is relaunched as after a failed check: its `ORCHESTRATE_FEEDBACK`
is the feedback file (`.orchestrate/feedback/<pipeline>/<agent>.md`), and a
preset agent gets the text after its prompt. The record is left as a check's
relaunch leaves it (waiting, due now, with the feedback file named), so the
launch carries the feedback exactly as it carries a check's (core/checks.py
`carried`). The CLI session is not resumed: the agent starts a fresh one
with the feedback appended to its prompt.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import IO

from ..core.checks import feedback_relpath
from ..core.errors import UserError
from ..core.scheduler import RETRY_REQUESTED
from ..core.spec import Agent
from ..runtime.state import Layout, StatusRecord, append_event, write_atomic, write_status

RETRIED = ("done", "failed", "cancelled")


def read_feedback(path: Path) -> str:
    """The feedback text; a one-line error if it cannot be read or is empty."""
    try:
        text = path.read_text(errors="replace")
    except OSError as err:
        raise UserError(f"cannot read the feedback file {path}: "
                        f"{err.strerror or err}") from None
    if not text.strip():
        raise UserError(f"the feedback file {path} is empty")
    return text


def give_feedback(layout: Layout, agent: Agent, record: StatusRecord | None, text: str,
                  out: IO[str]) -> bool:
    """Make `agent` run again with `text` as its feedback; False (and a line
    saying why) if it cannot be: it is running, or it never ran."""
    if record is None or record.state not in RETRIED:
        state = record.state if record is not None else "never run"
        out.write(f"{agent.task} is {state}; feedback is for an agent that ran "
                  "(done, failed or cancelled)\n")
        return False
    path = layout.feedback(agent.pipeline, agent.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text)
    write_status(layout, replace(
        record, state="waiting", retry_at=0.0, fingerprint=None, attempt=0,
        reason=RETRY_REQUESTED, check_attempts=0, resume_session=None,
        feedback=feedback_relpath(agent.pipeline, agent.name)))
    append_event(layout, "retry", task=agent.task, was=record.state, feedback=True)
    out.write(f"retrying  {agent.task}  (was {record.state}; with your feedback)\n")
    return True
