"""The `local` executor: this machine's process table.

A run is its wrapper's process group (spawned in its own session by
`launcher`), known by pid + start time; the advancer wakes on its wrapper's
pidfd (`pidwatch`); its descendants are recorded when a
stop begins, and strays are found by the run id in their environment. Every
signal needs proof that the process is the run's (see `processes`).
"""
from __future__ import annotations

import signal
from pathlib import Path
from typing import Iterable

from . import processes
from ...core.checks import Followup
from ..launcher import Launcher
from ...core.spec import Agent
from ..state import StatusRecord
from . import Handle, Observation


class LocalExecutor:
    name = "local"
    unclaimed_means_never_ran = True
    polled = False   # the advancer holds a pidfd per wrapper: an exit wakes it

    def __init__(self, launcher: Launcher):
        self.launcher = launcher

    def submit(self, agent: Agent, run_id: str, attempt: int, log_path: Path,
               upstream: Path, followup: Followup | None = None) -> Handle:
        pid = self.launcher.launch(agent, run_id, attempt, log_path, upstream, followup)
        # its start time at once: with it, no later reuse of the pid passes for the run
        return Handle(pid=pid, create_time=processes.create_time(pid))

    def observe(self, records: Iterable[StatusRecord]) -> dict[str, Observation]:
        return {r.run_id or "": Observation(processes.is_alive(r.pid, r.pid_create_time))
                for r in records}

    def track(self, record: StatusRecord) -> tuple | None:
        if processes.is_alive(record.pid, record.pid_create_time) and \
                not processes.carries_run_id(record.pid or 0, record.run_id):
            return None
        return tuple(self._tree(record))

    @staticmethod
    def _tree(record: StatusRecord) -> list:
        """Every process of the run we can prove is ours: descendants recorded
        earlier, its live descendants now, and any process that carries its
        run id (a daemon that left both its parent and its session)."""
        pid = record.pid or 0
        children = processes.descendants(pid, processes.parent_map()) if processes.is_alive(
            pid, record.pid_create_time) else []
        strays = [p for p in processes.run_processes(record.run_id or "") if p != pid]
        return processes.merge(record.descendants, processes.track([*children, *strays]))

    def stop(self, records: list[StatusRecord], sig: int) -> None:
        """Each run's group (if provably the run's) and every tracked process;
        a SIGKILL looks for what the run has started since it was tracked."""
        for record in records:
            tracked = self._tree(record) if sig == signal.SIGKILL else record.descendants
            processes.signal_tree(record.pid or 0, tracked, sig, record.pid_create_time,
                                  record.run_id)

    def remaining(self, records: list[StatusRecord]) -> set[str]:
        """The runs with a process left (their group, if provably theirs, or a
        tracked one), from one scan of /proc for all of them."""
        groups = processes.live_groups()
        left = set()
        for record in records:
            pid = record.pid or 0
            group = pid in groups and processes.group_is_ours(pid, record.pid_create_time,
                                                              record.run_id)
            if group or any(processes.is_alive(int(p), t) for p, t in record.descendants):
                left.add(record.run_id or "")
        return left

    def reap(self) -> None:
        self.launcher.reap()

    def find(self, run_id: str) -> Handle | None:
        pid = processes.find_run_process(run_id)
        return None if pid is None else Handle(pid=pid, create_time=processes.create_time(pid))
