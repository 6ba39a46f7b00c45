"""A run's life after launch, as one pure function:

    transition(record, agent, observation, now) -> (record, effects)

An observation is a fact someone looked up (the wrapper's exit record with
what the outcome needs, the run gone, the run alive with its log's last
growth, a stop wanted); the effects are what must happen next, as data (save
the record, signal the run, write the signal, append an event), run in order
by the engine's effect runner (`runtime/effects.py`). Nothing here reads a file, a
clock or a process table, so every transition is unit-tested in milliseconds
(tests/test_transitions.py) and the I/O lives in `observe` and the runner.

A run is in one phase (`phase`); the status record's `state` stays the
contract's word for it (`launching`, `running`) and for how it ended:

    LAUNCHING  recorded; the executor has not answered yet (no pid, no job id)
    RUNNING    the executor holds it
    CHECKING   the agent exited 0 and its check runs (the check's own limit applies)
    STOPPING   orchestrate began stopping it: `stop_kind` says why (cancel,
               timeout, stall); SIGTERM sent, SIGKILL due at `kill_at`

and it leaves them as `done`, `failed`, `cancelled`, or `waiting` (a retry
after backoff, a rest after a rate limit, a check's relaunch with feedback,
an attempt owed because the agent never ran).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

from . import checks, landing, standin
from .fallback import as_ran, ends_in_fallback
from .fingerprint import digest_text
from .policy import SIGKILL, SIGTERM, StopKind, backoff, limit_exceeded, next_limit, should_retry
from .scheduler import RETRY_REQUESTED, Decision
from .spec import Agent
from .stopping import StopPolicy
from .records import ACTIVE, ENDED_BADLY, AgentResult, Handle, RunState, StatusRecord, clock_text, iso

MAX_RATE_LIMIT_HITS = 10   # rate-limited attempts in a row before it counts as a failure
VANISHED = "agent process ended without recording an exit status (killed with SIGKILL?)"


class Phase(Enum):
    LAUNCHING = "launching"
    RUNNING = "running"
    CHECKING = "checking"
    STOPPING = "stopping"


def unanswered(record: StatusRecord) -> bool:
    """Recorded as launching, and the executor's answer (pid, job id) is not
    in the record: the launch is still under way, or a crash lost the answer
    (then the run is looked for by its run id, stopping or not)."""
    return record.state == RunState.LAUNCHING and record.pid is None and record.job_id is None


def phase(record: StatusRecord) -> Phase:
    if unanswered(record):
        return Phase.LAUNCHING
    if record.stop_kind is not None:
        return Phase.STOPPING
    if record.checking:
        return Phase.CHECKING
    return Phase.RUNNING


class Value:
    """The observations and effects below: plain values, compared and shown
    by their fields. Dataclasses with these two methods shared: a frozen,
    slotted dataclass generates five methods per class and builds its class
    twice, about 10 ms more at import for these 23 on a 2-core machine, and
    every `doit` pays its imports. Nothing assigns to a value after it is made."""

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


# -- observations: facts ------------------------------------------------------
@dataclass(eq=False, repr=False)
class Submitted(Value):
    """The executor took the run."""
    handle: Handle
    running_reason: str = "running"


@dataclass(eq=False, repr=False)
class SubmitFailed(Value):
    """The executor refused the run: could not start it locally (not retried:
    the command or its folder is missing) or sbatch failed (retried)."""
    reason: str
    retried: bool


@dataclass(eq=False, repr=False)
class Ended(Value):
    """The wrapper's exit record was found, with what the outcome needs.

    `exit_said`: the reason for a non-zero code (its cause from the log);
    `executor_said`: why the executor saw it end when orchestrate did not stop
    it (e.g. "slurm: CANCELLED"); `reported`: what a preset CLI reported;
    `missing`: declared outputs not there; `signal_text`: the `.done`
    signal's content when all are; `verdict`: the check's."""
    code: int
    ended_at: str | None = None
    exit_said: str = ""
    executor_said: str | None = None
    reported: AgentResult | None = None
    missing: tuple[str, ...] = ()
    signal_text: str | None = None
    verdict: checks.Verdict | None = None


@dataclass(eq=False, repr=False)
class Vanished(Value):
    """Gone without an exit record: its wrapper was killed (SIGKILL, out of
    memory, a lost node); `executor_said` is the executor's word on it."""
    executor_said: str | None = None


