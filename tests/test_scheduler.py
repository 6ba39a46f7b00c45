"""Scheduling decisions (pure: facts in, decisions out)."""
from pathlib import Path

from orchestrate.core.fingerprint import Fingerprint, config_digest
from orchestrate.core.scheduler import AgentFacts, plan
from orchestrate.core.spec import Agent, Pipeline, Workspace
from orchestrate.runtime.state import StatusRecord


def workspace(*agents: Agent, max_parallel=None, pools=()) -> Workspace:
    pipeline = Pipeline("p", "pipelines/p.toml", tuple(agents), max_parallel=max_parallel)
    return Workspace(Path("/w"), (pipeline,), pools=pools)


def done_record(agent: Agent, upstream=None, inputs=None, state="done") -> StatusRecord:
    inputs = inputs or {}
    fp = Fingerprint(config_digest(agent), {k: v[2] for k, v in inputs.items()}, upstream or {})
    return StatusRecord(state=state, pipeline="p", agent=agent.name, fingerprint=fp.digest,
                        config_digest=fp.config, inputs=inputs, upstream=upstream or {},
                        upstream_used=next(iter(upstream or {}), None) if agent.after_any else None)


A = Agent("p", "a", "run a")
B = Agent("p", "b", "run b", after=("a",))
C = Agent("p", "c", "run c", after_any=("a", "b"))


def run_plan(ws, facts, present=()):
    agents = [a for p in ws.pipelines for a in p.agents]
    return plan(ws, agents, facts, set(present))


def test_fresh_pipeline_launches_roots_and_gates_the_rest():
    ws = workspace(A, B, C)
    decisions = run_plan(ws, {t: AgentFacts(None, None) for t in ("p:a", "p:b", "p:c")})
    assert decisions["p:a"].launch
    assert decisions["p:b"].state == "waiting" and decisions["p:b"].reason == "waiting on a"
    assert decisions["p:c"].state == "waiting"


def test_done_agent_with_current_fingerprint_is_skipped_and_downstream_launches():
    ws = workspace(A, B)
    facts = {"p:a": AgentFacts(done_record(A), "sig-a"), "p:b": AgentFacts(None, None)}
    decisions = run_plan(ws, facts)
    assert decisions["p:a"].state == "done"
    assert decisions["p:b"].launch
    assert decisions["p:b"].fingerprint.upstream == {"a": "sig-a"}


def test_changed_upstream_signal_makes_downstream_stale_identical_does_not():
    ws = workspace(A, B)
    same = {"p:a": AgentFacts(done_record(A), "sig-a"),
            "p:b": AgentFacts(done_record(B, {"a": "sig-a"}), "sig-b")}
    assert run_plan(ws, same)["p:b"].state == "done"
    changed = {**same, "p:a": AgentFacts(done_record(A), "sig-a2")}
    decision = run_plan(ws, changed)["p:b"]
    assert decision.launch and decision.reason == "upstream a has a new result"


def test_changed_input_or_command_makes_it_stale():
    agent = Agent("p", "a", "run a", inputs=("x.txt",))
    record = done_record(agent, inputs={"x.txt": [1, 2, "h1"]})
    ws = workspace(agent)
    assert run_plan(ws, {"p:a": AgentFacts(record, "s", {"x.txt": [1, 2, "h1"]})})["p:a"].state == "done"
    decision = run_plan(ws, {"p:a": AgentFacts(record, "s", {"x.txt": [3, 2, "h2"]})})["p:a"]
    assert decision.launch and decision.reason == "input x.txt changed"
    edited = Agent("p", "a", "run a --better", inputs=("x.txt",))
    decision = run_plan(workspace(edited), {"p:a": AgentFacts(record, "s", {"x.txt": [1, 2, "h1"]})})["p:a"]
    assert decision.reason == "command, env, cwd or outputs changed"


def test_missing_signal_reruns_a_done_agent():
    decision = run_plan(workspace(A), {"p:a": AgentFacts(done_record(A), None)})["p:a"]
    assert decision.launch and decision.reason == "signal missing"


def test_failed_agent_is_held_until_its_fingerprint_changes_and_blocks_downstream():
    ws = workspace(A, B)
    failed = done_record(A, state="failed")
    decisions = run_plan(ws, {"p:a": AgentFacts(failed, None), "p:b": AgentFacts(None, None)})
    assert decisions["p:a"].state == "failed"
    assert decisions["p:b"].state == "waiting" and decisions["p:b"].blocked
    assert decisions["p:b"].reason == "waiting on a (failed)"


def test_running_agent_is_set_aside():
    running = StatusRecord(state="running", pipeline="p", agent="a", reason="running")
    decision = run_plan(workspace(A), {"p:a": AgentFacts(running, None)})["p:a"]
    assert decision.state == "running"


def test_after_any_uses_the_first_done_upstream_and_sticks_to_it():
    ws = workspace(A, B, C)
    facts = {"p:a": AgentFacts(done_record(A), "sig-a"), "p:b": AgentFacts(None, None),
             "p:c": AgentFacts(None, None)}
    decision = run_plan(ws, facts)["p:c"]
    assert decision.launch and decision.upstream_used == "a"
    assert decision.fingerprint.upstream == {"a": "sig-a"}
    facts["p:c"] = AgentFacts(done_record(C, {"a": "sig-a"}), "sig-c")
    assert run_plan(ws, facts)["p:c"].state == "done"
    facts["p:a"] = AgentFacts(done_record(A), "sig-a2")
    assert run_plan(ws, facts)["p:c"].reason == "upstream a has a new result"


