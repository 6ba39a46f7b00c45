"""One scheduling pass: read the state files, settle finished runs, decide, launch.

A pass must run under the `SchedulingLock` and sees every state file as it
is then (re-read, or known unchanged through inotify events drained under
the lock), so any number of processes doing passes launch each agent once.
"""
from __future__ import annotations

import os
import secrets
import signal
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from ..core import checks, transitions as t
from . import worktree
from .executors import Executor, Observation, SubmitError
from .executors.local import LocalExecutor
from .executors.slurm import SlurmExecutor
from .fanout import FanoutKeeper
from .faults import crash_point
from ..core.fingerprint import digest_text
from .hooks import HookKeeper
from .launcher import Launcher
from .observe import observe_run
from ..core.policy import StopKind
from ..core.scheduler import ACTIVE, AgentFacts, Decision, plan
from ..core.spec import Agent, Workspace
from .state import (
    FileCache,
    Layout,
    StatusRecord,
    append_event,
    append_events,
    event,
    expand_patterns,
    file_digest,
    parse_status,
    read_json,
    utc_now,
    write_atomic,
    write_json,
    write_status,
)
from .worktree import output_root
from .wrapper import remove_run_files


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


class Engine:
    """Scheduling passes for one workspace, and the runner of the effects a
    run's transitions ask for (`apply`).

    Between passes it keeps only caches of file contents keyed by the files'
    stat (the files stay the truth) and when it last asked each executor
    about its runs: a long-lived advancer asks the local one at most once a
    second (the wrapper's exit record already wakes it on every exit), and
    Slurm every `poll`.
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
        self.next_wake = float("inf")   # the earliest timeout, kill, retry or poll ahead
        self.hooks = HookKeeper(workspace, self.layout)
        self.fanouts = FanoutKeeper(self.layout)
        self.executors: dict[str, Executor] = {
            "local": LocalExecutor(self.launcher),
            "slurm": SlurmExecutor(self.layout, workspace.slurm, self.launcher)}
        self.last_asked = {name: float("-inf") for name in self.executors}

    def executor_for(self, agent: Agent) -> Executor:
        return self.executors[agent.executor]

    def executor_of(self, record: StatusRecord) -> Executor:
        return self.executors.get(record.executor, self.executors["local"])

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
                inputs, self.missing_outputs(agent, record))
        return result

    def missing_outputs(self, agent: Agent, record: StatusRecord | None) -> tuple[str, ...]:
        """A done agent's declared outputs that name no file now (a stat per
        plain path, a glob per pattern: the price of its inputs); only a
        done agent asks, as only its verdict can change by it."""
        if record is None or record.state != "done" or not agent.outputs or agent.gate:
            return ()   # a fan-out's own row: its instances have the outputs
        return tuple(expand_patterns(output_root(self.layout, agent), agent.outputs)[1])

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
        self.next_wake = float("inf")
        records = self.records(agents)
        running = [r for r in records.values() if r is not None and r.state in ACTIVE]
        seen = self.ask_executors(running, self.clock())
        for agent in agents:
            record = records[agent.task]
            if record and record.state in ACTIVE:
                fact = observe_run(self.layout, agent, record, self.executor_of(record),
                                   seen.get(record.run_id or ""))
                if fact is not None:
                    records[agent.task] = self.apply(agent, record, fact)
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

    def ask_executors(self, running: list[StatusRecord], now: float) -> dict[str, Observation]:
        """One question per executor for all of its runs, when due: local at
        most every `liveness_interval`, Slurm every `poll` (one-shot
        commands: now). Runs not asked count as alive until the next time."""
        seen: dict[str, Observation] = {}
        by_executor: dict[str, list[StatusRecord]] = {}
        for record in running:
            by_executor.setdefault(self.executor_of(record).name, []).append(record)
        for name, mine in by_executor.items():
            executor = self.executors[name]
            every = (self.workspace.slurm.poll if executor.polled else self.liveness_interval) \
                if self.liveness_interval else 0.0
            if now - self.last_asked[name] >= every:
                self.last_asked[name] = now
                asked = [r for r in mine if not t.unanswered(r)]   # no handle to ask about
                if asked:
                    seen.update(executor.observe(asked))
            if executor.polled:
                self.next_wake = min(self.next_wake, self.last_asked[name] + every)
        return seen

    def look_now(self) -> None:
        """Ask every executor at the next pass (a pidfd said a wrapper ended)."""
        for name in self.last_asked:
            self.last_asked[name] = float("-inf")

    # -- the effect runner ---------------------------------------------------
    def apply(self, agent: Agent, record: StatusRecord, fact: t.Observation,
              events: list[dict] | None = None) -> StatusRecord:
        """Decide (`transitions.transition`) and do what it says, in order.
        An effect that answers with a fact (`Track`) has the rest of the
        decision made again from that fact. Events go to `events` when given
        (a batch written by the caller), else to events.jsonl at once."""
        record, effects = t.transition(record, agent, fact, self.clock())
        for effect in effects:
            answer = self._do(agent, record, effect, events)
            if answer is not None:
                return self.apply(agent, record, answer, events)
        return record

    def _do(self, agent: Agent, record: StatusRecord, effect: t.Effect,
            events: list[dict] | None) -> t.Observation | None:
        layout = self.layout
        if isinstance(effect, t.Save):
            self._save(record, effect.durable)
        elif isinstance(effect, t.Kill):
            self.executor_of(record).stop(record, effect.signal)
        elif isinstance(effect, t.Track):
            tracked = self.executor_of(record).track(record)
            return t.NotOurs() if tracked is None else t.Tracked(effect.kind, effect.reason,
                                                                 tracked)
        elif isinstance(effect, t.Event):
            if events is None:
                append_event(layout, effect.kind, **effect.details)
            else:
                events.append(event(effect.kind, **effect.details))
        elif isinstance(effect, t.WriteSignal):
            write_atomic(layout.signal(agent.pipeline, agent.name), effect.text)
        elif isinstance(effect, t.RememberSignal):
            self.signal_cache.remember(layout.signal(agent.pipeline, agent.name), effect.digest)
        elif isinstance(effect, t.WriteResult):
            path = layout.result(agent.pipeline, agent.name)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, effect.text, durable=False)
        elif isinstance(effect, t.WriteFeedback):
            path = layout.feedback(agent.pipeline, agent.name)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, effect.text)
        elif isinstance(effect, t.HoldPreset):
            directory = layout.ratelimits_dir
            directory.mkdir(exist_ok=True)
            write_json(directory / f"{effect.preset}.json",
                       {"until": effect.until, "by": effect.by})
        elif isinstance(effect, t.RemoveRunFiles):
            remove_run_files(layout, effect.run_id)
        elif isinstance(effect, t.Crash):
            crash_point(effect.point)
        elif isinstance(effect, t.Wake):
            self.next_wake = min(self.next_wake, effect.at)
        else:
            raise TypeError(f"not an effect: {effect!r}")
        return None

    # -- stopping --------------------------------------------------------
    def stop(self, agent: Agent, record: StatusRecord, kind: StopKind, reason: str
             ) -> StatusRecord:
        """SIGTERM the run and everything it started; SIGKILL at kill_grace.
        A run whose wrapper already recorded its exit has nothing left to
        stop: it is settled with its own outcome (a Slurm job can wait for
        Slurm's word on it for up to a poll)."""
        if self.layout.exit_file(record.run_id or "").exists():
            return record
        return self.apply(agent, record, t.StopWanted(kind, reason))

    def kill(self, record: StatusRecord) -> None:
        """SIGKILL at once (a fan-out instance whose item is gone)."""
        self.executor_of(record).stop(record, signal.SIGKILL)

    def wait_until_gone(self, stopping: list[tuple[Agent, StatusRecord]]) -> None:
        """Each run had SIGTERM; SIGKILL at its kill_at, again every second
        after, until no process of any of them is left (however long that takes)."""
        pending = [(a, r) for a, r in stopping if t.phase(r) is t.Phase.STOPPING]
        next_kill = {agent.task: record.kill_at for agent, record in pending}
        while pending:
            now = time.time()
            still = []
            for agent, record in pending:
                executor = self.executor_of(record)
                if not executor.remains(record):
                    continue
                due = next_kill[agent.task]
                if due is not None and now >= due:
                    executor.stop(record, signal.SIGKILL)
                    next_kill[agent.task] = now + 1.0
                still.append((agent, record))
            pending = still
            if pending:
                time.sleep(0.02)

    def mark_cancelled(self, decision: Decision, previous: StatusRecord | None,
                       inputs: dict[str, list]) -> StatusRecord:
        """Cancel an agent that is not running: it stays cancelled until its
        fingerprint changes or `doit forget`, like a cancelled run."""
        agent, fingerprint = decision.agent, decision.fingerprint
        base = previous or StatusRecord(state="cancelled", pipeline=agent.pipeline,
                                        agent=agent.name, task=agent.task)
        record = replace(
            base, state="cancelled", reason="cancelled by user", ended_at=utc_now(),
            retry_at=None, fingerprint=fingerprint.digest if fingerprint else None,
            config_digest=fingerprint.config if fingerprint else None, inputs=inputs,
            upstream=dict(fingerprint.upstream) if fingerprint else {},
            upstream_used=decision.upstream_used)
        self._save(record)
        append_event(self.layout, "cancel", task=agent.task, reason=record.reason)
        return record

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
        directory = self.layout.ratelimits_dir
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
                                                      upstream, checks.followup(layout.root, record))
        except OSError as err:
            from .causes import start_failure
            reason = start_failure(err, output_root(layout, agent) / agent.cwd, layout.root)
            return self.apply(agent, record, t.SubmitFailed(
                reason, retried=isinstance(err, SubmitError)), events)
        crash_point("launch-spawned")
        return self.apply(agent, record, t.Submitted(
            started, checks.running_reason(previous, record)), events)

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
