"""What an agent CLI reported, read from its log (pure).

The log holds the CLI's stdout and stderr. Each parser reads only what the CLI
itself emits as structure: its JSON events (claude, codex, gemini), the lines
it prints as its own errors, retries, token and cost reports. Never the
prompt (gemini echoes it as a `user` message) or the model's text, so a prompt
that mentions "429" cannot pass for a rate limit. Unknown lines are skipped:
new event types appear often. Shapes, as the real CLIs print them:
docs/agent-cli-output.md and the contract tests (tests/test_real_clis.py).

One meaning of the token counts for every preset:
- input_tokens: every prompt token the model read, cached or not (uncached +
  cache writes + cache reads), summed over the run's model requests;
- cache_tokens: the part of input_tokens read from the provider's cache;
- output_tokens: every generated token (reasoning included).
"""
from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any, Iterator

from ..core.records import AgentResult

__all__ = ["AgentResult", "parse"]


def _json_lines(text: str) -> Iterator[dict[str, Any]]:
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                yield value


# --- startup failures: stderr only, before any structured output ----------------

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_NOISE = re.compile(
    r"^(Warning: 256-color support|Ripgrep is not available|\[STARTUP\]|"
    r"WARNING: proceeding, even though we could not create PATH aliases|at |[{}\[\](),]+$|"
    r"For more information, try|Usage:|tip:)")
_ERROR_WORD = re.compile(r"^(error|fatal)\b|\berror:|^(Unknown|Invalid|Missing required) "
                         r"(arguments?|values?|option)", re.IGNORECASE)
CLAUDE_ROOT_BYPASS = "cannot be used with root/sudo privileges"
KILLED = (129, 130, 137, 143)     # SIGHUP, SIGINT, SIGKILL, SIGTERM (128 + signal)


def stderr_error(text: str) -> str | None:
    """The last meaningful line a CLI printed outside its JSON stream: the
    last one that says "error", else the last that is not known noise."""
    lines = [_ANSI.sub("", line).strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("{")
             and not _NOISE.match(line)]
    for line in reversed(lines):
        if _ERROR_WORD.search(line):
            return line
    return lines[-1] if lines else None


def _startup_failure(result: AgentResult, text: str, exit_code: int | None,
                     streamed: bool) -> AgentResult:
    """A CLI that failed before its structured output: its stderr line is the error."""
    if streamed or exit_code in (None, 0, *KILLED) or result.is_error:
        return result     # killed by a signal: orchestrate's stop, not a startup failure
    line = stderr_error(text)
    if line is None:
        return result
    if CLAUDE_ROOT_BYPASS in line:
        line += (' (claude refuses permission_mode = "bypassPermissions" as root: run '
                 'orchestrate as another user, or use permission_mode = "acceptEdits" with '
                 'allowed_tools, or in a throwaway container set env = { IS_SANDBOX = "1" })')
    result.is_error, result.error = True, line
    return result


# --- claude ------------------------------------------------------------------------

_CLAUDE_USAGE_LIMIT = re.compile(r"usage limit reached\|(\d+)", re.IGNORECASE)
_CLAUDE_LIMITED = ("rate_limit", "overloaded")
# a subscription's weekly limit of one model family: seven_day_opus, seven_day_sonnet
_CLAUDE_MODEL_LIMIT = re.compile(r"seven_day_([a-z]+)")


def _claude_tokens(result: AgentResult, event: dict[str, Any]) -> None:
    """modelUsage covers every request of the run (side requests too, as
    total_cost_usd does); `usage` only the main turns. Fall back to it."""
    models = [m for m in (event.get("modelUsage") or {}).values() if isinstance(m, dict)]
    if models:
        def total(key: str) -> int:
            return sum(int(m.get(key) or 0) for m in models)
        read, write = total("cacheReadInputTokens"), total("cacheCreationInputTokens")
        result.input_tokens = total("inputTokens") + read + write
        result.output_tokens, result.cache_tokens = total("outputTokens"), read
        return
    usage = event.get("usage") or {}
    read = int(usage.get("cache_read_input_tokens") or 0)
    write = int(usage.get("cache_creation_input_tokens") or 0)
    result.input_tokens = int(usage.get("input_tokens") or 0) + read + write
    result.output_tokens, result.cache_tokens = int(usage.get("output_tokens") or 0), read


def parse_claude(text: str, exit_code: int | None = None) -> AgentResult:
    result = AgentResult()
    retrying_limit = finished = streamed = False
    for event in _json_lines(text):
        kind, streamed = event.get("type"), True
        if kind == "system" and event.get("subtype") == "init":
            result.session_id = event.get("session_id", result.session_id)
        elif kind == "system" and event.get("subtype") == "api_retry":
            retrying_limit = event.get("error") in _CLAUDE_LIMITED
        elif kind == "assistant":
            retrying_limit = retrying_limit and bool(event.get("error"))
            if event.get("error") in _CLAUDE_LIMITED:
                result.rate_limited = True
            message = event.get("message") or {}
            texts = [c.get("text", "") for c in message.get("content") or []
                     if isinstance(c, dict) and c.get("type") == "text"]
            if texts and message.get("model") != "<synthetic>":
                result.final_message = "".join(texts)
        elif kind == "rate_limit_event":
            info = event.get("rate_limit_info") or {}
            if info.get("status") == "rejected":
                result.rate_limited = True
                result.reset_at = info.get("resetsAt") or result.reset_at
                scope = _CLAUDE_MODEL_LIMIT.fullmatch(str(info.get("rateLimitType") or ""))
                result.limit_model = scope.group(1) if scope else None
        elif kind == "result":
            finished = True
            _claude_result(result, event)
    if not finished and retrying_limit:
        result.rate_limited = True     # stopped while claude was retrying a rate limit
    return _startup_failure(result, text, exit_code, streamed)


