"""`doit` (the gated `run`) and `doit retry`: launch what is ready, detached,
and say what changed."""
from __future__ import annotations

import os
from pathlib import Path

from ..core.errors import UserError
from ..core.scheduler import Decision
from ..core.selection import match, select
from ..runtime.advancer import AdvancerSlot, can_advance, fork_advancer
from ..runtime.engine import LIVENESS_INTERVAL, Engine
from ..runtime.state import (
    Layout,
    SchedulingLock,
)
from .cmd_base import (
    EXIT_OK,
    NO_PIPELINES,
    OrchestrateCommand,
    opt_feedback,
    opt_verbose,
    outcome,
    selection_of,
)
from .reporter import Reporter
from .tasks import workspace_at
from .ui import (
    run_summary,
    worth_a_line,
    write_decisions,
)


def start(root: Path, names: list[str]) -> dict[str, Decision]:
    """Decide under the lock; a detached child launches and advances (with
    this engine: it is made for pass after pass)."""
    engine, agents = selection_of(root, names, liveness_interval=LIVENESS_INTERVAL)
    lock = SchedulingLock(engine.layout)
    lock.acquire()
    result = engine.run_pass(agents)
    launches = any(d.launch for d in result.decisions.values())
    if launches or (can_advance(result.decisions) and _slot_free(engine.layout, names)):
        fork_advancer(engine, names, lock, result)
    else:
        lock.release()
    return result.decisions


def _slot_free(layout: Layout, names: list[str]) -> bool:
    slot = AdvancerSlot(layout, names)
    if slot.take():
        slot.give_up()
        return True
    return False


def run(root: Path, names: list[str], out: Reporter, verbose: bool = False) -> int:
    """What changed, not everything: a line per agent launched or needing a
    person, then one summary line (`verbose`: a line for every agent)."""
    decisions = start(root, names)
    if not decisions:
        out.write(NO_PIPELINES)
        return EXIT_OK
    write_decisions(out, [d for d in decisions.values() if verbose or worth_a_line(d)])
    out.line(run_summary(decisions.values()))
    return outcome(decisions)


def retry(root: Path, names: list[str], out: Reporter, verbose: bool = False,
          feedback: Path | None = None) -> int:
    """Failed and cancelled agents of the selection (and upstream of it) run
    again, without the user having to know about `forget`; then as `doit`.
    With `feedback`, the named agents (done ones too) run again given it."""
    from .feedback import give_feedback, read_feedback
    workspace = workspace_at(root)
    engine = Engine(workspace)
    if feedback is not None and not names:
        raise UserError("--feedback needs the agents it is for: doit retry TASK --feedback FILE")
    text = read_feedback(feedback) if feedback is not None else None
    with SchedulingLock(engine.layout):
        named = {a.task for a in match(workspace, names)} if text is not None else set()
        for agent in select(workspace, names):
            if text is not None and agent.task in named:
                give_feedback(engine, agent, text, out)
                continue
            record = engine.request_retry(agent)
            if record is not None:
                out.line(f"retrying  {agent.task}  (was {record.state}: {record.reason})")
    return run(root, names, out, verbose)


class Run(OrchestrateCommand):
    name = "run"
    launches = True
    doc_purpose = "launch every ready agent detached and return at once"
    doc_usage = "[TASK ...] [-v]"
    doc_description = ("Agents whose signal is current are skipped; running or gated ones "
                       "are set aside. Prints a line per agent launched, failed, cancelled "
                       "or blocked (-v: every agent) and a summary. The pipeline then "
                       "advances by itself.\n"
                       "Exit: 0; 1 if a selected agent failed; 3 on an invalid pipeline.")
    cmd_options = (opt_verbose,)

    def _execute(self, pos_args, verbose):
        return run(self.root, pos_args, self.report, verbose)


class Retry(OrchestrateCommand):
    name = "retry"
    launches = True
    doc_purpose = "run failed or cancelled agents again (none named: all of them)"
    doc_usage = "[TASK ...] [-v] [--feedback FILE]"
    doc_description = ("Failed and cancelled agents of the selection, and upstream of it, "
                       "become pending; then as `doit`: launches what is ready and returns. "
                       "With --feedback FILE, the named agents (done, failed or cancelled) "
                       "run again given FILE, as after a failed check.\n"
                       "Exit: 0; 1 if a selected agent failed; 3 on an invalid pipeline, "
                       "an unreadable FILE, or --feedback without TASK.")
    cmd_options = (opt_verbose, opt_feedback)

    def _execute(self, pos_args, verbose, feedback):
        path = None if feedback is None else (Path(feedback) if os.path.isabs(feedback)
                                              else Path(self.cwd_at_start) / feedback)
        return retry(self.root, pos_args, self.report, verbose, path)
