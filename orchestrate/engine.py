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

from . import processes, worktree
from .fingerprint import digest_text
from .launcher import Launcher
from .policy import backoff, limit_exceeded, next_limit, should_retry
from .processes import is_alive
from .results import parse as parse_result
from .scheduler import ACTIVE, AgentFacts, Decision, plan
from .spec import Agent, Workspace
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
from .wrapper import exit_time, finish_run, read_exit_code, remove_run_files


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


LIVENESS_INTERVAL = 1.0
MAX_RATE_LIMIT_HITS = 10   # rate-limited attempts in a row before it counts as a failure   # seconds between liveness checks of running agents in a loop


@dataclass
class PassResult:
    decisions: dict[str, Decision]
    facts: dict[str, AgentFacts]


class Engine:
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
        self.parents: dict[int, list[int]] | None = None   # one /proc scan per pass
        self.next_wake = float("inf")   # the earliest timeout, kill or retry ahead

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
        name = path.name
        if name.startswith("."):
            return False
        if path.parent == self.layout.runs_dir:
            return name.endswith(".exit")
        if path.parent.parent == self.layout.status_dir:
            self.status_cache.mark_dirty(path)
            return self.status_cache.changed(path)
        if path.parent.parent == self.layout.signals_dir and name.endswith(".done"):
            self.signal_cache.mark_dirty(path)
            return self.signal_cache.changed(path)
        if path == self.layout.base:   # events were lost: read everything again
            self.status_cache.distrust_all()
            self.signal_cache.distrust_all()
        return True

    def _save(self, record: StatusRecord, durable: bool = True) -> None:
        write_status(self.layout, record, durable)
        self.status_cache.remember(self.layout.status(record.pipeline, record.agent), record)

    def _finish(self, agent: Agent, record: StatusRecord, code: int | None,
                ended_at: str | None) -> StatusRecord:
        """Settle a run: its outcome, a retry if the policy allows, status, event."""
        stopped = bool(record.stop_reason)
        if code is None:   # no exit status was recorded: the wrapper itself was killed
            record = replace(record, state="cancelled" if stopped and record.stop_reason
                             .startswith("cancelled") else "failed", ended_at=utc_now(),
                             kill_at=None, reason=record.stop_reason or
                             "agent process ended without recording an exit status "
                             "(killed with SIGKILL?)")
        else:
            reported = self._record_result(agent, record) if agent.preset else None
            if reported is not None:
                record, error = reported
            else:
                error = None
            record = finish_run(self.layout, agent, record, code, ended_at, error)
        self.signal_cache.remember(self.layout.signal(agent.pipeline, agent.name),
                                   record.signal_digest if record.state == "done" else None)
        if record.state == "done":
            record = replace(record, rate_limit_hits=0)
        kind = {"done": "finish", "cancelled": "cancel"}.get(record.state, "fail")
        details = {"task": agent.task, "run_id": record.run_id, "exit_code": code,
                   "reason": record.reason, "attempt": record.attempt}
        limited = (record.state == "failed" and record.result.get("rate_limited")
                   and record.rate_limit_hits < MAX_RATE_LIMIT_HITS)
        if limited:
            record = self._rest_after_rate_limit(agent, record)
            details["retry_at"] = record.retry_at
        elif should_retry(agent, record, stopped):
            at = self.clock() + backoff(agent, record.attempt)
            record = replace(record, state="waiting", retry_at=at, reason=(
                f"retry {record.attempt + 1} of {agent.retries + 1} at "
                f"{time.strftime('%H:%M:%S', time.localtime(at))} after: {record.reason}"))
            details["retry_at"] = at
        self._save(record)
        append_event(self.layout, kind, **details)
        remove_run_files(self.layout, record.run_id)
        return record

    def _rest_after_rate_limit(self, agent: Agent, record: StatusRecord) -> StatusRecord:
        """Retry when the CLI says the limit resets (or with backoff), without
        spending one of `retries`, and hold the preset's other agents till then."""
        hits = record.rate_limit_hits + 1
        reset = record.result.get("reset_at")
        until = float(reset) if reset and reset > self.clock() else (
            self.clock() + backoff(agent, hits))
        directory = self.layout.base / "ratelimits"
        directory.mkdir(exist_ok=True)
        write_json(directory / f"{agent.preset}.json", {"until": until, "by": agent.task})
        clock = time.strftime("%H:%M:%S", time.localtime(until))
        return replace(record, state="waiting", retry_at=until, attempt=record.attempt - 1,
                       rate_limit_hits=hits,
                       reason=f"rate limited until {clock}; retrying (not counted as a retry)")

    def _record_result(self, agent: Agent, record: StatusRecord
                       ) -> tuple[StatusRecord, str | None]:
        """Read what the CLI reported from its log: into the status record,
        the final message into results/<pipeline>/<agent>.md."""
        try:
            text = (self.layout.root / record.log).read_text(errors="replace")
        except OSError:
            text = ""
        reported = parse_result(agent.preset or "", text)
        path = self.layout.result(agent.pipeline, agent.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, reported.final_message + "\n", durable=False)
        record = replace(record, result=reported.to_json(),
                         spent_usd=round(record.spent_usd + (reported.cost_usd or 0.0), 6))
        return record, (reported.error or "is_error") if reported.is_error else None

    def external_signals(self) -> set[str]:
        return {p.name[:-len(".signal")] for p in self.layout.signals_dir.glob("*.signal")}

    def evaluate(self, agents: list[Agent]) -> dict[str, Decision]:
        """Read-only view of the selection (for status and wait)."""
        records = self.records(agents)
        return plan(self.workspace, agents, self.facts(agents, records),
                    self.external_signals(), now=self.clock())

    # -- settling --------------------------------------------------------
    def settle(self, agent: Agent, record: StatusRecord) -> StatusRecord:
        """Finish a run whose exit was recorded or whose process vanished;
        stop one past its timeout or stall limit; track its descendants."""
        exit_path = self.layout.exit_file(record.run_id or "")
        code = read_exit_code(exit_path)
        if code is not None:
            return self._finish(agent, record, code, exit_time(exit_path))
        if record.state == "launching" and record.pid is None:
            return self._recover_launch(agent, record)
        if self.check_liveness:
            if not is_alive(record.pid, record.pid_create_time):
                code = read_exit_code(exit_path)   # it may have finished since we looked
                return self._finish(agent, record, code, exit_time(exit_path))
            record = self._track_descendants(record)
        return self._enforce_limits(agent, record)

    def _track_descendants(self, record: StatusRecord) -> StatusRecord:
        """Remember the agent's descendants while it runs: one that moves to a
        session of its own leaves the process group but is still the agent's."""
        if self.parents is None:
            self.parents = processes.parent_map()
        current = processes.descendants(record.pid or 0, self.parents)
        known = {int(p) for p, _ in record.descendants}
        alive = [t for t in record.descendants if processes.is_alive(int(t[0]), t[1])]
        fresh = processes.track(p for p in current if p not in known)
        if not fresh and len(alive) == len(record.descendants):
            return record
        record = replace(record, descendants=alive + fresh)
        self._save(record, durable=False)
        return record

    def _last_output(self, agent: Agent, record: StatusRecord) -> float | None:
        if agent.stall_timeout is None:
            return None
        try:
            return os.stat(self.layout.root / record.log).st_mtime
        except OSError:
            return None

    def _enforce_limits(self, agent: Agent, record: StatusRecord) -> StatusRecord:
        now = self.clock()
        last_output = self._last_output(agent, record)
        if record.stop_reason is None:
            reason = limit_exceeded(agent, record, now, last_output)
            if reason is not None:
                record = self.begin_stop(agent, record, reason)
        elif record.kill_at is not None and now >= record.kill_at:
            processes.signal_tree(record.pid or 0, record.descendants, signal.SIGKILL)
            record = replace(record, kill_at=None)
            self._save(record)
        wake = next_limit(agent, record, last_output)
        if wake is not None:
            self.next_wake = min(self.next_wake, wake)
        return record

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

    def begin_stop(self, agent: Agent, record: StatusRecord, reason: str) -> StatusRecord:
        """SIGTERM the agent's group and descendants now; SIGKILL at kill_grace."""
        children = processes.descendants(record.pid or 0, processes.parent_map())
        tracked = processes.merge(record.descendants, processes.track(children))
        record = replace(record, stop_reason=reason, descendants=tracked,
                         kill_at=self.clock() + agent.kill_grace)
        # the reason is recorded before the signal: if we die in between, the
        # run still ends with this reason (and a later pass sends SIGKILL)
        self._save(record)
        processes.signal_tree(record.pid or 0, tracked, signal.SIGTERM)
        append_event(self.layout, "stop", task=agent.task, run_id=record.run_id, reason=reason)
        return record

    def _recover_launch(self, agent: Agent, record: StatusRecord) -> StatusRecord:
        """A pass crashed between recording a launch and recording its pid."""
        pid = processes.find_run_process(record.run_id or "")
        if pid is None:
            # A child caught between fork and exec still shows its parent's
            # environment; exec takes a millisecond, so look once more.
            time.sleep(0.1)
            pid = processes.find_run_process(record.run_id or "")
        if pid is not None:
            record = replace(record, state="running", pid=pid,
                             pid_create_time=processes.create_time(pid), reason="running")
        else:   # it never started: that attempt is owed, at once
            record = replace(record, state="waiting", attempt=record.attempt - 1,
                             retry_at=self.clock(), reason="launch interrupted; relaunching")
        self._save(record)
        return record

    # -- the pass ----------------------------------------------------------
    def run_pass(self, agents: list[Agent]) -> PassResult:
        """Settle finished runs and decide; `launch_all` then starts what may start."""
        now = self.clock()
        self.check_liveness = now - self.last_liveness >= self.liveness_interval
        if self.check_liveness:
            self.last_liveness = now
        self.parents = None
        self.next_wake = float("inf")
        records = self.records(agents)
        for agent in agents:
            record = records[agent.task]
            if record and record.state in ACTIVE:
                records[agent.task] = self.settle(agent, record)
        facts = self.facts(agents, records)
        decisions = plan(self.workspace, agents, facts, self.external_signals(),
                         self.running_elsewhere(agents), now=self.clock(),
                         spent=self.spent(), rate_limited=self.rate_limits())
        for decision in decisions.values():
            if decision.timed and decision.wake_at is not None:
                self.next_wake = min(self.next_wake, decision.wake_at)
        return PassResult(decisions, facts)

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
            upstream_used=decision.upstream_used)
        self._save(record, durable=False)
        upstream = self._write_upstream_file(agent, run_id,
                                             fingerprint.upstream if fingerprint else {})
        if previous and previous.launches and os.path.exists(log):
            os.replace(log, layout.log(agent.pipeline, agent.name, previous.attempt or 1))
        try:
            if agent.isolation == "worktree":
                base = agent.base and self.workspace.agents_by_task[f"{agent.pipeline}:{agent.base}"]
                worktree.ensure(layout, agent, base or None)
            started = self.launcher.launch(agent, run_id, decision.attempt, log, upstream)
        except OSError as err:
            record = replace(record, state="failed", ended_at=utc_now(),
                             reason=f"could not start: {err.strerror or err}")
            self._save(record)
            events.append(event("fail", task=agent.task, run_id=run_id, reason=record.reason))
            return record
        record = replace(record, state="running", pid=started.pid,
                         pid_create_time=started.create_time,
                         reason="running")
        self._save(record, durable=False)
        events.append(event("launch", task=agent.task, run_id=run_id, pid=started.pid,
                            attempt=decision.attempt, reason=decision.reason))
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
