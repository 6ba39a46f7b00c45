"""The run state machine, transition by transition, with a fake clock and
made-up observations: no process, file or doit (the end-to-end tests in
test_run, test_control, test_safety, test_slurm cover the I/O around it)."""
from __future__ import annotations

import signal
from dataclasses import replace

import pytest

from orchestrate.core import transitions as t
from orchestrate.core.checks import CHECKING, Verdict
from orchestrate.runtime.executors import Handle
from orchestrate.core.policy import StopKind
from orchestrate.agents.results import AgentResult
from orchestrate.core.spec import Agent
from orchestrate.runtime.state import StatusRecord

NOW = 1_000_000.0
AGENT = Agent("p", "a", "run a", kill_grace=5.0, retry_backoff=2.0)


def running(**changes) -> StatusRecord:
    record = StatusRecord(state="running", pipeline="p", agent="a", task="p:a", attempt=1,
                          run_id="p.a.1.abcd", launches=1, pid=4242, pid_create_time=7.0,
                          started_epoch=NOW - 30, reason="running", log="logs/p/a.log")
    return replace(record, **changes)


def kinds(effects) -> list[str]:
    return [type(e).__name__ for e in effects]


def events(effects) -> list[str]:
    return [e.kind for e in effects if isinstance(e, t.Event)]


def saved(effects) -> bool:
    return any(isinstance(e, t.Save) for e in effects)


def step(record, fact, agent=AGENT, now=NOW):
    return t.transition(record, agent, fact, now)


# -- launch ------------------------------------------------------------------
def test_launching_record_is_in_the_launching_phase_until_the_executor_answers():
    launching = running(state="launching", pid=None, pid_create_time=None, reason="ready")
    assert t.phase(launching) is t.Phase.LAUNCHING
    record, effects = step(launching, t.Submitted(Handle(pid=99, create_time=1.5)))
    assert (record.state, record.pid, record.pid_create_time) == ("running", 99, 1.5)
    assert t.phase(record) is t.Phase.RUNNING
    assert effects[0] == t.Save(durable=False)     # a local pid is found again by run id
    launch = effects[1]
    assert launch.kind == "launch" and launch.details["reason"] == "ready"


def test_a_slurm_job_id_is_saved_durably_before_anything_else():
    launching = running(state="launching", pid=None, executor="slurm")
    record, effects = step(launching, t.Submitted(Handle(job_id="17")))
    assert record.job_id == "17" and effects[0] == t.Save(durable=True)
    assert effects[1].details["job_id"] == "17"


def test_a_local_start_failure_fails_without_retry():
    agent = replace(AGENT, retries=3)
    record, effects = step(running(state="launching", pid=None),
                           t.SubmitFailed("command not found: x (exit 127)", retried=False),
                           agent)
    assert record.state == "failed" and record.reason.startswith("command not found")
    assert events(effects) == ["fail"]


def test_sbatch_refusing_is_a_failed_attempt_that_is_retried():
    agent = replace(AGENT, retries=1)
    record, effects = step(running(state="launching", pid=None, executor="slurm"),
                           t.SubmitFailed("sbatch: error: invalid partition", retried=True),
                           agent)
    assert record.state == "waiting" and record.retry_at == NOW + 2.0
    assert "after: sbatch: error: invalid partition" in record.reason
    assert t.Crash("submit-failed") in effects


# -- finish ----------------------------------------------------------------
def test_exit_0_with_its_outputs_is_done_and_writes_the_signal():
    record, effects = step(running(), t.Ended(0, "2026-01-01T00:00:00.000Z",
                                              signal_text='{"x": 1}\n'))
    assert record.state == "done" and record.exit_code == 0 and record.reason == "done"
    assert t.WriteSignal('{"x": 1}\n') in effects
    assert t.RememberSignal(record.signal_digest) in effects
    assert events(effects) == ["finish"]
    assert effects[-1] == t.RemoveRunFiles("p.a.1.abcd")
    # the signal is written before the record says done, and both before the event
    order = kinds(effects)
    assert order.index("WriteSignal") < order.index("Save") < order.index("Event")


