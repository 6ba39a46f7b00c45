"""Fallback presets (issue 25): a rate-limited CLI hands its agent's next
launch to the next preset of its chain that is not limited itself.

End to end with the fake CLIs (tests/fake_cli.py, whose output copies
../shared/cli-transcripts/) through the real doit; the paths that need a
clock to pass (a reset close by, the primary's return) through the real
engine with a fake executor and a fake clock (as tests/test_engine.py)."""
import json
import time

import pytest

from conftest import wait_until
from test_presets import calls, events_of, preset_toml

CHAIN = {"fallback": ["codex", "gemini"]}


def test_claude_limited_for_an_hour_falls_back_to_codex_at_once(ws, fake_bins):
    env = {**fake_bins, "FAKE_CLI_LIMITED": "claude", "FAKE_CLI_RESET_IN": "3600"}
    ws.write_pipeline("p", preset_toml("a", "claude", "Write a plan.", **CHAIN))
    began = time.monotonic()
    ws.doit("wait", "--timeout", "60", check_rc=0, env=env)
    record = ws.status("p", "a")
    assert record["state"] == "done" and record["preset"] == "codex", record
    assert record["reason"].startswith("via codex: claude rate limited until "), record["reason"]
    assert [c["preset"] for c in calls(ws)] == ["claude", "codex"]
    assert calls(ws)[1]["prompt"] == "Write a plan."          # the same prompt
    assert record["result"]["final_message"] == "echo: Write a plan."
    [fallback] = [e for e in events_of(ws) if e["event"] == "fallback"]
    assert fallback["task"] == "p:a" and fallback["preset"] == "codex"
    limit = json.loads((ws.state / "ratelimits" / "claude.json").read_text())
    assert limit["until"] > time.time() + 3000 and limit["reset_known"] is True
    assert time.monotonic() - began < 30                      # not an hour's rest


def test_a_known_limit_spares_other_agents_the_failed_launch(ws, fake_bins):
    """One agent learns that claude is limited: another claude agent with a
    fallback launches straight with codex, never with claude."""
    env = {**fake_bins, "FAKE_CLI_LIMITED": "claude", "FAKE_CLI_RESET_IN": "3600"}
    ws.write_pipeline("p", preset_toml("a", "claude", "first", **CHAIN)
                      + preset_toml("b", "claude", "second", after=["a"], **CHAIN))
    ws.doit("wait", "--timeout", "60", check_rc=0, env=env)
    assert [(c["agent"], c["preset"]) for c in calls(ws)] == [
        ("a", "claude"), ("a", "codex"), ("b", "codex")]
    assert ws.status("p", "b")["preset"] == "codex"


def test_an_unknown_reset_counts_as_far(ws, fake_bins):
    """claude with an API key says no reset time (cli-transcripts/claude/ratelimit-long)."""
    env = {**fake_bins, "FAKE_CLI_LIMITED": "claude", "FAKE_CLI_RESET_IN": "unknown"}
    ws.write_pipeline("p", preset_toml("a", "claude", "Write a plan.",
                                       fallback_after="1h", fallback=["codex"]))
    ws.doit("wait", "--timeout", "60", check_rc=0, env=env)
    record = ws.status("p", "a")
    assert record["preset"] == "codex"
    assert record["reason"] == "via codex: claude rate limited (reset unknown)"


def test_the_whole_chain_limited_rests(ws, fake_bins):
    env = {**fake_bins, "FAKE_CLI_LIMITED": "claude,codex,gemini", "FAKE_CLI_RESET_IN": "3600"}
    ws.write_pipeline("p", preset_toml("a", "claude", "Write a plan.", **CHAIN))
    ws.doit(check_rc=0, env=env)
    wait_until(lambda: len(calls(ws)) == 3 and (ws.status("p", "a") or {}).get("state")
               in ("waiting", "queued"), what="the chain to be tried")
    time.sleep(0.5)   # nothing more is launched: each preset is known limited for an hour
    assert [c["preset"] for c in calls(ws)] == ["claude", "codex", "gemini"]
    data = json.loads(ws.doit("status", "--json", check_rc=0, env=env).stdout)
    [row] = data["agents"]
    assert row["state"] == "queued" and row["reason"].startswith("rate limited until "), row
    assert "(claude and its fallback codex, gemini)" in row["reason"]