@dataclass(eq=False, repr=False)
class NeverStarted(Value):
    """Its claim was taken before its wrapper's: the agent never ran (a
    launch interrupted between fork and exec, or before sbatch answered)."""


@dataclass(eq=False, repr=False)
class Found(Value):
    """After a crash lost the executor's answer: the run found by its run id."""
    handle: Handle


@dataclass(eq=False, repr=False)
class Alive(Value):
    """Still running at `now`; its log last grew at `last_output` (asked only
    with a stall_timeout); `checking`: its check has begun."""
    last_output: float | None = None
    checking: bool = False


@dataclass(eq=False, repr=False)
class StopWanted(Value):
    kind: StopKind
    reason: str


@dataclass(eq=False, repr=False)
class Tracked(Value):
    """Ready to stop: what the executor must remember to stop all of it
    later (local: its descendants, as [pid, start time])."""
    kind: StopKind
    reason: str
    descendants: tuple[tuple[int, float], ...] = ()


@dataclass(eq=False, repr=False)
class NotOurs(Value):
    """The recorded pid is alive but does not carry the run's id: a stale or
    forged record; it is settled, never signalled."""


Observation = (Submitted | SubmitFailed | Ended | Vanished | NeverStarted | Found | Alive
               | StopWanted | Tracked | NotOurs)


# -- effects: what the runner does ------------------------------------------
@dataclass(eq=False, repr=False)
class Save(Value):
    """Write the new status record (durable: fsynced)."""
    durable: bool = True


@dataclass(eq=False, repr=False)
class Kill(Value):
    """Signal everything of the run its executor can prove is its."""
    signal: int


@dataclass(eq=False, repr=False)
class Track(Value):
    """Ask the executor what stopping will need; it answers `Tracked`, or
    `NotOurs` when the record does not prove the process is ours."""
    kind: StopKind
    reason: str


@dataclass(eq=False, repr=False)
class WriteSignal(Value):
    text: str


@dataclass(eq=False, repr=False)
class RememberSignal(Value):
    """What the engine's cache knows of the signal now (None: none written)."""
    digest: str | None


@dataclass(eq=False, repr=False)
class WriteResult(Value):
    """The CLI's final message, to results/<pipeline>/<agent>.md."""
    text: str


@dataclass(eq=False, repr=False)
class WriteFeedback(Value):
    """A failed check's output, for the agent's relaunch."""
    text: str


@dataclass(eq=False, repr=False)
class HoldPreset(Value):
    """The preset's agents wait until then (ratelimits/<preset>.json);
    `reset_known`: the CLI said when (else `until` is a backoff's guess)."""
    preset: str
    until: float
    by: str
    reset_known: bool = True
    model: str | None = None   # the CLI said the limit is for this model family only


@dataclass(eq=False, repr=False)
class Event(Value):
    kind: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(eq=False, repr=False)
class RemoveRunFiles(Value):
    run_id: str | None


@dataclass(eq=False, repr=False)
class Crash(Value):
    """A named crash point (faults.py): where the chaos tests kill us."""
    point: str


@dataclass(eq=False, repr=False)
class Wake(Value):
    """Look again by then (a limit, a kill, a retry ahead)."""
    at: float


@dataclass(eq=False, repr=False)
class Forget(Value):
    """Remove the agent's status record: nothing is known of it any more."""
    pipeline: str
    agent: str


Effect = (Save | Kill | Track | WriteSignal | RememberSignal | WriteResult | WriteFeedback
          | HoldPreset | Event | RemoveRunFiles | Crash | Wake | Forget)
Effects = list[Effect]


# -- the function -------------------------------------------------------------
def transition(record: StatusRecord, agent: Agent, seen: Observation, now: float
               ) -> tuple[StatusRecord, Effects]:
    agent = as_ran(agent, record)   # a fallback's run is settled as the preset that ran
    if agent.stand_in is None:
        return _transition(record, agent, seen, now)
    return _undeclared(record, agent, seen, now)