def test_a_non_zero_exit_fails_with_its_cause():
    record, effects = step(running(), t.Ended(3, None, exit_said="exit 3"))
    assert (record.state, record.reason, record.exit_code) == ("failed", "exit 3", 3)
    assert record.ended_at == t.iso(NOW)
    assert t.RememberSignal(None) in effects and events(effects) == ["fail"]
    assert not any(isinstance(e, t.WriteSignal) for e in effects)


def test_exit_0_without_a_declared_output_fails():
    record, _ = step(running(), t.Ended(0, None, missing=("out.txt",)))
    assert record.state == "failed"
    assert record.reason == "exit 0 but output missing: out.txt"


def test_a_cli_that_exits_0_but_reports_an_error_fails_and_its_cost_counts():
    agent = replace(AGENT, preset="claude", command=None)
    reported = AgentResult(final_message="oops", is_error=True, error="overloaded",
                           cost_usd=0.25)
    record, effects = step(running(spent_usd=1.0), t.Ended(0, None, reported=reported,
                                                           signal_text="{}"), agent)
    assert record.state == "failed" and record.reason == "agent reported an error: overloaded"
    assert record.spent_usd == 1.25 and record.result["final_message"] == "oops"
    assert t.WriteResult("oops\n") in effects


def test_a_failure_is_retried_after_backoff_doubling_per_attempt():
    agent = replace(AGENT, retries=2)
    record, effects = step(running(attempt=2), t.Ended(1, None, exit_said="exit 1"), agent)
    assert record.state == "waiting" and record.retry_at == NOW + 4.0
    assert record.reason.startswith("retry 3 of 3 at ")
    (fail,) = [e for e in effects if isinstance(e, t.Event)]
    assert fail.kind == "fail" and fail.details["retry_at"] == NOW + 4.0


def test_no_retry_for_a_fail_fast_exit_code_or_when_attempts_are_spent():
    agent = replace(AGENT, retries=2, fail_fast_exit=(2,))
    assert step(running(), t.Ended(2, None, exit_said="exit 2"), agent)[0].state == "failed"
    assert step(running(attempt=3), t.Ended(1, None), agent)[0].state == "failed"


# -- vanish, Slurm end states ------------------------------------------------
def test_a_run_gone_without_exit_record_fails_as_vanished():
    record, effects = step(running(), t.Vanished())
    assert record.state == "failed" and record.reason == t.VANISHED
    assert not any(isinstance(e, t.Kill) for e in effects)   # nothing to stop: not stopping
    assert events(effects) == ["fail"]


@pytest.mark.parametrize("state", ["NODE_FAIL", "TIMEOUT", "OUT_OF_MEMORY", "CANCELLED"])
def test_a_slurm_job_gone_without_exit_record_fails_with_slurms_state(state):
    record, _ = step(running(executor="slurm", pid=None, job_id="5"),
                     t.Vanished(f"slurm: {state}"))
    assert record.state == "failed" and record.reason == f"slurm: {state}"


def test_a_job_scancelled_from_outside_says_so_after_its_exit_status():
    record, _ = step(running(executor="slurm", pid=None, job_id="5"),
                     t.Ended(143, None, exit_said="exit 143 (SIGTERM)",
                             executor_said="slurm: CANCELLED"))
    assert record.state == "failed"
    assert record.reason == "exit 143 (SIGTERM): slurm: CANCELLED"


# -- limits: timeout, stall, kill after grace -------------------------------
def test_a_live_run_within_its_limits_asks_to_be_woken_at_the_next_one():
    agent = replace(AGENT, timeout=60.0)
    record, effects = step(running(), t.Alive(), agent)
    assert record == running() and effects == [t.Wake(NOW - 30 + 60)]


@pytest.mark.parametrize("limit, fact, kind, reason", [
    ({"timeout": 20.0}, t.Alive(), StopKind.TIMEOUT, "timeout after 20s"),
    ({"stall_timeout": 10.0}, t.Alive(last_output=NOW - 11), StopKind.STALL,
     "stalled: no output for 10s"),
])
def test_past_a_limit_the_run_is_tracked_then_stopped(limit, fact, kind, reason):
    agent = replace(AGENT, **limit)
    record, effects = step(running(), fact, agent)
    assert effects == [t.Track(kind, reason)] and record == running()
    # the executor answers with what stopping needs: SIGTERM now, SIGKILL at grace
    record, effects = step(record, t.Tracked(kind, reason, ((4243, 8.0),)), agent)
    assert t.phase(record) is t.Phase.STOPPING and record.stop_kind == kind
    assert record.stop_reason == reason and record.kill_at == NOW + 5.0
    assert record.descendants == [[4243, 8.0]]
    assert kinds(effects) == ["Save", "Crash", "Kill", "Event", "Wake"]
    assert effects[1] == t.Crash("stop-recorded") and effects[2] == t.Kill(signal.SIGTERM)
    assert effects[-1] == t.Wake(NOW + 5.0)


