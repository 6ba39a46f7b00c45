"""A mock model API on 127.0.0.1 for the real agent CLIs (tests/test_real_clis.py).

One server speaks the four wire protocols the presets' CLIs use:
Anthropic Messages (claude), OpenAI Responses (codex), Gemini
generateContent / streamGenerateContent?alt=sse (gemini) and OpenAI Chat
Completions (aider), streamed (SSE) or not as the client asks. The scenario
is the first part of the path, so each test points its CLI at its own base
URL (`api.base("ratelimit")` -> `http://127.0.0.1:PORT/s/ratelimit`):

    success     the model answers "PLAN: hello"
    tools       the model first says "Let me look." and calls a shell / list
                tool, then answers "PLAN: hello" once it sees the tool's result
    err400      HTTP 400 (a bad request: not retried by any CLI)
    err500      HTTP 500
    ratelimit   HTTP 429 with `retry-after: 1`
    ratelimit-far  HTTP 429 whose limit resets in an hour: `retry-after: 3600`
                and Anthropic's `anthropic-ratelimit-unified-status: rejected` with
                its `-reset` (epoch seconds), as a subscription's limit says it
    overloaded  HTTP 529 (Anthropic) or 503 (the others)
    hang        accepts the request and never answers (until the server stops)

Bounded: threads are daemons, a hanging request waits at most HANG_LIMIT
seconds, and leaving the context manager releases every hang and closes the
socket. Every request is recorded in `api.requests`.
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HANG_LIMIT = 300.0
TEXT = "PLAN: hello"
PREAMBLE = "Let me look."
RETRY_AFTER = "1"
FAR = 3600   # seconds until a ratelimit-far limit resets


class MockAPI:
    """`with MockAPI() as api:` serves on a free port until the block ends."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.release = threading.Event()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.mock = self   # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.1}, daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def base(self, scenario: str) -> str:
        return f"http://127.0.0.1:{self.port}/s/{scenario}"

    def record(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append(entry)

    def seen(self, scenario: str) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.requests if r["scenario"] == scenario]

    def __enter__(self) -> "MockAPI":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


# --- what each API says -----------------------------------------------------

def _anthropic_error(status: int) -> tuple[dict, dict]:
    kind, message = {
        400: ("invalid_request_error", "mock: messages: invalid request"),
        429: ("rate_limit_error", "This request would exceed your account's rate limit. "
                                  "Please try again later. (mock)"),
        500: ("api_error", "Internal server error (mock)"),
        529: ("overloaded_error", "Overloaded (mock)"),
    }[status]
    return {"type": "error", "error": {"type": kind, "message": message}}, {}


def _openai_error(status: int) -> tuple[dict, dict]:
    kind, message = {
        400: ("invalid_request_error", "Invalid 'input': mock bad request."),
        429: ("rate_limit_exceeded", "Rate limit reached for the mock model. "
                                     "Please try again in 1s."),
        500: ("server_error", "Internal server error (mock)"),
        503: ("server_overloaded", "The server is overloaded (mock)"),
    }[status]
    return {"error": {"message": message, "type": kind, "param": None, "code": kind}}, {}


def _gemini_error(status: int) -> tuple[dict, dict]:
    code, message = {
        400: ("INVALID_ARGUMENT", "Invalid JSON payload received. mock bad request."),
        429: ("RESOURCE_EXHAUSTED", "You exceeded your current quota, please check your plan "
                                    "and billing details. Please retry in 1s."),
        500: ("INTERNAL", "mock internal error"),
        503: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
    }[status]
    error: dict[str, Any] = {"code": status, "message": message, "status": code}
    if status == 429:
        error["details"] = [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                             "retryDelay": "1s"}]
    return {"error": error}, {}


