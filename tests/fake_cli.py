"""Stand-ins for the agent CLIs (claude, codex, gemini, aider), offline.

    fake_cli.py PRESET [the real CLI's flags...]

Each accepts the flags orchestrate passes, reads the prompt where the real CLI
does (stdin; aider: --message-file) and prints the real CLI's output shape
(docs/agent-cli-output.md). The prompt steers it: "FAIL" fails the run,
"ERROR0" reports an error but exits 0 (as claude can), "HANG" hangs silently.
Every call is appended to $ORCHESTRATE_ROOT/cli-calls.jsonl.
"""
import json
import os
import sys
import time
from pathlib import Path


def record_call(preset: str, argv: list[str], prompt: str) -> None:
    path = Path(os.environ.get("ORCHESTRATE_ROOT", ".")) / "cli-calls.jsonl"
    with open(path, "a") as handle:
        handle.write(json.dumps({"preset": preset, "argv": argv, "prompt": prompt,
                                 "stdin_isatty": sys.stdin.isatty(),
                                 "agent": os.environ.get("ORCHESTRATE_AGENT")}) + "\n")


def emit(event: dict) -> None:
    print(json.dumps(event), flush=True)


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


RESET_IN = float(os.environ.get("FAKE_CLI_RESET_IN", "1.5"))   # until the limit resets


def claude_rate_limit(session: str) -> int:
    reset = int(time.time() + RESET_IN) + 1
    emit({"type": "rate_limit_event", "rate_limit_info": {
        "status": "rejected", "resetsAt": reset, "rateLimitType": "five_hour"},
        "uuid": "u-1", "session_id": session})
    emit({"type": "assistant", "message": {"id": "msg_x", "role": "assistant", "content": [
        {"type": "text", "text": "API Error: Rate limit reached"}]}, "error": "rate_limit",
        "parent_tool_use_id": None, "session_id": session})
    emit({"type": "result", "subtype": "success", "is_error": True, "api_error_status": 429,
          "duration_ms": 5, "num_turns": 1, "result": "API Error: Rate limit reached",
          "session_id": session, "total_cost_usd": 0, "usage": {"input_tokens": 0,
                                                                 "output_tokens": 0}})
    return 1


def claude(argv: list[str], prompt: str) -> int:
    if "-p" not in argv:
        print("fake claude: interactive mode is not supported here", file=sys.stderr)
        return 1
    if "stream-json" in argv and "--verbose" not in argv:
        print("Error: When using --print, --output-format=stream-json requires --verbose",
              file=sys.stderr)
        return 1
    model = argv[argv.index("--model") + 1] if "--model" in argv else "claude-sonnet"
    session = "5e0c7a1e-0000-4000-8000-000000000001"
    emit({"type": "system", "subtype": "init", "cwd": os.getcwd(), "session_id": session,
          "model": model, "tools": [], "permissionMode": "default"})
    if "RATELIMIT" in prompt and rate_limited_once("claude"):
        return claude_rate_limit(session)
    text = f"echo: {prompt.strip().splitlines()[0] if prompt.strip() else ''}"
    emit({"type": "assistant", "message": {"id": "msg_1", "role": "assistant", "model": model,
          "content": [{"type": "text", "text": text}]}, "parent_tool_use_id": None,
          "session_id": session})
    failed = "FAIL" in prompt
    result = {"type": "result", "subtype": "error_during_execution" if failed else "success",
              "is_error": failed or "ERROR0" in prompt, "duration_ms": 12, "duration_api_ms": 10,
              "num_turns": 2, "session_id": session, "total_cost_usd": 0.0123,
              "usage": {"input_tokens": 1200, "output_tokens": 340,
                        "cache_creation_input_tokens": 10, "cache_read_input_tokens": 5}}
    if failed:
        result["errors"] = ["the fake failed as asked"]
    else:
        result["result"] = text
    emit(result)
    return 1 if failed else 0


def codex(argv: list[str], prompt: str) -> int:
    if argv[:2] != ["exec", "--json"]:
        print("fake codex: expected `exec --json`", file=sys.stderr)
        return 2
    emit({"type": "thread.started", "thread_id": "0199a213-81c0-7800-8aa1-bbab2a035a53"})
    emit({"type": "turn.started"})
    if "RATELIMIT" in prompt and rate_limited_once("codex"):
        emit({"type": "error", "message": "exceeded retry limit, last status: 429 Too Many Requests"})
        emit({"type": "turn.failed", "error": {
            "message": "exceeded retry limit, last status: 429 Too Many Requests"}})
        return 1
    if "FAIL" in prompt:
        emit({"type": "error", "message": "stream disconnected before completion"})
        emit({"type": "turn.failed", "error": {"message": "stream disconnected before completion"}})
        return 1
    emit({"type": "item.completed", "item": {"id": "item_0", "type": "agent_message",
                                             "text": f"echo: {prompt.strip()}"}})
    emit({"type": "turn.completed", "usage": {"input_tokens": 2400, "cached_input_tokens": 2000,
                                              "output_tokens": 120}})
    return 0


def gemini(argv: list[str], prompt: str) -> int:
    if "-p" not in argv or argv[argv.index("--output-format") + 1] != "stream-json":
        print("fake gemini: expected -p and --output-format stream-json", file=sys.stderr)
        return 1
    stamp = "2026-11-25T12:00:00.000Z"
    emit({"type": "init", "timestamp": stamp, "session_id": "gem-1", "model": "gemini-flash"})
    if "RATELIMIT" in prompt and rate_limited_once("gemini"):
        print(json.dumps({"error": {"type": "TerminalQuotaError", "code": 429, "message":
              "You have exhausted your capacity on this model. RESOURCE_EXHAUSTED"}},
              indent=2), file=sys.stderr)
        return 1
    if "FAIL" in prompt:
        emit({"type": "result", "timestamp": stamp, "status": "error",
              "error": {"type": "FatalError", "message": "the fake failed"}, "stats": {}})
        return 1
    emit({"type": "message", "timestamp": stamp, "role": "assistant", "content": "echo: ",
          "delta": True})
    emit({"type": "message", "timestamp": stamp, "role": "assistant", "content": prompt.strip(),
          "delta": True})
    emit({"type": "result", "timestamp": stamp, "status": "success",
          "stats": {"total_tokens": 150, "input_tokens": 100, "output_tokens": 50, "cached": 0,
                    "duration_ms": 20, "tool_calls": 0}})
    return 0


def aider(argv: list[str], prompt: str) -> int:
    print("Aider v0.86.1\nModel: fake with diff edit format\nGit repo: none", flush=True)
    if "FAIL" in prompt:
        print("litellm.AuthenticationError: AnthropicException - invalid x-api-key")
        print("The API provider is not able to authenticate you. Check your API key.")
        return 0       # aider exits 0 after --message-file even when the call failed
    if "RATELIMIT" in prompt and rate_limited_once("aider"):
        print('litellm.RateLimitError: AnthropicException - {"type":"error","error":'
              '{"type":"rate_limit_error","message":"rate limited"}}')
        print("The API provider has rate limited you. Try again later or check your quotas.")
        return 0       # aider exits 0 after --message-file even when the call failed
    print(f"echo: {prompt.strip()}")
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