def test_fallback_is_validated(ws):
    ws.write_pipeline("p", preset_toml("a", "claude", "x", fallback=["codx"])
                      + preset_toml("b", "claude", "x")
                      + 'fallback = [{ agent = "codex", modle = "m" }]\n'
                      + preset_toml("c", "claude", "x", fallback=["claude"])
                      + '[agents.d]\ncommand = "true"\nfallback = ["codex"]\n'
                      + preset_toml("e", "claude", "x", fallback=["codex"], fallback_after="soon"))
    proc = ws.doit(check_rc=3)
    out = proc.stdout + proc.stderr
    assert "agent 'a': key 'fallback': entry 1: unknown preset 'codx' (did you mean 'codex'?)" in out
    assert "agent 'b': key 'fallback': entry 1: key 'modle': unknown key (did you mean 'model'?)" in out
    assert "agent 'c': key 'fallback': lists the agent's own preset 'claude' (give another" in out
    assert "agent 'd': key 'fallback': only applies with agent = \"<preset>\"" in out
    assert "agent 'e': key 'fallback_after': expected a duration" in out
    assert "Traceback" not in out
    assert not (ws.state / "status").exists() or not list((ws.state / "status").rglob("*.json"))


def test_a_check_relaunch_after_a_fallback_resumes_the_fallbacks_session(ws, fake_bins):
    """The check fails once: the relaunch goes back to codex (claude is still
    limited), resuming codex's own thread, never claude's session."""
    env = {**fake_bins, "FAKE_CLI_LIMITED": "claude", "FAKE_CLI_RESET_IN": "3600"}
    check = "test -f checked || { touch checked; echo not yet; exit 1; }"
    ws.write_pipeline("p", preset_toml("a", "claude", "Write a plan.", check=check, **CHAIN))
    ws.doit("wait", "--timeout", "60", check_rc=0, env=env)
    presets = [(c["preset"], c["argv"][:2]) for c in calls(ws)]
    assert presets == [("claude", ["-p", "--output-format"]), ("codex", ["exec", "--json"]),
                       ("codex", ["exec", "resume"])], presets
    record = ws.status("p", "a")
    assert record["state"] == "done" and record["preset"] == "codex"


# -- the real engine, a fake executor and a fake clock ------------------------
HOUR = 3600.0


def claude_limited_log(session: str, reset_at: float | None) -> str:
    """What claude prints when it is limited (tests/fake_cli.py's shapes,
    from cli-transcripts/claude/ratelimit*): a rejected rate_limit_event
    with its reset (a subscription), then a 429 result."""
    lines = []
    if reset_at is not None:
        lines.append({"type": "rate_limit_event", "session_id": session, "rate_limit_info": {
            "status": "rejected", "resetsAt": int(reset_at), "rateLimitType": "five_hour"}})
    lines.append({"type": "result", "subtype": "success", "is_error": True,
                  "api_error_status": 429, "result": "API Error: Request rejected (429)",
                  "session_id": session, "total_cost_usd": 0, "modelUsage": {}})
    return "".join(json.dumps(line) + "\n" for line in lines)


def codex_success_log() -> str:
    """cli-transcripts/codex/success/stdout.txt, shortened."""
    return ('{"type":"thread.started","thread_id":"01a2171e-0af0-7261-b65e-f0a0c62fe77b"}\n'
            '{"type":"turn.started"}\n'
            '{"type":"item.completed","item":{"id":"item_1","type":"agent_message",'
            '"text":"PLAN: hello"}}\n'
            '{"type":"turn.completed","usage":{"input_tokens":1234,"cached_input_tokens":200,'
            '"output_tokens":56}}\n')


def claude_success_log() -> str:
    return ('{"type":"result","subtype":"success","is_error":false,"result":"PLAN: hello",'
            '"session_id":"s-1","total_cost_usd":0.01,"usage":{"input_tokens":10,'
            '"output_tokens":5}}\n')


ENGINE_PIPELINE = '''
[agents.a]
agent = "claude"
prompt = "Write a plan."
inputs = ["notes.md"]
fallback = ["codex"]
'''


@pytest.fixture
def engine_setup(tmp_path):
    from test_engine import fake_engine
    from orchestrate.core.selection import select
    (tmp_path / "notes.md").write_text("v1")
    engine, local, _, clock = fake_engine(tmp_path, ENGINE_PIPELINE)
    return engine, local, clock, select(engine.workspace, [])


def _end(engine, local, agents, log_text: str, code: int):
    record = engine.records(agents)["p:a"]
    (engine.layout.root / record.log).write_text(log_text)
    local.finish(record.run_id, code)
    result = engine.run_pass(agents)
    return engine.records(agents)["p:a"], result