# --- the handler --------------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30

    def log_message(self, *args: object) -> None:   # keep test output clean
        pass

    @property
    def mock(self) -> MockAPI:
        return self.server.mock   # type: ignore[attr-defined]

    def _split(self) -> tuple[str, str]:
        parts = self.path.split("/", 3)           # "", "s", scenario, rest
        if len(parts) < 4 or parts[1] != "s":
            return "", self.path
        return parts[2], "/" + parts[3]

    def do_GET(self) -> None:
        scenario, rest = self._split()
        self.mock.record({"scenario": scenario, "method": "GET", "path": rest, "body": None})
        if rest.split("?")[0].endswith("/models"):
            self._json(200, {"object": "list", "data": [], "models": []})
        else:
            self._json(404, {"error": {"message": "not found", "code": 404}})

    def do_POST(self) -> None:
        scenario, rest = self._split()
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {}
        self.mock.record({"scenario": scenario, "method": "POST", "path": rest, "body": body})
        path = rest.split("?")[0]
        if path.endswith("/messages"):
            api = "anthropic"
        elif path.endswith("/responses"):
            api = "responses"
        elif ":generateContent" in path or ":streamGenerateContent" in path:
            api = "gemini"
        elif ":countTokens" in path:
            self._json(200, {"totalTokens": 10})
            return
        elif path.endswith("/chat/completions"):
            api = "chat"
        else:
            self._json(404, {"error": {"message": f"mock: no route {path}", "code": 404}})
            return
        if self._fail(scenario, api):
            return
        getattr(self, f"_{api}")(scenario, body, stream=self._streams(api, path, body))

    @staticmethod
    def _streams(api: str, path: str, body: dict) -> bool:
        if api == "gemini":
            return ":streamGenerateContent" in path
        if api == "responses":
            return body.get("stream", True) is not False
        return bool(body.get("stream"))

    # errors and hangs, the same for every API
    def _fail(self, scenario: str, api: str) -> bool:
        if scenario == "hang":
            self.mock.release.wait(HANG_LIMIT)
            self.close_connection = True
            return True
        status = {"err400": 400, "err500": 500, "ratelimit": 429, "ratelimit-far": 429,
                  "overloaded": 529 if api == "anthropic" else 503}.get(scenario)
        if status is None:
            return False
        maker = {"anthropic": _anthropic_error, "gemini": _gemini_error}.get(api, _openai_error)
        payload, headers = maker(status)
        if status == 429 and scenario == "ratelimit-far":
            headers = {**headers, "retry-after": str(FAR),
                       "anthropic-ratelimit-unified-status": "rejected",
                       "anthropic-ratelimit-unified-reset": str(int(time.time()) + FAR)}
        elif status == 429:
            headers = {**headers, "retry-after": RETRY_AFTER}
        self._json(status, payload, headers)
        return True

    def _json(self, status: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("request-id", f"req_mock_{len(self.mock.requests)}")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _sse(self, events: list[tuple[str | None, dict | str]]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        for name, data in events:
            text = data if isinstance(data, str) else json.dumps(data)
            chunk = (f"event: {name}\n" if name else "") + f"data: {text}\n\n"
            self.wfile.write(chunk.encode())
            self.wfile.flush()
        self.close_connection = True

    # --- Anthropic Messages ---------------------------------------------------
    def _anthropic(self, scenario: str, body: dict, stream: bool) -> None:
        calls_tool = scenario == "tools" and not _has_anthropic_tool_result(body)
        blocks: list[dict] = []
        if calls_tool:
            blocks = [{"type": "text", "text": PREAMBLE},
                      {"type": "tool_use", "id": "toolu_mock1", "name": "Bash",
                       "input": {"command": "echo hi", "description": "say hi"}}]
        else:
            blocks = [{"type": "text", "text": TEXT}]
        usage = {"input_tokens": 120, "cache_creation_input_tokens": 50,
                 "cache_read_input_tokens": 30, "output_tokens": 7}
        stop = "tool_use" if calls_tool else "end_turn"
        message = {"id": f"msg_mock_{time.monotonic_ns()}", "type": "message",
                   "role": "assistant", "model": body.get("model", "claude-mock"),
                   "content": blocks, "stop_reason": stop, "stop_sequence": None,
                   "usage": usage}
        if not stream:
            self._json(200, message)
            return
        start = {**message, "content": [], "stop_reason": None,
                 "usage": {**usage, "output_tokens": 1}}
        events: list[tuple[str | None, dict | str]] = [
            ("message_start", {"type": "message_start", "message": start})]
        for index, block in enumerate(blocks):
            if block["type"] == "text":
                events += [
                    ("content_block_start", {"type": "content_block_start", "index": index,
                                             "content_block": {"type": "text", "text": ""}}),
                    ("content_block_delta", {"type": "content_block_delta", "index": index,
                                             "delta": {"type": "text_delta",
                                                       "text": block["text"]}})]
            else:
                events += [
                    ("content_block_start", {"type": "content_block_start", "index": index,
                                             "content_block": {**block, "input": {}}}),
                    ("content_block_delta", {"type": "content_block_delta", "index": index,
                                             "delta": {"type": "input_json_delta",
                                                       "partial_json": json.dumps(
                                                           block["input"])}})]
            events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
        events += [
            ("message_delta", {"type": "message_delta",
                               "delta": {"stop_reason": stop, "stop_sequence": None},
                               "usage": {"output_tokens": 7}}),
            ("message_stop", {"type": "message_stop"})]
        self._sse(events)

    # --- OpenAI Responses (codex) -------------------------------------------
    def _responses(self, scenario: str, body: dict, stream: bool) -> None:
        items = body.get("input") or []
        answered = any(isinstance(i, dict) and i.get("type") == "function_call_output"
                       for i in items)
        output: list[dict] = []
        if scenario == "tools" and not answered:
            name, arguments = _codex_shell_call(body.get("tools") or [])
            output = [
                {"type": "message", "id": "msg_mock_0", "role": "assistant", "status": "completed",
                 "content": [{"type": "output_text", "text": PREAMBLE, "annotations": []}]},
                {"type": "function_call", "id": "fc_mock_1", "call_id": "call_mock_1",
                 "name": name, "arguments": json.dumps(arguments), "status": "completed"}]
        else:
            output = [{"type": "message", "id": "msg_mock_1", "role": "assistant",
                       "status": "completed",
                       "content": [{"type": "output_text", "text": TEXT, "annotations": []}]}]
        response = {"id": f"resp_mock_{time.monotonic_ns()}", "object": "response",
                    "status": "completed", "model": body.get("model", "mock"), "output": output,
                    "usage": {"input_tokens": 1234, "input_tokens_details": {"cached_tokens": 200},
                              "output_tokens": 56,
                              "output_tokens_details": {"reasoning_tokens": 7},
                              "total_tokens": 1290}}
        if not stream:
            self._json(200, response)
            return
        events: list[tuple[str | None, dict | str]] = [
            ("response.created", {"type": "response.created",
                                  "response": {**response, "status": "in_progress",
                                               "output": [], "usage": None}})]
        for index, item in enumerate(output):
            events.append(("response.output_item.added", {
                "type": "response.output_item.added", "output_index": index, "item": item}))
            if item["type"] == "message":
                events.append(("response.output_text.delta", {
                    "type": "response.output_text.delta", "item_id": item["id"],
                    "output_index": index, "content_index": 0,
                    "delta": item["content"][0]["text"]}))
            events.append(("response.output_item.done", {
                "type": "response.output_item.done", "output_index": index, "item": item}))
        events.append(("response.completed", {"type": "response.completed",
                                              "response": response}))
        self._sse(events)

    # --- Gemini ---------------------------------------------------------------
    def _gemini(self, scenario: str, body: dict, stream: bool) -> None:
        answered = any("functionResponse" in part for content in body.get("contents") or []
                       for part in content.get("parts") or [])
        usage = {"promptTokenCount": 1234, "candidatesTokenCount": 56, "totalTokenCount": 1290,
                 "cachedContentTokenCount": 200}
        if scenario == "tools" and not answered:
            name, args = _gemini_list_call(body.get("tools") or [])
            parts: list[dict] = [{"text": PREAMBLE}, {"functionCall": {"name": name, "args": args}}]
        else:
            parts = [{"text": TEXT}]
        chunk = {"candidates": [{"content": {"role": "model", "parts": parts},
                                 "finishReason": "STOP", "index": 0}],
                 "usageMetadata": usage, "modelVersion": "gemini-mock"}
        if not stream:
            self._json(200, chunk)
            return
        self._sse([(None, chunk)])

    # --- OpenAI Chat Completions (aider) ------------------------------------
    def _chat(self, scenario: str, body: dict, stream: bool) -> None:
        model = body.get("model", "mock")
        usage = {"prompt_tokens": 1234, "completion_tokens": 7, "total_tokens": 1241,
                 "prompt_tokens_details": {"cached_tokens": 0}}
        ident = f"chatcmpl-mock{time.monotonic_ns()}"
        if not stream:
            self._json(200, {"id": ident, "object": "chat.completion", "created": int(time.time()),
                             "model": model, "choices": [{
                                 "index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": TEXT}}],
                             "usage": usage})
            return
        base = {"id": ident, "object": "chat.completion.chunk", "created": int(time.time()),
                "model": model}
        self._sse([
            (None, {**base, "choices": [{"index": 0, "delta": {"role": "assistant",
                                                                "content": TEXT},
                                         "finish_reason": None}]}),
            (None, {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
            (None, {**base, "choices": [], "usage": usage}),
            (None, "[DONE]")])


def _has_anthropic_tool_result(body: dict) -> bool:
    for message in body.get("messages") or []:
        content = message.get("content")
        if isinstance(content, list) and any(
                isinstance(c, dict) and c.get("type") == "tool_result" for c in content):
            return True
    return False


def _codex_shell_call(tools: list[dict]) -> tuple[str, dict]:
    """The shell tool codex offers, called with `echo hi` in its own argument shape."""
    names = {t.get("name"): t for t in tools if isinstance(t, dict) and t.get("name")}
    for name in ("exec_command", "shell_command", "shell", "local_shell"):
        tool = names.get(name)
        if tool is None:
            continue
        properties = (tool.get("parameters") or {}).get("properties") or {}
        if "cmd" in properties:
            return name, {"cmd": "echo hi"}
        if "command" in properties and (properties["command"].get("type") == "array"):
            return name, {"command": ["echo", "hi"]}
        return name, {"command": "echo hi"}
    return "shell", {"command": ["echo", "hi"]}


def _gemini_list_call(tools: list[dict]) -> tuple[str, dict]:
    """gemini's directory-listing tool, with the parameter name it declares."""
    for group in tools:
        for decl in group.get("functionDeclarations") or []:
            if decl.get("name") == "list_directory":
                schema = decl.get("parametersJsonSchema") or decl.get("parameters") or {}
                key = "dir_path" if "dir_path" in (schema.get("properties") or {}) else "path"
                return "list_directory", {key: "."}
    return "list_directory", {"dir_path": "."}