def _undeclared(record: StatusRecord, agent: Agent, seen: Observation, now: float
                ) -> tuple[StatusRecord, Effects]:
    """A run whose declaration is gone (`standin`): watched and stopped as
    any run, by the limits of its launch. No longer declared, it ends
    `removed`, nothing of it current (no signal, no retry, no relaunch). Its
    file only invalid, an exit it was not stopped for waits for the file to
    be fixed (its outcome needs the declaration: outputs, check, retries)."""
    if (agent.stand_in == standin.PIPELINE_INVALID and isinstance(seen, Ended)
            and record.stop_kind is None):
        return record, []
    record, effects = _transition(record, agent, seen, now)
    if agent.stand_in != standin.NO_LONGER_DECLARED or record.state in ACTIVE:
        return record, effects
    kept: Effects = [RememberSignal(None) if isinstance(e, RememberSignal) else e
                     for e in effects if not isinstance(e, (WriteSignal, WriteFeedback))]
    return standin.ended_undeclared(record), kept


def _transition(record: StatusRecord, agent: Agent, seen: Observation, now: float
                ) -> tuple[StatusRecord, Effects]:
    if isinstance(seen, Alive):
        return _watch(record, agent, seen, now)
    if isinstance(seen, Ended):
        return _finish(record, agent, seen, now)
    if isinstance(seen, Vanished):
        return _finish(record, agent, None, now, seen.executor_said)
    if isinstance(seen, NotOurs):
        return _finish(replace(record, stop_kind=None, stop_reason=None), agent, None, now)
    if isinstance(seen, StopWanted):
        return record, [Track(seen.kind, seen.reason)]
    if isinstance(seen, Tracked):
        return _begin_stop(record, agent, seen, now)
    if isinstance(seen, Submitted):
        return _started(record, agent, seen)
    if isinstance(seen, SubmitFailed):
        return _submit_failed(record, agent, seen, now)
    if isinstance(seen, NeverStarted):
        return _owe_attempt(record, now)
    if isinstance(seen, Found):
        stopping = record.stop_kind is not None
        record = _attached(record, seen.handle, record.reason if stopping else "running")
        # a stop begun before we knew where it ran: its SIGTERM reaches it now
        # (its SIGKILL at kill_at, as for any stopping run)
        effects: Effects = [Save()]
        return record, effects + ([Kill(SIGTERM)] if stopping else [])
    raise TypeError(f"not an observation: {seen!r}")


def _attached(record: StatusRecord, handle: Handle, reason: str) -> StatusRecord:
    """Running, where the executor says it lives."""
    return replace(record, state=RunState.RUNNING, pid=handle.pid, pid_create_time=handle.create_time,
                   job_id=handle.job_id, reason=reason)


def _started(record: StatusRecord, agent: Agent, seen: Submitted) -> tuple[StatusRecord, Effects]:
    handle = seen.handle
    why = record.reason   # the scheduler's reason to launch it
    running = seen.running_reason
    if record.via:   # a fallback preset runs it: the reason says which, and why
        running = record.via if running == "running" else f"{running}; {record.via}"
    record = _attached(record, handle, running)
    extra = {"job_id": handle.job_id} if handle.job_id else {}
    # a job id is the only way back to a job: on disk before anything else
    effects: Effects = [Save(durable=handle.job_id is not None),
                        Event("launch", {"task": agent.task, "run_id": record.run_id,
                                         "pid": handle.pid, "attempt": record.attempt,
                                         "reason": why, **extra})]
    if record.via:
        effects.append(Event("fallback", {"task": agent.task, "run_id": record.run_id,
                                          "preset": record.preset, "reason": record.via}))
    return record, effects


def _submit_failed(record: StatusRecord, agent: Agent, seen: SubmitFailed, now: float
                   ) -> tuple[StatusRecord, Effects]:
    record = replace(record, state=RunState.FAILED, ended_at=iso(now), reason=seen.reason)
    effects: Effects = []
    if seen.retried:
        effects.append(Crash("submit-failed"))
        if should_retry(agent, record, stopped=True):
            record = _retry_later(record, agent, now)
    return record, effects + [Save(), Event("fail", {"task": agent.task,
                                                     "run_id": record.run_id,
                                                     "reason": record.reason})]