def test_a_stall_counts_from_the_start_when_the_log_never_grew():
    agent = replace(AGENT, stall_timeout=40.0)
    assert step(running(), t.Alive(last_output=None), agent)[1] == [t.Wake(NOW + 10)]


def test_sigkill_once_the_grace_is_over_then_wait_for_the_exit():
    stopping = running(stop_kind="timeout", stop_reason="timeout after 20s",
                       kill_at=NOW + 1)
    record, effects = step(stopping, t.Alive(), replace(AGENT, timeout=20.0))
    assert record == stopping and effects == [t.Wake(NOW + 1)]   # not yet
    record, effects = step(stopping, t.Alive(), replace(AGENT, timeout=20.0), now=NOW + 1)
    assert effects == [t.Kill(signal.SIGKILL), t.Save(durable=False), t.Wake(NOW + 2)]
    assert record.kill_at == NOW + 2      # and again a second later while it lives
    again, effects = step(record, t.Alive(), replace(AGENT, timeout=20.0), now=NOW + 2)
    assert effects[0] == t.Kill(signal.SIGKILL) and again.kill_at == NOW + 3


def test_a_stopped_run_ends_with_its_stop_reason_whatever_its_exit_code_and_is_retried():
    agent = replace(AGENT, retries=1, fail_fast_exit=(143,))
    stopping = running(stop_kind="timeout", stop_reason="timeout after 20s", kill_at=NOW)
    record, effects = step(stopping, t.Ended(143, None), agent)
    assert record.state == "waiting" and "after: timeout after 20s" in record.reason
    assert effects[0] == t.Kill(signal.SIGKILL)   # what it left gets no more grace
    assert record.kill_at is None


def test_a_checking_run_is_not_held_to_the_agents_limits():
    agent = replace(AGENT, timeout=20.0, check="true")
    record, effects = step(running(), t.Alive(checking=True), agent)
    assert record.checking and t.phase(record) is t.Phase.CHECKING
    assert record.reason == CHECKING                  # what people read
    assert effects == [t.Save(durable=False)]
    assert step(record, t.Alive(), agent) == (record, [])
    # the phase is the field's, whatever the reason says
    assert t.phase(replace(record, reason="anything")) is t.Phase.CHECKING
    assert t.phase(running(reason=CHECKING)) is t.Phase.RUNNING
    ended, _ = step(record, t.Ended(0, None, verdict=Verdict("true", 0, "ok"),
                                    signal_text="{}"), agent)
    assert ended.state == "done" and not ended.checking


# -- cancel --------------------------------------------------------------------
def test_cancel_stops_and_the_run_ends_cancelled_not_retried():
    agent = replace(AGENT, retries=3)
    record, effects = step(running(), t.StopWanted(StopKind.CANCEL, "cancelled by user"), agent)
    assert effects == [t.Track(StopKind.CANCEL, "cancelled by user")]
    record, _ = step(record, t.Tracked(StopKind.CANCEL, "cancelled by user"), agent)
    record, effects = step(record, t.Ended(143, None), agent)
    assert (record.state, record.reason) == ("cancelled", "cancelled by user")
    assert events(effects) == ["cancel"]


def test_a_cancelled_wrapper_killed_outright_is_still_cancelled():
    stopping = running(stop_kind="cancel", stop_reason="cancelled by user", kill_at=NOW)
    record, effects = step(stopping, t.Vanished())
    assert record.state == "cancelled" and effects[0] == t.Kill(signal.SIGKILL)


def test_a_pid_that_is_not_ours_is_settled_and_never_signalled():
    record, effects = step(running(), t.NotOurs())
    assert record.state == "failed" and record.reason == t.VANISHED
    assert not any(isinstance(e, (t.Kill, t.Track)) for e in effects)


