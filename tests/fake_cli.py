"""Stand-ins for the agent CLIs (claude, codex, gemini, aider), offline.

    fake_cli.py PRESET [the real CLI's flags...]

Each accepts the flags orchestrate passes, reads the prompt where the real CLI
does (stdin; aider: --message-file) and prints what the real CLI prints, as
captured from Claude Code 2.1.197, codex-cli 0.169.0, gemini-cli 0.61.0 and
aider 0.86.2 (tests/test_real_clis.py keeps the presets honest against the real
programs). The prompt steers it: "FAIL" makes the model call fail with HTTP
400, "ERROR0" reports an error but exits 0 (as claude can), "RATELIMIT" hits a
rate limit once per agent, "HANG" hangs silently. FAKE_CLI_LIMITED="claude,gemini"
makes those presets rate limited at every call, whatever the prompt (a
fallback chain's test); FAKE_CLI_RESET_IN="unknown" makes claude say no reset
time, as it does with an API key (its 429 retries, then a 429 result). Every call is appended to
$ORCHESTRATE_ROOT/cli-calls.jsonl.

Sessions resume as the real CLIs do (verified with tests/test_checks.py against
them): claude `-p --resume ID`, codex `exec resume [OPTIONS] ID -`, gemini
`--resume ID` continue session ID and report that same id; an id the fake never
reported is refused (gemini's message is its source's).
"""
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path


def record_call(preset: str, argv: list[str], prompt: str) -> None:
    path = Path(os.environ.get("ORCHESTRATE_ROOT", ".")) / "cli-calls.jsonl"
    with open(path, "a") as handle:
        handle.write(json.dumps({"preset": preset, "argv": argv, "prompt": prompt,
                                 "stdin_isatty": sys.stdin.isatty(),
                                 "agent": os.environ.get("ORCHESTRATE_AGENT")}) + "\n")


def sessions_path() -> Path:
    return Path(os.environ.get("ORCHESTRATE_ROOT", ".")) / "fake-cli-sessions.txt"


def known_session(preset: str, session: str) -> bool:
    path = sessions_path()
    return path.exists() and f"{preset} {session}" in path.read_text().splitlines()


def remember_session(preset: str, session: str) -> None:
    with open(sessions_path(), "a") as handle:
        handle.write(f"{preset} {session}\n")


def resumed(argv: list[str]) -> str | None:
    return argv[argv.index("--resume") + 1] if "--resume" in argv else None


def emit(event: dict) -> None:
    print(json.dumps(event), flush=True)


def limited(preset: str, prompt: str) -> bool:
    """Is this call rate limited: its preset listed in FAKE_CLI_LIMITED, or
    the prompt asks for RATELIMIT (see rate_limited_once)?"""
    listed = os.environ.get("FAKE_CLI_LIMITED")
    if listed is not None:
        return preset in listed.split(",")
    return "RATELIMIT" in prompt and rate_limited_once(preset)


def rate_limited_once(preset: str) -> bool:
    """True the first time an agent's prompt asks for RATELIMIT: then it works
    (FAKE_CLI_ALWAYS_LIMITED=1: every time)."""
    if os.environ.get("FAKE_CLI_ALWAYS_LIMITED"):
        return True
    marker = Path(os.environ.get("ORCHESTRATE_ROOT", ".")) / (
        f"ratelimited-{preset}-{os.environ.get('ORCHESTRATE_AGENT')}")
    if marker.exists():
        return False
    marker.touch()
    return True


RESET_TEXT = os.environ.get("FAKE_CLI_RESET_IN", "1.5")
RESET_IN = 1.5 if RESET_TEXT == "unknown" else float(RESET_TEXT)   # until the limit resets


def in_git_repo() -> bool:
    cwd = Path.cwd().resolve()
    return any((folder / ".git").exists() for folder in (cwd, *cwd.parents))


# --- claude ------------------------------------------------------------------

SESSION = "5e0c7a1e-0000-4000-8000-000000000001"