def _watch(record: StatusRecord, agent: Agent, seen: Alive, now: float
           ) -> tuple[StatusRecord, Effects]:
    """A live run: note that its check began; stop it past a limit; SIGKILL
    it once its grace is over, and again while it lives (the stop policy)."""
    effects: Effects = []
    if agent.check is not None and seen.checking and not record.checking:
        # its own timeout applies now; the reason says so to people
        record = replace(record, checking=True, reason=checks.CHECKING)
        effects.append(Save(durable=False))
    current = phase(record)
    if current is Phase.CHECKING:
        return record, effects
    if current is Phase.STOPPING:
        kill_at = record.kill_at
        if kill_at is None or now >= kill_at:
            # SIGKILL, and again every `rekill` while it is seen alive: a KILL
            # that did not arrive (a Slurm controller down) is sent again
            kill_at = now + StopPolicy(agent.kill_grace).rekill
            record = replace(record, kill_at=kill_at)
            effects += [Kill(SIGKILL), Save(durable=False)]
        return record, effects + [Wake(kill_at)]
    limit = limit_exceeded(agent, record, now, seen.last_output)
    if limit is not None:
        return record, effects + [Track(*limit)]
    wake = next_limit(agent, record, seen.last_output)
    return record, effects + ([Wake(wake)] if wake is not None else [])


def _begin_stop(record: StatusRecord, agent: Agent, seen: Tracked, now: float
                ) -> tuple[StatusRecord, Effects]:
    """SIGTERM now, SIGKILL at kill_grace. The reason is saved before the
    signal: if we die in between, the run still ends with it (and a later
    pass sends the SIGKILL)."""
    kill_at = StopPolicy(agent.kill_grace).kill_at(now)   # the one stop policy's
    record = replace(record, stop_kind=seen.kind, stop_reason=seen.reason,
                     descendants=[list(d) for d in seen.descendants], kill_at=kill_at)
    return record, [Save(), Crash("stop-recorded"), Kill(SIGTERM),
                    Event("stop", {"task": agent.task, "run_id": record.run_id,
                                   "reason": seen.reason}),
                    Wake(kill_at)]


def _finish(record: StatusRecord, agent: Agent, ended: Ended | None, now: float,
            executor_said: str | None = None) -> tuple[StatusRecord, Effects]:
    """Settle a run: its outcome, then a retry, a rest or a check's relaunch
    if one applies; the record, the events, the run's files."""
    effects: Effects = []
    record = replace(record, checking=False)   # whatever its check said, it is over
    stopped = record.stop_kind is not None
    if stopped:   # the wrapper is gone: what it left of the agent gets no more grace
        effects.append(Kill(SIGKILL))
    code = ended.code if ended else None
    if ended is None:   # no exit status was recorded: the wrapper itself was killed
        state = _stopped_state(record)
        record = replace(record, state=state, ended_at=iso(now), kill_at=None,
                         reason=record.stop_reason or executor_said or VANISHED)
    else:
        record, outcome_effects = _outcome(record, agent, ended, now)
        effects += outcome_effects
        effects.append(Crash("finish-signal-written"))
    check_failed = checks.failed(record, code, stopped)
    if check_failed:   # back to the agent with feedback, or failed for good
        record, feedback = checks.after_failure(agent, record, ended.verdict if ended else None,
                                                now)
        if feedback is not None:
            effects.append(WriteFeedback(feedback))
    effects.append(RememberSignal(record.signal_digest if record.state == RunState.DONE else None))
    rate_limited = record.state in (RunState.FAILED, RunState.CANCELLED) and bool(
        record.result.get("rate_limited"))
    if not (record.state == RunState.FAILED and rate_limited):
        record = replace(record, rate_limit_hits=0)   # the row of rate limits is broken
    queued = landing.merge_pending(record)
    kind = "finish" if queued else {RunState.DONE: "finish",
                                    RunState.CANCELLED: "cancel"}.get(record.state, "fail")
    details: dict[str, Any] = {"task": agent.task, "run_id": record.run_id, "exit_code": code,
                               "reason": record.reason, "attempt": record.attempt}
    details.update(_spend(agent, record, ended, now))
    if queued:
        details["merge"] = "queued"
    if record.state == RunState.CANCELLED and rate_limited:   # the wall is real
        effects.append(_hold(agent, record, record.rate_limit_hits + 1, now))
    if (record.state == RunState.FAILED and rate_limited
            and record.rate_limit_hits < MAX_RATE_LIMIT_HITS):
        record, hold = _rest_after_rate_limit(agent, record, now)
        effects.append(hold)
        details["retry_at"] = record.retry_at
    elif record.state == RunState.WAITING and not queued:   # a check's relaunch
        details["retry_at"] = record.retry_at
    elif should_retry(agent, record, stopped) and not check_failed:
        record = _retry_later(record, agent, now)
        details["retry_at"] = record.retry_at
    effects += [Save(), Crash("finish-saved")]
    if record.check and code == 0 and not stopped:
        effects.append(Event(*checks.verdict_event(agent, record)))
    effects += [Event(kind, details), RemoveRunFiles(record.run_id)]
    return record, effects