# -- rate limits ---------------------------------------------------------------
def limited(reset_at=None) -> AgentResult:
    return AgentResult(is_error=True, error="429", rate_limited=True, reset_at=reset_at)


def test_a_rate_limit_rests_until_the_reset_without_spending_a_retry():
    agent = replace(AGENT, preset="codex", command=None)
    record, effects = step(running(attempt=1), t.Ended(1, None, reported=limited(NOW + 60)),
                           agent)
    assert record.state == "waiting" and record.retry_at == NOW + 60
    assert record.attempt == 0 and record.rate_limit_hits == 1   # the attempt is given back
    assert t.HoldPreset("codex", NOW + 60, "p:a") in effects
    assert "not counted as a retry" in record.reason


def test_without_a_reset_time_the_rest_backs_off_and_ten_in_a_row_fail():
    agent = replace(AGENT, preset="claude", command=None)
    record, effects = step(running(rate_limit_hits=3), t.Ended(1, None, reported=limited()),
                           agent)
    assert record.retry_at == NOW + 2.0 * 2 ** 3 and record.rate_limit_hits == 4
    record, _ = step(running(rate_limit_hits=t.MAX_RATE_LIMIT_HITS),
                     t.Ended(1, None, reported=limited()), agent)
    assert record.state == "failed"


def test_a_success_breaks_the_row_of_rate_limits():
    record, _ = step(running(rate_limit_hits=4), t.Ended(0, None, signal_text="{}"))
    assert record.state == "done" and record.rate_limit_hits == 0


def test_a_run_cancelled_mid_rate_limit_still_holds_its_preset():
    agent = replace(AGENT, preset="gemini", command=None)
    stopping = running(stop_kind="cancel", stop_reason="cancelled by user", kill_at=NOW)
    record, effects = step(stopping, t.Ended(143, None, reported=limited(NOW + 30)), agent)
    assert record.state == "cancelled"
    assert t.HoldPreset("gemini", NOW + 30, "p:a") in effects


# -- checks ------------------------------------------------------------------
def test_a_failed_check_relaunches_with_feedback_then_fails_for_good():
    agent = replace(AGENT, check="pytest -q", check_retries=1)
    verdict = Verdict("pytest -q", 1, "1 failed", ("E assert 1 == 2",))
    record, effects = step(running(), t.Ended(0, None, verdict=verdict, signal_text="{}"),
                           agent)
    assert record.state == "waiting" and record.retry_at == NOW and record.attempt == 0
    assert record.reason == "check 1 of 1 failed: 1 failed"
    assert record.feedback == ".orchestrate/feedback/p/a.md"
    feedback = [e for e in effects if isinstance(e, t.WriteFeedback)]
    assert len(feedback) == 1 and "E assert 1 == 2" in feedback[0].text
    assert events(effects) == ["check_failed", "fail"]
    assert not any(isinstance(e, t.WriteSignal) for e in effects)
    # the relaunch fails its check again: no more checks left
    again = running(check_attempts=record.check_attempts, feedback=record.feedback)
    record, effects = step(again, t.Ended(0, None, verdict=verdict), agent)
    assert record.state == "failed" and record.feedback is None
    assert not any(isinstance(e, t.WriteFeedback) for e in effects)


def test_a_passing_check_is_done_and_says_so():
    agent = replace(AGENT, check="true")
    record, effects = step(running(), t.Ended(0, None, verdict=Verdict("true", 0, "ok"),
                                              signal_text="{}"), agent)
    assert record.state == "done" and events(effects) == ["check_passed", "finish"]


def test_a_check_killed_without_a_verdict_fails_the_check():
    agent = replace(AGENT, check="true", check_retries=0)
    record, _ = step(running(), t.Ended(0, None, verdict=None), agent)
    assert record.state == "failed" and "without a verdict" in record.reason


# -- recovery after a crash ------------------------------------------------
def test_a_launch_that_never_ran_is_owed_its_attempt_at_once():
    launching = running(state="launching", pid=None, attempt=2)
    record, effects = step(launching, t.NeverStarted())
    assert (record.state, record.attempt, record.retry_at) == ("waiting", 1, NOW)
    assert events(effects) == ["launch_abandoned"]