def test_a_reset_closer_than_fallback_after_waits_for_it(engine_setup):
    engine, local, clock, agents = engine_setup
    assert engine.launch_all(engine.run_pass(agents)) == ["p:a"]
    reset = clock() + 120                             # two minutes: less than 5m
    record, result = _end(engine, local, agents, claude_limited_log("s-1", reset), 1)
    assert record.state == "waiting" and record.retry_at == int(reset)
    assert engine.launch_all(result) == []
    clock.now = int(reset) + 1
    assert engine.launch_all(engine.run_pass(agents)) == ["p:a"]
    record = engine.records(agents)["p:a"]
    assert record.preset == "claude" and record.via is None


def test_the_primary_is_used_again_once_its_reset_has_passed(engine_setup, tmp_path):
    engine, local, clock, agents = engine_setup
    engine.launch_all(engine.run_pass(agents))
    reset = int(clock() + HOUR)
    record, result = _end(engine, local, agents, claude_limited_log("s-1", reset), 1)
    assert record.state == "waiting" and record.retry_at == clock()   # no hour's rest
    assert engine.launch_all(result) == ["p:a"]
    record = engine.records(agents)["p:a"]
    assert (record.preset, record.reason) == (
        "codex", f"via codex: claude rate limited until {time.strftime('%H:%M:%S', time.gmtime(reset))} UTC")
    record, result = _end(engine, local, agents, codex_success_log(), 0)
    assert record.state == "done" and record.reason.startswith("via codex: ")
    assert record.result["final_message"] == "PLAN: hello"     # read as codex's log
    (tmp_path / "notes.md").write_text("v2")                  # stale within the hour: codex
    engine.launch_all(engine.run_pass(agents))
    assert engine.records(agents)["p:a"].preset == "codex"
    _end(engine, local, agents, codex_success_log(), 0)
    clock.now = reset + 1                                     # the reset has passed
    (tmp_path / "notes.md").write_text("v3")
    assert engine.launch_all(engine.run_pass(agents)) == ["p:a"]
    record = engine.records(agents)["p:a"]
    assert (record.preset, record.via, record.reason) == ("claude", None, "running")
    record, _ = _end(engine, local, agents, claude_success_log(), 0)
    assert (record.state, record.reason) == ("done", "done")


CHECKED_PIPELINE = ENGINE_PIPELINE + 'check = "true"\n'
CODEX_THREAD = "01a2171e-0af0-7261-b65e-f0a0c62fe77b"


def _failed_check_after_codex(tmp_path):
    """claude limited for an hour, codex ran, its check said no."""
    from test_engine import fake_engine
    from orchestrate.core.selection import select
    (tmp_path / "notes.md").write_text("v1")
    engine, local, _, clock = fake_engine(tmp_path, CHECKED_PIPELINE)
    agents = select(engine.workspace, [])
    engine.launch_all(engine.run_pass(agents))
    reset = int(clock() + HOUR)
    _end(engine, local, agents, claude_limited_log("s-1", reset), 1)
    engine.launch_all(engine.run_pass(agents))
    record = engine.records(agents)["p:a"]
    assert record.preset == "codex"
    engine.layout.check_verdict(record.run_id).write_text(json.dumps(
        {"command": "true", "exit_code": 1, "last_line": "not yet"}))
    record, _ = _end(engine, local, agents, codex_success_log(), 0)
    assert record.state == "waiting" and record.resume_session == CODEX_THREAD
    return engine, clock, agents, reset


def test_a_check_relaunch_stays_with_the_cli_that_holds_its_session(tmp_path):
    engine, clock, agents, reset = _failed_check_after_codex(tmp_path)
    clock.now = reset + 1                          # claude is back, but the session is codex's
    assert engine.launch_all(engine.run_pass(agents)) == ["p:a"]
    record = engine.records(agents)["p:a"]
    assert (record.preset, record.resume_session) == ("codex", CODEX_THREAD)
    assert "via codex: resuming its session" in record.reason


def test_a_session_never_moves_to_another_cli(tmp_path):
    engine, clock, agents, reset = _failed_check_after_codex(tmp_path)
    clock.now = reset + 1
    (engine.layout.ratelimits_dir / "codex.json").write_text(json.dumps(
        {"until": clock() + HOUR, "by": "p:other", "reset_known": True}))
    assert engine.launch_all(engine.run_pass(agents)) == ["p:a"]
    record = engine.records(agents)["p:a"]
    assert (record.preset, record.resume_session) == ("claude", None)   # fresh, with feedback
    assert record.feedback is not None