def test_after_any_says_which_upstream_it_uses_now_when_the_old_one_failed():
    b = Agent("p", "b", "run b")
    ws = workspace(A, b, C)
    facts = {"p:a": AgentFacts(done_record(A, state="failed"), None),
             "p:b": AgentFacts(done_record(b), "sig-b"),
             "p:c": AgentFacts(done_record(C, {"a": "sig-a"}), "sig-c")}
    decision = run_plan(ws, facts)["p:c"]
    assert decision.launch and decision.upstream_used == "b"
    assert decision.reason == "uses upstream b now (a is failed)"   # not "a has a new result"


def test_an_upstream_no_longer_declared_is_said_removed_and_a_new_one_new():
    ws = workspace(A, B)
    gone = {"p:a": AgentFacts(done_record(A), "sig-a"),
            "p:b": AgentFacts(done_record(B, {"a": "sig-a", "a-old": "sig-old"}), "sig-b")}
    assert run_plan(ws, gone)["p:b"].reason == "upstream a-old removed"
    new = {"p:a": AgentFacts(done_record(A), "sig-a"),
           "p:b": AgentFacts(done_record(B, {}), "sig-b")}
    assert run_plan(ws, new)["p:b"].reason == "new upstream a"


def test_wait_for_gates_on_external_signal():
    gated = Agent("p", "g", "run", wait_for=("approved",))
    ws = workspace(gated)
    decision = run_plan(ws, {"p:g": AgentFacts(None, None)})["p:g"]
    assert decision.state == "waiting" and decision.external
    assert "approved" in decision.reason
    assert run_plan(ws, {"p:g": AgentFacts(None, None)}, {"approved"})["p:g"].launch


def test_max_parallel_queues_the_rest_in_declaration_order():
    agents = [Agent("p", f"a{i}", "x") for i in range(4)]
    ws = workspace(*agents, max_parallel=2)
    decisions = run_plan(ws, {a.task: AgentFacts(None, None) for a in agents})
    assert [decisions[a.task].launch for a in agents] == [True, True, False, False]
    assert [decisions[a.task].state for a in agents] == ["pending", "pending", "queued", "queued"]
    assert "max_parallel" in decisions["p:a2"].reason


def test_pools_count_agents_running_outside_the_selection():
    a, b = Agent("p", "a", "x", pool="llm"), Agent("p", "b", "x", pool="llm")
    ws = workspace(a, b, pools=(("llm", 1),))
    decisions = plan(ws, [b], {"p:b": AgentFacts(None, None)}, set(), running_elsewhere=(a,))
    assert decisions["p:b"].state == "queued" and "pool llm" in decisions["p:b"].reason


def test_a_stand_in_is_shown_and_never_launched():
    from orchestrate.core.standin import NO_LONGER_DECLARED, stand_in
    active = StatusRecord(state="running", pipeline="p", agent="gone", reason="running")
    agent = stand_in(active, NO_LONGER_DECLARED)
    ws = workspace(A, agent)
    decision = run_plan(ws, {"p:a": AgentFacts(None, None),
                             "p:gone": AgentFacts(active, None)})["p:gone"]
    assert (decision.state, decision.reason) == ("running", "running (no longer declared)")
    for state in ("removed", "cancelled", "failed"):   # once it ended: as recorded
        ended = StatusRecord(state=state, pipeline="p", agent="gone", reason="why")
        decision = run_plan(ws, {"p:a": AgentFacts(None, None),
                                 "p:gone": AgentFacts(ended, None)})["p:gone"]
        assert (decision.state, decision.reason) == (state, "why")
    assert run_plan(ws, {"p:a": AgentFacts(None, None),
                         "p:gone": AgentFacts(None, None)})["p:gone"].state == "removed"


def test_a_gate_on_an_external_signal_names_it_and_nothing_reads_the_reason():
    from dataclasses import replace
    from orchestrate.core.scheduler import not_started_as
    gated = Agent("p", "g", "run g", wait_for=("approved",))
    after = Agent("p", "h", "run h", after=("g",))
    decisions = run_plan(workspace(gated, after), {"p:g": AgentFacts(None, None),
                                                   "p:h": AgentFacts(None, None)})
    assert decisions["p:g"].signal == "approved" and decisions["p:g"].external
    assert decisions["p:h"].signal is None            # waits on g, not on the signal
    assert not_started_as(replace(decisions["p:g"], reason="anything")) == \
        "waiting on signal approved"
    assert not_started_as(decisions["p:h"]) == "not started"


def test_a_retry_requested_is_the_records_flag_not_its_reason():
    failed = done_record(A, state="pending")
    asked = replace_record(failed, retry_requested=True, reason="whatever")
    decision = run_plan(workspace(A), {"p:a": AgentFacts(asked, None)})["p:a"]
    assert decision.launch and decision.reason == "retry requested (doit retry)"
    legacy = replace_record(failed, fingerprint=None, reason="retry requested (doit retry)")
    assert run_plan(workspace(A), {"p:a": AgentFacts(legacy, None)})["p:a"].reason == \
        "never run"                                    # the words alone decide nothing


def replace_record(record, **changes):
    from dataclasses import replace
    return replace(record, **changes)
