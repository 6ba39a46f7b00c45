"""`doit cancel`: stop running agents through the one stop policy, bounded,
and take queued ones off the queue."""
from __future__ import annotations

from pathlib import Path

from ..core.policy import StopKind
from ..core.scheduler import Decision, not_started_as
from ..core.selection import match
from ..core.spec import Agent
from ..runtime.state import (
    SchedulingLock,
    StatusRecord,
)
from .cmd_base import EXIT_FAILED, EXIT_OK, OrchestrateCommand, selection_of
from .reporter import Reporter


def cancel(root: Path, names: list[str], out: Reporter) -> int:
    """Stop the named running agents (none: every running one) and cancel the
    queued and retry-waiting ones (named: also ready ones); returns once no
    process of a stopped agent is left, or after kill_grace + 10 s with a line
    (and exit 1) for each agent it could not confirm gone."""
    engine, agents = selection_of(root, names, lenient=True)
    targets = {a.task for a in match(engine.workspace, names)} if names else None
    engine.bound_stops(agents)   # back within kill_grace + 10 s, whatever the executor does
    stopping: list[tuple[Agent, StatusRecord]] = []
    dequeued = 0
    with SchedulingLock(engine.layout):
        result = engine.run_pass(agents)
        for task, decision in result.decisions.items():
            if targets is not None and task not in targets:
                continue
            record = result.facts[task].record
            if decision.state == "running" and record is not None:
                stopping.append((decision.agent,
                                 engine.stop(decision.agent, record, StopKind.CANCEL,
                                             "cancelled by user")))
            elif _dequeued(decision, named=targets is not None):
                dequeued += 1
                engine.mark_cancelled(decision, record, result.facts[task].inputs)
                out.line(f"cancelled {task} ({not_started_as(decision)})")
    unconfirmed = engine.wait_until_gone(stopping)
    with SchedulingLock(engine.layout):   # settle them now: state cancelled
        result = engine.run_pass(agents)
    for agent, _ in stopping:
        record = result.facts[agent.task].record if agent.task in result.facts else None
        if agent.task in unconfirmed:
            out.write(f"could not confirm that {agent.task} ended ({unconfirmed[agent.task]}); "
                      f"it is settled once that is known (doit status {agent.task})\n")
        elif record is None or record.state == "cancelled" or record.active \
                or record.stop_kind == StopKind.CANCEL:
            out.line(f"cancelled {agent.task}")
        else:   # it had ended on its own before the cancel reached it
            out.line(f"{agent.task} had already ended: {record.state}")
    if not stopping and not dequeued and targets is None:
        out.line("nothing running or queued to cancel")
    return EXIT_FAILED if unconfirmed else EXIT_OK


def _dequeued(decision: Decision, named: bool) -> bool:
    """Which agents that are not running a cancel takes off the queue: queued
    ones and those waiting for a retry; a named one also when it is ready or
    gated on an external signal.
    A bare `doit cancel` never touches pending, gated, done or failed agents."""
    if decision.state == "queued" or (decision.state == "waiting" and decision.timed):
        return True
    # named: also a ready one, or one gated on an external signal (whose
    # advancer would otherwise wait for that signal for ever)
    return named and (decision.launch or decision.signal is not None)


class Cancel(OrchestrateCommand):
    name = "cancel"
    doc_purpose = "stop running agents (SIGTERM, SIGKILL after kill_grace) and dequeue queued ones"
    doc_usage = "[TASK ...]"
    doc_description = ("No task: every running agent, and the queued ones. Returns once no "
                       "process of a stopped agent is left, within kill_grace + 10 s (a line "
                       "for each agent it could not confirm gone).\nExit: 0; 1 if an agent "
                       "could not be confirmed gone; 3 on an unknown task.")
    cmd_options = ()

    def _execute(self, pos_args):
        return cancel(self.root, pos_args, self.report)