def claude_synthetic_error(text: str, error: str, status: int, session: str) -> None:
    """What claude prints when the API call failed: a synthetic assistant
    message and a `result` with is_error, subtype "success" and the status."""
    emit({"type": "assistant", "message": {"id": "0000-synthetic", "model": "<synthetic>",
          "role": "assistant", "type": "message", "content": [{"type": "text", "text": text}],
          "usage": {"input_tokens": 0, "output_tokens": 0}}, "parent_tool_use_id": None,
          "session_id": session, "error": error})
    emit({"type": "result", "subtype": "success", "is_error": True, "api_error_status": status,
          "duration_ms": 5, "duration_api_ms": 0, "num_turns": 1, "result": text,
          "stop_reason": "stop_sequence", "session_id": session, "total_cost_usd": 0,
          "usage": {"input_tokens": 0, "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0, "output_tokens": 0},
          "modelUsage": {}, "permission_denials": [], "terminal_reason": "completed"})


def claude_rate_limit(session: str) -> int:
    """A subscription's limit (OAuth): a rejected rate_limit_event with its reset.
    FAKE_CLI_RESET_IN=unknown: an API key's (cli-transcripts/claude/ratelimit-long):
    its own retries of the 429, then a 429 result, no reset time."""
    if RESET_TEXT == "unknown":
        for attempt in (1, 2):
            emit({"type": "system", "subtype": "api_retry", "attempt": attempt,
                  "max_retries": 10, "retry_delay_ms": 30000, "error_status": 429,
                  "error": "rate_limit", "session_id": session, "uuid": f"r-{attempt}"})
        claude_synthetic_error("API Error: Request rejected (429) · This request would exceed "
                               "your account's rate limit. Please try again later.",
                               "rate_limit", 429, session)
        return 1
    reset = int(time.time() + RESET_IN) + 1
    emit({"type": "rate_limit_event", "rate_limit_info": {
        "status": "rejected", "resetsAt": reset, "rateLimitType": "five_hour"},
        "uuid": "u-1", "session_id": session})
    claude_synthetic_error("You've hit your session limit · resets 9am", "rate_limit", 429,
                           session)
    return 1


def claude(argv: list[str], prompt: str) -> int:
    if "-p" not in argv:
        print("fake claude: interactive mode is not supported here", file=sys.stderr)
        return 1
    if "stream-json" in argv and "--verbose" not in argv:
        print("Error: When using --print, --output-format=stream-json requires --verbose",
              file=sys.stderr)
        return 1
    mode = argv[argv.index("--permission-mode") + 1] if "--permission-mode" in argv else "default"
    if mode == "bypassPermissions" and os.geteuid() == 0 and os.environ.get("IS_SANDBOX") != "1":
        print("--dangerously-skip-permissions cannot be used with root/sudo privileges for "
              "security reasons", file=sys.stderr)
        return 1
    model = argv[argv.index("--model") + 1] if "--model" in argv else "claude-opus-4-8[1m]"
    session = resumed(argv) or SESSION
    if resumed(argv) and not known_session("claude", session):
        message = f"No conversation found with session ID: {session}"
        emit({"type": "result", "subtype": "error_during_execution", "duration_ms": 0,
              "duration_api_ms": 0, "is_error": True, "num_turns": 0, "stop_reason": None,
              "session_id": session, "total_cost_usd": 0, "modelUsage": {},
              "permission_denials": [], "errors": [message]})
        print(message, file=sys.stderr)
        return 1
    remember_session("claude", SESSION)
    emit({"type": "system", "subtype": "init", "cwd": os.getcwd(), "session_id": SESSION,
          "tools": ["Bash", "Edit", "Read"], "mcp_servers": [], "model": model,
          "permissionMode": mode, "apiKeySource": "ANTHROPIC_API_KEY",
          "claude_code_version": "2.1.197"})
    if limited("claude", prompt):
        return claude_rate_limit(SESSION)
    if "FAIL" in prompt:
        claude_synthetic_error("API Error: 400 the fake failed as asked", "unknown", 400, SESSION)
        return 1
    text = f"echo: {prompt.strip().splitlines()[0] if prompt.strip() else ''}"
    emit({"type": "assistant", "message": {"id": "msg_1", "type": "message", "role": "assistant",
          "model": model, "content": [{"type": "text", "text": text}],
          "usage": {"input_tokens": 500, "cache_creation_input_tokens": 150,
                    "cache_read_input_tokens": 50, "output_tokens": 1}},
          "parent_tool_use_id": None, "session_id": SESSION})
    # `usage` covers the main turns; modelUsage every request (cost included)
    emit({"type": "result", "subtype": "success", "is_error": "ERROR0" in prompt,
          "api_error_status": None, "duration_ms": 12, "duration_api_ms": 10, "num_turns": 2,
          "result": text, "stop_reason": "end_turn", "session_id": SESSION,
          "total_cost_usd": 0.0123,
          "usage": {"input_tokens": 500, "cache_creation_input_tokens": 150,
                    "cache_read_input_tokens": 50, "output_tokens": 200},
          "modelUsage": {model: {"inputTokens": 1000, "outputTokens": 340,
                                 "cacheReadInputTokens": 50, "cacheCreationInputTokens": 150,
                                 "costUSD": 0.0123}},
          "permission_denials": [], "terminal_reason": "completed"})
    return 0


# --- codex -------------------------------------------------------------------

def codex(argv: list[str], prompt: str) -> int:
    thread = "01a2171e-0af0-7261-b65e-f0a0c62fe77b"
    if argv[:2] == ["exec", "resume"] and "--json" in argv:   # exec resume [OPTIONS] ID -
        thread = argv[-2]
        if argv[-1] != "-" or not known_session("codex", thread):
            print(f"Error: thread/resume: thread/resume failed: no rollout found for thread "
                  f"id {thread} (code -32600)", file=sys.stderr)
            return 1
    elif argv[:2] != ["exec", "--json"]:
        print("error: unexpected argument found\n\nUsage: codex exec [OPTIONS] [PROMPT]",
              file=sys.stderr)
        return 2
    if "--skip-git-repo-check" not in argv and not in_git_repo():
        print("Not inside a trusted directory and --skip-git-repo-check was not specified.",
              file=sys.stderr)
        return 1
    remember_session("codex", thread)
    emit({"type": "thread.started", "thread_id": thread})
    emit({"type": "item.completed", "item": {"id": "item_0", "type": "error", "message":
          "Model metadata for `gpt-5-codex` not found. Defaulting to fallback metadata; "
          "this can degrade performance and cause issues."}})
    emit({"type": "turn.started"})
    if limited("codex", prompt):
        last = "exceeded retry limit, last status: 429 Too Many Requests"
        for n in range(1, 6):
            emit({"type": "error", "message": f"Reconnecting... {n}/5 ({last})"})
        emit({"type": "error", "message": last})
        emit({"type": "turn.failed", "error": {"message": last}})
        return 1
    if "FAIL" in prompt:
        body = json.dumps({"error": {"message": "Invalid 'input': the fake failed.",
                                     "type": "invalid_request_error"}})
        emit({"type": "error", "message": body})
        emit({"type": "turn.failed", "error": {"message": body}})
        return 1
    emit({"type": "item.completed", "item": {"id": "item_1", "type": "agent_message",
                                             "text": f"echo: {prompt.strip()}"}})
    emit({"type": "turn.completed", "usage": {"input_tokens": 2400, "cached_input_tokens": 2000,
                                              "cache_write_input_tokens": 0,
                                              "output_tokens": 120,
                                              "reasoning_output_tokens": 7}})
    return 0


# --- gemini ------------------------------------------------------------------

GEMINI_NOISE = ("Warning: 256-color support not detected. Using a terminal with at least "
                "256-color support is recommended for a better visual experience.\n"
                "Ripgrep is not available. Falling back to GrepTool.")


def now_stamp() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def gemini_failure(message: str, status: int) -> int:
    """A failed model call: a `result` with status "error"; exit = HTTP status % 256."""
    emit({"type": "result", "timestamp": now_stamp(), "status": "error",
          "error": {"type": "unknown", "message": message},
          "stats": {"total_tokens": 0, "input_tokens": 0, "output_tokens": 0, "cached": 0,
                    "input": 0, "duration_ms": 0, "tool_calls": 0}})
    return status % 256


def gemini(argv: list[str], prompt: str) -> int:
    if "-p" not in argv or argv[argv.index("--output-format") + 1] != "stream-json":
        print("Unknown arguments: expected -p and --output-format stream-json", file=sys.stderr)
        return 1
    if "--skip-trust" not in argv and os.environ.get("GEMINI_CLI_TRUST_WORKSPACE") != "true":
        print("\x1b[31mGemini CLI is not running in a trusted directory. To proceed, either use "
              "`--skip-trust`, set the `GEMINI_CLI_TRUST_WORKSPACE=true` environment variable, "
              "or trust this directory in interactive mode.\x1b[0m", file=sys.stderr)
        return 55
    print(GEMINI_NOISE, file=sys.stderr, flush=True)
    model = argv[argv.index("-m") + 1] if "-m" in argv else "auto"
    session = resumed(argv) or "5a1e0000-0000-4000-8000-00000000ge01"
    if resumed(argv) and not known_session("gemini", session):
        print(f'Error resuming session: Invalid session identifier "{session}".\n'
              "  Use --list-sessions to see available sessions.", file=sys.stderr)
        return 1
    remember_session("gemini", session)
    emit({"type": "init", "timestamp": now_stamp(), "session_id": session, "model": model})
    # gemini echoes the prompt: a parser must never read it as the CLI's word
    emit({"type": "message", "timestamp": now_stamp(), "role": "user", "content": prompt})
    if limited("gemini", prompt):
        quota = (f"You exceeded your current quota, please check your plan and billing "
                 f"details. Please retry in {RESET_IN:g}s.\nSuggested retry after {RESET_IN:g}s.")
        print(f"Attempt 1 failed: {quota}. Max attempts reached", file=sys.stderr, flush=True)
        return gemini_failure(f"[API Error: {quota}]\nPlease wait and try again later.", 429)
    if "FAIL" in prompt:
        return gemini_failure('[API Error: {"error":{"code":400,"message":"the fake failed",'
                              '"status":"INVALID_ARGUMENT"}}]', 400)
    # text before a tool call is a message of its own: only what follows counts
    emit({"type": "message", "timestamp": now_stamp(), "role": "assistant",
          "content": "Let me look.", "delta": True})
    emit({"type": "tool_use", "timestamp": now_stamp(), "tool_name": "list_directory",
          "tool_id": "list_directory_1", "parameters": {"dir_path": "."}})
    emit({"type": "tool_result", "timestamp": now_stamp(), "tool_id": "list_directory_1",
          "status": "success", "output": "Directory is empty."})
    emit({"type": "message", "timestamp": now_stamp(), "role": "assistant", "content": "echo: ",
          "delta": True})
    emit({"type": "message", "timestamp": now_stamp(), "role": "assistant",
          "content": prompt.strip(), "delta": True})
    emit({"type": "result", "timestamp": now_stamp(), "status": "success",
          "stats": {"total_tokens": 150, "input_tokens": 100, "output_tokens": 50, "cached": 20,
                    "input": 80, "duration_ms": 20, "tool_calls": 1}})
    return 0


# --- aider -------------------------------------------------------------------

def aider(argv: list[str], prompt: str) -> int:
    git = "--no-git" not in argv
    if git and not in_git_repo():
        print("Added .aider* to .gitignore\nGit repository created in " + os.getcwd())
    print("HTTPSConnectionPool(host='raw.githubusercontent.com', port=443): Max retries "
          "exceeded with url: /BerriAI/litellm/main/model_prices_and_context_window.json")
    model = argv[argv.index("--model") + 1] if "--model" in argv else "openai/gpt-4o-mini"
    print(f"Aider v0.86.2\nModel: {model} with whole edit format\n"
          f"Git repo: {'.git with 0 files' if git else 'none'}\n"
          "Repo-map: using 4096 tokens, auto refresh\n", flush=True)
    if "FAIL" in prompt:     # aider exits 0 after --message-file even when the call failed
        print("litellm.BadRequestError: OpenAIException - Invalid 'input': the fake failed.\n")
        return 0
    if limited("aider", prompt):
        for delay in (0.2, 0.5):
            print("litellm.RateLimitError: RateLimitError: OpenAIException - Rate limit reached. "
                  "Please try again in 30s.\nThe API provider has rate limited you. Try again "
                  f"later or check your quotas.\nRetrying in {delay} seconds...")
        return 0
    print(f"echo: {prompt.strip()}\n")
    print("Tokens: 2.3k sent, 110 received. Cost: $0.0081 message, $0.0081 session.")
    return 0


def main() -> int:
    preset, argv = sys.argv[1], sys.argv[2:]
    if preset == "aider":
        path = argv[argv.index("--message-file") + 1]
        prompt = Path(path).read_text()
    else:
        prompt = sys.stdin.read()
    record_call(preset, argv, prompt)
    if "HANG" in prompt:
        time.sleep(60)
    return {"claude": claude, "codex": codex, "gemini": gemini, "aider": aider}[preset](
        argv, prompt)


if __name__ == "__main__":
    sys.exit(main())
