"""Agent presets (claude, codex, gemini, aider) run through faithful fake CLIs."""
import json

import pytest

from conftest import PRESETS, wait_until

EXPECTED_ARGV = {
    "claude": ["-p", "--output-format", "stream-json", "--verbose", "--model", "m1",
               "--allowedTools", "Read,Edit", "--extra"],
    "codex": ["exec", "--json", "--skip-git-repo-check", "-m", "m1", "--extra", "-"],
    "gemini": ["--output-format", "stream-json", "--skip-trust", "-m", "m1",
               "--allowed-tools", "Read,Edit", "--extra", "-p", ""],
    "aider": ["--message-file", None, "--yes-always", "--no-pretty", "--no-stream",
              "--no-check-update", "--no-show-release-notes", "--no-fancy-input",
              "--no-analytics", "--chat-history-file", "{state}/aider/p/a.chat.history.md",
              "--input-history-file", "{state}/aider/p/a.input.history", "--no-gitignore",
              "--no-git", "--model", "m1", "--extra"],
}
EXPECTED_USAGE = {   # input (cached included), output, cache-read tokens; cost as reported
    "claude": (1200, 340, 50, 0.0123), "codex": (2400, 120, 2000, None),
    "gemini": (100, 50, 20, None), "aider": (2300, 110, 0, 0.0081),
}


