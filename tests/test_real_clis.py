"""The four presets run through orchestrate (real doit, real CLIs) against a
mock model API (tests/mock_api.py): what each real CLI does in each scenario,
and what orchestrate records. The CLIs are installed by .ci/run; a missing
one skips here (with the command that installs it) and fails under CI=true.

Each CLI's own retries are cut short so error scenarios take seconds:
claude CLAUDE_CODE_MAX_RETRIES, codex request_max_retries/stream_max_retries
in its provider table, gemini general.maxAttempts in its settings. aider's
retry loop is fixed (about a minute and more); its retried errors are caught
mid-retry by the agent's `timeout`, which is itself a contract (issue point 5).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import real_cli, wait_until
from mock_api import MockAPI

pytestmark = pytest.mark.real_cli

MODELS = {"claude": None, "codex": None, "gemini": "gemini-2.5-flash",
          "aider": "openai/gpt-4o-mini"}
RATE_LIMIT_EXITS = {"claude": 1, "codex": 1, "gemini": 173}   # gemini: HTTP status % 256


@pytest.fixture(scope="module")
def api():
    with MockAPI() as server:
        yield server


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


def cli_env(preset: str, api: MockAPI, scenario: str, home: Path, retries: int = 0,
            settings: dict | None = None) -> dict[str, str]:
    """The environment that points `preset`'s real CLI at the mock, in its own
    HOME (and XDG folders, TMPDIR) so nothing outside the test's folder is touched."""
    tmp = home / "tmp"
    tmp.mkdir(exist_ok=True)
    env = {"HOME": str(home), "TMPDIR": str(tmp), "XDG_CONFIG_HOME": str(home / ".config"),
           "XDG_CACHE_HOME": str(home / ".cache"), "XDG_DATA_HOME": str(home / ".local/share"),
           "XDG_STATE_HOME": str(home / ".local/state"),
           f"ORCHESTRATE_{preset.upper()}_BIN": real_cli(preset)}
    base = api.base(scenario)
    if preset == "claude":
        env.update(ANTHROPIC_BASE_URL=base, ANTHROPIC_API_KEY="sk-ant-mock",
                   CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
                   CLAUDE_CODE_MAX_RETRIES=str(retries))
    elif preset == "codex":
        codex_home = home / ".codex"
        codex_home.mkdir(exist_ok=True)
        (codex_home / "config.toml").write_text(f'''model = "gpt-mock"
model_provider = "mock"

[model_providers.mock]
name = "mock"
base_url = "{base}/v1"
env_key = "MOCK_API_KEY"
wire_api = "responses"
supports_websockets = false
request_max_retries = 0
stream_max_retries = {retries}
stream_idle_timeout_ms = 5000
''')
        env.update(CODEX_HOME=str(codex_home), MOCK_API_KEY="sk-mock")
    elif preset == "gemini":
        folder = home / ".gemini"
        folder.mkdir(exist_ok=True)
        chosen = {"security": {"auth": {"selectedType": "gemini-api-key"}},
                  "general": {"maxAttempts": max(retries, 1)}}
        (folder / "settings.json").write_text(json.dumps(chosen if settings is None
                                                         else settings))
        env.update(GOOGLE_GEMINI_BASE_URL=base, GEMINI_API_KEY="mock-key")
    else:
        caches = home / ".aider" / "caches"   # a fresh price list: no download attempt
        caches.mkdir(parents=True, exist_ok=True)
        (caches / "model_prices_and_context_window.json").write_text('{"mock": {}}')
        # AIDER_OPENAI_API_BASE is --openai-api-base (aider reads AIDER_<FLAG>)
        env.update(OPENAI_API_KEY="sk-mock", AIDER_OPENAI_API_BASE=f"{base}/v1")
    return env


def pipeline(preset: str, prompt: str = "Write a plan.", **keys) -> str:
    model = MODELS[preset]
    if model and "model" not in keys:
        keys["model"] = model
    lines = ["[agents.a]", f'agent = "{preset}"', f"prompt = {json.dumps(prompt)}"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in keys.items()]
    return "\n".join(lines) + "\n"