def _spend(agent: Agent, record: StatusRecord, ended: Ended | None, now: float
           ) -> dict[str, Any]:
    """What a run took, in its end's event: the history `doit plan` forecasts
    from and `doit status` adds up per preset (seconds; a preset's dollars)."""
    spend: dict[str, Any] = {}
    if record.started_epoch is not None:
        spend["duration_s"] = round(max(now - record.started_epoch, 0.0), 3)
    if agent.preset:
        reported = ended.reported if ended is not None else None
        spend.update(preset=agent.preset, model=agent.model,
                     cost_usd=reported.cost_usd if reported is not None else None)
    return spend


def _stopped_state(record: StatusRecord) -> RunState:
    """How a run orchestrate stopped ends: cancelled by a user, else failed."""
    return RunState.CANCELLED if record.stop_kind == StopKind.CANCEL else RunState.FAILED


def _outcome(record: StatusRecord, agent: Agent, ended: Ended, now: float
             ) -> tuple[StatusRecord, Effects]:
    """The run's outcome from its exit status; a run orchestrate was
    stopping ends with that reason whatever its exit code."""
    effects: Effects = []
    error = None
    reported = ended.reported
    if agent.preset and reported is not None:
        record = replace(record, result=reported.to_json(),
                         spent_usd=round(record.spent_usd + (reported.cost_usd or 0.0), 6))
        effects.append(WriteResult(reported.final_message + "\n"))
        if reported.is_error:
            error = reported.error or "the CLI reported an error"
    code = ended.code
    error = error or (ended.executor_said if code else None)
    ended_at = ended.ended_at or iso(now)
    if record.stop_kind is not None:
        state = _stopped_state(record)
        return replace(record, state=state, exit_code=code, ended_at=ended_at,
                       reason=record.stop_reason or "", kill_at=None), effects
    if code != 0:   # with what the CLI said, e.g. "exit 55: Gemini CLI is not running in ..."
        said = f": {error[:300]}" if error else ""
        return replace(record, state=RunState.FAILED, exit_code=code, ended_at=ended_at,
                       reason=ended.exit_said + said), effects
    if error is not None:   # the CLI exited 0 but called the run an error
        return replace(record, state=RunState.FAILED, exit_code=0, ended_at=ended_at,
                       reason=f"agent reported an error: {error[:200]}"), effects
    if ended.missing:
        return replace(record, state=RunState.FAILED, exit_code=0, ended_at=ended_at,
                       reason=f"exit 0 but output missing: {', '.join(ended.missing)}"), effects
    if agent.check is not None:
        record, passed = checks.judge(record, ended.verdict, ended_at)
        if not passed:
            return record, effects
    text = ended.signal_text or ""
    if agent.merge:   # done means merged: the signal waits for its branch to land
        return landing.queued(record, agent, text, ended_at, now), effects
    record = replace(record, state=RunState.DONE, exit_code=0, ended_at=ended_at,
                     reason=record.via or "done",
                     signal_digest=digest_text(text))
    return record, effects + [WriteSignal(text)]


def _retry_later(record: StatusRecord, agent: Agent, now: float) -> StatusRecord:
    at = now + backoff(agent, record.attempt)
    return replace(record, state=RunState.WAITING, retry_at=at, reason=(
        f"retry {record.attempt + 1} of {agent.retries + 1} at {clock_text(at)} "
        f"after: {record.reason}"))


