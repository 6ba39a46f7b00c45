"""What each command does, as library calls the thin doit commands make."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import IO

from ..runtime.advancer import AdvancerSlot, Watcher, can_advance, fork_advancer
from ..runtime.engine import LIVENESS_INTERVAL, Engine, PassResult
from ..core.errors import UserError
from ..core.exitcodes import ExitCode
from ..core.settings import where_it_runs
from ..core.policy import StopKind
from ..core.scheduler import Decision, not_started_as
from ..core.selection import match, select
from ..core.spec import NAME_RE, Agent
from ..runtime.state import (
    Layout,
    SchedulingLock,
    StateFolderReadOnly,
    StatusRecord,
    append_event,
    read_status,
    utc_now,
    write_json,
)
from ..runtime.inflight import with_stand_ins
from .tasks import workspace_at
from .ui import (
    decision_line,
    run_summary,
    pipeline_totals,
    status_lines,
    status_row,
    summary_line,
    totals_lines,
    worth_a_line,
    write_decisions,
)

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_TIMEOUT, EXIT_INTERRUPTED = (
    ExitCode.OK, ExitCode.FAILED, ExitCode.INVALID, ExitCode.TIMEOUT, ExitCode.INTERRUPTED)


def outcome(decisions: dict[str, Decision]) -> int:
    """0 unless an agent of the selection failed, was cancelled, or is held by
    a budget (it cannot finish without a user's action)."""
    bad = any(d.state in ("failed", "cancelled") or (d.state == "queued" and d.blocked)
              for d in decisions.values())
    return EXIT_FAILED if bad else EXIT_OK


def _selection(root: Path, names: list[str], lenient: bool = False,
               liveness_interval: float = 0.0) -> tuple[Engine, list[Agent]]:
    """Launching needs every pipeline valid; looking and cancelling (lenient)
    answer for the valid ones. `liveness_interval`: for an engine that runs
    pass after pass (0: one pass, every executor asked now)."""
    workspace = with_stand_ins(workspace_at(root, lenient))
    return Engine(workspace, liveness_interval=liveness_interval), select(workspace, names)


def start(root: Path, names: list[str]) -> dict[str, Decision]:
    """Decide under the lock; a detached child launches and advances (with
    this engine: it is made for pass after pass)."""
    engine, agents = _selection(root, names, liveness_interval=LIVENESS_INTERVAL)
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


NO_PIPELINES = "no pipelines: add pipelines/NAME.toml (python -m orchestrate init makes an example)\n"


def run(root: Path, names: list[str], out: IO[str], verbose: bool = False) -> int:
    """What changed, not everything: a line per agent launched or needing a
    person, then one summary line (`verbose`: a line for every agent)."""
    decisions = start(root, names)
    if not decisions:
        out.write(NO_PIPELINES)
        return EXIT_OK
    write_decisions(out, [d for d in decisions.values() if verbose or worth_a_line(d)])
    out.write(run_summary(decisions.values()) + "\n")
    return outcome(decisions)


def retry(root: Path, names: list[str], out: IO[str], verbose: bool = False) -> int:
    """Failed and cancelled agents of the selection (and upstream of it) run
    again, without the user having to know about `forget`; then as `doit`."""
    workspace = workspace_at(root)
    engine = Engine(workspace)
    with SchedulingLock(engine.layout):
        for agent in select(workspace, names):
            record = engine.request_retry(agent)
            if record is not None:
                out.write(f"retrying  {agent.task}  (was {record.state}: {record.reason})\n")
    return run(root, names, out, verbose)


def _pass(engine: Engine, agents: list[Agent], lock: SchedulingLock) -> PassResult:
    with lock:
        result = engine.run_pass(agents)
        engine.launch_all(result)
    return result


class _PlainProgress:
    """Piped output: a line each time an agent's state or reason changes."""

    def __init__(self, out: IO[str], started: dict[str, Decision]):
        self.out = out
        self.seen: dict[str, str] = {}
        # done when the wait began: up to date (the summary counts them)
        self.current = {t for t, d in started.items() if d.state == "done"}
        # what the wait's own start launched, printed with the first update
        # (inside the waiting loop, where Ctrl-C is handled)
        self.launched = [d for d in started.values() if d.launch]

    def update(self, decisions: dict[str, Decision], records: dict) -> None:
        for decision in self.launched:
            self.seen[decision.agent.task] = decision_line(decision)
            self.out.write(self.seen[decision.agent.task] + "\n")
        self.launched = []
        for task, decision in decisions.items():
            line = decision_line(decision)
            if self.seen.get(task) != line:
                self.seen[task] = line
                if task not in self.current or decision.state != "done":
                    self.out.write(line + "\n")
        self.out.flush()

    def finish(self, decisions: dict[str, Decision]) -> None:
        self.out.write(run_summary(decisions.values(), self.current) + "\n")

    def close(self) -> None:
        pass


class _LiveProgress:
    """Terminal: what needs an eye first, done ones counted (see live.py);
    at the end, a line per failure with the last line of its log."""

    def __init__(self, out: IO[str], root: Path):
        from rich.console import Console
        from rich.live import Live
        self.out = out
        self.root = root
        self.console = Console(file=out)
        self.live = Live(console=self.console, auto_refresh=False, transient=False,
                         vertical_overflow="crop")
        self.began = time.monotonic()
        self.live.start()
        self.running = True

    def update(self, decisions: dict[str, Decision], records: dict) -> None:
        from rich.text import Text
        from .live import live_lines
        size = self.console.size
        lines = live_lines(decisions, records, size.height, size.width,
                           time.monotonic() - self.began)
        self.live.update(Text("\n".join(lines)), refresh=True)

    def finish(self, decisions: dict[str, Decision]) -> None:
        from .live import failure_summary
        self.close()
        for line in failure_summary(self.root, decisions.values()):
            self.out.write(line + "\n")
        self.out.flush()

    def close(self) -> None:
        if self.running:
            self.running = False
            self.live.stop()


def wait(root: Path, names: list[str], timeout: float | None, out: IO[str],
         live: bool, cancel_on_interrupt: bool = False) -> int:
    """Start, then block until the selection is done or can go no further;
    when something failed, end with the path of the run's report."""
    code = _wait(root, names, timeout, out, live, cancel_on_interrupt)
    if code == EXIT_FAILED:
        from .pictures import report_line
        out.write(report_line(root, names) + "\n")
    return code


def _wait(root: Path, names: list[str], timeout: float | None, out: IO[str],
          live: bool, cancel_on_interrupt: bool = False) -> int:
    started = start(root, names)
    if not started:
        out.write(NO_PIPELINES)
        return EXIT_OK
    engine, agents = _selection(root, names, liveness_interval=LIVENESS_INTERVAL)
    lock = SchedulingLock(engine.layout)
    watcher = Watcher(engine.layout, [p.name for p in engine.workspace.pipelines])
    progress = (_LiveProgress(out, engine.workspace.root) if live
                else _PlainProgress(out, started))
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            result = _pass(engine, agents, lock)
            agents = result.agents
            records = {t: f.record for t, f in result.facts.items()}
            progress.update(result.decisions, records)
            if not can_advance(result.decisions):
                progress.finish(result.decisions)
                return outcome(result.decisions)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                out.write(f"timeout after {timeout:g}s; agents keep running "
                          "(doit status to check, doit cancel to stop them)\n")
                return EXIT_TIMEOUT
            ahead = max(0.005, min(1.0, engine.next_wake - time.time()))
            watcher.wait(ahead if remaining is None else min(ahead, remaining))
    except KeyboardInterrupt:
        progress.close()
        if cancel_on_interrupt:
            cancel(root, names, out)
        else:
            out.write("stopped waiting; agents keep running detached "
                      "(doit status to check, doit cancel to stop them)\n")
        return EXIT_INTERRUPTED
    finally:
        progress.close()
        watcher.close()


def budgets(root: Path) -> dict[str, float | None]:
    workspace = workspace_at(root, lenient=True)
    return {"*": workspace.budget_usd, **{p.name: p.budget_usd for p in workspace.pipelines}}


def status(root: Path, names: list[str]) -> tuple[dict[str, Decision], dict]:
    """Settle finished runs (under the lock) and report; launches nothing.
    A read-only state folder is shown as recorded, without settling."""
    engine, agents = _selection(root, names, lenient=True)
    try:
        with SchedulingLock(engine.layout):
            result = engine.run_pass(agents)
    except StateFolderReadOnly:
        sys.stderr.write(f"note: {engine.layout.base} is read-only: states as recorded "
                         "(runs that ended since are not settled)\n")
        records = engine.records(agents)
        decisions = engine.evaluate(agents)
        return decisions, records
    from ..runtime.advancers import name_advancers
    return (name_advancers(engine.layout, result.decisions),
            {t: f.record for t, f in result.facts.items()})


def staleness(root: Path, task: str) -> tuple[bool, list[str]] | None:
    """(up to date?, why) for one agent, as `doit info` shows it; None for a group."""
    agent = workspace_at(root, lenient=True).agents_by_task.get(task)
    if agent is None:
        return None
    engine, agents = _selection(root, [task], lenient=True)
    decision = engine.evaluate(agents)[task]
    where = [where_it_runs(agent)]
    if decision.state == "done":
        return True, ["its signal is current", *where]
    if decision.launch:
        return False, [f"stale: {decision.reason}", *where]
    return False, [f"{decision.state}: {decision.reason}", *where]


def status_json(decisions: dict[str, Decision], records: dict) -> dict:
    agents = []
    for task, decision in decisions.items():
        record = records.get(task)
        base = record.to_json() if record else {
            "pipeline": decision.agent.pipeline, "agent": decision.agent.name, "attempt": 0,
            "pid": None, "started_at": None, "ended_at": None, "exit_code": None,
            "log": "", "task": task}
        for private in ("inputs", "upstream", "config_digest", "launches", "pid_create_time"):
            base.pop(private, None)
        agents.append({**base, "state": decision.state, "reason": decision.reason, "task": task})
    return {"agents": agents, "pipelines": pipeline_totals(records.values())}


def print_status(out: IO[str], decisions: dict[str, Decision], records: dict,
                 budgets: dict[str, float | None]) -> None:
    if not decisions:
        out.write(NO_PIPELINES)
        return
    rows = [status_row(d, records.get(t)) for t, d in decisions.items()]
    lines = status_lines(rows, colour=is_terminal(out))
    lines.append(summary_line(decisions.values(), launched="pending"))
    lines.extend(totals_lines(pipeline_totals(records.values()), budgets))
    out.write("\n".join(lines) + "\n")


def signal_create(root: Path, name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise UserError(f"'{name}' is not a valid signal name "
                         "(expected [A-Za-z0-9][A-Za-z0-9_-]*)")
    layout = Layout(root)
    layout.make_dirs()
    path = layout.external_signal(name)
    if path.exists():
        return f"signal {name} already present"
    try:
        write_json(path, {"name": name, "created_at": utc_now()})
    except OSError as err:
        raise StateFolderReadOnly(path.parent, err) from None
    append_event(layout, "signal", name=name)
    return f"signal {name} created"


def signal_clear(root: Path, name: str) -> str:
    """Remove an external signal: its gate is closed again for agents not yet
    launched (a running or finished agent is not affected)."""
    if not NAME_RE.fullmatch(name):
        raise UserError(f"'{name}' is not a valid signal name "
                        "(expected [A-Za-z0-9][A-Za-z0-9_-]*)")
    layout = Layout(root)
    path = layout.external_signal(name)
    if not path.exists():
        return f"signal {name} not present"
    try:
        path.unlink()
    except FileNotFoundError:
        return f"signal {name} not present"
    except OSError as err:
        raise StateFolderReadOnly(path.parent, err) from None
    append_event(layout, "signal_cleared", name=name)
    return f"signal {name} cleared"


def cancel(root: Path, names: list[str], out: IO[str]) -> int:
    """Stop the named running agents (none: every running one) and cancel the
    queued and retry-waiting ones (named: also ready ones); returns once no
    process of a stopped agent is left, or after kill_grace + 10 s with a line
    (and exit 1) for each agent it could not confirm gone."""
    engine, agents = _selection(root, names, lenient=True)
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
                out.write(f"cancelled {task} ({not_started_as(decision)})\n")
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
            out.write(f"cancelled {agent.task}\n")
        else:   # it had ended on its own before the cancel reached it
            out.write(f"{agent.task} had already ended: {record.state}\n")
    if not stopping and not dequeued and targets is None:
        out.write("nothing running or queued to cancel\n")
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


def forget_agents(root: Path, tasks: list[str], out: IO[str]) -> None:
    """Clear orchestrate's record of finished agents, so the next `doit` re-runs them."""
    workspace = workspace_at(root, lenient=True)
    engine = Engine(workspace)
    with SchedulingLock(engine.layout):
        for task in tasks:
            agent = workspace.agents_by_task.get(task)
            refusal = engine.forget(agent.pipeline, agent.name) if agent else None
            if refusal:
                out.write(refusal + "\n")


def print_log(root: Path, task: str, follow: bool, out: IO[str], check: bool = False) -> int:
    workspace = with_stand_ins(workspace_at(root, lenient=True))
    agent = workspace.agents_by_task.get(task)
    if agent is None and ":" in task:   # a fan-out or a pattern: each instance's log in turn
        for one in match(workspace, [task]):
            out.write(f"==> {one.task} <==\n")
            print_log(root, one.task, False, out)
        return EXIT_OK
    if agent is None:
        raise UserError(f"'{task}' is not an agent (expected pipeline:agent)")
    layout = Layout(workspace.root)
    path = (layout.check_log(agent.pipeline, agent.name) if check
            else layout.log(agent.pipeline, agent.name))
    if not path.exists():
        what = 'check log' if check else 'log'
        if not follow:
            out.write(f"{task} has no {what} yet\n")
            return EXIT_OK
        out.write(f"{task} has not started; waiting for it (Ctrl-C to stop)\n")
        out.flush()
        while not path.exists():   # until it is launched (its log is made then)
            time.sleep(0.1)
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(65536)
            if chunk:
                out.write(chunk.decode(errors="replace"))
                out.flush()
                continue
            if not follow:
                return EXIT_OK
            record = read_status(layout, agent.pipeline, agent.name)
            if record is None or not record.active:
                rest = handle.read()
                out.write(rest.decode(errors="replace"))
                return EXIT_OK
            time.sleep(0.1)


def is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False

