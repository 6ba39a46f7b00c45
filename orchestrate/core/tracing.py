"""What a run looks like as OpenTelemetry spans, as plain data (pure).

A pipeline run is one trace; each attempt of an agent is one span named
`pipeline:agent`, a child of the pipeline run's span, with a child span for
its check and for its merge. Span ids are derived from run ids (sha256), so
the `TRACEPARENT` an agent gets at launch names the span exported when it
ends, and a span sent twice (a crash between "sent" and "marked sent") is
the same span, which most backends keep once.

A span here is a dict (a line of `.orchestrate/telemetry/owed.jsonl`), turned into
the SDK's spans only by the sender (`runtime/otlp.py`), so nothing on the
scheduling path imports the SDK.
"""
from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from .checks import Verdict
from .fallback import as_ran
from .records import RunState, StatusRecord
from .spec import Agent

# gen_ai.provider.name of each preset's CLI (OpenTelemetry GenAI conventions)
PROVIDERS = {"claude": "anthropic", "codex": "openai", "gemini": "gcp.gemini"}
# aider talks to whichever provider its model names
_MODEL_PROVIDERS = (("claude", "anthropic"), ("anthropic/", "anthropic"), ("gpt", "openai"),
                    ("openai/", "openai"), ("o1", "openai"), ("o3", "openai"),
                    ("o4", "openai"), ("gemini", "gcp.gemini"))


def _hex(text: str, digits: int) -> str:
    value = hashlib.sha256(text.encode()).hexdigest()[:digits]
    return value if value.strip("0") else "1".rjust(digits, "0")   # all-zero ids are invalid


def attempt_span_id(run_id: str) -> str:
    """The span of the attempt `run_id` (16 hex digits)."""
    return _hex(run_id, 16)


def child_span_id(run_id: str, kind: str, number: int = 0) -> str:
    """The span of the attempt's check or merge (`kind`), the `number`th of its kind."""
    return _hex(f"{run_id}/{kind}/{number}", 16)


def pipeline_span_id(trace_id: str) -> str:
    """The pipeline run's own span (the root of its trace)."""
    return _hex(f"pipeline-run/{trace_id}", 16)


def traceparent(trace_id: str, span_id: str) -> str:
    """W3C trace context, sampled: https://www.w3.org/TR/trace-context/."""
    return f"00-{trace_id}-{span_id}-01"