def _rest_after_rate_limit(agent: Agent, record: StatusRecord, now: float
                           ) -> tuple[StatusRecord, HoldPreset]:
    """Retry when the CLI says the limit resets (or with backoff), without
    spending one of `retries`, and hold the preset's other agents till then."""
    hits = record.rate_limit_hits + 1
    hold = _hold(agent, record, hits, now)
    limited = (f"rate limited until {clock_text(hold.until)}" if hold.reset_known
               else "rate limited (reset unknown)")
    if ends_in_fallback(agent, hold.reset_known, hold.until, now):
        # the next launch, at once, takes the first fallback that is not limited
        record = replace(record, state=RunState.WAITING, retry_at=now,
                         attempt=record.attempt - 1, rate_limit_hits=hits,
                         reason=f"{agent.preset} {limited}; relaunching with a fallback preset")
        return record, hold
    record = replace(record, state=RunState.WAITING, retry_at=hold.until, attempt=record.attempt - 1,
                     rate_limit_hits=hits,
                     reason=f"rate limited until {clock_text(hold.until)}; retrying "
                            "(not counted as a retry)")
    return record, hold


def _hold(agent: Agent, record: StatusRecord, hits: int, now: float) -> HoldPreset:
    """Until when the preset's agents wait: the CLI's reset time, else backoff."""
    reset = record.result.get("reset_at")
    family = record.result.get("limit_model")
    family = family if isinstance(family, str) and family.isalnum() else None
    if isinstance(reset, (int, float)) and reset > now:
        return HoldPreset(agent.preset or "", float(reset), agent.task, True, family)
    return HoldPreset(agent.preset or "", now + backoff(agent, hits), agent.task, False, family)


def _owe_attempt(record: StatusRecord, now: float) -> tuple[StatusRecord, Effects]:
    """The launch never ran the agent: relaunch the same attempt at once."""
    record = replace(record, state=RunState.WAITING, attempt=record.attempt - 1, pid=None,
                     retry_at=now, reason="launch interrupted; relaunching")
    return record, [Save(), Event("launch_abandoned", {"task": record.task,
                                                        "run_id": record.run_id})]


# -- changes that are not a run's own: pure constructors ------------------------
# Each returns the new record and what must happen, run by the same effect
# runner (`runtime/effects.py`): with `transition`, they are every way a status
# record changes.
def launch_number(previous: StatusRecord | None) -> int:
    """The agent's launches so far, this one included (its run id and log say it)."""
    return (previous.launches if previous else 0) + 1


def launching(decision: Decision, previous: StatusRecord | None, run_id: str,
              inputs: dict[str, list[Any]], log: str, now: float,
              trace_id: str | None = None) -> tuple[StatusRecord, Effects]:
    """The record of a launch, before the executor is asked: a crash after
    it is recovered by its run id (`Found`, `NeverStarted`). It keeps what a
    relaunch must not forget (money spent, rate limits in a row, a check
    series) and the limits of this launch (`standin`); `trace_id`: the
    pipeline run's trace (telemetry)."""
    agent, fingerprint = decision.agent, decision.fingerprint
    record = StatusRecord(
        state=RunState.LAUNCHING, pipeline=agent.pipeline, agent=agent.name, task=agent.task,
        attempt=decision.attempt, run_id=run_id, trace_id=trace_id,
        launches=launch_number(previous),
        started_at=iso(now), started_epoch=now, reason=decision.reason, log=log,
        fingerprint=fingerprint.digest if fingerprint else None,
        config_digest=fingerprint.config if fingerprint else None,
        inputs=inputs, upstream=dict(fingerprint.upstream) if fingerprint else {},
        upstream_used=decision.upstream_used,
        spent_usd=previous.spent_usd if previous else 0.0,
        rate_limit_hits=previous.rate_limit_hits if previous else 0,
        executor=agent.executor, limits=standin.launch_limits(agent),
        preset=agent.preset, via=decision.via,
        candidate_of=f"{agent.pipeline}:{agent.candidate_of}" if agent.candidate_of else None,
        **checks.carried(previous))
    if previous is not None and previous.preset not in (None, agent.preset):
        record = replace(record, resume_session=None)   # a session never moves between CLIs
    return record, [Save(durable=False)]