def _claude_result(result: AgentResult, event: dict[str, Any]) -> None:
    if event.get("api_error_status") in (429, 529):
        result.rate_limited = True
    limit = _CLAUDE_USAGE_LIMIT.search(str(event.get("result", "")))
    if limit:
        result.rate_limited, result.reset_at = True, float(limit.group(1))
    result.session_id = event.get("session_id", result.session_id)
    result.turns = event.get("num_turns")
    _claude_tokens(result, event)
    cost = event.get("total_cost_usd", event.get("cost_usd"))
    result.cost_usd = float(cost) if cost is not None else None
    result.is_error = bool(event.get("is_error")) or event.get("subtype") != "success"
    if result.is_error:
        errors = event.get("errors") or [event.get("result") or event.get("subtype")]
        result.error = "; ".join(str(e) for e in errors)
    elif "result" in event:
        result.final_message = str(event["result"])


# --- codex -------------------------------------------------------------------------

_CODEX_LIMITED = re.compile(r"\b(429|503|529)\b|Too Many Requests|Service Unavailable|"
                            r"overloaded|rate.?limit|usage limit|quota", re.IGNORECASE)
_CODEX_RETRY = re.compile(r"^Reconnecting\.\.\. \d+/\d+ \((.*)\)$", re.DOTALL)


def parse_codex(text: str, exit_code: int | None = None) -> AgentResult:
    result = AgentResult(turns=0)
    retrying_limit = streamed = False
    for event in _json_lines(text):
        kind, streamed = event.get("type"), True
        if kind == "thread.started":
            result.session_id = event.get("thread_id")
        elif kind == "turn.started":
            result.turns = (result.turns or 0) + 1
        elif kind == "error":    # codex's own error events: retries and the final error
            retry = _CODEX_RETRY.match(str(event.get("message", "")))
            retrying_limit = bool(retry and _CODEX_LIMITED.search(retry.group(1)))
        elif kind == "item.completed" and (event.get("item") or {}).get("type") == "agent_message":
            result.final_message = event["item"].get("text", "")
            retrying_limit = False
        elif kind == "turn.completed":
            usage = event.get("usage") or {}     # input_tokens include the cached ones
            result.input_tokens += int(usage.get("input_tokens") or 0)
            result.output_tokens += int(usage.get("output_tokens") or 0)
            result.cache_tokens += int(usage.get("cached_input_tokens") or 0)
            retrying_limit = False
        elif kind == "turn.failed":
            result.is_error = True
            result.error = (event.get("error") or {}).get("message") or "turn failed"
            result.rate_limited = bool(_CODEX_LIMITED.search(result.error))
            retrying_limit = False
    if retrying_limit:
        result.rate_limited = True     # stopped while codex was retrying a rate limit
    return _startup_failure(result, text, exit_code, streamed)


# --- gemini ------------------------------------------------------------------------

# gemini exits with the HTTP status modulo 256: 429 -> 173, 503 -> 247, 529 -> 17
_GEMINI_LIMITED_EXITS = {429 % 256, 503 % 256, 529 % 256}
_GEMINI_LIMITED = re.compile(r"exceeded your current quota|RESOURCE_EXHAUSTED|quota|"
                             r"\b(429|503|529)\b|overloaded|UNAVAILABLE|Please retry in",
                             re.IGNORECASE)
_GEMINI_RETRY_IN = re.compile(r"(?:Please retry in|Suggested retry after) ([\d.]+)s")
_GEMINI_ATTEMPT = re.compile(r"^Attempt \d+ failed(?: with status (\d+))?[.:]? ?(.*)")


