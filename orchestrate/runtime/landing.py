"""The merge queue: `merge = true` agents land their branches one at a time.

Each pass (under the scheduling lock) takes one step: settle the merge under
way if its runner (`merger`, a detached process) has recorded its outcome,
else start the next merge, in the order agents became done. What is under
way is `.orchestrate/merges/current.json`, written (fsynced) before its
runner starts; the runner holds `merges/<run id>.lock` (flock) while it
lives, taken for it before it is spawned, so a pass can tell a running merge from one
whose runner was killed (then it is redone from scratch).

Only the settling moves `merge_into`: `git update-ref` from the commit the
merge started at to the merged commit (compare-and-swap), then the agent's
record. Killed in between, the next pass finds the branch already at the
merged commit and finishes the record: the merge is done exactly once, and
the branch is never half-merged (a merge commit appears on it whole, or not).
"""
from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Protocol

from ..core import landing, merging
from ..core.records import StatusRecord
from ..core.spec import Agent, Workspace
from ..core.transitions import Effects
from . import worktree
from .checkrun import PACKAGE_PARENT
from .faults import crash_point
from .state import Layout, read_json, write_json
from .stopping import killpg

ZERO = "0" * 40   # update-ref's "the branch must not exist yet"
RUNNER_EXIT_WAIT = 1.0   # seconds a redo waits for the previous runner to be gone


def take_within(fd: int, seconds: float) -> None:
    """flock `fd`, waiting at most `seconds`; BlockingIOError if still held."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


class MergeHost(Protocol):
    """What the queue needs of the engine: the workspace, records, the
    clock, and the effect runner for the changes it decides."""

    @property
    def workspace(self) -> Workspace: ...

    def record_at(self, pipeline: str, name: str) -> StatusRecord | None: ...

    def apply_change(self, record: StatusRecord, effects: Effects) -> None: ...

    def clock(self) -> float: ...

    def merge_ended(self, agent: Agent, record: StatusRecord, begin: float,
                    error: str | None) -> None:
        """Owe the merge's span (telemetry), ending now, before its outcome is recorded."""


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)


def branch_tip(root: Path, name: str) -> str | None:
    proc = _git(root, "rev-parse", "--verify", "--quiet", f"refs/heads/{name}^{{commit}}")
    return proc.stdout.strip() if proc.returncode == 0 else None


def advance(root: Path, into: str, old: str | None, new: str, task: str) -> bool:
    """Move `into` from `old` (None: it does not exist yet) to `new`, only
    if it is still at `old`; True also when it is at `new` already (a pass
    killed after moving it). False: someone else moved it meanwhile."""
    proc = _git(root, "update-ref", "-m", f"orchestrate: merge {task}", f"refs/heads/{into}",
                new, old or ZERO)
    return proc.returncode == 0 or branch_tip(root, into) == new


def checked_out(root: Path, into: str, ours: Path) -> str | None:
    """Why `into` cannot be merged into: it is checked out in a working tree
    orchestrate does not own (the user's, above all); None if it is not."""
    listing = _git(root, "worktree", "list", "--porcelain").stdout.splitlines()
    where = None
    for line in listing:
        if line.startswith("worktree "):
            where = Path(line[len("worktree "):])
        elif line == f"branch refs/heads/{into}" and where is not None \
                and not where.resolve().is_relative_to(ours.resolve()):
            if where == root.resolve():
                return (f"merge_into {into} is checked out in your working tree ({where}); "
                        "orchestrate never touches it (check out another branch there, or "
                        "set another merge_into)")
            return (f"merge_into {into} is checked out in the worktree {where}; orchestrate "
                    "merges only into a branch no working tree has checked out")
    return None