def cancelled_before_start(decision: Decision, previous: StatusRecord | None,
                           inputs: dict[str, list[Any]], now: float
                           ) -> tuple[StatusRecord, Effects]:
    """A cancel of an agent that is not running (queued, ready, waiting for a
    retry or a signal): it stays cancelled until its fingerprint changes or
    `doit forget`, like a cancelled run. Nothing of an earlier run is kept
    as this one's (no start time, pid or exit code: it never started)."""
    agent, fingerprint = decision.agent, decision.fingerprint
    base = previous or StatusRecord(state=RunState.CANCELLED, pipeline=agent.pipeline,
                                    agent=agent.name, task=agent.task)
    record = replace(
        base, state=RunState.CANCELLED, reason="cancelled by user", started_at=None,
        started_epoch=None, ended_at=iso(now), pid=None, pid_create_time=None, job_id=None,
        exit_code=None, retry_at=None, retry_requested=False, checking=False,
        fingerprint=fingerprint.digest if fingerprint else None,
        config_digest=fingerprint.config if fingerprint else None, inputs=inputs,
        upstream=dict(fingerprint.upstream) if fingerprint else {},
        upstream_used=decision.upstream_used)
    return record, [Save(), Event("cancel", {"task": agent.task, "reason": record.reason})]


def retry_requested(record: StatusRecord | None, task: str
                    ) -> tuple[StatusRecord, Effects] | None:
    """`doit retry`: a failed or cancelled agent becomes pending, a fresh
    launch (attempts and backoff start over); None for any other."""
    if record is None or record.state not in ENDED_BADLY:
        return None
    pending = replace(record, state=RunState.PENDING, fingerprint=None, retry_at=None,
                      attempt=0, reason=RETRY_REQUESTED, retry_requested=True)
    return pending, [Save(), Event("retry", {"task": task, "was": record.state})]


def feedback_given(record: StatusRecord | None, task: str, text: str, feedback_file: str
                   ) -> tuple[StatusRecord, Effects] | None:
    """`doit retry TASK --feedback FILE`: an agent that ran (done, failed or
    cancelled) is relaunched as after a failed check, the feedback file
    named in its record so that the launch carries it (`checks.carried`),
    in the session its CLI reported last (resumed where the CLI can);
    attempts start over. None for any other."""
    if record is None or record.state not in (RunState.DONE, *ENDED_BADLY):
        return None
    session = record.result.get("session_id") or record.resume_session
    waiting = replace(record, state=RunState.WAITING, retry_at=0.0, fingerprint=None,
                      attempt=0, reason=RETRY_REQUESTED,
                      retry_requested=True, check_attempts=0, relaunch="review",
                      resume_session=session if isinstance(session, str) else None,
                      feedback=feedback_file, merge={})
    return waiting, [WriteFeedback(text), Save(),
                     Event("retry", {"task": task, "was": record.state, "feedback": True})]


def retired(record: StatusRecord, task: str, reason: str, now: float
            ) -> tuple[StatusRecord, Effects]:
    """A fan-out instance whose item left its list: `removed`, its outputs
    kept, nothing of it current."""
    gone = replace(record, state=RunState.REMOVED, fingerprint=None, checking=False,
                   ended_at=record.ended_at or iso(now), reason=reason)
    return gone, [Save(), Event("removed", {"task": task})]


def gate_row(pipeline: str, name: str, source: str, signal_digest: str, state: RunState,
             reason: str, now: float) -> tuple[StatusRecord, Effects]:
    """A planned fan-out's own row, once its planner's list is read: done
    (N instances) or failed (the list is invalid), for that signal."""
    row = StatusRecord(state=state, pipeline=pipeline, agent=name, task=f"{pipeline}:{name}",
                       reason=reason, started_at=iso(now), ended_at=iso(now),
                       upstream={source: signal_digest})
    return row, [Save()]


def forgotten(record: StatusRecord | None, pipeline: str, name: str, verb: str = "forgotten"
              ) -> tuple[str | None, Effects]:
    """`doit forget` and `doit clean`: the record goes, so the agent runs
    again; refused (the reason, no effects) while it runs: a second copy
    would start while the first one runs."""
    task = f"{pipeline}:{name}"
    if record is not None and record.state in ACTIVE:
        return f"{task} is running; not {verb} (doit cancel {task} first)", []
    return None, [Forget(pipeline, name)]


