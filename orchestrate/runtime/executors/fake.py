"""A fake executor and a fake clock, for tests that drive the real `Engine`
in-process (`Engine(workspace, executors={"local": FakeExecutor(...)},
clock=clock)`): no process is started, no time passes but the clock's.

A fake run is alive until it is told to end (`finish`, what its wrapper's
exit record would say) or signalled: SIGKILL ends it without an exit record,
as it ends a wrapper; SIGTERM ends it with 143 unless it `ignores_term`
(a hung CLI). Every signal is kept with the clock's time, so a test can say
exactly what a stop sent when; `unreachable` makes it answer like a
controller that is down.

`polled=True` plays a remote executor (Slurm): the engine must ask it
every `poll` (each question is kept in `asked`, with the clock's time), a
run gone unclaimed is not proof that it never ran, and a run can end
without an exit record with the executor's word on why (`finish(...,
ended_as=)`, as Slurm says NODE_FAIL).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ...core.stopping import SIGKILL, SIGTERM
from . import Handle, Observation, Unavailable


class FakeClock:
    """Epoch seconds that move only when someone sleeps (or a test says so)."""

    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.001)   # a zero sleep still moves on: no busy loop


@dataclass
class FakeRun:
    run_id: str
    pid: int
    alive: bool = True
    ignores_term: bool = False
    ended_as: str | None = None   # the executor's word on how it ended, if it knows
    signals: list[tuple[float, int]] = field(default_factory=list)


class FakeExecutor:
    def __init__(self, layout, clock: FakeClock, name: str = "local",
                 ignores_term: bool = False, polled: bool = False):
        self.layout = layout
        self.clock = clock
        self.name = name
        self.ignores_term = ignores_term
        self.polled = polled
        self.unclaimed_means_never_ran = not polled
        self.unreachable: str | None = None   # a message: it cannot answer now
        self.runs: dict[str, FakeRun] = {}
        self.asked: list[float] = []          # when `observe` was called
        self.reaped = 0

    def submit(self, agent, run_id: str, attempt: int, log_path: Path, upstream: Path,
               followup=None) -> Handle:
        """Its wrapper claims the run at once, as a real one does first."""
        exit_path = self.layout.exit_file(run_id)
        exit_path.with_suffix(".claim").touch()
        log_path.touch()
        run = FakeRun(run_id, 10_000 + len(self.runs), ignores_term=self.ignores_term)
        self.runs[run_id] = run
        return Handle(pid=run.pid, create_time=self.clock())

    def finish(self, run_id: str, code: int | None, ended_as: str | None = None) -> None:
        """The run ends; `code`: its wrapper's exit record (None: none
        written); `ended_as`: what the executor will say of its end."""
        self.runs[run_id].alive = False
        self.runs[run_id].ended_as = ended_as
        if code is not None:
            self.layout.exit_file(run_id).write_text(f"{code}\n")

    def observe(self, records: Iterable) -> dict[str, Observation]:
        """Unreachable, every run is taken as alive (as Slurm's are)."""
        self.asked.append(self.clock())
        if self.unreachable is not None:
            return {r.run_id: Observation(True) for r in records}
        return {r.run_id: self._observation(r.run_id) for r in records}

    def _observation(self, run_id: str) -> Observation:
        run = self.runs.get(run_id)
        if run is None:
            return Observation(False)
        return Observation(run.alive, None if run.alive else run.ended_as)

    def track(self, record) -> tuple:
        return ()

    def stop(self, records: list, sig: int) -> None:
        for record in records:
            run = self.runs.get(record.run_id or "")
            if run is None:
                continue
            run.signals.append((self.clock(), sig))
            if run.alive and sig == SIGKILL:
                self.finish(run.run_id, None)
            elif run.alive and sig == SIGTERM and not run.ignores_term:
                self.finish(run.run_id, 143)

    def remaining(self, records: list) -> set[str]:
        self._answer()
        return {r.run_id for r in records if self._alive(r.run_id)}

    def find(self, run_id: str) -> Handle | None:
        run = self.runs.get(run_id)
        return Handle(pid=run.pid, create_time=self.clock()) if run and run.alive else None

    def reap(self) -> None:
        self.reaped += 1

    def _alive(self, run_id: str | None) -> bool:
        run = self.runs.get(run_id or "")
        return run is not None and run.alive

    def _answer(self) -> None:
        if self.unreachable is not None:
            raise Unavailable(self.unreachable)