class MergeQueue:
    """One merge at a time for the workspace, in the order agents became done."""

    def __init__(self, layout: Layout):
        self.layout = layout
        self.folder = layout.base / "merges"
        self.current_path = self.folder / "current.json"
        self.runners: list[subprocess.Popen] = []   # started here, reaped at each step

    def worktree_for(self, into: str) -> Path:
        return self.folder / "worktrees" / into.replace("/", "+")

    def verdict_path(self, run_id: str) -> Path:
        return self.layout.runs_dir / f"{run_id}.merged"

    def step(self, host: MergeHost) -> bool:
        """Settle or start a merge; True if a record changed."""
        self.runners = [r for r in self.runners if r.poll() is None]
        merge_agents = [a for a in host.workspace.agents_by_task.values() if a.merge]
        if not merge_agents and not self.current_path.exists():
            return False
        current = read_json(self.current_path)
        changed = False
        if current is not None:
            free, changed = self._settle(host, current)
            if not free:
                return changed
        return self._start_next(host, merge_agents) or changed

    # -- the merge under way ------------------------------------------------------
    def _settle(self, host: MergeHost, current: dict) -> tuple[bool, bool]:
        """(the queue is free now, a record changed)."""
        agent = host.workspace.agents_by_task.get(current["task"])
        record = host.record_at(*current["task"].split(":", 1))
        ours = (agent is not None and record is not None and landing.merge_pending(record)
                and record.run_id == current["run_id"])
        verdict = read_json(self.verdict_path(current["run_id"]))
        if verdict is None and self.runner_alive(current["run_id"]):
            if not ours:   # cancelled, forgotten: its merge is abandoned, its check stopped
                self._stop_runner(current["run_id"])
            return False, False
        if not ours or agent is None or record is None:   # cancelled, relaunched, forgotten
            self._clear(current)
            return True, False
        if verdict is None:                 # its runner was killed: the merge is redone
            self._spawn(current, agent)
            return False, False
        if verdict.get("outcome") == landing.MERGED:
            sha = verdict["sha"]
            if not advance(self.layout.root, current["into"], current["old"], sha, agent.task):
                self._redo_on_new_tip(current, agent)   # the branch moved under us
                return False, False
            crash_point("merge-advanced")
            host.merge_ended(agent, record, self.began(current, host), None)
            host.apply_change(*merging.landed(record, agent, sha, host.clock()))
        else:
            host.merge_ended(agent, record, self.began(current, host),
                             landing.failed_reason(verdict))
            host.apply_change(*merging.sent_back(record, agent, worktree.branch(agent),
                                                 verdict, host.clock()))
        self._clear(current)
        return True, True

    @staticmethod
    def began(current: dict, host: MergeHost) -> float:
        """When the merge was started (a record of an older orchestrate: now)."""
        began = current.get("began")
        return float(began) if isinstance(began, (int, float)) else host.clock()

    def _redo_on_new_tip(self, current: dict, agent: Agent) -> None:
        tip = branch_tip(self.layout.root, current["into"])
        again = {**current, "old": tip, "start": tip or current["start"]}
        self.verdict_path(current["run_id"]).unlink(missing_ok=True)
        write_json(self.current_path, again)
        self._spawn(again, agent)

    def _clear(self, current: dict) -> None:
        self.verdict_path(current["run_id"]).unlink(missing_ok=True)
        self.current_path.unlink(missing_ok=True)
        self.lock_path(current["run_id"]).unlink(missing_ok=True)
        self.pid_path(current["run_id"]).unlink(missing_ok=True)

    def pid_path(self, run_id: str) -> Path:
        return self.folder / f"{run_id}.pid"

    def _stop_runner(self, run_id: str) -> None:
        """SIGTERM to the runner (alive: it holds its lock, so the pid it
        wrote is its own); it stops its check's group and exits."""
        try:
            pid = int(self.pid_path(run_id).read_text())
        except (OSError, ValueError):
            return   # not started far enough to have a check: it ends by itself
        killpg(pid, signal.SIGTERM)

    def lock_path(self, run_id: str) -> Path:
        """Held (flock) by the runner of the merge of run `run_id` while it lives."""
        return self.folder / f"{run_id}.lock"

    def runner_alive(self, run_id: str) -> bool:
        """Does a merge runner hold the merge's lock (it is alive)?"""
        try:
            fd = os.open(self.lock_path(run_id), os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    # -- the next one -------------------------------------------------------------
    def _start_next(self, host: MergeHost, agents: list[Agent]) -> bool:
        waiting = []
        for agent in agents:
            record = host.record_at(agent.pipeline, agent.name)
            if record is not None and landing.merge_pending(record):
                waiting.append((landing.queue_order(record), agent, record))
        changed = False
        for _, agent, record in sorted(waiting, key=lambda w: w[0]):
            refusal = checked_out(self.layout.root, record.merge["into"], self.folder)
            try:
                current = None if refusal else self._plan(agent, record)
            except worktree.WorktreeError as err:   # its base's branch is gone, say
                current, refusal = None, f"merge failed: {err}"
            if current is None:
                why = refusal or f"merge failed: {agent.task}'s branch is gone"
                host.merge_ended(agent, record, host.clock(), why)
                host.apply_change(*merging.refused(record, agent, why, host.clock()))
                changed = True
                continue
            self.folder.mkdir(exist_ok=True)
            current["began"] = host.clock()
            write_json(self.current_path, current)
            crash_point("merge-recorded")
            host.apply_change(*merging.merging(record))
            self._spawn(current, agent)
            return True
        return changed

    def _plan(self, agent: Agent, record: StatusRecord) -> dict | None:
        """What to merge (the agent's commit now) into what (the target's
        commit now, or its base's fork point when the branch is new)."""
        root = self.layout.root
        into = record.merge["into"]
        head = branch_tip(root, worktree.branch(agent))
        if head is None:
            return None
        old = branch_tip(root, into)
        start = old or worktree.fork_point(root, agent)
        return {"task": agent.task, "run_id": record.run_id, "into": into, "old": old,
                "start": start, "head": head, "worktree": str(self.worktree_for(into))}

    def _spawn(self, current: dict, agent: Agent) -> None:
        """Start the runner detached, holding the queue's lock: taken here
        and inherited, so no pass ever sees this merge without a live owner
        until the runner is gone."""
        self.folder.mkdir(exist_ok=True)
        lock = os.open(self.lock_path(current["run_id"]), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                       0o644)
        try:   # a runner of this merge that recorded its outcome is ending: not long
            take_within(lock, RUNNER_EXIT_WAIT)
        except BlockingIOError:
            os.close(lock)
            return
        command = agent.merge_command
        spec = {**current, "root": str(self.layout.root),
                "command": list(command) if isinstance(command, tuple) else command,
                "timeout": agent.check_timeout, "grace": agent.kill_grace, "cwd": agent.cwd,
                "verdict": str(self.verdict_path(current["run_id"])),
                "check_pid": str(self.folder / "check.pid"),
                "runner_pid": str(self.pid_path(current["run_id"]))}
        code = (f"import sys; sys.path.insert(0, {PACKAGE_PARENT!r}); "
                "from orchestrate.runtime.merger import main; main(sys.argv[1])")
        env = {**os.environ, "ORCHESTRATE_ROOT": str(self.layout.root),
               "ORCHESTRATE_PIPELINE": agent.pipeline, "ORCHESTRATE_AGENT": agent.name,
               "ORCHESTRATE_MERGE_INTO": current["into"]}
        log = os.open(self.layout.merge_log(agent.pipeline, agent.name),
                      os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            self.runners.append(subprocess.Popen(
                [sys.executable, "-c", code, json.dumps(spec), f"orchestrate-merge:{agent.task}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.layout.root, env=env, start_new_session=True, pass_fds=(lock,)))
        finally:
            os.close(log)
            os.close(lock)
