"""The parsers on lines the real CLIs printed (tests/test_real_clis.py runs the
programs; these pin the shapes in milliseconds)."""
import json

from orchestrate.agents.results import parse, stderr_error


def lines(*events) -> str:
    return "\n".join(e if isinstance(e, str) else json.dumps(e) for e in events) + "\n"


INIT = {"type": "system", "subtype": "init", "session_id": "s1"}


def retry(error: str, status: int) -> dict:
    return {"type": "system", "subtype": "api_retry", "attempt": 1, "max_retries": 10,
            "retry_delay_ms": 30000, "error_status": status, "error": error}


def test_claude_stopped_while_retrying_a_rate_limit_is_rate_limited():
    for error, status in (("rate_limit", 429), ("overloaded", 529)):
        result = parse("claude", lines(INIT, retry(error, status)), 143)
        assert result.rate_limited and not result.is_error
    assert not parse("claude", lines(INIT, retry("server_error", 500)), 143).rate_limited


def test_claude_retry_then_success_is_not_rate_limited():
    text = lines(INIT, retry("rate_limit", 429),
                 {"type": "assistant", "message": {"model": "m", "content": [
                     {"type": "text", "text": "PLAN: hello"}]}},
                 {"type": "result", "subtype": "success", "is_error": False, "result": "PLAN: hello",
                  "num_turns": 1, "total_cost_usd": 0.01, "usage": {"input_tokens": 1},
                  "modelUsage": {"a": {"inputTokens": 100, "outputTokens": 7,
                                       "cacheReadInputTokens": 30, "cacheCreationInputTokens": 50},
                                 "b": {"inputTokens": 20, "outputTokens": 3}}})
    result = parse("claude", text, 0)
    assert not result.rate_limited and result.final_message == "PLAN: hello"
    assert (result.input_tokens, result.output_tokens, result.cache_tokens) == (200, 10, 30)


def test_claude_api_error_keeps_the_error_not_a_final_message():
    text = lines(INIT, {"type": "assistant", "error": "unknown", "message": {
        "model": "<synthetic>", "content": [{"type": "text", "text": "API Error: 400 bad"}]}},
                 {"type": "result", "subtype": "success", "is_error": True,
                  "api_error_status": 400, "result": "API Error: 400 bad"})
    result = parse("claude", text, 1)
    assert result.is_error and result.error == "API Error: 400 bad"
    assert result.final_message == "" and not result.rate_limited


def test_codex_reconnecting_on_429_is_rate_limited_and_500_is_not():
    def run(why: str):
        return lines({"type": "thread.started", "thread_id": "t"}, {"type": "turn.started"},
                     {"type": "error", "message": f"Reconnecting... 2/5 ({why})"})
    assert parse("codex", run("exceeded retry limit, last status: 429 Too Many Requests"),
                 143).rate_limited
    assert not parse("codex", run("We’re currently experiencing high demand, which may "
                                  "cause temporary errors."), 143).rate_limited


def test_gemini_reads_its_result_not_the_echoed_prompt():
    prompt = "Explain HTTP 429, RESOURCE_EXHAUSTED and QuotaError"
    text = lines({"type": "init", "session_id": "g"},
                 {"type": "message", "role": "user", "content": prompt},
                 {"type": "result", "timestamp": "2026-11-26T09:12:43.561Z", "status": "error",
                  "error": {"type": "unknown", "message": '[API Error: {"error":{"code":400}}]'},
                  "stats": {}})
    result = parse("gemini", text, 144)
    assert result.is_error and not result.rate_limited


def test_gemini_quota_error_gives_its_reset():
    text = lines({"type": "init", "session_id": "g"},
                 {"type": "result", "timestamp": "2026-11-26T09:20:08.000Z", "status": "error",
                  "error": {"type": "unknown", "message": "[API Error: You exceeded your current "
                            "quota ... Please retry in 30s.\nSuggested retry after 30s.]"},
                  "stats": {}})
    result = parse("gemini", text, 173)
    assert result.rate_limited
    assert result.reset_at == 1795684808.0 + 30