def test_a_launch_found_by_its_run_id_is_reattached_not_relaunched():
    launching = running(state="launching", pid=None, executor="slurm")
    record, effects = step(launching, t.Found(Handle(job_id="88")))
    assert (record.state, record.job_id) == ("running", "88") and effects == [t.Save()]


def test_legacy_records_being_stopped_get_their_kind():
    data = running(stop_reason="cancelled by user").to_json()
    del data["stop_kind"]
    assert StatusRecord.from_json(data).stop_kind == "cancel"


@pytest.mark.parametrize("reason, checking, retry_requested", [
    ("checking", True, False),
    ("retry requested (doit retry)", False, True),
    ("running", False, False),
])
def test_legacy_records_say_checking_and_retry_requested_in_their_reason(
        reason, checking, retry_requested):
    """Written by the version before the fields: the reason was the phase."""
    data = running(reason=reason).to_json()
    del data["checking"], data["retry_requested"]
    record = StatusRecord.from_json(data)
    assert (record.checking, record.retry_requested) == (checking, retry_requested)
    assert t.phase(record) is (t.Phase.CHECKING if checking else t.Phase.RUNNING)


def test_a_record_reads_its_state_as_a_run_state_and_writes_the_contracts_word():
    import json
    record = StatusRecord.from_json(running().to_json())
    assert record.state is t.RunState.RUNNING and record.active
    assert json.loads(json.dumps(record.to_json()))["state"] == "running"
    with pytest.raises(TypeError):
        StatusRecord.from_json({**running().to_json(), "state": "sleeping"})


def test_a_record_read_back_is_the_record_written_with_every_field_or_fewer():
    """A record with every field is read by setting them (the fast path of a
    pass), one written before a field existed through __init__ (its
    default): both read back as what was written."""
    import json
    written = running(state=t.RunState.RUNNING, inputs={"in.txt": [1, 2, "d"]},
                      descendants=[[4243, 8.0]],
                      limits={"timeout": 20.0}, retry_at=NOW + 5, spent_usd=0.25)
    data = json.loads(json.dumps(written.to_json()))
    read = StatusRecord.from_json(data)
    assert read == written and read.state is t.RunState.RUNNING
    assert read.to_json() == written.to_json() and repr(read) == repr(written)
    del data["executor"], data["limits"]
    older = StatusRecord.from_json(data)
    assert older == replace(written, limits={}) and older.executor == "local"


def test_every_observation_has_a_transition():
    facts = [t.Submitted(Handle(pid=1)), t.SubmitFailed("x", False), t.Ended(0, None),
             t.Vanished(), t.NeverStarted(), t.Found(Handle(pid=1)), t.Alive(),
             t.StopWanted(StopKind.CANCEL, "c"), t.Tracked(StopKind.CANCEL, "c"), t.NotOurs()]
    for fact in facts:
        record, effects = step(running(), fact)
        assert isinstance(record, StatusRecord) and isinstance(effects, list)
    with pytest.raises(TypeError):
        step(running(), object())


# -- the observer's rule for remote runs ---------------------------------------
class PolledExecutor:
    """Stands in for Slurm in `observe_run`: polled, with a given answer."""
    name = "slurm"
    polled = True
    unclaimed_means_never_ran = False


def test_a_remote_run_is_settled_only_once_its_executor_says_it_ended(tmp_path):
    """On a shared filesystem the log is complete only once the job's
    processes closed it: an exit record alone does not settle a Slurm run."""
    from orchestrate.runtime.executors import Observation
    from orchestrate.runtime.observe import observe_run
    from orchestrate.runtime.state import Layout
    layout = Layout(tmp_path)
    layout.make_dirs(["p"])
    record = running(executor="slurm", pid=None, job_id="12")
    layout.exit_file(record.run_id).write_text("143\n")
    slurm = PolledExecutor()
    assert observe_run(layout, AGENT, record, slurm, None) is None          # not asked yet
    assert observe_run(layout, AGENT, record, slurm, Observation(True)) is None  # COMPLETING
    fact = observe_run(layout, AGENT, record, slurm, Observation(False, "slurm: CANCELLED"))
    assert isinstance(fact, t.Ended) and fact.code == 143
    assert fact.executor_said == "slurm: CANCELLED"   # killed by a signal we did not send
    stopped = replace(record, stop_kind="cancel", stop_reason="cancelled by user")
    fact = observe_run(layout, AGENT, stopped, slurm, Observation(False, "slurm: CANCELLED"))
    assert fact.executor_said is None                 # we sent it: our reason stands


