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

from ..core import checks, transitions as t
from . import worktree
from .executors import Executor, Observation, SubmitError, Unavailable
from .executors.local import LocalExecutor
from .executors.ray import RayExecutor
from .executors.slurm import SlurmExecutor
from .bestof import ContestKeeper
from .fanout import FanoutKeeper, move_outputs_aside
from .effects import EffectRunner
from .faults import crash_point
from ..core.fingerprint import digest_text
from .hooks import HookKeeper
from .landing import MergeQueue
from .launcher import Launcher
from .telemetry import Telemetry
from .observe import observe_run
from ..core.policy import StopKind
from ..core.stopping import SETTLE, SIGTERM, StopPolicy
from .stopping import POLL, Stop, drive
from ..core.checks import feedback_relpath
from ..core.records import ACTIVE
from ..core.scheduler import AgentFacts, Decision, plan
from ..core.spec import Agent, Workspace
from .state import (
    FileCache,
    Layout,
    StateFileError,
    StatusRecord,
    append_event,
    append_events,
    expand_patterns,
    file_digest,
    parse_status,
    read_json,
    write_json,
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


# Seconds between liveness checks of running agents in a loop: the fallback
# for an end nothing reported (the wrapper's exit record and its pidfd wake
# the advancer at once). ORCHESTRATE_LIVENESS_INTERVAL is for tests that
# must tell a pidfd's wake from this fallback's.
LIVENESS_INTERVAL = float(os.environ.get("ORCHESTRATE_LIVENESS_INTERVAL") or 1.0)
# Seconds between rounds of `doit cancel`'s wait when a polled executor
# (Slurm, Ray) holds a run being stopped: each round asks its controller.
REMOTE_STOP_POLL = 0.25


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


class StateView:
    """What a keeper (hooks, fan-out) may read of the engine's state: the
    workspace, records, facts, signals, money spent, rate limits and the
    clock, through the engine's caches; nothing that writes, launches or
    signals."""

    def __init__(self, engine: "Engine"):
        self._engine = engine

    @property
    def workspace(self) -> Workspace:
        """The engine's workspace now (a fan-out's instances included)."""
        return self._engine.workspace

    def record(self, agent: Agent) -> StatusRecord | None:
        return self.record_at(agent.pipeline, agent.name)

    def record_at(self, pipeline: str, name: str) -> StatusRecord | None:
        """The status record of `pipeline:name`, declared or not (yet)."""
        engine = self._engine
        return engine.status_cache.get(engine.layout.status(pipeline, name))

    def signal_digest(self, pipeline: str, name: str) -> str | None:
        """The digest of `pipeline:name`'s signal file (None: none)."""
        engine = self._engine
        return engine.signal_cache.get(engine.layout.signal(pipeline, name))

    def records(self, agents: list[Agent]) -> dict[str, StatusRecord | None]:
        return self._engine.records(agents)

    def facts(self, agents: list[Agent], records: dict[str, StatusRecord | None]
              ) -> dict[str, AgentFacts]:
        return self._engine.facts(agents, records)

    def external_signals(self) -> set[str]:
        return self._engine.external_signals()

    def spent(self) -> dict[str, float]:
        return self._engine.spent()

    def rate_limits(self) -> dict[str, float]:
        return self._engine.rate_limits()

    def clock(self) -> float:
        return self._engine.clock()


class FanoutRequests(StateView):
    """The fan-out step's side of the engine (`fanout.FanoutHost`): the
    read-only view, and the three things it asks: record a change made by a
    pure constructor (its row), retire an instance, take the workspace with
    the instances the expansion records now hold."""

    def apply_change(self, record: StatusRecord, effects: t.Effects) -> None:
        self._engine.effects.run(record, effects)

    def retire(self, record: StatusRecord, task: str, reason: str) -> None:
        self._engine.retire(record, task, reason)

    def use_workspace(self, workspace: Workspace) -> None:
        self._engine.workspace = workspace


class MergeRequests(StateView):
    """The merge queue's side of the engine (`landing.MergeHost`): the
    read-only view, and the changes of records it decides (`core/merging.py`)."""

    def apply_change(self, record: StatusRecord, effects: t.Effects) -> None:
        self._engine.effects.run(record, effects)

    def merge_ended(self, agent: Agent, record: StatusRecord, begin: float,
                    error: str | None) -> None:
        """The merge's span, a child of the span of the attempt whose branch it
        merged (a best_of agent's row carries its winning run's id)."""
        number = int(record.merge.get("attempts", 0)) + 1
        self._engine.telemetry.merge_ended(
            agent.task, record, number, begin, self._engine.clock(), error,
            **{"orchestrate.merge.into": str(record.merge.get("into") or agent.merge_target),
               "orchestrate.merge.attempt": number})


class ContestRequests(StateView):
    """The best-of step's side of the engine (`bestof.ContestHost`): the
    read-only view, a pure constructor's change recorded, a candidate cancelled."""

    def apply_change(self, record: StatusRecord | None, effects: t.Effects) -> None:
        self._engine.effects.run(record, effects)

    def stop(self, agent: Agent, record: StatusRecord, reason: str) -> None:
        engine = self._engine
        agent = engine.workspace.agents_by_task.get(agent.task, agent)
        engine.stop(agent, record, StopKind.CANCEL, reason)

    def wake_by(self, at: float) -> None:
        self._engine.wake_by(at)


class _RunsBeingStopped:
    """The batch `stopping.drive` asks: runs by run id, one question per
    executor per round; `why`: why an executor cannot tell, since it last could."""

    def __init__(self, engine: "Engine", records: list[StatusRecord]):
        self.engine = engine
        self.records = {r.run_id: r for r in records}
        self.why: dict[str | None, str] = {}

    def _by_executor(self, keys: list) -> dict[str, list[StatusRecord]]:
        groups: dict[str, list[StatusRecord]] = {}
        for key in keys:
            record = self.records[key]
            groups.setdefault(self.engine.executor_of(record).name, []).append(record)
        return groups

    def remaining(self, keys: list) -> set:
        left: set = set()
        for name, records in self._by_executor(keys).items():
            try:
                left |= self.engine.executors[name].remaining(records)
            except Unavailable as err:
                left |= {r.run_id for r in records}
                for record in records:   # the first word on it, not "no time left"
                    self.why.setdefault(record.run_id, f"{name}: {err}")
            else:
                for record in records:
                    self.why.pop(record.run_id, None)
        return left

    def send(self, keys: list, sig: int) -> None:
        for name, records in self._by_executor(keys).items():
            self.engine.executors[name].stop(records, sig)


@dataclass
class PassResult:
    decisions: dict[str, Decision]
    facts: dict[str, AgentFacts]
    agents: list[Agent] | None = None   # the selection, with a fan-out's new instances


class Engine:
    """Scheduling passes for one workspace: read state, settle ended runs,
    decide, launch. What a run's transitions ask for is done by its
    `effects` (`runtime/effects.py`); keepers read it through `view` (hooks)
    and `fanout_requests` (the fan-out step), never its insides.

    Between passes it keeps only caches of file contents keyed by the files'
    stat (the files stay the truth) and when it last asked each executor
    about its runs: a long-lived advancer asks the local one at most once a
    second (the wrapper's exit record already wakes it on every exit), and
    Slurm every `poll`.
    """

    def __init__(self, workspace: Workspace, launcher: Launcher | None = None,
                 liveness_interval: float = 0.0, clock: Callable[[], float] = time.time,
                 executors: dict[str, Executor] | None = None,
                 sleep: Callable[[float], None] = time.sleep, make_dirs: bool = True):
        """`liveness_interval`: for an engine that runs pass after pass, the
        least seconds between two questions to an executor that wakes us
        (local; a polled one is asked every `poll`); 0: every executor is
        asked at every pass (one-shot commands); `executors`: name -> executor (default:
        local, slurm and ray); `clock`: epoch seconds and `sleep`
        (waiting for a stop), fake ones in tests; `make_dirs`: False for a
        look that must write nothing (`doit plan`)."""
        self.workspace = workspace
        self.layout = Layout(workspace.root)
        self.launcher = launcher or Launcher(self.layout)
        self.deadline: float | None = None   # executor calls end by then (see bound_stops)
        if make_dirs:
            self.layout.make_dirs([p.name for p in workspace.pipelines])
        self.status_cache: FileCache[StatusRecord] = FileCache(parse_status)
        self.signal_cache: FileCache[str] = FileCache(read_signal_digest)
        self.liveness_interval = liveness_interval
        self.clock = clock
        self.sleep = sleep
        self.next_wake = float("inf")   # the earliest timeout, kill, retry or poll ahead
        self.hooks = HookKeeper(workspace, self.layout)
        self.fanouts = FanoutKeeper(self.layout)
        self.merges = MergeQueue(self.layout)
        self.executors: dict[str, Executor] = executors or {
            "local": LocalExecutor(self.launcher),
            "slurm": SlurmExecutor(self.layout, workspace.slurm, self.launcher, self.time_left),
            "ray": RayExecutor(self.layout, workspace.ray, self.launcher, self.time_left)}
        self.last_asked = {name: float("-inf") for name in self.executors}
        self.view = StateView(self)   # what keepers may read (hooks)
        self.fanout_requests = FanoutRequests(self)   # and what the fan-out step may ask
        self.merge_requests = MergeRequests(self)     # and the merge queue
        self.telemetry = Telemetry(workspace, self.layout, clock)
        self.contests = ContestKeeper(self.layout)
        self.contest_requests = ContestRequests(self)  # and the best-of step
        self.effects = EffectRunner(self.layout, self.status_cache, self.signal_cache,
                                    self.executor_of, clock, self.wake_by,
                                    self.telemetry.attempt_ended)

    def wake_by(self, at: float) -> None:
        """A pass is due by `at` (a timeout, a kill, a retry, a poll)."""
        self.next_wake = min(self.next_wake, at)

    def time_left(self) -> float | None:
        """Seconds before the deadline (None: none set)."""
        return None if self.deadline is None else self.deadline - self.clock()

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
        if record is None or record.state != "done" or not agent.outputs or agent.gate \
                or agent.candidate_of:
            # a fan-out's own row: its instances have the outputs; a best_of
            # candidate's worktree may now be its agent's (or gone: it lost)
            return ()
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
            return name.endswith((".exit", ".checking", ".merged", ".judged"))   # .judged: bestof.py
        if path.parent.parent == self.layout.status_dir:
            self.status_cache.mark_dirty(path)
            return self.status_cache.changed(path)
        if path.parent.parent == self.layout.signals_dir and name.endswith(".done"):
            self.signal_cache.mark_dirty(path)
            return self.signal_cache.changed(path)
        return True

    def external_signals(self) -> set[str]:
        return {p.name[:-len(".signal")] for p in self.layout.signals_dir.glob("*.signal")}

    def evaluate(self, agents: list[Agent]) -> dict[str, Decision]:
        """Read-only view of the selection (for status and wait)."""
        records = self.records(agents)
        return plan(self.workspace, agents, self.facts(agents, records),
                    self.external_signals(), now=self.clock())

    def preview(self, agents: list[Agent]) -> dict[str, Decision]:
        """What a pass would decide now, budgets and rate limits included,
        without settling a run or writing anything (`doit plan`)."""
        records = self.records(agents)
        files = self.rate_limit_files()
        return plan(self.workspace, agents, self.facts(agents, records),
                    self.external_signals(), self.running_elsewhere(agents), now=self.clock(),
                    spent=self.spent(), rate_limited=self.rate_limits(files),
                    unknown_reset=self.unknown_resets(files))

    # -- the pass ----------------------------------------------------------
    def run_pass(self, agents: list[Agent]) -> PassResult:
        """Settle finished runs and decide; `launch_all` then starts what may start."""
        self.next_wake = float("inf")
        for executor in self.executors.values():   # no wrapper we started stays a zombie
            executor.reap()
        records = self.records(agents)
        running = [r for r in records.values() if r is not None and r.state in ACTIVE]
        seen = self.ask_executors(running, self.clock())
        for agent in agents:
            record = records[agent.task]
            if record and record.state in ACTIVE:
                fact = observe_run(self.layout, agent, record, self.executor_of(record),
                                   seen.get(record.run_id or ""))
                if fact is not None:
                    records[agent.task] = self.effects.apply(agent, record, fact)
        crash_point("pass-settled")
        expanded = self.fanouts.step(self.fanout_requests, agents)
        if expanded is not None:   # a planner's list became instances (or changed)
            agents = expanded
        if expanded is not None or any(a.candidates for a in agents):
            self.contests.step(self.contest_requests, agents)   # best_of: a winner chosen?
            records = self.records(agents)
        if self.merges.step(self.merge_requests):   # a branch landed, or was sent back
            records = self.records(agents)
        facts = self.facts(agents, records)
        files = self.rate_limit_files()
        decisions = plan(self.workspace, agents, facts, self.external_signals(),
                         self.running_elsewhere(agents), now=self.clock(),
                         spent=self.spent(), rate_limited=self.rate_limits(files),
                         unknown_reset=self.unknown_resets(files))
        for decision in decisions.values():
            if decision.timed and decision.wake_at is not None:
                self.next_wake = min(self.next_wake, decision.wake_at)
        self.hooks.observe(self.view, decisions, facts)
        self.telemetry.observe(self.view, decisions)
        return PassResult(decisions, facts, agents)

    def ask_executors(self, running: list[StatusRecord], now: float) -> dict[str, Observation]:
        """One question per executor for all of its runs, when due: local at
        most every `liveness_interval`, Slurm and Ray every `poll` of their
        table (one-shot commands: now). Runs not asked count as alive until
        the next time."""
        seen: dict[str, Observation] = {}
        by_executor: dict[str, list[StatusRecord]] = {}
        for record in running:
            by_executor.setdefault(self.executor_of(record).name, []).append(record)
        for name, mine in by_executor.items():
            executor = self.executors[name]
            every = (self.poll_every(name) if executor.polled else self.liveness_interval) \
                if self.liveness_interval else 0.0
            if now - self.last_asked[name] >= every:
                self.last_asked[name] = now
                asked = [r for r in mine if not t.unanswered(r)]   # no handle to ask about
                if asked:
                    seen.update(executor.observe(asked))
            if executor.polled:
                self.next_wake = min(self.next_wake, self.last_asked[name] + every)
        return seen

    def poll_every(self, name: str) -> float:
        """A polled executor's `poll`: its own table's (`[tool.orchestrate.ray]`
        for ray), Slurm's for any other."""
        return self.workspace.ray.poll if name == "ray" else self.workspace.slurm.poll

    def _just_launched(self, executor: str) -> None:
        """A run just launched is alive: its first liveness question is due
        one interval from now, as every later one. An executor never asked
        had no running run at this pass (the pass asks before it launches),
        so no older run's question is put off."""
        if self.last_asked[executor] == float("-inf"):
            self.last_asked[executor] = self.clock()

    def look_now(self) -> None:
        """Ask every executor at the next pass (a pidfd said a wrapper ended)."""
        for name in self.last_asked:
            self.last_asked[name] = float("-inf")

    # -- stopping --------------------------------------------------------
    def stop(self, agent: Agent, record: StatusRecord, kind: StopKind, reason: str
             ) -> StatusRecord:
        """SIGTERM the run and everything it started; SIGKILL at kill_grace.
        A run whose wrapper already recorded its exit has nothing left to
        stop: it is settled with its own outcome (a Slurm job can wait for
        Slurm's word on it for up to a poll)."""
        if self.layout.exit_file(record.run_id or "").exists():
            return record
        return self.effects.apply(agent, record, t.StopWanted(kind, reason))

    def kill(self, record: StatusRecord, sleep: Callable[[float], None] | None = None) -> None:
        """Stop a run whose agent left the workspace (a fan-out instance whose
        item is gone) with the one stop policy: SIGTERM and a `stop` event
        now, SIGKILL past its kill_grace, waited for here (bounded by
        kill_grace + SETTLE), since no later pass watches a removed run."""
        agent = self.workspace.agents_by_task.get(record.task)
        grace = agent.kill_grace if agent is not None else Agent.kill_grace
        executor = self.executor_of(record)
        tracked = executor.track(record)
        if tracked is None:   # the recorded pid is not this run's: nothing to stop
            return
        record = replace(record, descendants=[list(d) for d in tracked])
        began = self.clock()
        executor.stop([record], SIGTERM)
        append_event(self.layout, "stop", task=record.task, run_id=record.run_id,
                     reason="its item left the list")
        drive(_RunsBeingStopped(self, [record]), [Stop(record.run_id, began, StopPolicy(grace))],
              self.clock, sleep or self.sleep)

    def bound_stops(self, agents: list[Agent]) -> float:
        """From now, stopping the runs of `agents` is over within their longest
        kill_grace + SETTLE: no executor call of this engine outlasts that
        deadline (`doit cancel` returns by then whatever the executor does)."""
        records = self.records(agents)
        grace = max((a.kill_grace for a in agents
                     if (r := records[a.task]) is not None and r.state in ACTIVE), default=0.0)
        self.deadline = self.clock() + grace + SETTLE
        return self.deadline

    def wait_until_gone(self, stopping: list[tuple[Agent, StatusRecord]],
                        sleep: Callable[[float], None] | None = None) -> dict[str, str]:
        """Drive each run's stop to its end with the one stop policy: SIGKILL
        at its kill_at and every second after while anything of it remains
        (one question per executor per round), until nothing is left, its
        kill_grace + SETTLE is over, or the engine's deadline. Returns task ->
        why a run could not be confirmed gone; it stays stopping, and the next
        pass (the advancer's, `doit status`) goes on with it."""
        pending = [(a, r) for a, r in stopping if t.phase(r) is t.Phase.STOPPING]
        if not pending:
            return {}
        now = self.clock()
        stops = []
        for agent, record in pending:
            # its KILL when due, at once if overdue (or sent by a pass already)
            kill_at = now if record.kill_at is None else max(record.kill_at, now)
            stops.append(Stop(record.run_id, kill_at - agent.kill_grace,
                              StopPolicy(agent.kill_grace)))
        runs = _RunsBeingStopped(self, [r for _, r in pending])
        # a cluster's controller is asked 4 times a second, not 50: on a busy
        # head one Ray job listing takes ~65 ms, and back-to-back listings
        # slowed the very stops they waited for
        poll = REMOTE_STOP_POLL if any(self.executor_of(r).polled for _, r in pending) \
            else POLL
        unconfirmed = drive(runs, stops, self.clock, sleep or self.sleep, until=self.deadline,
                            poll=poll)
        tasks = {r.run_id: a.task for a, r in pending}
        return {tasks[run_id]: runs.why.get(run_id, why) for run_id, why in unconfirmed.items()}

    def mark_cancelled(self, decision: Decision, previous: StatusRecord | None,
                       inputs: dict[str, list]) -> StatusRecord:
        """Cancel an agent that is not running (`transitions.cancelled_before_start`)."""
        return self.effects.run(*t.cancelled_before_start(decision, previous, inputs, self.clock()))

    # -- what a person asks for, besides launching and stopping -------------
    def request_retry(self, agent: Agent) -> StatusRecord | None:
        """`doit retry`: a failed or cancelled agent becomes pending; returns
        its record as it was (None: not failed or cancelled, nothing done)."""
        previous = self.status_cache.get(self.layout.status(agent.pipeline, agent.name))
        change = t.retry_requested(previous, agent.task)
        if change is not None:
            self.effects.run(*change)
        return previous if change is not None else None

    def give_feedback(self, agent: Agent, text: str) -> tuple[StatusRecord | None, bool]:
        """`doit retry TASK --feedback FILE`: (the record as it was, whether
        the agent will run again with `text` as its feedback)."""
        previous = self.status_cache.get(self.layout.status(agent.pipeline, agent.name))
        change = t.feedback_given(previous, agent.task, text,
                                  feedback_relpath(agent.pipeline, agent.name))
        if change is not None:
            self.effects.run(*change)
        return previous, change is not None

    def forget(self, pipeline: str, name: str, verb: str = "forgotten", dryrun: bool = False
               ) -> str | None:
        """Remove an agent's status record (`doit forget`, `doit clean`);
        the refusal, if it runs, else None. `dryrun`: only say whether it would.
        A corrupt record is forgotten too: that is the way out its error offers."""
        try:
            record = self.status_cache.get(self.layout.status(pipeline, name))
        except StateFileError:
            record = None
        refusal, effects = t.forgotten(record, pipeline, name, verb)
        if refusal is None and not dryrun:
            self.effects.run(record, effects)
        return refusal

    def retire(self, record: StatusRecord, task: str, reason: str) -> StatusRecord:
        """A fan-out instance whose item left its list: a running one is
        stopped first (its item is gone), its outputs move aside (so a fan-in
        no longer reads them), then `removed`."""
        if record.state in ACTIVE:
            self.kill(record)
        instance = self.workspace.agents_by_task.get(task)
        if instance is not None:   # before the record: a crash moves them next time
            move_outputs_aside(self.layout, instance)
        return self.effects.run(*t.retired(record, task, reason, self.clock()))

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

    def rate_limit_files(self) -> dict[str, dict]:
        """Preset -> what ratelimits/<preset>.json says: one read of the
        folder for both `rate_limits` and `unknown_resets`."""
        directory = self.layout.ratelimits_dir
        return {path.stem: read_json(path) or {}
                for path in (directory.glob("*.json") if directory.is_dir() else ())}

    def rate_limits(self, files: dict[str, dict] | None = None) -> dict[str, float]:
        """Preset -> until when its CLI said it is rate limited (ratelimits/*.json)."""
        files = self.rate_limit_files() if files is None else files
        return {preset: float(data["until"]) for preset, data in files.items()
                if isinstance(data.get("until"), (int, float))}

    def unknown_resets(self, files: dict[str, dict] | None = None) -> frozenset[str]:
        """Presets whose CLI did not say when its limit resets: their `until`
        is a backoff's guess, and a fallback does not wait for it."""
        files = self.rate_limit_files() if files is None else files
        return frozenset(preset for preset, data in files.items()
                         if data.get("reset_known") is False)

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
                if decision.launch:
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
        launches = t.launch_number(previous)
        run_id = f"{agent.pipeline}.{agent.name}.{launches}.{secrets.token_hex(4)}"
        layout.signal(agent.pipeline, agent.name).unlink(missing_ok=True)
        self.signal_cache.forget(layout.signal(agent.pipeline, agent.name))
        fingerprint = decision.fingerprint
        log = layout.log(agent.pipeline, agent.name)
        trace_id = self.telemetry.trace_of(agent.pipeline)
        record = self.effects.run(*t.launching(decision, previous, run_id, inputs,
                                               layout.relative(log), self.clock(), trace_id))
        self.launcher.traceparents[run_id] = self.telemetry.traceparent(trace_id, run_id)
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
            self.launcher.traceparents.pop(run_id, None)
            from .causes import start_failure
            reason = start_failure(err, output_root(layout, agent) / agent.cwd, layout.root)
            return self.effects.apply(agent, record, t.SubmitFailed(
                reason, retried=isinstance(err, SubmitError)), events)
        crash_point("launch-spawned")
        self.launcher.traceparents.pop(run_id, None)   # an executor that did not ask
        self._just_launched(self.executor_for(agent).name)
        return self.effects.apply(agent, record, t.Submitted(
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
