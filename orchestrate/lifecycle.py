"""A run's life after launch: settle it when it ends (or vanished), stop it
past its timeout or stall limit, retry it, rest after a rate limit, cancel it.

A mixin of `Engine`: it shares the engine's caches, clock and writes.
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import replace

from . import checks, processes
from .executors import is_remote
from .executors.jobs import settle_job
from .executors.slurm import cancel_job, job_alive
from .faults import crash_point
from .policy import backoff, limit_exceeded, next_limit, should_retry
from .processes import is_alive
from .results import parse as parse_result
from .scheduler import Decision
from .spec import Agent
from .state import StatusRecord, append_event, utc_now, write_atomic, write_json
from .wrapper import abandon_run, exit_time, finish_run, read_exit_code, remove_run_files

MAX_RATE_LIMIT_HITS = 10   # rate-limited attempts in a row before it counts as a failure
VANISHED = "agent process ended without recording an exit status (killed with SIGKILL?)"


def run_tree(record: StatusRecord) -> list:
    """Every process of the run we can prove is ours: descendants recorded
    earlier, its live descendants now, and any process that carries its run
    id (a daemon that left both its parent and its session)."""
    if is_remote(record):   # Slurm owns the job's processes
        return []
    pid = record.pid or 0
    children = processes.descendants(pid, processes.parent_map()) if is_alive(
        pid, record.pid_create_time) else []
    strays = [p for p in processes.run_processes(record.run_id or "") if p != pid]
    return processes.merge(record.descendants, processes.track([*children, *strays]))


def signal_run(record: StatusRecord, sig: int) -> None:
    if is_remote(record):
        return cancel_job(record.job_id, sig)
    processes.signal_tree(record.pid or 0, record.descendants, sig,
                          record.pid_create_time, record.run_id)


def run_alive(record: StatusRecord) -> bool:
    """Is any process of the run left (its group, if provably its, or a tracked one)?"""
    if is_remote(record):
        return bool(record.job_id) and job_alive(record.job_id)
    pid = record.pid or 0
    group = processes.group_is_ours(pid, record.pid_create_time, record.run_id) and \
        processes.group_alive(pid)
    return group or any(is_alive(int(p), t) for p, t in record.descendants)


class RunLifecycle:
    """Needs from its host: layout, clock, status_cache, signal_cache, _save,
    check_liveness, next_wake."""

    def _finish(self, agent: Agent, record: StatusRecord, code: int | None,
                ended_at: str | None, executor_said: str | None = None) -> StatusRecord:
        """Settle a run: its outcome, a retry if the policy allows, status, event."""
        stopped = bool(record.stop_reason)
        if stopped:   # the wrapper is gone: what it left of the agent gets no more grace
            signal_run(replace(record, descendants=run_tree(record)), signal.SIGKILL)
        if code is None:   # no exit status was recorded: the wrapper itself was killed
            cancelled = (record.stop_reason or "").startswith("cancelled")
            record = replace(record, state="cancelled" if cancelled else "failed",
                             ended_at=utc_now(), kill_at=None,
                             reason=record.stop_reason or executor_said or VANISHED)
        else:
            error = None
            if agent.preset:
                record, error = self._record_result(agent, record, code)
            record = finish_run(self.layout, agent, record, code, ended_at,
                                error or (executor_said if code else None))
            crash_point("finish-signal-written")
        check_failed = checks.failed(record, code, stopped)
        if check_failed:   # back to the agent with feedback, or failed for good
            record = checks.after_failure(self.layout, agent, record, self.clock())
        self.signal_cache.remember(self.layout.signal(agent.pipeline, agent.name),
                                   record.signal_digest if record.state == "done" else None)
        if not (record.state == "failed" and record.result.get("rate_limited")):
            record = replace(record, rate_limit_hits=0)   # the row of rate limits is broken
        kind = {"done": "finish", "cancelled": "cancel"}.get(record.state, "fail")
        details = {"task": agent.task, "run_id": record.run_id, "exit_code": code,
                   "reason": record.reason, "attempt": record.attempt}
        limited = (record.state == "failed" and record.result.get("rate_limited")
                   and record.rate_limit_hits < MAX_RATE_LIMIT_HITS)
        if record.state == "cancelled" and record.result.get("rate_limited"):
            self._hold_preset(agent, record, record.rate_limit_hits + 1)   # the wall is real
        if limited:
            record = self._rest_after_rate_limit(agent, record)
            details["retry_at"] = record.retry_at
        elif record.state == "waiting":   # a check's relaunch
            details["retry_at"] = record.retry_at
        elif should_retry(agent, record, stopped) and not check_failed:
            at = self.clock() + backoff(agent, record.attempt)
            record = replace(record, state="waiting", retry_at=at, reason=(
                f"retry {record.attempt + 1} of {agent.retries + 1} at "
                f"{time.strftime('%H:%M:%S', time.localtime(at))} after: {record.reason}"))
            details["retry_at"] = at
        self._save(record)
        crash_point("finish-saved")
        if record.check and code == 0 and not stopped:
            checks.record_event(self.layout, agent, record)
        append_event(self.layout, kind, **details)
        remove_run_files(self.layout, record.run_id)
        return record

    def _rest_after_rate_limit(self, agent: Agent, record: StatusRecord) -> StatusRecord:
        """Retry when the CLI says the limit resets (or with backoff), without
        spending one of `retries`, and hold the preset's other agents till then."""
        hits = record.rate_limit_hits + 1
        until = self._hold_preset(agent, record, hits)
        clock = time.strftime("%H:%M:%S", time.localtime(until))
        return replace(record, state="waiting", retry_at=until, attempt=record.attempt - 1,
                       rate_limit_hits=hits,
                       reason=f"rate limited until {clock}; retrying (not counted as a retry)")

    def _hold_preset(self, agent: Agent, record: StatusRecord, hits: int) -> float:
        """Until when the preset's agents wait: the CLI's reset time, else backoff."""
        reset = record.result.get("reset_at")
        until = float(reset) if reset and reset > self.clock() else (
            self.clock() + backoff(agent, hits))
        directory = self.layout.base / "ratelimits"
        directory.mkdir(exist_ok=True)
        write_json(directory / f"{agent.preset}.json", {"until": until, "by": agent.task})
        return until

    def _record_result(self, agent: Agent, record: StatusRecord, code: int | None = None
                       ) -> tuple[StatusRecord, str | None]:
        """Read what the CLI reported from its log: into the status record,
        the final message into results/<pipeline>/<agent>.md."""
        try:
            text = (self.layout.root / record.log).read_text(errors="replace")
        except OSError:
            text = ""
        reported = parse_result(agent.preset or "", text, code)
        path = self.layout.result(agent.pipeline, agent.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, reported.final_message + "\n", durable=False)
        record = replace(record, result=reported.to_json(),
                         spent_usd=round(record.spent_usd + (reported.cost_usd or 0.0), 6))
        return record, (reported.error or "the CLI reported an error") if reported.is_error \
            else None

    def settle(self, agent: Agent, record: StatusRecord) -> StatusRecord:
        """Finish a run whose exit was recorded or whose process vanished;
        stop one past its timeout or stall limit. Descendants are not tracked
        while it runs (a /proc scan a second): stopping finds them by run id."""
        exit_path = self.layout.exit_file(record.run_id or "")
        code = read_exit_code(exit_path)
        if is_remote(record):
            return settle_job(self, agent, record, code)
        if code is not None:
            return self._finish(agent, record, code, exit_time(exit_path))
        if record.state == "launching" and record.pid is None:
            return self._recover_launch(agent, record)
        if self.check_liveness:
            if not is_alive(record.pid, record.pid_create_time):
                code = read_exit_code(exit_path)   # it may have finished since we looked
                if code is None and abandon_run(exit_path):
                    # gone before its wrapper claimed the run: killed between fork
                    # and exec, so the agent never ran; that attempt is owed
                    return self._owe_attempt(record)
                return self._finish(agent, record, code, exit_time(exit_path))
        if agent.check is not None and checks.note_checking(self.layout, record):
            record = replace(record, reason=checks.CHECKING)   # its own timeout applies now
            self._save(record, durable=False)
        if record.reason == checks.CHECKING and record.stop_reason is None:
            return record
        return self._enforce_limits(agent, record)

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
            signal_run(record, signal.SIGKILL)
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
        """SIGTERM the agent's group and descendants now; SIGKILL at kill_grace.
        A record whose pid is alive but does not carry its run id is not our
        agent (a forged or stale record): it is settled, never signalled."""
        if is_alive(record.pid, record.pid_create_time) and not processes.carries_run_id(
                record.pid or 0, record.run_id):
            return self._finish(agent, record, None, None)
        record = replace(record, stop_reason=reason, descendants=run_tree(record),
                         kill_at=self.clock() + agent.kill_grace)
        # the reason is recorded before the signal: if we die in between, the
        # run still ends with this reason (and a later pass sends SIGKILL)
        self._save(record)
        crash_point("stop-recorded")
        signal_run(record, signal.SIGTERM)
        append_event(self.layout, "stop", task=agent.task, run_id=record.run_id, reason=reason)
        return record

    def _owe_attempt(self, record: StatusRecord) -> StatusRecord:
        """The launch never ran the agent: relaunch the same attempt at once."""
        record = replace(record, state="waiting", attempt=record.attempt - 1, pid=None,
                         retry_at=self.clock(), reason="launch interrupted; relaunching")
        self._save(record)
        append_event(self.layout, "launch_abandoned", task=record.task, run_id=record.run_id)
        return record

    def _recover_launch(self, agent: Agent, record: StatusRecord) -> StatusRecord:
        """A pass crashed between recording a launch and recording its pid.

        The wrapper claims its run before it runs anything; taking that claim
        first proves it never started (even a child stuck between fork and
        exec for seconds), so relaunching can never make a second copy."""
        run_id = record.run_id or ""
        exit_path = self.layout.exit_file(run_id)
        pid = processes.find_run_process(run_id)
        if pid is None and abandon_run(exit_path):   # it never started: that attempt is owed
            return self._owe_attempt(record)
        pid = pid or processes.find_run_process(run_id)
        if pid is None:                              # it started, and has ended since
            return self._finish(agent, record, read_exit_code(exit_path), exit_time(exit_path))
        record = replace(record, state="running", pid=pid,
                         pid_create_time=processes.create_time(pid), reason="running")
        self._save(record)
        return record