class FindingExecutor(PolledExecutor):
    """A polled executor whose `find` knows one job by its run id."""

    def __init__(self, job_id):
        self.job_id = job_id

    def find(self, run_id):
        return Handle(job_id=self.job_id) if self.job_id else None


@pytest.mark.parametrize("stop_kind", [None, "cancel"])
def test_a_launch_whose_answer_was_lost_is_found_by_its_run_id_even_if_its_job_ended(
        tmp_path, stop_kind):
    """A crash between recording the launch and recording sbatch's answer:
    the job is looked for by name first (its exit record waits for that),
    also when a cancel began meanwhile; found, its stop reaches it."""
    from orchestrate.runtime.executors import Observation
    from orchestrate.runtime.observe import observe_run
    from orchestrate.runtime.state import Layout
    layout = Layout(tmp_path)
    layout.make_dirs(["p"])
    record = running(state="launching", executor="slurm", pid=None, pid_create_time=None,
                     stop_kind=stop_kind, stop_reason=stop_kind and "cancelled by user")
    layout.exit_file(record.run_id).write_text("0\n")
    fact = observe_run(layout, AGENT, record, FindingExecutor("31"), None)
    assert fact == t.Found(Handle(job_id="31"))
    record, effects = step(record, fact)
    assert record.state == "running" and record.job_id == "31"
    assert (t.Kill(signal.SIGTERM) in effects) == (stop_kind is not None)
    # then the exit record settles it once Slurm says the job ended
    fact = observe_run(layout, AGENT, record, FindingExecutor("31"), Observation(False))
    assert isinstance(fact, t.Ended) and fact.code == 0


def test_a_job_slurm_no_longer_knows_adds_nothing_to_its_exit_status(tmp_path):
    from orchestrate.runtime.executors import Observation
    from orchestrate.runtime.observe import observe_run
    from orchestrate.runtime.state import Layout
    layout = Layout(tmp_path)
    layout.make_dirs(["p"])
    record = running(executor="slurm", pid=None, job_id="12")
    layout.exit_file(record.run_id).write_text("137\n")
    gone = Observation(False, "slurm: job 12 is no longer known to Slurm", known=False)
    assert observe_run(layout, AGENT, record, PolledExecutor(), gone).executor_said is None
    # an exit status of its own (not a signal): Slurm's state adds nothing either
    layout.exit_file(record.run_id).write_text("1\n")
    failed = Observation(False, "slurm: FAILED")
    fact = observe_run(layout, AGENT, record, PolledExecutor(), failed)
    assert fact.code == 1 and fact.executor_said is None


def test_the_engine_asks_local_once_a_second_unless_told_to_look_now(tmp_path):
    """The advancer asks the local executor at most once a second (exit
    records and pidfds wake it); a pidfd saying a wrapper ended makes the
    next pass ask at once, or that run would wait for the second to pass."""
    from orchestrate.runtime.engine import Engine
    from orchestrate.runtime.workspace import load_workspace
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "p.toml").write_text('[agents.a]\ncommand = "true"\n')
    engine = Engine(load_workspace(tmp_path), liveness_interval=1.0, clock=lambda: NOW)
    record = running(pid=2 ** 22 + 1)            # no such process
    assert engine.ask_executors([record], NOW)["p.a.1.abcd"].alive is False
    assert engine.ask_executors([record], NOW) == {}   # within the second: not asked
    engine.look_now()
    assert engine.ask_executors([record], NOW)["p.a.1.abcd"].alive is False


def test_cancel_leaves_a_run_that_already_recorded_its_exit_to_its_own_outcome(tmp_path):
    from orchestrate.runtime.engine import Engine
    from orchestrate.runtime.workspace import load_workspace
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "p.toml").write_text('[agents.a]\ncommand = "true"\n')
    engine = Engine(load_workspace(tmp_path))
    record = running(pid=2 ** 22 + 1)
    engine.layout.exit_file(record.run_id).write_text("0\n")
    agent = engine.workspace.agents_by_task["p:a"]
    assert engine.stop(agent, record, StopKind.CANCEL, "cancelled by user") == record


