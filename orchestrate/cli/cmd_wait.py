"""`doit wait`: launch, then pass until the selection is done or can go no
further; a live view on a terminal, a complete record when piped."""
from __future__ import annotations

import time
from pathlib import Path

from ..core.scheduler import Decision
from ..core.spec import Agent
from ..runtime.advancer import Watcher, can_advance
from ..runtime.engine import LIVENESS_INTERVAL, Engine, PassResult
from ..runtime.state import (
    Layout,
    SchedulingLock,
)
from ..runtime.telemetry import this_process_sends
from .cmd_base import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TIMEOUT,
    NO_PIPELINES,
    OrchestrateCommand,
    opt_cancel_on_interrupt,
    opt_timeout,
    outcome,
    selection_of,
)
from .cmd_cancel import cancel
from .cmd_run import start
from .reporter import Reporter


def _pass(engine: Engine, agents: list[Agent], lock: SchedulingLock) -> PassResult:
    with lock:
        result = engine.run_pass(agents)
        engine.launch_all(result)
    return result


class _LiveProgress:
    """Terminal: what needs an eye first, done ones counted (see live.py);
    at the end, a line per failure with the last line of its log."""

    def __init__(self, out: Reporter, root: Path):
        from rich.console import Console
        from rich.live import Live
        self.out = out
        self.root = root
        self.console = Console(file=out.out)   # rich asks the stream itself for its size
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
            self.out.line(line)
        self.out.flush()

    def close(self) -> None:
        if self.running:
            self.running = False
            self.live.stop()


def wait(root: Path, names: list[str], timeout: float | None, out: Reporter,
         live: bool, cancel_on_interrupt: bool = False) -> int:
    """Start, then block until the selection is done or can go no further;
    when something failed, end with the path of the run's report."""
    code = _wait(root, names, timeout, out, live, cancel_on_interrupt)
    if code == EXIT_FAILED:
        from .cmd_pictures import report_line
        out.line(report_line(root, names))
    return code


def _wait(root: Path, names: list[str], timeout: float | None, out: Reporter,
          live: bool, cancel_on_interrupt: bool = False) -> int:
    from .live import EventTail, PlainProgress
    events = EventTail(Layout(root).events_path)   # everything from here on is this wait's
    started = start(root, names)
    if not started:
        out.write(NO_PIPELINES)
        return EXIT_OK
    engine, agents = selection_of(root, names, liveness_interval=LIVENESS_INTERVAL)
    this_process_sends()               # before it exits, and from a thread meanwhile
    engine.telemetry.start_sending()
    lock = SchedulingLock(engine.layout)
    watcher = Watcher(engine.layout, [p.name for p in engine.workspace.pipelines])
    progress = (_LiveProgress(out, engine.workspace.root) if live
                else PlainProgress(out, events, started))
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


class Wait(OrchestrateCommand):
    name = "wait"
    launches = True
    doc_purpose = "like run, then block until the selection is done or can go no further"
    doc_usage = "[TASK ...] [--timeout S]"
    doc_description = ("On a terminal a live table (failed, running, queued, waiting first; "
                       "done ones counted in its header), then a summary naming each failure "
                       "with the last line of its log; piped, a line per change.\n"
                       "Exit: 0 all done; 1 an agent failed, was cancelled or is blocked; "
                       "3 invalid pipeline or unknown task; 124 --timeout reached; 130 Ctrl-C.")
    cmd_options = (opt_timeout, opt_cancel_on_interrupt)

    def _execute(self, pos_args, timeout, cancel_on_interrupt):
        return wait(self.root, pos_args, timeout, self.report,
                            live=self.report.terminal,
                            cancel_on_interrupt=cancel_on_interrupt)
