"""The `local` executor: this machine's process table, as it always was.

Thin adapters over `launcher` (spawn in its own session) and `processes`
(pid + start time, process groups, run-id environment scans); the lifecycle
still calls those directly for local runs (descendant tracking is local only).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from .. import processes
from ..checks import Followup
from ..launcher import Launcher
from ..spec import Agent
from ..state import StatusRecord
from . import Handle, Observation


class LocalExecutor:
    name = "local"

    def __init__(self, launcher: Launcher):
        self.launcher = launcher

    def submit(self, agent: Agent, run_id: str, attempt: int, log_path: Path,
               upstream: Path, followup: Followup | None = None) -> Handle:
        started = self.launcher.launch(agent, run_id, attempt, log_path, upstream, followup)
        return Handle("local", pid=started.pid, create_time=started.create_time)

    def observe(self, records: Iterable[StatusRecord]) -> dict[str, Observation]:
        return {r.run_id or "": Observation(processes.is_alive(r.pid, r.pid_create_time))
                for r in records}

    def stop(self, record: StatusRecord, sig: int) -> None:
        processes.signal_tree(record.pid or 0, record.descendants, sig,
                              record.pid_create_time, record.run_id)

    def find(self, run_id: str) -> Handle | None:
        pid = processes.find_run_process(run_id)
        return None if pid is None else Handle("local", pid, processes.create_time(pid))