# -- runs whose declaration is gone (core.standin) ----------------------------
def launched(**limits) -> StatusRecord:
    from orchestrate.core.standin import launch_limits
    return running(limits=launch_limits(replace(AGENT, **limits)))


def test_a_stand_in_keeps_the_limits_of_its_launch():
    from orchestrate.core.standin import NO_LONGER_DECLARED, stand_in
    agent = stand_in(launched(timeout=20.0, kill_grace=3.0, check="x"), NO_LONGER_DECLARED)
    assert (agent.timeout, agent.stall_timeout, agent.kill_grace) == (20.0, None, 3.0)
    assert agent.check is not None and agent.retries == 0 and agent.task == "p:a"
    record, effects = step(running(limits=launched(timeout=20.0).limits), t.Alive(), agent)
    assert effects == [t.Track(StopKind.TIMEOUT, "timeout after 20s")]
    # a record written before limits were kept: no time limit, the default grace
    legacy = stand_in(running(), NO_LONGER_DECLARED)
    assert legacy.timeout is None and legacy.kill_grace == 10.0


@pytest.mark.parametrize("fact, how", [
    (t.Ended(0, None, signal_text="{}"), "done"),
    (t.Ended(1, None, exit_said="exit 1"), "exit 1"),
    (t.Vanished(), t.VANISHED),
    (t.NeverStarted(), "launch interrupted; relaunching"),
])
def test_a_run_no_longer_declared_ends_removed_without_signal_or_retry(fact, how):
    from orchestrate.core.standin import NO_LONGER_DECLARED, stand_in
    record = launched(retries=3)
    if isinstance(fact, t.NeverStarted):
        record = replace(record, state="launching", pid=None)
    agent = stand_in(record, NO_LONGER_DECLARED)
    ended, effects = step(record, fact, agent)
    assert ended.state == "removed" and ended.fingerprint is None and ended.retry_at is None
    assert ended.reason == f"removed: no longer declared; it ended: {how}"
    assert not any(isinstance(e, (t.WriteSignal, t.WriteFeedback)) for e in effects)
    assert t.RememberSignal(None) in effects or isinstance(fact, t.NeverStarted)
    assert saved(effects)


def test_a_cancelled_run_no_longer_declared_ends_removed_saying_so():
    from orchestrate.core.standin import NO_LONGER_DECLARED, stand_in
    agent = stand_in(launched(kill_grace=2.0), NO_LONGER_DECLARED)
    record, _ = step(launched(kill_grace=2.0), t.Tracked(StopKind.CANCEL, "cancelled by user"),
                     agent)
    assert record.kill_at == NOW + 2.0            # the grace of its launch
    record, effects = step(record, t.Ended(143, None), agent)
    assert record.state == "removed"
    assert record.reason == "removed: no longer declared; it ended: cancelled by user"
    assert events(effects) == ["cancel"]


def test_a_run_whose_file_is_invalid_keeps_its_exit_for_the_fixed_file_but_is_stoppable():
    from orchestrate.core.standin import PIPELINE_INVALID, stand_in
    agent = stand_in(launched(), PIPELINE_INVALID)
    assert step(launched(), t.Ended(0, None, signal_text="{}"), agent) == (launched(), [])
    stopping = replace(launched(), stop_kind="cancel", stop_reason="cancelled by user",
                       kill_at=NOW)
    record, _ = step(stopping, t.Ended(143, None), agent)
    assert (record.state, record.reason) == ("cancelled", "cancelled by user")


# -- the other changes of a record: pure constructors --------------------------
def decision(agent=AGENT, **changes):
    from orchestrate.core.fingerprint import Fingerprint
    from orchestrate.core.scheduler import Decision
    fields = {"state": t.RunState.PENDING, "reason": "input in.txt changed",
              "fingerprint": Fingerprint("cfg", {"in.txt": "d1"}, {"up": "s1"}),
              "attempt": 2, "launch": True}
    return Decision(agent, **{**fields, **changes})


