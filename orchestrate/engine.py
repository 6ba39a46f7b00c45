"""One scheduling pass: read the state files, settle finished runs, decide, launch.

A pass must run under the `SchedulingLock` and sees every state file as it
is then (re-read, or known unchanged through inotify events drained under
the lock), so any number of processes doing passes launch each agent once.
"""
from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from . import checks, worktree
from .fanout import FanoutKeeper
from .executors import SubmitError
from .executors.jobs import JobWatch, failed_submission
from .executors.local import LocalExecutor
from .executors.slurm import SlurmExecutor
from .faults import crash_point
from .fingerprint import digest_text
from .hooks import HookKeeper
from .launcher import Launcher
from .lifecycle import RunLifecycle
from .scheduler import ACTIVE, AgentFacts, Decision, plan
from .spec import Agent, Workspace
from .state import (
    FileCache,
    Layout,
    StatusRecord,
    append_events,
    event,
    expand_patterns,
    file_digest,
    parse_status,
    read_json,
    utc_now,
    write_json,
    write_status,
)
from .worktree import output_root


def hash_inputs(root: Path, patterns: tuple[str, ...], cache: dict[str, list]) -> dict[str, list]:
    """Input path -> [mtime_ns, size, digest]; unchanged files are not re-read."""
    found, _ = expand_patterns(root, patterns)
    result: dict[str, list] = {}
    for rel, info in found.items():
        old = cache.get(rel)
        if old and old[0] == info.st_mtime_ns and old[1] == info.st_size:
            result[rel] = old
        else:
            result[rel] = [info.st_mtime_ns, info.st_size, file_digest(root / rel)]
    return result


def read_signal_digest(path: Path) -> str | None:
    try:
        return digest_text(path.read_bytes())
    except FileNotFoundError:
        return None


LIVENESS_INTERVAL = 1.0   # seconds between liveness checks of running agents in a loop


def keep_previous_log(layout: Layout, agent: Agent, number: int) -> None:
    """Move the previous run's log to `<agent>.<N>.log`, N its launch number;
    a name already taken (the record was forgotten) moves N on: an earlier
    log is never overwritten."""
    log = layout.log(agent.pipeline, agent.name)
    if not os.path.exists(log):
        return
    number = max(number, 1)
    while os.path.exists(target := layout.log(agent.pipeline, agent.name, number)):
        number += 1
    os.replace(log, target)


@dataclass
class PassResult:
    decisions: dict[str, Decision]
    facts: dict[str, AgentFacts]
    agents: list[Agent] | None = None   # the selection, with a fan-out's new instances