def calls(ws) -> list[dict]:
    path = ws.root / "cli-calls.jsonl"
    return [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []


def events_of(ws) -> list[dict]:
    return [json.loads(l) for l in (ws.state / "events.jsonl").read_text().splitlines()]


def preset_toml(name: str, preset: str, prompt: str, **keys) -> str:
    lines = [f"[agents.{name}]", f'agent = "{preset}"', f"prompt = {json.dumps(prompt)}"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in keys.items()]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_builds_the_headless_invocation_and_records_results(ws, fake_bins, preset):
    prompt = "Say hello. $(touch pwned) `touch pwned2`"
    tools = {} if preset in ("codex", "aider") else {"allowed_tools": ["Read", "Edit"]}
    ws.write_pipeline("p", preset_toml("a", preset, prompt, model="m1", extra_args=["--extra"],
                                       **tools))
    ws.doit("wait", check_rc=0, env=fake_bins)
    [call] = calls(ws)
    expected = [a and a.format(state=ws.state) for a in EXPECTED_ARGV[preset]]
    argv = [None if expected[i] is None else arg for i, arg in enumerate(call["argv"])]
    assert argv == expected
    assert call["prompt"] == prompt and not call["stdin_isatty"]
    assert not list(ws.root.rglob("pwned*"))
    record = ws.status("p", "a")
    result = record["result"]
    assert record["state"] == "done" and not result["is_error"]
    assert "echo:" in result["final_message"] and "Say hello" in result["final_message"]
    inp, out, cache, cost = EXPECTED_USAGE[preset]
    assert (result["input_tokens"], result["output_tokens"], result["cache_tokens"]) == (inp, out, cache)
    assert result["cost_usd"] == cost
    if preset in ("claude", "codex", "gemini"):
        assert result["session_id"]
    results_md = ws.state / "results" / "p" / "a.md"
    assert "Say hello" in results_md.read_text()


def test_status_shows_cost_tokens_and_pipeline_totals(ws, fake_bins):
    ws.write_pipeline("p", preset_toml("a", "claude", "one") + preset_toml("b", "aider", "two"))
    ws.doit("wait", check_rc=0, env=fake_bins)
    table = ws.doit("status", check_rc=0).stdout
    assert "cost" in table and "tokens" in table
    assert "$0.0123" in table and "1,200 in / 340 out" in table
    assert "p: $0.0204 spent, 3,500 tokens in, 450 out" in table
    data = json.loads(ws.doit("status", "--json", check_rc=0).stdout)
    assert data["pipelines"]["p"]["cost_usd"] == pytest.approx(0.0204)
    by_agent = {a["agent"]: a for a in data["agents"]}
    assert by_agent["a"]["result"]["cost_usd"] == 0.0123


@pytest.mark.parametrize("preset,reason", [
    ("claude", "exit 1: API Error: 400 the fake failed as asked"),
    ("codex", 'exit 1: {"error": {"message": "Invalid \'input\': the fake failed."'),
    ("gemini", 'exit 144: [API Error: {"error":{"code":400,"message":"the fake failed"'),
    ("aider", "agent reported an error: litellm.BadRequestError: OpenAIException")])
def test_cli_failures_fail_the_agent(ws, fake_bins, preset, reason):
    ws.write_pipeline("p", preset_toml("a", preset, "please FAIL"))
    ws.doit("wait", check_rc=1, env=fake_bins)
    record = ws.status("p", "a")
    assert record["state"] == "failed" and record["reason"].startswith(reason), record["reason"]
    assert record["result"]["is_error"] and not record["result"]["rate_limited"]


def test_a_prompt_that_mentions_a_rate_limit_is_not_one(ws, fake_bins):
    """gemini echoes the prompt into its stream: only its own events count."""
    ws.write_pipeline("p", preset_toml("a", "gemini", "FAIL: explain HTTP 429, "
                                       "RESOURCE_EXHAUSTED and QuotaError"))
    ws.doit("wait", check_rc=1, env=fake_bins)
    record = ws.status("p", "a")
    assert record["state"] == "failed" and not record["result"]["rate_limited"]
    assert not (ws.state / "ratelimits").exists() and len(calls(ws)) == 1


def test_a_startup_failure_keeps_the_clis_message(ws, fake_bins):
    """A CLI that fails before its JSON stream: its last error line is the reason."""
    bogus = ws.root / "bogus-codex"
    bogus.write_text('#!/bin/sh\necho "error: unexpected argument \'--bogus\' found" >&2\n'
                     'echo "For more information, try \'--help\'." >&2\nexit 2\n')
    bogus.chmod(0o755)
    ws.write_pipeline("p", preset_toml("a", "codex", "hi", executable=str(bogus)))
    ws.doit("wait", check_rc=1, env=fake_bins)
    assert ws.status("p", "a")["reason"] == "exit 2: error: unexpected argument '--bogus' found"


def test_error_reported_with_exit_0_fails_the_agent(ws, fake_bins):
    ws.write_pipeline("p", preset_toml("a", "claude", "ERROR0"))
    ws.doit("wait", check_rc=1, env=fake_bins)
    record = ws.status("p", "a")
    assert record["state"] == "failed" and record["exit_code"] == 0
    assert record["reason"].startswith("agent reported an error")
    assert not ws.signal("p", "a").exists()


def test_prompt_file_is_an_input(ws, fake_bins):
    (ws.root / "prompts").mkdir()
    (ws.root / "prompts" / "x.md").write_text("first version")
    ws.write_pipeline("p", '[agents.a]\nagent = "codex"\nprompt_file = "prompts/x.md"\n')
    ws.doit("wait", check_rc=0, env=fake_bins)
    ws.doit("wait", check_rc=0, env=fake_bins)
    assert len(calls(ws)) == 1
    (ws.root / "prompts" / "x.md").write_text("second version")
    assert "stale: input prompts/x.md changed" in ws.doit("info", "p:a").stdout
    ws.doit("wait", check_rc=0, env=fake_bins)
    assert [c["prompt"] for c in calls(ws)] == ["first version", "second version"]


def test_executable_key_wins_and_a_missing_cli_is_a_clear_failure(ws, fake_bins):
    ws.write_pipeline("p", preset_toml("a", "claude", "hi",
                                       executable=fake_bins["ORCHESTRATE_CLAUDE_BIN"])
                      + preset_toml("b", "gemini", "hi", executable="/nowhere/gemini"))
    ws.doit("wait", check_rc=1)          # no ORCHESTRATE_*_BIN in this environment
    assert ws.state_of("p", "a") == "done"
    record = ws.status("p", "b")
    assert record["state"] == "failed"
    assert "could not start: /nowhere/gemini not found" in record["reason"]


def test_downstream_reads_upstream_results_through_the_upstream_file(ws, fake_bins):
    ws.write_pipeline("p", preset_toml("plan", "claude", "make a plan") + f'''
[agents.use]
command = {json.dumps(ws.agent_cmd("--upstream-to", str(ws.root / "upstream.json")))}
after = ["plan"]
''')
    ws.doit("wait", check_rc=0, env=fake_bins)
    plan = json.loads((ws.root / "upstream.json").read_text())["plan"]
    assert plan["task"] == "p:plan"
    assert plan["result"]["final_message"] == "echo: make a plan"
    assert plan["result"]["session_id"] and plan["result"]["cost_usd"] == 0.0123
    assert open(plan["result_path"]).read().strip() == "echo: make a plan"


def test_a_silent_cli_is_caught_by_the_stall_watchdog(ws, fake_bins):
    ws.write_pipeline("p", preset_toml("a", "claude", "HANG", stall_timeout="0.5s",
                                       kill_grace="0.2s"))
    ws.doit("wait", check_rc=1, env=fake_bins)
    assert ws.status("p", "a")["reason"] == "stalled: no output for 0.5s"


@pytest.mark.parametrize("preset", PRESETS)
def test_rate_limit_is_retried_after_the_reset_without_spending_a_retry(ws, fake_bins, preset):
    ws.write_pipeline("p", preset_toml("a", preset, "RATELIMIT then work", retry_backoff="0.3s"))
    ws.doit("wait", check_rc=0, env=fake_bins)       # retries = 0: still retried
    assert len(calls(ws)) == 2
    record = ws.status("p", "a")
    assert record["state"] == "done" and record["attempt"] == 1
    events = [json.loads(l) for l in (ws.state / "events.jsonl").read_text().splitlines()]
    assert any(e["event"] == "fail" and "retry_at" in e for e in events)


def test_agents_of_a_rate_limited_preset_are_held(ws, fake_bins):
    env = {**fake_bins, "FAKE_CLI_RESET_IN": "60"}      # the limit resets in a minute
    ws.write_pipeline("p", preset_toml("a", "claude", "RATELIMIT please")
                      + preset_toml("b", "claude", "later", wait_for=["go"])
                      + preset_toml("c", "codex", "other preset", wait_for=["go"]))
    ws.doit(check_rc=0, env=env)
    wait_until(lambda: (ws.state / "ratelimits" / "claude.json").exists(), what="rate limit")
    ws.doit("signal", "go", check_rc=0)
    ws.wait_state("p", "c", "done")                    # another preset is not held
    data = json.loads(ws.doit("status", "--json", check_rc=0, env=env).stdout)
    states = {a["agent"]: (a["state"], a["reason"]) for a in data["agents"]}
    assert states["b"][0] == "queued" and states["b"][1].startswith("rate limited until")
    assert states["a"][0] == "waiting" and "not counted as a retry" in states["a"][1]
    assert [c["agent"] for c in calls(ws) if c["preset"] == "claude"] == ["a"]


def test_budget_holds_new_launches_once_reached(ws, fake_bins):
    ws.write_pipeline("p", "budget_usd = 0.02\n" + "".join(
        preset_toml(f"a{i}", "claude", f"job {i}", after=[f"a{i - 1}"] if i else [])
        for i in range(4)))
    proc = ws.doit("wait", check_rc=1, env=fake_bins)
    assert len(calls(ws)) == 2                         # $0.0123 each: the third would exceed
    record_states = {f"a{i}": ws.state_of("p", f"a{i}") for i in range(4)}
    assert record_states == {"a0": "done", "a1": "done", "a2": None, "a3": None}
    assert "budget reached: $0.02 of $0.02 (pipeline)" in proc.stdout
    table = ws.doit("status", check_rc=0).stdout
    assert "p: $0.0246 spent of $0.02 budget" in table


def test_workspace_budget_counts_every_pipeline(ws, fake_bins):
    pyproject = ws.root / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + "\n[tool.orchestrate]\nbudget_usd = 0.01\n")
    ws.write_pipeline("one", preset_toml("a", "claude", "first"))
    ws.write_pipeline("two", preset_toml("b", "claude", "second"))
    ws.doit("wait", "one", check_rc=0, env=fake_bins)
    proc = ws.doit("wait", "two", check_rc=1, env=fake_bins)
    assert "budget reached: $0.01 of $0.01 (workspace)" in proc.stdout
    assert "workspace: $0.0123 spent of $0.01 budget" in ws.doit("status", check_rc=0).stdout