def _epoch(stamp: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def parse_gemini(text: str, exit_code: int | None = None) -> AgentResult:
    """stream-json on stdout: assistant text after the last tool call is the
    final message; a failed run ends with a `result` whose status is "error".
    Its retries are stderr lines "Attempt N failed: ..." (same log)."""
    result = AgentResult()
    parts: list[str] = []
    after_tool = True
    turns = 0
    finished = streamed = retrying_limit = False
    for line in text.splitlines():
        attempt = _GEMINI_ATTEMPT.match(_ANSI.sub("", line).strip())
        if attempt:
            status, message = attempt.group(1), attempt.group(2)
            retrying_limit = (status in ("429", "503", "529") if status
                              else bool(_GEMINI_LIMITED.search(message)))
    for event in _json_lines(text):
        kind, streamed = event.get("type"), True
        if kind == "init":
            result.session_id = event.get("session_id")
        elif kind == "message" and event.get("role") == "assistant":
            if after_tool:
                parts, after_tool, turns = [], False, turns + 1
            parts.append(str(event.get("content", "")))
        elif kind in ("tool_use", "tool_result"):
            after_tool = True
        elif kind == "result":
            finished = True
            _gemini_result(result, event, exit_code)
    result.turns = turns if finished or turns else None
    result.final_message = "".join(parts)
    if not finished and retrying_limit:
        result.rate_limited = True     # stopped while gemini was retrying a rate limit
    return _startup_failure(result, text, exit_code, streamed)


def _gemini_result(result: AgentResult, event: dict[str, Any], exit_code: int | None) -> None:
    stats = event.get("stats") or {}       # input_tokens include the cached ones
    result.input_tokens = int(stats.get("input_tokens") or 0)
    result.output_tokens = int(stats.get("output_tokens") or 0)
    result.cache_tokens = int(stats.get("cached") or 0)
    if event.get("status") == "success":
        return
    error = event.get("error") or {}
    result.is_error = True
    result.error = str(error.get("message") or "error")
    result.rate_limited = (exit_code in _GEMINI_LIMITED_EXITS
                           or bool(_GEMINI_LIMITED.search(result.error)))
    retry_in = _GEMINI_RETRY_IN.search(result.error)
    stamp = _epoch(event.get("timestamp"))
    if result.rate_limited and retry_in and stamp is not None:
        result.reset_at = stamp + float(retry_in.group(1))


# --- aider -------------------------------------------------------------------------

_AIDER_TOKENS = re.compile(r"^Tokens: ([\d.,]+k?) sent(?:, ([\d.,]+k?) cache write)?"
                           r"(?:, ([\d.,]+k?) cache hit)?, ([\d.,]+k?) received\.", re.MULTILINE)
# the Cost line wraps at the terminal width (80 columns when it cannot tell)
_AIDER_COST = re.compile(r"Cost:\s+\$([\d.]+)\s+message,\s+\$([\d.]+)\s+session\.")
_AIDER_ERROR = re.compile(r"^litellm\.(\w+): ?(.*)$", re.MULTILINE)
_AIDER_LIMITED = re.compile(r"RateLimitError|ServiceUnavailableError|overloaded_error")
_AIDER_BANNER = re.compile(
    r"^(Aider v|Model:|Main model:|Weak model:|Editor model:|Git repo:|Repo-map:|"
    r"Added .* to the chat|Cost estimates may be inaccurate)")
_AIDER_NOISE = re.compile(r"^(Tokens: |Cost: |\$[\d.]+ session\.|Retrying in |litellm\.|"
                          r"The API provider|Applied edit to |Commit [0-9a-f]{7})")


def _tokens(text: str | None) -> int:
    if not text:
        return 0
    text = text.replace(",", "")
    return int(float(text[:-1]) * 1000) if text.endswith("k") else int(float(text))


def parse_aider(text: str, exit_code: int | None = None) -> AgentResult:
    """Aider prints no JSON: a banner, the answer, token and cost lines. It
    exits 0 even when the model call failed, so an error line with no token
    line after it means failure. "sent" counts cache writes twice (once in the
    prompt tokens, once more as "cache write"): input = sent - cache write."""
    result = AgentResult(turns=0)
    last_tokens = -1
    for match in _AIDER_TOKENS.finditer(text):
        result.turns = (result.turns or 0) + 1
        write = _tokens(match.group(2))
        result.input_tokens += _tokens(match.group(1)) - write
        result.cache_tokens += _tokens(match.group(3))
        result.output_tokens += _tokens(match.group(4))
        last_tokens = match.start()
    costs = _AIDER_COST.findall(text)
    if costs:
        result.cost_usd = float(costs[-1][1])
    errors = [e for e in _AIDER_ERROR.finditer(text) if e.start() > last_tokens]
    if errors:
        last = errors[-1]
        result.is_error = True
        result.error = f"litellm.{last.group(1)}: {last.group(2).strip()}"
        result.rate_limited = bool(_AIDER_LIMITED.search(last.group(0)))
    result.final_message = _aider_answer(text[:last_tokens] if last_tokens >= 0 else "")
    return _startup_failure(result, text, exit_code, streamed=bool(result.turns or errors))


def _aider_answer(text: str) -> str:
    """The model's answer: what follows aider's banner (or the previous
    report), without its own status lines."""
    lines = text.splitlines()
    start = 0
    for index, line in enumerate(lines):
        if _AIDER_BANNER.match(line) or _AIDER_NOISE.match(line):
            start = index + 1
    kept = [line for line in lines[start:] if not _AIDER_NOISE.match(line)]
    return "\n".join(kept).strip()


PARSERS = {"claude": parse_claude, "codex": parse_codex, "gemini": parse_gemini,
           "aider": parse_aider}


def parse(preset: str, text: str, exit_code: int | None = None) -> AgentResult:
    return PARSERS[preset](text, exit_code)