def run(ws, preset, api, home, scenario, check_rc, retries=0, **keys) -> dict:
    env = cli_env(preset, api, scenario, home, retries)
    ws.write_pipeline("p", pipeline(preset, **keys))
    ws.doit("wait", env=env, timeout=180, check_rc=check_rc)
    return ws.status("p", "a")


def events(ws) -> list[dict]:
    path = ws.state / "events.jsonl"
    return [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []


def first_failure(ws, preset, api, home, scenario, retries=0, **keys) -> dict:
    """Launch, wait for the first `fail` event, then cancel the agent (a rate
    limited agent would be relaunched after its rest)."""
    env = cli_env(preset, api, scenario, home, retries)
    ws.write_pipeline("p", pipeline(preset, retry_backoff="60s", **keys))
    ws.doit(env=env, check_rc=0)
    event = wait_until(lambda: next((e for e in events(ws) if e["event"] == "fail"), None),
                       120, "the first failure")
    record = ws.status("p", "a")
    ws.doit("cancel", "p:a", env=env, check_rc=0)
    return {"event": event, "record": record}


PRESETS = ("claude", "codex", "gemini", "aider")
TOOL_PRESETS = ("claude", "codex", "gemini")   # aider calls no tools: it edits files


@pytest.mark.parametrize("preset", PRESETS)
def test_success_records_the_answer_tokens_and_cost(ws, api, home, preset):
    assert not (ws.root / ".git").exists()     # codex outside git, gemini untrusted: both run
    record = run(ws, preset, api, home, "success", check_rc=0)
    result = record["result"]
    assert record["state"] == "done" and record["reason"] == "done"
    assert result["final_message"] == "PLAN: hello"
    assert (ws.state / "results" / "p" / "a.md").read_text().strip() == "PLAN: hello"
    tokens = (result["input_tokens"], result["output_tokens"], result["cache_tokens"])
    assert tokens == {"claude": (200, 7, 30), "codex": (1234, 56, 200),
                      "gemini": (1234, 56, 200), "aider": (1200, 7, 0)}[preset]
    if preset in ("claude", "aider"):
        assert result["cost_usd"] > 0 and record["spent_usd"] == pytest.approx(result["cost_usd"], abs=1e-6)
    else:
        assert result["cost_usd"] is None
    if preset != "aider":
        assert result["session_id"]
    if preset == "aider":   # its files stay out of the workspace; no repository made
        assert not (ws.root / ".git").exists()
        assert not list(ws.root.glob(".aider.*history*"))
        assert (ws.state / "aider" / "p" / "a.chat.history.md").exists()
        assert ".aider" not in (ws.root / ".gitignore").read_text()


@pytest.mark.parametrize("preset", PRESETS)
def test_success_sandboxed_through_the_proxy(ws, api, home, preset):
    """The same success, under bubblewrap: the mock on 127.0.0.1 is reached
    only through orchestrate's proxy (the sandbox has no network of its own),
    so every request it saw went through the proxy."""
    from test_sandbox import needs_bubblewrap
    needs_bubblewrap()
    env = cli_env(preset, api, "success", home)
    text = pipeline(preset) + f'sandbox = {{ network = ["127.0.0.1:{api.port}"] }}\n'
    ws.write_pipeline("p", text)
    before = len(api.seen("success"))
    ws.doit("wait", env=env, timeout=180, check_rc=0)
    record = ws.status("p", "a")
    assert record["state"] == "done", (ws.state / "logs" / "p" / "a.log").read_text()
    assert record["result"]["final_message"] == "PLAN: hello"
    assert len(api.seen("success")) > before
    # other hosts a CLI asks for (codex: github.com for its update check) are
    # refused, each one line in the log; the mock never is
    assert "sandbox: blocked 127.0.0.1" not in (ws.state / "logs" / "p" / "a.log").read_text()


@pytest.mark.parametrize("preset", TOOL_PRESETS)
def test_tool_use_keeps_only_the_answer_after_the_last_tool_call(ws, api, home, preset):
    keys = {"allowed_tools": ["Bash"]} if preset == "claude" else {}
    record = run(ws, preset, api, home, "tools", check_rc=0, **keys)
    result = record["result"]
    assert record["state"] == "done"
    assert result["final_message"] == "PLAN: hello"      # not "Let me look.PLAN: hello"
    assert len([r for r in api.seen("tools") if r["method"] == "POST"]) >= 2
    if preset != "codex":
        assert result["turns"] == 2


@pytest.mark.parametrize("preset", PRESETS)
def test_bad_request_fails_with_the_api_error(ws, api, home, preset):
    record = run(ws, preset, api, home, "err400", check_rc=1)
    result = record["result"]
    assert record["state"] == "failed" and not result["rate_limited"]
    assert result["is_error"] and result["final_message"] == ""
    expected = {"claude": "exit 1: API Error: 400 mock: messages: invalid request",
                "codex": "exit 1: {\"error\": {\"message\": \"Invalid 'input': mock bad request.",
                "gemini": "exit 144: [API Error: {\"error\":{\"code\":400,",
                "aider": "agent reported an error: litellm.BadRequestError: OpenAIException - "
                         "Invalid 'input': mock bad request."}[preset]
    assert record["reason"].startswith(expected), record["reason"]


@pytest.mark.parametrize("preset", PRESETS)
def test_server_error_fails_and_is_not_a_rate_limit(ws, api, home, preset):
    # aider retries a 500 for over a minute: its timeout stops it mid-retry
    keys = {"timeout": "30s", "kill_grace": "1s"} if preset == "aider" else {}
    record = run(ws, preset, api, home, "err500", check_rc=1, retries=1, **keys)
    result = record["result"]
    assert record["state"] == "failed" and result["is_error"] and not result["rate_limited"]
    expected = {"claude": "exit 1: API Error: 500 Internal server error (mock)",
                "codex": "exit 1: We’re currently experiencing high demand",
                "gemini": "exit 244: [API Error: {\"error\":{\"code\":500,",
                "aider": "timeout after 30s"}[preset]
    assert record["reason"].startswith(expected), record["reason"]
    if preset == "aider":
        assert result["error"].startswith("litellm.InternalServerError")


@pytest.mark.parametrize("scenario", ["ratelimit", "overloaded"])
@pytest.mark.parametrize("preset", ("claude", "codex", "gemini"))
def test_rate_limit_and_overload_rest_the_agent_and_hold_the_preset(ws, api, home, preset,
                                                                     scenario):
    seen = first_failure(ws, preset, api, home, scenario, retries=1)
    event, record = seen["event"], seen["record"]
    result = record["result"]
    assert "retry_at" in event and record["rate_limit_hits"] == 1, (event, record)
    assert record["state"] != "waiting" or record["reason"].startswith("rate limited until")
    assert event["exit_code"] == (RATE_LIMIT_EXITS[preset] if scenario == "ratelimit"
                                  else {"claude": 1, "codex": 1, "gemini": 247}[preset])
    assert result["rate_limited"] and result["is_error"]
    assert (ws.state / "ratelimits" / f"{preset}.json").exists()
    if preset == "gemini" and scenario == "ratelimit":   # "Please retry in 1s"
        assert result["reset_at"] is not None
    assert ws.state_of("p", "a") == "cancelled"


@pytest.mark.parametrize("scenario", ["ratelimit", "overloaded"])
@pytest.mark.parametrize("preset", PRESETS)
def test_stopped_while_the_cli_retries_a_rate_limit_is_still_rate_limited(
        ws, api, home, preset, scenario):
    """The CLIs retry 429/529/503 on their own for minutes: an agent stopped by
    its timeout meanwhile is rested and relaunched, not failed."""
    timeout = {"claude": "6s", "codex": "6s", "gemini": "9s", "aider": "30s"}[preset]
    seen = first_failure(ws, preset, api, home, scenario, retries=8, timeout=timeout,
                         kill_grace="1s")
    event, record = seen["event"], seen["record"]
    result = record["result"]
    assert event["exit_code"] != 0 and event["reason"] == f"timeout after {timeout}"
    assert "retry_at" in event and record["rate_limit_hits"] == 1, (event, record)
    assert result["rate_limited"]
    assert (ws.state / "ratelimits" / f"{preset}.json").exists()


def test_cancel_while_retrying_a_rate_limit_holds_the_preset(ws, api, home):
    env = cli_env("claude", api, "ratelimit", home, retries=8)
    ws.write_pipeline("p", pipeline("claude"))
    ws.doit(env=env, check_rc=0)
    log = ws.state / "logs" / "p" / "a.log"
    wait_until(lambda: log.exists() and '"api_retry"' in log.read_text(), 60, "a retry")
    ws.doit("cancel", "p:a", env=env, check_rc=0)
    record = ws.status("p", "a")
    assert record["state"] == "cancelled" and record["result"]["rate_limited"]
    assert (ws.state / "ratelimits" / "claude.json").exists()


@pytest.mark.parametrize("preset", PRESETS)
def test_a_hanging_api_is_caught_by_the_stall_timeout(ws, api, home, preset):
    record = run(ws, preset, api, home, "hang", check_rc=1, stall_timeout="4s",
                 kill_grace="1s")
    assert record["state"] == "failed"
    assert record["reason"] == "stalled: no output for 4s"
    assert not record["result"]["rate_limited"]


def test_gemini_without_an_auth_type_says_so(ws, api, home):
    env = cli_env("gemini", api, "success", home)
    (home / ".gemini" / "settings.json").write_text("{}")
    ws.write_pipeline("p", pipeline("gemini"))
    ws.doit("wait", env=env, timeout=120, check_rc=1)
    record = ws.status("p", "a")
    assert record["reason"] == "exit 41: Invalid auth method selected."
    assert record["result"]["error"] == "Invalid auth method selected."


@pytest.mark.skipif(os.geteuid() != 0, reason="claude refuses bypassPermissions only as root")
def test_claude_as_root_with_bypass_permissions_says_why_and_what_to_do(ws, api, home):
    record = run(ws, "claude", api, home, "success", check_rc=1,
                 permission_mode="bypassPermissions")
    assert record["reason"].startswith(
        "exit 1: --dangerously-skip-permissions cannot be used with root/sudo privileges")
    assert "IS_SANDBOX" in record["reason"] and "acceptEdits" in record["reason"]


@pytest.mark.parametrize("preset", PRESETS)
def test_a_bad_flag_fails_with_the_clis_message(ws, api, home, preset):
    record = run(ws, preset, api, home, "success", check_rc=1,
                 extra_args=["--bogus-flag-xyz"])
    assert record["state"] == "failed"
    reason = record["reason"]
    assert reason.startswith(f"exit {record['exit_code']}: ") and record["exit_code"] != 0
    assert "bogus-flag-xyz" in reason, reason
    assert not api.seen("success") or all(
        "bogus-flag" not in json.dumps(r["body"]) for r in api.seen("success"))


def test_claude_limited_for_an_hour_falls_back_to_codex(ws, api, home):
    """The real claude gets a 429 whose limit resets in an hour (it says no
    reset time with an API key: unknown counts as far); the real codex
    answers the same prompt."""
    env = {**cli_env("claude", api, "ratelimit-far", home),
           **cli_env("codex", api, "success", home)}
    ws.write_pipeline("p", pipeline("claude", fallback=["codex"]))
    ws.doit("wait", env=env, timeout=180, check_rc=0)
    record = ws.status("p", "a")
    assert record["state"] == "done" and record["preset"] == "codex", record
    assert record["reason"] == "via codex: claude rate limited (reset unknown)"
    assert record["result"]["final_message"] == "PLAN: hello"
    claude_calls = [r for r in api.seen("ratelimit-far") if r["path"].startswith("/v1/messages")]
    codex_calls = [r for r in api.seen("success") if r["path"].startswith("/v1/responses")]
    assert claude_calls and codex_calls
    assert "Write a plan." in json.dumps(codex_calls[-1]["body"])   # the same prompt
    assert [e["preset"] for e in events(ws) if e["event"] == "fallback"] == ["codex"]
    assert json.loads((ws.state / "ratelimits" / "claude.json").read_text())["until"]