def test_gemini_stopped_between_quota_attempts_is_rate_limited():
    text = lines({"type": "init", "session_id": "g"},
                 "Attempt 1 failed: You exceeded your current quota, please check your plan.",
                 "Suggested retry after 30s.. Retrying after 35659ms...")
    assert parse("gemini", text, 143).rate_limited
    text = lines({"type": "init", "session_id": "g"},
                 "Attempt 1 failed with status 500. Retrying with backoff... _ApiError: {}")
    assert not parse("gemini", text, 143).rate_limited


def test_gemini_final_message_is_the_text_after_the_last_tool_call():
    text = lines({"type": "init", "session_id": "g"},
                 {"type": "message", "role": "assistant", "content": "Let me look.", "delta": True},
                 {"type": "tool_use", "tool_name": "list_directory", "tool_id": "t1"},
                 {"type": "tool_result", "tool_id": "t1", "status": "success"},
                 {"type": "message", "role": "assistant", "content": "PLAN: ", "delta": True},
                 {"type": "message", "role": "assistant", "content": "hello", "delta": True},
                 {"type": "result", "status": "success", "stats": {
                     "input_tokens": 2468, "output_tokens": 112, "cached": 400, "input": 2068}})
    result = parse("gemini", text, 0)
    assert result.final_message == "PLAN: hello" and result.turns == 2
    assert (result.input_tokens, result.output_tokens, result.cache_tokens) == (2468, 112, 400)


AIDER_HEAD = """
Update git name with: git config user.name "Your Name"
Added .aider* to .gitignore
HTTPSConnectionPool(host='raw.githubusercontent.com', port=443): Max retries exceeded
Aider v0.86.2
Model: anthropic/claude-3-5-haiku-20241022 with diff edit format, infinite output
Git repo: .git with 0 files
Repo-map: using 4096 tokens, auto refresh

"""


def test_aider_answer_tokens_and_wrapped_cost():
    text = AIDER_HEAD + ("PLAN: hello\n\nTokens: 2.3k sent, 2.0k cache hit, 110 received. "
                         "Cost: $0.00084 message, \n$0.00084 session.\n")
    result = parse("aider", text, 0)
    assert result.final_message == "PLAN: hello" and result.cost_usd == 0.00084
    assert (result.input_tokens, result.output_tokens, result.cache_tokens) == (2300, 110, 2000)


def test_aider_cache_writes_are_counted_once():
    text = AIDER_HEAD + ("PLAN: hello\n\nTokens: 250 sent, 50 cache write, 30 cache hit, "
                         "7 received.\nCost: $0.00018 message, $0.00018 session.\n")
    result = parse("aider", text, 0)
    assert (result.input_tokens, result.output_tokens, result.cache_tokens) == (200, 7, 30)


def test_aider_errors_and_overloads():
    limited = AIDER_HEAD + ("litellm.ServiceUnavailableError: ServiceUnavailableError: "
                            "OpenAIException - The server is overloaded (mock)\n"
                            "The API provider's servers are down or overloaded.\n"
                            "Retrying in 0.2 seconds...\n")
    result = parse("aider", limited, 0)
    assert result.is_error and result.rate_limited and result.final_message == ""
    failed = AIDER_HEAD + "litellm.InternalServerError: InternalServerError: boom\n"
    assert not parse("aider", failed, 0).rate_limited


def test_startup_failures_take_the_clis_own_line():
    trust = ("\x1b[31mGemini CLI is not running in a trusted directory. To proceed, either use "
             "`--skip-trust`\x1b[0m\n")
    result = parse("gemini", trust, 55)
    assert result.is_error and result.error.startswith("Gemini CLI is not running in a trusted")
    assert stderr_error("Unknown arguments: such-flag-xyz, suchFlagXyz\nUsage: gemini [options]\n"
                        "  -h, --help   Show help  [boolean]\n") == (
        "Unknown arguments: such-flag-xyz, suchFlagXyz")
    assert stderr_error("WARNING: proceeding, even though we could not create PATH aliases\n"
                        "Not inside a trusted directory and --skip-git-repo-check was not "
                        "specified.\n").startswith("Not inside a trusted directory")
    root = parse("claude", "--dangerously-skip-permissions cannot be used with root/sudo "
                           "privileges for security reasons\n", 1)
    assert "IS_SANDBOX" in root.error and "acceptEdits" in root.error
    assert not parse("claude", "some warning\n", 0).is_error     # exit 0: not a failure
