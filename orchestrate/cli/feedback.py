"""`doit retry TASK --feedback FILE`: a person's word goes back to the agent.

The agent is relaunched as after a failed check: its `ORCHESTRATE_FEEDBACK`
is the feedback file (`.orchestrate/feedback/<pipeline>/<agent>.md`), and a
preset agent gets the text after its prompt. The record is left as a check's
relaunch leaves it (waiting, due now, with the feedback file named), so the
launch carries the feedback exactly as it carries a check's (core/checks.py
`carried`). The CLI session its last run reported is resumed (claude
`--resume`, codex `exec resume`), so the agent reads the review with the
context of the code it wrote; a CLI that cannot resume starts a fresh
session with the feedback appended to its prompt.
"""
from __future__ import annotations

from pathlib import Path

from ..core.errors import UserError
from ..core.spec import Agent
from ..runtime.engine import Engine
from .reporter import Reporter


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


def give_feedback(engine: Engine, agent: Agent, text: str, out: Reporter) -> bool:
    """Make `agent` run again with `text` as its feedback; False (and a line
    saying why) if it cannot be: it is running, or it never ran."""
    record, given = engine.give_feedback(agent, text)
    if not given:
        state = record.state if record is not None else "never run"
        out.write(f"{agent.task} is {state}; feedback is for an agent that ran "
                  "(done, failed or cancelled)\n")
        return False
    assert record is not None
    out.line(f"retrying  {agent.task}  (was {record.state}; with your feedback)")
    return True