def epoch_of(iso_text: str | None) -> float | None:
    """The status record's ISO-8601 UTC time as epoch seconds."""
    if not iso_text:
        return None
    try:
        return datetime.fromisoformat(iso_text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _ns(epoch: float) -> int:
    return int(epoch * 1e9)


def attempt_outcome(ended: StatusRecord) -> str:
    """How the attempt ended: a record that waits again (a retry, a rate
    limit's rest, a check's relaunch) ended an attempt that failed."""
    return RunState.FAILED.value if ended.state == RunState.WAITING else ended.state.value


def provider_of(agent: Agent) -> str | None:
    if agent.preset in PROVIDERS:
        return PROVIDERS[agent.preset]
    model = (agent.model or "").lower()
    for prefix, provider in _MODEL_PROVIDERS:
        if model.startswith(prefix):
            return provider
    return agent.preset


def attempt_attributes(agent: Agent, started: StatusRecord, ended: StatusRecord
                       ) -> dict[str, Any]:
    """The contract's attributes, and for a preset the GenAI conventions'."""
    agent = as_ran(agent, started)   # a fallback's run: the preset and model that ran
    attributes: dict[str, Any] = {
        "orchestrate.task": agent.task, "orchestrate.pipeline": agent.pipeline,
        "orchestrate.agent": agent.name, "orchestrate.attempt": started.attempt,
        "orchestrate.run_id": started.run_id or "", "orchestrate.state": attempt_outcome(ended),
        "orchestrate.reason": ended.reason, "orchestrate.executor": ended.executor}
    if ended.exit_code is not None:
        attributes["orchestrate.exit_code"] = ended.exit_code
    if agent.preset:
        attributes["gen_ai.operation.name"] = "invoke_agent"
        attributes["gen_ai.agent.name"] = agent.task
        provider = provider_of(agent)
        if provider:
            attributes["gen_ai.provider.name"] = provider
        if agent.model:
            attributes["gen_ai.request.model"] = agent.model
        result = ended.result or {}
        attributes["gen_ai.usage.input_tokens"] = int(result.get("input_tokens") or 0)
        attributes["gen_ai.usage.output_tokens"] = int(result.get("output_tokens") or 0)
        if result.get("session_id"):
            attributes["gen_ai.conversation.id"] = str(result["session_id"])
        if result.get("cost_usd") is not None:
            attributes["orchestrate.cost_usd"] = float(result["cost_usd"])
    return attributes


def attempt_span(agent: Agent, started: StatusRecord, ended: StatusRecord, trace_id: str,
                 now: float) -> dict[str, Any]:
    """The span of one attempt: `started` is its record while it ran,
    `ended` the record its end made (done, failed, cancelled, or waiting for
    its next attempt)."""
    run_id = started.run_id or ""
    begin = started.started_epoch or epoch_of(started.started_at) or now
    end = epoch_of(ended.ended_at) or now
    outcome = attempt_outcome(ended)
    return {"name": agent.task, "trace_id": trace_id, "span_id": attempt_span_id(run_id),
            "parent_span_id": pipeline_span_id(trace_id),
            "start_ns": _ns(begin), "end_ns": _ns(max(end, begin)),
            "attributes": attempt_attributes(agent, started, ended),
            "error": (ended.reason or outcome) if outcome == RunState.FAILED.value else None}


def check_span(agent: Agent, run_id: str, trace_id: str, verdict: Verdict, begin: float,
               end: float) -> dict[str, Any]:
    """The check run of an attempt, a child of the attempt's span."""
    attributes: dict[str, Any] = {
        "orchestrate.task": agent.task, "orchestrate.run_id": run_id,
        "orchestrate.check.command": verdict.command,
        "orchestrate.check.passed": verdict.passed,
        "orchestrate.check.timed_out": verdict.timed_out}
    if verdict.exit_code is not None:
        attributes["orchestrate.check.exit_code"] = verdict.exit_code
    return {"name": f"{agent.task} check", "trace_id": trace_id,
            "span_id": child_span_id(run_id, "check"),
            "parent_span_id": attempt_span_id(run_id),
            "start_ns": _ns(begin), "end_ns": _ns(max(end, begin)), "attributes": attributes,
            "error": None if verdict.passed else (verdict.last_line or "check failed")}


def merge_span(task: str, run_id: str, trace_id: str, number: int, begin: float, end: float,
               error: str | None, attributes: dict[str, Any]) -> dict[str, Any]:
    """A merge of an attempt's branch (`Landing the work`), a child of the
    attempt's span; `error`: why it did not land (None: merged)."""
    return {"name": f"{task} merge", "trace_id": trace_id,
            "span_id": child_span_id(run_id, "merge", number),
            "parent_span_id": attempt_span_id(run_id),
            "start_ns": _ns(begin), "end_ns": _ns(max(end, begin)),
            "attributes": {"orchestrate.task": task, "orchestrate.run_id": run_id,
                           **attributes},
            "error": error}


def pipeline_span(pipeline: str, trace_id: str, begin: float, end: float,
                  states: dict[str, int]) -> dict[str, Any]:
    """The pipeline run: from its first launch until nothing is left to run."""
    attributes: dict[str, Any] = {"orchestrate.pipeline": pipeline}
    for state, count in sorted(states.items()):
        attributes[f"orchestrate.agents.{state}"] = count
    failed = states.get(RunState.FAILED.value, 0)
    return {"name": pipeline, "trace_id": trace_id, "span_id": pipeline_span_id(trace_id),
            "parent_span_id": None, "start_ns": _ns(begin), "end_ns": _ns(max(end, begin)),
            "attributes": attributes,
            "error": f"{failed} agent(s) failed" if failed else None}