class Engine(RunLifecycle):
    """Scheduling passes for one workspace.

    Between passes it keeps only caches of file contents keyed by the files'
    stat (the files stay the truth) and when it last checked that running
    agents are alive: a long-lived advancer checks that at most once a
    second, since the wrapper's exit record already wakes it on every exit.
    """

    def __init__(self, workspace: Workspace, launcher: Launcher | None = None,
                 liveness_interval: float = 0.0, clock: Callable[[], float] = time.time):
        self.workspace = workspace
        self.layout = Layout(workspace.root)
        self.launcher = launcher or Launcher(self.layout)
        self.layout.make_dirs([p.name for p in workspace.pipelines])
        self.status_cache: FileCache[StatusRecord] = FileCache(parse_status)
        self.signal_cache: FileCache[str] = FileCache(read_signal_digest)
        self.liveness_interval = liveness_interval
        self.clock = clock
        self.last_liveness = float("-inf")
        self.check_liveness = True
        self.next_wake = float("inf")   # the earliest timeout, kill or retry ahead
        self.hooks = HookKeeper(workspace, self.layout)
        self.fanouts = FanoutKeeper(self.layout)
        self.local = LocalExecutor(self.launcher)
        self.jobs = JobWatch(SlurmExecutor(self.layout, workspace.slurm, self.launcher))

    def executor_for(self, agent: Agent):
        return self.jobs.executor if agent.executor == "slurm" else self.local

    # -- reading ---------------------------------------------------------
    def records(self, agents: list[Agent]) -> dict[str, StatusRecord | None]:
        status = self.layout.status
        return {a.task: self.status_cache.get(status(a.pipeline, a.name)) for a in agents}

    def facts(self, agents: list[Agent], records: dict[str, StatusRecord | None],
              ) -> dict[str, AgentFacts]:
        result = {}
        for agent in agents:
            record = records[agent.task]
            cache = record.inputs if record else {}
            inputs = hash_inputs(self.layout.root, agent.inputs, cache)
            result[agent.task] = AgentFacts(
                record, self.signal_cache.get(self.layout.signal(agent.pipeline, agent.name)),
                inputs)
        return result

    def watched(self) -> None:
        """inotify now reports every change to status and signal files: trust
        the caches for files no event has touched (see `notice`)."""
        self.status_cache.distrust_all()   # read before the watch began: read again
        self.signal_cache.distrust_all()
        self.status_cache.trusted = self.signal_cache.trusted = True

    def notice(self, changed: list[Path]) -> bool:
        """Take inotify's changed paths; True if any can change a decision.

        Our own writes and temporary files cannot, and waking for them would
        double the passes.
        """
        news = False
        for path in changed:
            news = self._note(path) or news
        return news

    def _note(self, path: Path) -> bool:
        if path == self.layout.base:   # events were lost (queue overflow): read everything again
            self.status_cache.distrust_all()
            self.signal_cache.distrust_all()
            return True
        name = path.name
        if name.startswith("."):       # our temporary files
            return False
        if path.parent == self.layout.runs_dir:
            return name.endswith((".exit", ".checking"))
        if path.parent.parent == self.layout.status_dir:
            self.status_cache.mark_dirty(path)
            return self.status_cache.changed(path)
        if path.parent.parent == self.layout.signals_dir and name.endswith(".done"):
            self.signal_cache.mark_dirty(path)
            return self.signal_cache.changed(path)
        return True

    def _save(self, record: StatusRecord, durable: bool = True) -> None:
        write_status(self.layout, record, durable)
        self.status_cache.remember(self.layout.status(record.pipeline, record.agent), record)

    def external_signals(self) -> set[str]:
        return {p.name[:-len(".signal")] for p in self.layout.signals_dir.glob("*.signal")}

    def evaluate(self, agents: list[Agent]) -> dict[str, Decision]:
        """Read-only view of the selection (for status and wait)."""
        records = self.records(agents)
        return plan(self.workspace, agents, self.facts(agents, records),
                    self.external_signals(), now=self.clock())








    # -- the pass ----------------------------------------------------------
    def run_pass(self, agents: list[Agent]) -> PassResult:
        """Settle finished runs and decide; `launch_all` then starts what may start."""
        now = self.clock()
        self.check_liveness = now - self.last_liveness >= self.liveness_interval
        if self.check_liveness:
            self.last_liveness = now
        self.next_wake = float("inf")
        records = self.records(agents)
        # Slurm: one question for all of the jobs, every `poll` (one-shot commands: now)
        poll_due = self.jobs.refresh(records.values(), self.layout, now,
                                     self.workspace.slurm.poll if self.liveness_interval else 0.0)
        if poll_due is not None:
            self.next_wake = poll_due
        for agent in agents:
            record = records[agent.task]
            if record and record.state in ACTIVE:
                records[agent.task] = self.settle(agent, record)
        crash_point("pass-settled")
        expanded = self.fanouts.step(self, agents)
        if expanded is not None:   # a planner's list became instances (or changed)
            agents = expanded
            records = self.records(agents)
        facts = self.facts(agents, records)
        decisions = plan(self.workspace, agents, facts, self.external_signals(),
                         self.running_elsewhere(agents), now=self.clock(),
                         spent=self.spent(), rate_limited=self.rate_limits())
        for decision in decisions.values():
            if decision.timed and decision.wake_at is not None:
                self.next_wake = min(self.next_wake, decision.wake_at)
        self.hooks.observe(self, decisions, facts)
        return PassResult(decisions, facts, agents)

    def spent(self) -> dict[str, float]:
        """Dollars spent per pipeline ("*": the workspace), read only when a
        budget is set: budgets count every agent, selected or not."""
        ws = self.workspace
        if ws.budget_usd is None and all(p.budget_usd is None for p in ws.pipelines):
            return {}
        spent: dict[str, float] = {}
        for agent in ws.agents_by_task.values():
            record = self.status_cache.get(self.layout.status(agent.pipeline, agent.name))
            if record is not None and record.spent_usd:
                spent[agent.pipeline] = spent.get(agent.pipeline, 0.0) + record.spent_usd
                spent["*"] = spent.get("*", 0.0) + record.spent_usd
        return spent

    def rate_limits(self) -> dict[str, float]:
        """Preset -> until when its CLI said it is rate limited (ratelimits/*.json)."""
        directory = self.layout.base / "ratelimits"
        limits = {}
        for path in directory.glob("*.json") if directory.is_dir() else ():
            data = read_json(path) or {}
            if isinstance(data.get("until"), (int, float)):
                limits[path.stem] = float(data["until"])
        return limits

    def running_elsewhere(self, agents: list[Agent]) -> tuple[Agent, ...]:
        """Running agents outside the selection, read only when shared caps exist."""
        if not (self.workspace.max_parallel or self.workspace.pools):
            return ()
        selected = {a.task for a in agents}
        others = [a for a in self.workspace.agents_by_task.values() if a.task not in selected]
        status = self.layout.status
        return tuple(a for a in others
                     if (r := self.status_cache.get(status(a.pipeline, a.name)))
                     and r.state in ACTIVE)

    def launch_all(self, result: PassResult) -> list[str]:
        launched: list[str] = []
        events: list[dict] = []
        try:
            for task, decision in result.decisions.items():
                if decision.state == "launch":
                    facts = result.facts[task]
                    self.start(decision, facts.record, facts.inputs, events)
                    launched.append(task)
        finally:
            append_events(self.layout, events)
        return launched

    def start(self, decision: Decision, previous: StatusRecord | None,
              inputs: dict[str, list], events: list[dict]) -> StatusRecord:
        """Record the launch, spawn, record the pid; events are added to `events`."""
        agent = decision.agent
        layout = self.layout
        launches = (previous.launches if previous else 0) + 1
        run_id = f"{agent.pipeline}.{agent.name}.{launches}.{secrets.token_hex(4)}"
        layout.signal(agent.pipeline, agent.name).unlink(missing_ok=True)
        self.signal_cache.forget(layout.signal(agent.pipeline, agent.name))
        fingerprint = decision.fingerprint
        log = layout.log(agent.pipeline, agent.name)
        record = StatusRecord(
            state="launching", pipeline=agent.pipeline, agent=agent.name, task=agent.task,
            attempt=decision.attempt, run_id=run_id, launches=launches, started_at=utc_now(),
            started_epoch=self.clock(),
            reason=decision.reason, log=layout.relative(log),
            fingerprint=fingerprint.digest if fingerprint else None,
            config_digest=fingerprint.config if fingerprint else None,
            inputs=inputs, upstream=dict(fingerprint.upstream) if fingerprint else {},
            upstream_used=decision.upstream_used,
            # what a relaunch must not forget: money spent and rate limits in a row
            spent_usd=previous.spent_usd if previous else 0.0,
            rate_limit_hits=previous.rate_limit_hits if previous else 0,
            executor=agent.executor,
            **checks.carried(previous))
        self._save(record, durable=False)
        crash_point("launch-recorded")
        upstream = self._write_upstream_file(agent, run_id,
                                             fingerprint.upstream if fingerprint else {})
        keep_previous_log(layout, agent, launches - 1)
        try:
            if agent.isolation == "worktree":
                base = agent.base and self.workspace.agents_by_task[f"{agent.pipeline}:{agent.base}"]
                worktree.ensure(layout, agent, base or None)
            started = self.executor_for(agent).submit(agent, run_id, decision.attempt, log,
                                                      upstream, checks.followup(layout, record))
        except OSError as err:
            from .causes import start_failure
            record = replace(record, state="failed", ended_at=utc_now(), reason=start_failure(
                err, output_root(layout, agent) / agent.cwd, layout.root))
            if isinstance(err, SubmitError):
                record = failed_submission(agent, record, self.clock())
            self._save(record)
            events.append(event("fail", task=agent.task, run_id=run_id, reason=record.reason))
            return record
        crash_point("launch-spawned")
        record = replace(record, state="running", pid=started.pid,
                         pid_create_time=started.create_time, job_id=started.job_id,
                         reason=checks.running_reason(previous, record))
        # a job id is the only way back to a job: on disk before anything else
        self._save(record, durable=started.job_id is not None)
        events.append(event("launch", task=agent.task, run_id=run_id, pid=started.pid,
                            attempt=decision.attempt, reason=decision.reason,
                            **({"job_id": started.job_id} if started.job_id else {})))
        return record

    def _write_upstream_file(self, agent: Agent, run_id: str, consumed: dict[str, str]) -> Path:
        """The ORCHESTRATE_UPSTREAM file: each consumed upstream's signal and outputs."""
        if not consumed:
            return self.layout.no_upstream_file
        mapping = {}
        for name in consumed:
            upstream_agent = self.workspace.agents_by_task[f"{agent.pipeline}:{name}"]
            path = self.layout.signal(agent.pipeline, name)
            signal = read_json(path) or {}
            mapping[name] = {
                "task": f"{agent.pipeline}:{name}",
                "signal": signal,
                "signal_path": str(path),
                "outputs": [str(output_root(self.layout, upstream_agent) / rel)
                            for rel in signal.get("outputs", {})],
            }
            upstream = self.status_cache.get(self.layout.status(agent.pipeline, name))
            if upstream is not None and upstream.result:
                mapping[name]["result"] = upstream.result
                mapping[name]["result_path"] = str(self.layout.result(agent.pipeline, name))
        path = self.layout.upstream_file(run_id)
        write_json(path, mapping, durable=False)
        return path