def test_doit_says_which_preset_it_launched_with(ws, fake_bins):
    ws.write_pipeline("p", preset_toml("a", "claude", "Write a plan.", **CHAIN))
    (ws.state / "ratelimits").mkdir(parents=True)
    (ws.state / "ratelimits" / "claude.json").write_text(json.dumps(
        {"until": time.time() + HOUR, "by": "q:x", "reset_known": True}))
    out = ws.doit(check_rc=0, env=fake_bins).stdout
    assert "launched  p:a  (never run; via codex: claude rate limited until " in out, out
    ws.wait_state("p", "a", "done")
    assert [c["preset"] for c in calls(ws)] == ["codex"]     # claude was spared the launch


def test_a_chain_in_defaults_leaves_out_each_agents_own_preset(tmp_path):
    from orchestrate.runtime.workspace import load_workspace
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "p.toml").write_text(
        '[defaults]\nfallback = ["codex", { agent = "claude", model = "sonnet" }]\n'
        + preset_toml("a", "claude", "x", model="sonnet") + preset_toml("b", "codex", "y")
        + preset_toml("c", "claude", "z", model="opus"))
    agents = load_workspace(tmp_path).agents_by_task
    assert [(e.agent, e.model) for e in agents["p:a"].fallback] == [("codex", None)]
    assert [(e.agent, e.model) for e in agents["p:b"].fallback] == [("claude", "sonnet")]
    assert [(e.agent, e.model) for e in agents["p:c"].fallback] == [("codex", None),
                                                                    ("claude", "sonnet")]


FAMILY_PIPELINE = '''
[agents.a]
agent = "claude"
model = "claude-opus-4-8"
prompt = "Write a plan."
fallback = [{ agent = "claude", model = "claude-sonnet-4-6" }, "codex"]
[agents.b]
agent = "claude"
model = "claude-sonnet-4-6"
prompt = "Review it."
after = ["a"]
'''


def test_a_limit_of_one_model_family_falls_back_to_another_model_of_the_cli(tmp_path):
    """claude says the weekly limit is Opus's (rateLimitType seven_day_opus,
    as Claude Code reports a subscription's per-model limit): Sonnet is not
    limited, for this agent's chain and for the workspace's other agents."""
    from test_engine import fake_engine
    from orchestrate.core.selection import select
    engine, local, _, clock = fake_engine(tmp_path, FAMILY_PIPELINE)
    agents = select(engine.workspace, [])
    engine.launch_all(engine.run_pass(agents))
    reset = int(clock() + 24 * HOUR)
    event = {"type": "rate_limit_event", "session_id": "s-1", "rate_limit_info": {
        "status": "rejected", "resetsAt": reset, "rateLimitType": "seven_day_opus"}}
    log = json.dumps(event) + "\n" + claude_limited_log("s-1", None)
    record, result = _end(engine, local, agents, log, 1)
    limits = sorted(p.name for p in engine.layout.ratelimits_dir.iterdir())
    assert limits == ["claude@opus.json"]
    assert engine.launch_all(result) == ["p:a"]
    record = engine.records(agents)["p:a"]
    assert (record.preset, record.limits["model"]) == ("claude", "claude-sonnet-4-6")
    assert record.reason.startswith("via claude (claude-sonnet-4-6): claude (opus) rate "
                                    "limited until "), record.reason
    record, result = _end(engine, local, agents, claude_success_log(), 0)
    assert record.state == "done"
    assert engine.launch_all(result) == ["p:b"]      # its own model is not limited
    record = engine.records(agents)["p:b"]
    assert (record.preset, record.via) == ("claude", None)


def test_a_fallback_runs_span_names_the_cli_that_ran():
    from dataclasses import replace
    from orchestrate.core.fallback import FallbackPreset
    from orchestrate.core.records import RunState, StatusRecord
    from orchestrate.core.spec import Agent
    from orchestrate.core.tracing import attempt_attributes
    agent = Agent("p", "a", preset="claude", model="claude-opus-4-8", prompt="x",
                  fallback=(FallbackPreset("codex", "gpt-5-codex"),))
    started = StatusRecord(RunState.RUNNING, "p", "a", attempt=1, run_id="r", preset="codex",
                           limits={"preset": "codex", "model": "gpt-5-codex"})
    ended = replace(started, state=RunState.DONE, reason="via codex: claude rate limited")
    attributes = attempt_attributes(agent, started, ended)
    assert attributes["gen_ai.provider.name"] == "openai"
    assert attributes["gen_ai.request.model"] == "gpt-5-codex"
