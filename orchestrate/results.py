"""What an agent CLI reported, read from its log (pure).

Each parser reads the documented output (docs/agent-cli-output.md): the
final message, session id, turns, tokens, cost where the CLI reports it, and
whether the CLI itself called the run an error. Unknown lines are skipped:
new event types appear often.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Any, Iterator


@dataclass
class AgentResult:
    final_message: str = ""
    session_id: str | None = None
    turns: int | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_tokens: int = 0
    cost_usd: float | None = None
    is_error: bool = False
    error: str | None = None
    rate_limited: bool = False       # the CLI hit a rate limit or an overload
    reset_at: float | None = None    # when it said the limit resets (epoch seconds)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


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


_CLAUDE_USAGE_LIMIT = re.compile(r"usage limit reached\|(\d+)", re.IGNORECASE)
_RATE_LIMIT_TEXT = re.compile(r"\b(429|529)\b|rate.?limit|usage limit|RESOURCE_EXHAUSTED|"
                              r"QuotaError|overloaded", re.IGNORECASE)


def parse_claude(text: str) -> AgentResult:
    result = AgentResult()
    for event in _json_lines(text):
        kind = event.get("type")
        if kind == "system" and event.get("subtype") == "init":
            result.session_id = event.get("session_id", result.session_id)
        elif kind == "assistant" and event.get("error") in ("rate_limit", "overloaded"):
            result.rate_limited = True
        elif kind == "assistant":
            texts = [c.get("text", "") for c in event.get("message", {}).get("content", [])
                     if isinstance(c, dict) and c.get("type") == "text"]
            if texts:
                result.final_message = "".join(texts)
        elif kind == "rate_limit_event":
            info = event.get("rate_limit_info") or {}
            if info.get("status") == "rejected":
                result.rate_limited = True
                result.reset_at = info.get("resetsAt") or result.reset_at
        elif kind == "result":
            usage = event.get("usage") or {}
            if event.get("api_error_status") in (429, 529):
                result.rate_limited = True
            limit = _CLAUDE_USAGE_LIMIT.search(str(event.get("result", "")))
            if limit:
                result.rate_limited, result.reset_at = True, float(limit.group(1))
            result.session_id = event.get("session_id", result.session_id)
            result.turns = event.get("num_turns")
            result.input_tokens = int(usage.get("input_tokens") or 0)
            result.output_tokens = int(usage.get("output_tokens") or 0)
            result.cache_tokens = int(usage.get("cache_creation_input_tokens") or 0) + int(
                usage.get("cache_read_input_tokens") or 0)
            cost = event.get("total_cost_usd", event.get("cost_usd"))
            result.cost_usd = float(cost) if cost is not None else None
            result.is_error = bool(event.get("is_error")) or event.get("subtype") != "success"
            if "result" in event:
                result.final_message = str(event["result"])
            if result.is_error:
                errors = event.get("errors") or [event.get("result") or event.get("subtype")]
                result.error = "; ".join(str(e) for e in errors)
    return result


def parse_codex(text: str) -> AgentResult:
    result = AgentResult(turns=0)
    for event in _json_lines(text):
        kind = event.get("type")
        if kind == "thread.started":
            result.session_id = event.get("thread_id")
        elif kind == "turn.started":
            result.turns = (result.turns or 0) + 1
        elif kind == "item.completed" and event.get("item", {}).get("type") == "agent_message":
            result.final_message = event["item"].get("text", "")
        elif kind == "turn.completed":
            usage = event.get("usage") or {}
            result.input_tokens = int(usage.get("input_tokens") or 0)
            result.output_tokens = int(usage.get("output_tokens") or 0)
            result.cache_tokens = int(usage.get("cached_input_tokens") or 0)
        elif kind == "turn.failed":
            result.is_error = True
            result.error = (event.get("error") or {}).get("message") or "turn failed"
            result.rate_limited = bool(_RATE_LIMIT_TEXT.search(result.error))
    return result


def parse_gemini(text: str) -> AgentResult:
    """stream-json on stdout; a fatal error (quota included) may only be a
    pretty-printed {"error": ...} on stderr, which shares the log."""
    result = AgentResult()
    parts: list[str] = []
    finished = False
    for event in _json_lines(text):
        kind = event.get("type")
        if kind == "init":
            result.session_id = event.get("session_id")
        elif kind == "message" and event.get("role") == "assistant":
            parts.append(str(event.get("content", "")))
        elif kind == "result":
            finished = True
            stats = event.get("stats") or {}
            result.input_tokens = int(stats.get("input_tokens") or 0)
            result.output_tokens = int(stats.get("output_tokens") or 0)
            result.cache_tokens = int(stats.get("cached") or 0)
            result.turns = 1
            if event.get("status") != "success":
                error = event.get("error") or {}
                result.is_error = True
                result.error = error.get("message") or "error"
                result.rate_limited = bool(_RATE_LIMIT_TEXT.search(
                    f"{error.get('type', '')} {result.error}"))
        elif "error" in event and isinstance(event["error"], dict) and kind is None:
            result.is_error = True   # a fatal error printed as {"error": {...}}
            result.error = event["error"].get("message")
    result.final_message = "".join(parts)
    if not finished and re.search(r'"error"\s*:', text):
        result.is_error = True
        found = re.search(r'"message"\s*:\s*"([^"]*)"', text)
        result.error = found.group(1) if found else "error"
    if result.is_error and not result.rate_limited:
        result.rate_limited = bool(re.search(r"RESOURCE_EXHAUSTED|QuotaError|\b429\b", text))
    return result


_AIDER_TOKENS = re.compile(r"Tokens: ([\d.,]+k?) sent(?:, ([\d.,]+k?) cache write)?"
                           r"(?:, ([\d.,]+k?) cache hit)?, ([\d.,]+k?) received\.")
_AIDER_COST = re.compile(r"Cost: \$([\d.]+) message, \$([\d.]+) session\.")
_AIDER_ERROR = re.compile(r"litellm\.\w+Error|The API provider has rate limited you")


def _tokens(text: str | None) -> int:
    if not text:
        return 0
    text = text.replace(",", "")
    return int(float(text[:-1]) * 1000) if text.endswith("k") else int(float(text))


def parse_aider(text: str) -> AgentResult:
    """Aider prints no JSON: token and cost lines, and exits 0 even when the
    model call failed, so an error line with no token line means failure."""
    result = AgentResult(turns=0)
    for match in _AIDER_TOKENS.finditer(text):
        result.turns = (result.turns or 0) + 1
        result.input_tokens += _tokens(match.group(1))
        result.cache_tokens += _tokens(match.group(2)) + _tokens(match.group(3))
        result.output_tokens += _tokens(match.group(4))
    costs = _AIDER_COST.findall(text)
    if costs:
        result.cost_usd = float(costs[-1][1])
    error = _AIDER_ERROR.search(text)
    if error and not result.turns:
        result.is_error, result.error = True, error.group(0)
        result.rate_limited = "RateLimitError" in text or "rate limited you" in text
    lines = [line for line in text.splitlines() if line.strip() and not
             _AIDER_TOKENS.search(line) and not _AIDER_COST.search(line)]
    result.final_message = "\n".join(lines[-20:])
    return result


PARSERS = {"claude": parse_claude, "codex": parse_codex, "gemini": parse_gemini,
           "aider": parse_aider}


def parse(preset: str, text: str) -> AgentResult:
    return PARSERS[preset](text)
