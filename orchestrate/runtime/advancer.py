"""The process that advances a pipeline after the caller's `doit` returned.

`doit` takes the scheduling lock, decides, then forks: the parent prints and
returns at once; the child (which keeps the lock: flock belongs to the open
file) launches, then stays on as the advancer. It sleeps in inotify on the
state folder, runs a pass whenever a run ends or a signal appears, and exits
once nothing in its selection can advance. One advancer per selection: a
second one for the same selection exits as soon as it has launched.
"""
from __future__ import annotations

import hashlib
import os
import sys
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Callable

from .engine import LIVENESS_INTERVAL, Engine, PassResult
from .faults import crash_point
from ..core.exitcodes import ExitCode
from ..core.records import RunState
from ..core.scheduler import Decision
from ..core.selection import SelectionError, select
from ..core.spec import Workspace
from .inflight import select_watched, with_stand_ins
from .workspace import load_workspace
from .state import (Layout, SchedulingLock, StateFileError, append_event, try_flock,
                    utc_now)
from .telemetry import advancer_sends, send_before_exit

IDLE_CHECK_SECONDS = 1.0   # liveness check of running agents when nothing happens
# With a pidfd for every running agent, an ended wrapper wakes us: a pass then
# only for what is due (timeouts, retries), or this rare look for safety.
IDLE_WITH_PIDFDS = 300.0
POLL_WITHOUT_INOTIFY = 0.1   # seconds between passes where inotify is missing


def can_advance(decisions: dict[str, Decision]) -> bool:
    """Something is running, queued, launching, waits on an external signal
    or for a retry's backoff."""
    return any(d.launch or d.state == RunState.RUNNING or
               (d.state in (RunState.WAITING, RunState.QUEUED) and not d.blocked and
                (d.state == RunState.QUEUED or d.external or d.timed))
               for d in decisions.values())


