"""The commands as calls that return JSON, for a long-lived process: the MCP server.

Free of the MCP SDK (orchestrate/cli/mcp_server.py binds these to the protocol).
Three things differ from a one-shot `doit` and shape this module:

- Launching forks the advancer (`os.fork`), and forking a process that runs
  threads and an event loop is unsafe (locks held by other threads stay held
  in the child). So `run`, the launch of `wait` and `cancel` run the real
  command, `python -m doit ...`, as a child process with its own session:
  the same code path as a user's `doit`, and a host that kills our process
  group cannot kill a launch half way. The interpreter is `sys.executable`,
  never one found on `PATH` (MCP hosts start servers with a reduced one).
- `tasks.workspace_at` parses the pipeline files once per process; every call
  here reads them again, so edits are seen and a fixed pipeline works again.
- `wait` never blocks past the deadline its caller chose; its progress is
  published after every pass, so a caller that stops waiting still has it.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import UserError
from ..core.selection import match, select
from ..core.spec import NAME_RE, Workspace
from ..runtime.advancer import Watcher, can_advance
from ..runtime.engine import Engine
from ..runtime.state import Layout, read_status
from .cmd_base import EXIT_FAILED, EXIT_OK
from .cmd_logs import print_log
from .cmd_plan import plan_of
from .reporter import Reporter
from .cmd_signal import signal_create
from .cmd_status import status, status_json
from .tasks import forget_workspace, invalid_warning, workspace_at

WAIT_DEFAULT, WAIT_MAX = 30.0, 300.0
TAIL_DEFAULT = 100


class CommandError(UserError):
    """`python -m doit ...` refused: its message is what the command line printed."""


# Mistakes of the caller: each becomes a tool error carrying the message the
# command line prints for it (doit commands catch the same types).
USER_ERRORS = (UserError,)


def user_message(err: Exception) -> str:
    """The text `doit` prints after "ERROR: " for this mistake."""
    return str(err)


@dataclass
class WaitProgress:
    """What `wait` saw last: (finished, status records); replaced, never mutated."""
    latest: tuple[bool, list[dict]] | None = None


class _Tail:
    """A text stream that keeps only its last `count` lines (logs can be large)."""

    def __init__(self, count: int):
        self.count = count
        self.lines: deque[str] = deque(maxlen=count)
        self.partial = ""

    def write(self, text: str) -> None:
        parts = (self.partial + text).split("\n")
        self.partial = parts.pop()
        self.lines.extend(part + "\n" for part in parts)

    def flush(self) -> None:
        pass

    def text(self) -> str:
        lines = [*self.lines, self.partial] if self.partial else list(self.lines)
        return "".join(lines[-self.count:])


class Toolbox:
    """The workspace at `root`, driven as the commands drive it."""

    def __init__(self, root: Path, python: str = sys.executable):
        self.root = root.resolve()
        self.python = python

    def __repr__(self) -> str:
        return f"<Toolbox {self.root}>"

    # -- reading -----------------------------------------------------------
    def workspace(self, lenient: bool = False) -> Workspace:
        """The pipelines as they are on disk now. Strict (to launch): raises
        PipelineError if one is invalid. Lenient (to look and to cancel, as
        the command line does): the valid ones, the others in `problems`."""
        forget_workspace(self.root)
        return workspace_at(self.root, lenient)

    def selection(self, tasks: list[str] | None, lenient: bool = False) -> list[str]:
        """Task names, checked as the commands check them (raises SelectionError)."""
        names = list(tasks or [])
        select(self.workspace(lenient), names)
        return names

    def warnings(self) -> dict:
        """What the command line prints as a warning for an invalid pipeline
        file while it answers for the valid ones: {"warnings": [lines]}, or {}."""
        text = invalid_warning(workspace_at(self.root, lenient=True))
        return {"warnings": text.splitlines()} if text else {}

    def list(self) -> dict:
        return {"pipelines": [
            {"name": p.name, "description": p.description,
             "agents": [a.task for a in p.agents]}
            for p in self.workspace(lenient=True).pipelines], **self.warnings()}

    def status(self, tasks: list[str] | None = None) -> dict:
        """As `doit status --json`: settles finished runs, launches nothing;
        an invalid pipeline file is left out with a warning, as `doit status` does."""
        names = self.selection(tasks, lenient=True)
        return {**status_json(*status(self.root, names)), **self.warnings()}

    def plan(self, tasks: list[str] | None = None) -> dict:
        """As `doit plan --json`: launches and writes nothing."""
        names = self.selection(tasks)
        return plan_of(self.root, names).to_json()

    def snapshot(self, tasks: list[str] | None) -> list[dict]:
        """Status records read without the scheduling lock (nothing settled):
        for a `wait` whose deadline came before it could take the lock."""
        workspace = self.workspace(lenient=True)
        agents = select(workspace, list(tasks or []))
        layout = Layout(workspace.root)
        decisions = Engine(workspace).evaluate(agents)
        records = {a.task: read_status(layout, a.pipeline, a.name) for a in agents}
        return status_json(decisions, records)["agents"]

    def logs(self, task: str, tail: int = TAIL_DEFAULT, check: bool = False) -> dict:
        if tail < 1:
            raise ValueError(f"tail must be 1 or more lines, not {tail}")
        self.workspace(lenient=True)
        out = _Tail(tail)
        print_log(self.root, task, False, Reporter(out), check)
        return {"task": task, "log": out.text()}

    # -- acting --------------------------------------------------------------
    def signal(self, name: str) -> dict:
        self.workspace()
        existed = bool(NAME_RE.fullmatch(name)) and Layout(self.root).external_signal(name).exists()
        signal_create(self.root, name)
        return {"signal": name, "created": not existed}

    def run(self, tasks: list[str] | None = None) -> dict:
        """As `doit`: launches ready agents detached, returns at once."""
        names = self.selection(tasks)
        self._finish(self._doit("run", names), None)
        return {"agents": self.status(names)["agents"]}

    def retry(self, tasks: list[str] | None = None, feedback: str | None = None) -> dict:
        """As `doit retry [TASK...] [--feedback FILE]`: failed and cancelled
        agents run again; with `feedback` (text), the named agents, done ones
        too, are given it. Returns the selection's records, as `run` does."""
        names = self.selection(tasks)
        if feedback is None:
            self._finish(self._doit("retry", names), None)
            return {"agents": self.status(names)["agents"]}
        if not names:
            raise UserError("feedback needs the agents it is for (tasks)")
        if not feedback.strip():
            raise UserError("feedback is empty")
        layout = Layout(self.root)
        layout.base.mkdir(exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=layout.base, prefix=".feedback-",
                                         suffix=".md", delete=False) as handle:
            handle.write(feedback)
        try:
            self._finish(self._doit("retry", [*names, "--feedback", handle.name]), None)
        finally:
            os.unlink(handle.name)
        return {"agents": self.status(names)["agents"]}

    def cancel(self, tasks: list[str] | None = None) -> dict:
        """As `doit cancel` (which answers for the valid pipelines when a file
        is invalid); returns the records of the agents it cancelled."""
        names = self.selection(tasks, lenient=True)
        targets = {a.task for a in match(self.workspace(lenient=True), names)}
        before = {a["task"]: a["state"] for a in self.status(names)["agents"]}
        self._finish(self._doit("cancel", names), None)
        return {"agents": [a for a in self.status(names)["agents"]
                           if a["task"] in targets and a["state"] == "cancelled"
                           and before.get(a["task"]) != "cancelled"]}

    def wait(self, tasks: list[str] | None, timeout: float, progress: WaitProgress) -> None:
        """As `doit wait --timeout`: launch, then pass until the selection can go
        no further or `timeout` seconds are up, publishing each pass in `progress`.

        The passes settle finished runs but launch nothing: launching is the
        advancer's, forked by the `doit` we ran (a pass here would have to fork
        it again). Should it die meanwhile, the next `run` or `wait` starts one.
        Each step is bounded by the deadline except a pass waiting for the
        scheduling lock; the caller stops waiting for us at the deadline."""
        deadline = time.monotonic() + min(timeout, WAIT_MAX)
        names = self.selection(tasks)
        self._finish(self._doit("run", names), deadline)
        layout = Layout(self.root)
        watcher = Watcher(layout, [p.name for p in self.workspace().pipelines])
        try:
            while True:
                decisions, records = status(self.root, names)
                finished = not can_advance(decisions)
                progress.latest = (finished, status_json(decisions, records)["agents"])
                now = time.monotonic()
                if finished or now >= deadline:
                    return
                watcher.wait(min(1.0, deadline - now))
        finally:
            watcher.close()

    # -- the commands, as child processes -------------------------------------
    def _doit(self, command: str, names: list[str]) -> subprocess.Popen:
        return subprocess.Popen(
            [self.python, "-m", "doit", command, *names], cwd=self.root,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, start_new_session=True)

    def _finish(self, proc: subprocess.Popen, deadline: float | None) -> None:
        """Wait for a command (until `deadline` at most: then a thread reaps
        it, since it goes on as a user's `doit` would); raise if it refused."""
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            threading.Thread(target=proc.communicate, daemon=True,
                             name=f"reap doit {proc.pid}").start()
            return
        if proc.returncode not in (EXIT_OK, EXIT_FAILED):
            message = (err.strip() or out.strip()
                       or f"python -m doit {' '.join(proc.args[3:])} exited with {proc.returncode}")
            raise CommandError(message)