def test_rate_limits_in_a_row_are_counted_across_relaunches_and_forget_resets_them(ws, fake_bins):
    # the CLI is limited every time and its reset time is already past: backoff applies
    env = {**fake_bins, "FAKE_CLI_ALWAYS_LIMITED": "1", "FAKE_CLI_RESET_IN": "-10"}
    ws.write_pipeline("p", preset_toml("a", "claude", "RATELIMIT", retry_backoff="1ms"))
    proc = ws.doit("wait", check_rc=1, env=env, timeout=120)
    assert len(calls(ws)) == 11, proc.stdout          # 10 rests, then it is a failure
    record = ws.status("p", "a")
    assert record["state"] == "failed" and record["rate_limit_hits"] == 10
    rests = [e for e in events_of(ws) if e["event"] == "fail" and "retry_at" in e]
    assert len(rests) == 10
    ws.doit("forget", "p:a", check_rc=0)
    ws.doit("wait", check_rc=1, env=env, timeout=120)
    assert len(calls(ws)) == 22                        # forget began a new row


def test_spend_is_carried_across_reruns(ws, fake_bins):
    (ws.root / "prompt.md").write_text("first")
    ws.write_pipeline("p", '[agents.a]\nagent = "claude"\nprompt_file = "prompt.md"\n')
    ws.doit("wait", check_rc=0, env=fake_bins)
    assert ws.status("p", "a")["spent_usd"] == 0.0123
    (ws.root / "prompt.md").write_text("second")       # stale: runs again
    ws.doit("wait", check_rc=0, env=fake_bins)
    assert len(calls(ws)) == 2
    assert ws.status("p", "a")["spent_usd"] == 0.0246
    assert "p: $0.0246 spent" in ws.doit("status", check_rc=0).stdout