class AdvancerSlot:
    """flock on `.orchestrate/advancers/<selection>.lock`, held while alive."""

    def __init__(self, layout: Layout, names: list[str]):
        key = hashlib.sha256("\0".join(sorted(names)).encode()).hexdigest()[:16]
        directory = layout.base / "advancers"
        directory.mkdir(exist_ok=True)
        self.path = directory / f"{key}.lock"
        self.fd: int | None = None

    def take(self) -> bool:
        fd = try_flock(self.path)
        if fd is None:
            return False
        self.fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return True

    def removed(self) -> bool:
        """The slot's file is gone (its link count is 0): someone removed the
        state folder, or the whole workspace, under the advancer. Its runs'
        records went with it: nothing is left to advance, and going on would
        write a new state folder into what is left (or forever retry stops
        nobody can confirm any more)."""
        return self.fd is not None and os.fstat(self.fd).st_nlink == 0

    def give_up(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class Watcher:
    """Blocks until something under `.orchestrate/` that a pass cares about changes."""

    def __init__(self, layout: Layout, pipelines: list[str]):
        from .executors.pidwatch import PidWatch
        self.layout = layout
        self.inotify = None
        self.pids = PidWatch()
        self.runs: dict[tuple[int, float], str] = {}   # watched process -> its run id
        self.vanished = False   # the last wait saw a wrapper end without an exit record
        try:
            from inotify_simple import INotify, flags
        except ImportError:   # not Linux: a short sleep loop instead
            self.pids.complete = False
            return
        self.inotify = INotify()
        self.pids.add_fd(self.inotify.fileno())
        self.mask = flags.CLOSE_WRITE | flags.MOVED_TO | flags.DELETE | flags.CREATE
        self.directories: dict[int, Path] = {}
        for directory in [layout.runs_dir, layout.signals_dir, layout.root / "pipelines"]:
            self._add(directory)
        self.watch_pipelines(pipelines)

    def _add(self, directory: Path) -> None:
        if directory.is_dir() and directory not in self.directories.values():
            self.directories[self.inotify.add_watch(directory, self.mask)] = directory

    def watch_pipelines(self, pipelines: list[str]) -> None:
        if self.inotify is None:
            return
        for name in pipelines:
            self._add(self.layout.signals_dir / name)
            self._add(self.layout.status_dir / name)

    def track(self, records) -> None:
        """Wake also when a running agent's wrapper ends (its pidfd)."""
        self.runs = self.pids.track_runs(records)

    def wait(self, timeout: float) -> list[Path]:
        """The paths that changed; empty on timeout (`vanished` says whether an
        agent's wrapper ended without an exit record). An unknown watch (the queue overflowed) is
        reported as the state folder itself."""
        self.vanished = False
        if self.inotify is None:   # nothing tells us what changed: look at everything
            import time
            time.sleep(min(timeout, POLL_WITHOUT_INOTIFY))
            return [self.layout.base]
        if self.pids.poll is not None:
            ended, ready = self.pids.wait(timeout)
            # a wrapper that recorded its exit wakes us through inotify anyway;
            # one killed before it could is what needs a liveness check
            self.vanished = any(not self.layout.exit_file(self.runs.get(key, "")).exists()
                                for key in ended)
            if not ready:
                return []
            timeout = 0
        return [self.directories[e.wd] / e.name if e.wd in self.directories
                else self.layout.base
                for e in self.inotify.read(timeout=int(timeout * 1000), read_delay=None)]

    def close(self) -> None:
        self.pids.close()
        if self.inotify is not None:
            self.inotify.close()


def reap_children() -> None:
    """Collect agents we launched that have exited (their wrapper records the status)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _pipeline_stamp(root: Path) -> tuple:
    files = sorted((root / "pipelines").glob("*.toml"))
    return tuple((str(p), p.stat().st_mtime_ns) for p in files if p.exists())


def keep_last_valid(fresh: Workspace, last: Workspace) -> Workspace:
    """`fresh` (leniently loaded), with the last valid declaration of each
    pipeline whose file is now invalid, so its running agents stay watched."""
    if not fresh.invalid:
        return fresh
    kept = [p for p in last.pipelines if p.name in fresh.invalid]
    return replace(fresh, pipelines=fresh.pipelines + tuple(kept), agents_by_task={})


class Advancer:
    """Runs passes for one selection until it can go no further."""

    def __init__(self, engine: Engine, names: list[str], lock: SchedulingLock,
                 slot: AdvancerSlot, watcher: Watcher, log: Callable[[str], None]):
        self.engine = engine
        self.watcher = watcher
        if watcher.inotify is not None:
            engine.watched()
        self.names = names
        self.lock = lock
        self.slot = slot
        self.log = log
        self.agents = select(engine.workspace, names)
        self.passes = 0
        self.stamp = _pipeline_stamp(engine.workspace.root)
        self.invalid = False      # a pipeline file became invalid: launch nothing

    def reload_if_changed(self) -> bool:
        """Pick up edited pipeline files; False if the selection is gone.

        While a file is invalid nothing launches, but running agents are
        still settled and their limits enforced (with the last valid
        declaration of their pipeline)."""
        stamp = _pipeline_stamp(self.engine.workspace.root)
        if stamp == self.stamp:
            return True
        self.stamp = stamp
        root = self.engine.workspace.root
        workspace = with_stand_ins(keep_last_valid(load_workspace(root, lenient=True),
                                                   self.engine.workspace))
        try:
            agents = select_watched(workspace, self.names)
        except SelectionError as err:
            self.log(f"pipelines changed; stopped advancing: {err}")
            return False
        if workspace.problems and not self.invalid:
            self.log("pipelines changed and are invalid; nothing launches until they are "
                     "fixed, running agents are still watched:\n" + "\n".join(workspace.problems))
        self.invalid = bool(workspace.problems)
        self.engine = Engine(workspace, self.engine.launcher, LIVENESS_INTERVAL)
        self.agents = agents
        self.watcher.watch_pipelines([p.name for p in workspace.pipelines])
        if self.watcher.inotify is not None:
            self.engine.watched()
        return True

    def pass_and_go_on(self) -> bool:
        """One pass; False (with the slot given up under the lock) when done.

        Leaving happens under the scheduling lock, so a `doit` that launches
        after our last pass finds the slot free and advances by itself.
        """
        self.passes += 1
        if self.slot.removed():
            self.log("the state folder was removed: stopped advancing")
            self.slot.give_up()
            return False
        with self.lock:
            # Changes another process made before we got the lock are queued
            # in inotify now: take them in, or the trusted caches would be stale.
            self.take_in(self.watcher.wait(0), self.watcher.vanished)
            result = self.engine.run_pass(self.agents)
            self.agents = result.agents
            if not self.invalid:
                self.engine.launch_all(result)
                if can_advance(result.decisions):
                    self.watcher.track(self.engine.records(self.agents).values())
                    return True
            elif any(d.state == RunState.RUNNING for d in result.decisions.values()):
                self.watcher.track(self.engine.records(self.agents).values())
                return True
            self.slot.give_up()
            return False

    def run(self) -> None:
        while self.pass_and_go_on():
            if not self.wait_for_news(self.watcher):
                with self.lock:
                    self.slot.give_up()
                return

    def sleep_seconds(self) -> float:
        """Until the next timeout, kill or retry is due; at most IDLE_CHECK_SECONDS
        unless every running agent's end wakes us (pidfds)."""
        ahead = self.engine.next_wake - self.engine.clock()
        idle = IDLE_WITH_PIDFDS if self.watcher.pids.complete else IDLE_CHECK_SECONDS
        return max(0.005, min(idle, ahead))

    def wait_for_news(self, watcher: Watcher) -> bool:
        """Sleep until a change can matter (or the idle timeout); False if the
        selection no longer exists."""
        while True:
            changed = watcher.wait(self.sleep_seconds())
            reap_children()
            ended = watcher.vanished
            if not changed and not ended:
                return True
            if changed and not self.reload_if_changed():
                return False
            if self.take_in(changed, ended):
                return True

    def take_in(self, changed: list[Path], ended: bool) -> bool:
        """Hand what the watcher read to the engine; True if it can matter.

        Every event read must reach the caches, also when an agent's end
        wakes us: a cache trusted past a change would launch twice. A wrapper
        that ended without an exit record is settled in the next pass (the
        executors are asked then), whichever read took its pidfd's news: the
        wait between passes or the one at the start of a pass. Dropped there,
        it would wait for the idle timeout (minutes, with pidfds)."""
        news = self.engine.notice(changed)
        if ended:
            self.log("woken by a wrapper that ended without an exit record (pidfd)")
            self.engine.look_now()
        return bool(news) or ended


def _detach_stdio(layout: Layout) -> Callable[[str], None]:
    """The advancer must not hold the caller's pipes open, nor its terminal."""
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    log_fd = os.open(layout.base / "advancer.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                     0o644)
    os.dup2(null, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(null)
    os.close(log_fd)

    def log(message: str) -> None:
        sys.stderr.write(f"{utc_now()} [{os.getpid()}] {message}\n")
        sys.stderr.flush()
    return log


def fork_advancer(engine: Engine, names: list[str], lock: SchedulingLock,
                  result: PassResult) -> int:
    """Launch `result`'s ready agents and advance, in a detached child.

    Called with `lock` held; returns the child's pid in the parent, which
    keeps no hold on the lock. The child never returns. `engine` goes on as
    the advancer's, so it is made for pass after pass (`liveness_interval`).
    """
    if not engine.liveness_interval:
        raise ValueError("the advancer's engine asks its executors at every pass: "
                         f"make it with liveness_interval={LIVENESS_INTERVAL}")
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        lock.forget()
        advancer_sends()
        return pid
    code = 0
    log = None
    try:
        crash_point("advancer-forked")
        log = _detach_stdio(engine.layout)
        code = _advance_in_child(engine, names, lock, result, log)
    except StateFileError as err:   # a user's edit: say which file, no traceback
        if log is not None:
            log(f"stopped advancing: {err}")
        code = ExitCode.INVALID
    except BaseException:  # the child must never return into doit
        try:
            sys.stderr.write(traceback.format_exc())
            sys.stderr.flush()
        finally:
            code = ExitCode.INTERNAL
    try:   # os._exit runs no atexit handler: what is owed goes now (bounded)
        send_before_exit()
    finally:
        os._exit(code)


def _advance_in_child(engine: Engine, names: list[str], lock: SchedulingLock,
                      result: PassResult, log: Callable[[str], None]) -> int:
    engine.launch_all(result)
    slot = AdvancerSlot(engine.layout, names)
    if not can_advance(result.decisions) or not slot.take():
        lock.release()
        return 0
    lock.release()
    engine.telemetry.start_sending()   # a thread: this process forks no more
    # Made after the launches (it costs ~10 ms): the advancer's first pass
    # re-reads every file, so nothing that happened before it is missed.
    watcher = Watcher(engine.layout, [p.name for p in engine.workspace.pipelines])
    try:
        append_event(engine.layout, "advancer_start", pid=os.getpid(), selection=names)
        advancer = Advancer(engine, names, lock, slot, watcher, log)
        advancer.run()
        times = os.times()
        append_event(engine.layout, "advancer_exit", pid=os.getpid(), passes=advancer.passes,
                     cpu_seconds=round(times.user + times.system, 4))
        return 0
    finally:
        watcher.close()