def test_a_launch_is_recorded_before_the_executor_is_asked():
    agent = replace(AGENT, timeout=30.0, preset="claude", command=None)
    previous = running(state="failed", spent_usd=0.5, rate_limit_hits=2, launches=3)
    record, effects = t.launching(decision(agent), previous, "p.a.4.ffff",
                                  {"in.txt": [1, 2, "d1"]}, "logs/p/a.log", NOW)
    assert (record.state, record.run_id, record.launches, record.attempt) == \
        ("launching", "p.a.4.ffff", 4, 2)
    assert record.started_epoch == NOW and record.started_at == t.iso(NOW)
    assert t.unanswered(record) and record.reason == "input in.txt changed"
    assert (record.spent_usd, record.rate_limit_hits) == (0.5, 2)
    assert record.limits == {"timeout": 30.0, "stall_timeout": None, "kill_grace": 5.0,
                             "check": False, "preset": "claude", "model": None}
    assert record.upstream == {"up": "s1"} and not record.retry_requested
    assert effects == [t.Save(durable=False)]


def test_a_cancel_before_start_keeps_nothing_of_an_earlier_run():
    """An agent waiting on a signal, cancelled: it never started, so no
    start time (no elapsed time shown), pid or exit code of its last run."""
    previous = running(state="done", exit_code=0, started_at="2026-01-01T00:00:00.000Z")
    gated = decision(launch=False, state=t.RunState.WAITING, signal="approved")
    record, effects = t.cancelled_before_start(gated, previous, {}, NOW)
    assert (record.state, record.reason) == ("cancelled", "cancelled by user")
    assert (record.started_at, record.pid, record.exit_code) == (None, None, None)
    assert record.ended_at == t.iso(NOW) and record.fingerprint is not None
    assert effects == [t.Save(), t.Event("cancel", {"task": "p:a",
                                                    "reason": "cancelled by user"})]
    fresh, _ = t.cancelled_before_start(gated, None, {}, NOW)
    assert fresh.state == "cancelled" and fresh.task == "p:a"


@pytest.mark.parametrize("state", ["failed", "cancelled"])
def test_retry_makes_a_failed_or_cancelled_agent_a_fresh_launch(state):
    record, effects = t.retry_requested(running(state=state, attempt=3, retry_at=NOW), "p:a")
    assert (record.state, record.attempt, record.fingerprint, record.retry_at) == \
        ("pending", 0, None, None)
    assert record.retry_requested and effects == [
        t.Save(), t.Event("retry", {"task": "p:a", "was": state})]


@pytest.mark.parametrize("state", ["done", "running", "waiting", "removed"])
def test_retry_leaves_any_other_agent_alone(state):
    assert t.retry_requested(running(state=state), "p:a") is None
    assert t.retry_requested(None, "p:a") is None


def test_a_retired_instance_is_removed_outputs_kept():
    record, effects = t.retired(running(state="done", ended_at="x"), "p:a", "removed: gone",
                                NOW)
    assert (record.state, record.fingerprint, record.reason, record.ended_at) == \
        ("removed", None, "removed: gone", "x")
    assert effects == [t.Save(), t.Event("removed", {"task": "p:a"})]


def test_a_fan_outs_row_says_what_its_list_became():
    row, effects = t.gate_row("p", "fix", "plan", "sig", t.RunState.DONE, "3 instances", NOW)
    assert (row.state, row.task, row.upstream, row.reason) == \
        ("done", "p:fix", {"plan": "sig"}, "3 instances")
    assert effects == [t.Save()]


@pytest.mark.parametrize("state", ["launching", "running"])
def test_forget_and_clean_refuse_a_running_agent(state):
    refusal, effects = t.forgotten(running(state=state), "p", "a", "cleaned")
    assert refusal == "p:a is running; not cleaned (doit cancel p:a first)" and effects == []


def test_forget_removes_the_record_of_an_agent_that_does_not_run():
    for record in (running(state="failed"), None):
        assert t.forgotten(record, "p", "a") == (None, [t.Forget("p", "a")])


def test_only_the_effect_runner_writes_status_records():
    """Every change of a record is a transition or a constructor above, run
    by the effect runner (`runtime/effects.py`): no other module calls `write_status`."""
    from pathlib import Path
    import orchestrate
    package = Path(orchestrate.__file__).parent
    writers = sorted(str(p.relative_to(package)) for p in package.rglob("*.py")
                     if "write_status(" in p.read_text())
    assert writers == ["runtime/effects.py", "runtime/state.py"]