# -- best of N: a contest's rows (see core/bestof.py, runtime/bestof.py) ----------
def contest_decided(agent: Agent, previous: StatusRecord | None, key: dict[str, str],
                    winner: str | None, reason: str, signal_text: str | None, log: str,
                    now: float, won: StatusRecord | None = None
                    ) -> tuple[StatusRecord, Effects]:
    """A best_of agent's row once its contest is over: done from the winner
    (its signal written from the winner's outputs), or failed; `key`: the
    candidates' runs it was decided on (a relaunch of any is a new contest).
    With `merge = true` the winner's branch (now the agent's) joins the merge
    queue instead: done means merged, the signal waits; the row carries the
    winning run's id and trace (`won`), so its merge is that attempt's child."""
    done = winner is not None and signal_text is not None
    digest = digest_text(signal_text) if done and signal_text is not None else None
    state = RunState.DONE if done else (
        RunState.CANCELLED if reason.startswith("cancelled") else RunState.FAILED)
    row = StatusRecord(
        state=state, pipeline=agent.pipeline,
        agent=agent.name, task=agent.task, reason=reason, log=log,
        started_at=previous.started_at if previous and previous.started_at else iso(now),
        ended_at=iso(now), upstream=dict(key), signal_digest=digest,
        winner=f"{agent.pipeline}:{winner}" if winner else None)
    if done and agent.merge and signal_text is not None:
        row = landing.queued(replace(row, run_id=won.run_id if won else None,
                                     trace_id=won.trace_id if won else None),
                             agent, signal_text, iso(now), now)
        queued = {"task": agent.task, "reason": reason, "winner": row.winner, "merge": "queued"}
        return row, [RememberSignal(None), Save(), Event("finish", queued)]
    effects: Effects = [WriteSignal(signal_text)] if done and signal_text is not None else []
    details: dict[str, Any] = {"task": agent.task, "reason": reason}
    if row.winner:
        details["winner"] = row.winner
    kind = {RunState.DONE: "finish", RunState.CANCELLED: "cancel"}.get(state, "fail")
    return row, effects + [RememberSignal(digest), Save(), Event(kind, details)]


def contest_reopened(agent: Agent, previous: StatusRecord, now: float
                     ) -> tuple[StatusRecord, Effects]:
    """A candidate ran again: the old winner no longer stands for the agent."""
    row = replace(previous, state=RunState.WAITING, reason="waiting on candidates",
                  started_at=iso(now), ended_at=None, winner=None, retry_requested=False,
                  checking=False, merge={})
    return row, [Save()]


def contest_judging(agent: Agent, previous: StatusRecord | None, reason: str, log: str,
                    now: float) -> tuple[StatusRecord, Effects]:
    """Every candidate has ended and several passed: the judge runs (the
    row's `checking`: its contest is being decided)."""
    base = previous or StatusRecord(state=RunState.WAITING, pipeline=agent.pipeline,
                                    agent=agent.name, task=agent.task)
    row = replace(base, state=RunState.WAITING, reason=reason, log=log, checking=True,
                  started_at=iso(now), ended_at=None, winner=None, retry_requested=False)
    return row, [Save(), Event("judge", {"task": agent.task, "reason": reason})]


def candidate_withdrawn(previous: StatusRecord | None, pipeline: str, name: str,
                        agent_name: str, reason: str, now: float
                        ) -> tuple[StatusRecord, Effects]:
    """A candidate that had not started (queued, waiting to retry) when its
    contest was won: cancelled, as a cancel before start leaves it."""
    task = f"{pipeline}:{name}"
    base = previous or StatusRecord(state=RunState.CANCELLED, pipeline=pipeline, agent=name,
                                    task=task)
    record = replace(base, state=RunState.CANCELLED, reason=reason, ended_at=iso(now),
                     pid=None, retry_at=None, retry_requested=False, checking=False,
                     fingerprint=None, candidate_of=f"{pipeline}:{agent_name}")
    return record, [Save(), Event("cancel", {"task": task, "reason": reason})]
