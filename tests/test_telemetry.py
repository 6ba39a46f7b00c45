"""Telemetry: runs as traces at a real OTLP/HTTP receiver (tests/otlp_receiver.py,
decoding with the official opentelemetry-proto), through the real doit."""
from __future__ import annotations

import json
import socket
import time

import pytest

from conftest import wait_until
from otlp_receiver import Receiver
from orchestrate.core import tracing
from orchestrate.core.records import RunState, StatusRecord
from orchestrate.core.settings import TelemetrySettings
from orchestrate.runtime.telemetry import export_config
from test_presets import preset_toml

ERROR = 2   # opentelemetry.proto.trace.v1.Status.STATUS_CODE_ERROR


@pytest.fixture
def receiver():
    with Receiver() as running:
        yield running


def otel(endpoint: str, **more: str) -> dict[str, str]:
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, **more}


def dead_endpoint() -> str:
    """An address where nothing listens (the port is free once closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def owed(ws) -> list[dict]:
    """The entries of telemetry/owed.jsonl that sent.jsonl does not name."""
    from orchestrate.runtime.owed import OwedSpans
    from orchestrate.runtime.state import Layout
    return OwedSpans(Layout(ws.root)).unsent()


def by_span_id(spans: list[dict]) -> dict[str, dict]:
    found: dict[str, dict] = {}
    for span in spans:
        assert span["span_id"] not in found, f"span sent twice: {span['name']}"
        found[span["span_id"]] = span
    return found


# -- pure ---------------------------------------------------------------------
def test_export_is_on_by_the_standard_variables_or_the_workspace_setting():
    none = TelemetrySettings()
    assert export_config(none, {}) is None
    config = export_config(none, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://h:4318/"})
    assert (config.endpoint, config.service_name) == ("http://h:4318/v1/traces", "orchestrate")
    config = export_config(none, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://h:1/x",
                                  "OTEL_EXPORTER_OTLP_ENDPOINT": "http://other:4318",
                                  "OTEL_SERVICE_NAME": "ci"})
    assert (config.endpoint, config.service_name) == ("http://h:1/x", "ci")
    setting = TelemetrySettings("http://jaeger:4318")
    assert export_config(setting, {}).endpoint == "http://jaeger:4318/v1/traces"
    assert export_config(setting, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://env:4318"}
                         ).endpoint == "http://env:4318/v1/traces"
    assert export_config(setting, {"OTEL_SDK_DISABLED": "true"}) is None


def test_a_bad_telemetry_setting_names_the_file_and_key(ws):
    pyproject = ws.root / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + '\n[tool.orchestrate.telemetry]\n'
                         'endpoint = "jaeger:4318"\n')
    ws.write_pipeline("p", f'[agents.a]\ncommand = "{ws.agent_cmd()}"\n')
    result = ws.doit(check_rc=3)
    assert "pyproject.toml" in result.stderr and "tool.orchestrate.telemetry.endpoint" in \
        result.stderr and 'like "http://localhost:4318"' in result.stderr
    assert not ws.launches()


def test_span_ids_come_from_run_ids_and_a_retried_attempt_is_an_error():
    from orchestrate.core.spec import Agent
    agent = Agent(name="a", pipeline="p", command="true")
    running = StatusRecord(state=RunState.RUNNING, pipeline="p", agent="a", attempt=1,
                           run_id="p.a.1.ab", started_epoch=100.0, trace_id="1" * 32)
    waiting = StatusRecord(state=RunState.WAITING, pipeline="p", agent="a", attempt=1,
                           run_id="p.a.1.ab", ended_at="1970-01-01T00:02:00.000Z",
                           exit_code=2, reason="retry 2 of 2 at ... after: exit 2")
    span = tracing.attempt_span(agent, running, waiting, "1" * 32, now=500.0)
    assert span["span_id"] == tracing.attempt_span_id("p.a.1.ab") != tracing.attempt_span_id(
        "p.a.2.cd")
    assert (span["start_ns"], span["end_ns"]) == (100 * 10**9, 120 * 10**9)
    assert span["attributes"]["orchestrate.state"] == "failed" and span["error"]
    assert tracing.traceparent("1" * 32, span["span_id"]) == f"00-{'1' * 32}-{span['span_id']}-01"


# -- through doit, to a real receiver ------------------------------------------
def test_each_attempt_is_a_span_of_the_pipeline_runs_trace(ws, receiver):
    """Spans per attempt with the contract's attributes, under one trace whose
    root is the pipeline run; a retried attempt has status ERROR; each agent's
    TRACEPARENT names its attempt's span; headers and service name honoured."""
    flaky = ws.agent_cmd("--exit", "3", "--succeed-from-attempt", "2")
    ws.write_pipeline("p", f'[agents.a]\ncommand = "{ws.agent_cmd()}"\n'
                           f'[agents.b]\ncommand = "{flaky}"\nafter = ["a"]\nretries = 1\n'
                           'retry_backoff = "0s"\n')
    env = otel(receiver.endpoint, OTEL_EXPORTER_OTLP_HEADERS="x-team=agents",
               OTEL_SERVICE_NAME="ci-pipelines",
               OTEL_RESOURCE_ATTRIBUTES="deployment.environment=ci")
    ws.doit("wait", check_rc=0, env=env)
    # doit wait sends what is owed before it exits: nothing is left for later
    spans = by_span_id(receiver.spans)
    assert sorted(s["name"] for s in spans.values()) == ["p", "p:a", "p:b", "p:b"]
    assert not owed(ws)
    [root] = receiver.named("p")
    assert root["parent_span_id"] is None and root["attributes"]["orchestrate.agents.done"] == 2
    assert {s["trace_id"] for s in spans.values()} == {root["trace_id"]}
    for launch in ws.launches():
        span = spans[tracing.attempt_span_id(launch["run_id"])]
        assert launch["traceparent"] == f"00-{root['trace_id']}-{span['span_id']}-01"
        assert span["parent_span_id"] == root["span_id"]
        assert root["start_ns"] <= span["start_ns"] < span["end_ns"] <= root["end_ns"]
        record_keys = {"orchestrate.task", "orchestrate.attempt", "orchestrate.run_id",
                       "orchestrate.state", "orchestrate.reason", "orchestrate.executor"}
        assert record_keys <= set(span["attributes"])
        assert span["attributes"]["orchestrate.run_id"] == launch["run_id"]
    first, second = sorted(receiver.named("p:b"), key=lambda s: s["attributes"][
        "orchestrate.attempt"])
    assert (first["attributes"]["orchestrate.attempt"], first["attributes"]["orchestrate.state"],
            first["status"]) == (1, "failed", ERROR)
    assert "exit 3" in first["attributes"]["orchestrate.reason"] and "exit 3" in first["message"]
    assert (second["attributes"]["orchestrate.attempt"],
            second["attributes"]["orchestrate.state"]) == (2, "done")
    assert second["status"] != ERROR and first["end_ns"] <= second["start_ns"]
    assert all(s["resource"]["service.name"] == "ci-pipelines" and
               s["resource"]["deployment.environment"] == "ci" for s in spans.values())
    assert all(h.get("x-team") == "agents" for h in receiver.headers)
    assert ws.status("p", "b")["trace_id"] == root["trace_id"]


def test_a_check_run_is_a_child_span_of_its_attempt(ws, receiver):
    ws.write_pipeline("p", f'[agents.a]\ncommand = "{ws.agent_cmd()}"\n'
                           'check = "echo checked; exit 0"\n')
    ws.doit("wait", check_rc=0, env=otel(receiver.endpoint))
    [attempt] = receiver.named("p:a")
    [check] = receiver.named("p:a check")
    assert check["parent_span_id"] == attempt["span_id"]
    assert check["attributes"]["orchestrate.check.passed"] is True
    assert attempt["start_ns"] <= check["start_ns"] <= check["end_ns"] <= attempt["end_ns"]


def test_a_presets_tokens_and_cost_follow_the_genai_conventions(ws, receiver, fake_bins):
    ws.write_pipeline("p", preset_toml("a", "claude", "hello", model="sonnet-x"))
    ws.doit("wait", check_rc=0, env={**fake_bins, **otel(receiver.endpoint)})
    [span] = receiver.named("p:a")
    result = ws.status("p", "a")["result"]
    attributes = span["attributes"]
    assert attributes["gen_ai.provider.name"] == "anthropic"
    assert attributes["gen_ai.request.model"] == "sonnet-x"
    assert attributes["gen_ai.usage.input_tokens"] == result["input_tokens"] > 0
    assert attributes["gen_ai.usage.output_tokens"] == result["output_tokens"] > 0
    assert attributes["orchestrate.cost_usd"] == result["cost_usd"] > 0


def test_a_dead_receiver_changes_nothing_but_a_line_in_telemetry_log(ws, receiver):
    """The pipeline is done as without export; each failed export is one
    line; what was owed is sent, once, by a later process that can."""
    ws.write_pipeline("p", f'[agents.a]\ncommand = "{ws.agent_cmd()}"\n'
                           f'[agents.b]\ncommand = "{ws.agent_cmd()}"\nafter = ["a"]\n')
    ws.doit("wait", check_rc=0, env=otel(dead_endpoint()))
    ws.wait_idle()
    assert ws.state_of("p", "a") == ws.state_of("p", "b") == "done"
    [line] = (ws.state / "telemetry.log").read_text().splitlines()   # however many tries
    assert "failed" in line and "kept, sent later" in line
    assert len(owed(ws)) == 3
    ws.doit("status", check_rc=0, env=otel(receiver.endpoint))
    assert sorted(s["name"] for s in by_span_id(receiver.spans).values()) == ["p", "p:a", "p:b"]
    assert not owed(ws)


def test_kill_9_of_every_orchestrator_while_spans_are_owed_sends_each_once_later(ws):
    """A receiver that refuses (503) keeps the advancer's spans owed; every
    orchestrator process is killed; the next process sends each span once."""
    with Receiver(status=503) as receiver:
        gate = ws.root / "gate"
        agents = "".join(f'[agents.a{i}]\ncommand = "{ws.agent_cmd("--gate", str(gate))}"\n'
                         for i in range(4))
        ws.write_pipeline("p", agents + f'[agents.z]\ncommand = "{ws.agent_cmd()}"\n'
                          'after = ["a0", "a1", "a2", "a3"]\n')
        env = otel(receiver.endpoint)
        ws.doit(check_rc=0, env=env)
        wait_until(lambda: len(ws.launches()) == 4, what="four launches")
        gate.touch()
        wait_until(lambda: ws.state_of("p", "z") == "done", what="z done")
        wait_until(lambda: receiver.requests > 0, what="an export refused")
        ws.kill_orchestrators()
        assert len(owed(ws)) == 6   # five attempts and the pipeline run
        receiver.status = 200
        ws.doit("status", check_rc=0, env=env)
        ws.doit("status", check_rc=0, env=env)
        spans = by_span_id(receiver.spans)
        assert sorted(s["name"] for s in spans.values()) == \
            ["p", "p:a0", "p:a1", "p:a2", "p:a3", "p:z"]
        assert not owed(ws)


def test_a_crash_between_recording_a_span_and_settling_its_run_sends_it_once(ws, receiver):
    """The advancer is killed right after it recorded an attempt's span,
    before the record that settles the run; another process sends the span;
    the next pass settles the run again and finds the span sent already."""
    from orchestrate.runtime.owed import OwedSpans, Sender
    from orchestrate.runtime.state import Layout
    from orchestrate.runtime.telemetry import ExportConfig
    gate = ws.root / "gate"
    ws.write_pipeline("p", f'[agents.a]\ncommand = "{ws.agent_cmd("--gate", str(gate))}"\n')
    env = otel(receiver.endpoint, ORCHESTRATE_CRASH_AT="telemetry-recorded:1")
    ws.doit(check_rc=0, env=env)
    wait_until(lambda: ws.launches(), what="the launch")
    gate.touch()
    wait_until(lambda: owed(ws), what="the span recorded")
    ws.wait_idle()
    assert ws.state_of("p", "a") == "running"   # the crash came before the settled record
    sender = Sender(OwedSpans(Layout(ws.root)),
                    ExportConfig(f"{receiver.endpoint}/v1/traces", "orchestrate"))
    assert sender.send_owed(time.monotonic() + 10)
    assert [s["name"] for s in receiver.spans] == ["p:a"]
    ws.doit("wait", check_rc=0, env=otel(receiver.endpoint))
    spans = by_span_id(receiver.spans)
    assert sorted(s["name"] for s in spans.values()) == ["p", "p:a"]
    assert not owed(ws)


def test_without_export_agents_still_get_a_traceparent_and_nothing_is_owed(ws):
    out = ws.root / "env.json"
    ws.write_pipeline("p", f'[agents.a]\ncommand = "{ws.agent_cmd()}"\n')
    ws.doit("wait", check_rc=0)
    [launch] = ws.launches()
    trace_id = ws.status("p", "a")["trace_id"]
    assert launch["traceparent"] == \
        f"00-{trace_id}-{tracing.attempt_span_id(launch['run_id'])}-01"
    assert not (ws.state / "telemetry" / "owed.jsonl").exists() and not out.exists()
    assert not list((ws.state / "telemetry" / "traces").glob("*.json"))   # the run closed
    assert json.loads((ws.state / "status" / "p" / "a.json").read_text())["state"] == "done"


def test_without_the_sdk_installed_an_export_is_one_line_in_telemetry_log(tmp_path,
                                                                          monkeypatch):
    """The extra missing: sending fails as a dead receiver does, never raises."""
    import sys
    from orchestrate.runtime.owed import OwedSpans, Sender
    from orchestrate.runtime.state import Layout
    from orchestrate.runtime.telemetry import ExportConfig
    layout = Layout(tmp_path)
    (tmp_path / ".orchestrate").mkdir()
    owed_spans = OwedSpans(layout)
    owed_spans.owe("1" * 16, [{"name": "p:a"}], {})
    monkeypatch.setitem(sys.modules, "orchestrate.runtime.otlp", None)   # import fails
    sender = Sender(owed_spans, ExportConfig("http://127.0.0.1:9/v1/traces", "orchestrate"))
    try:
        sender.send_owed(time.monotonic() + 5)
    except ImportError:
        pytest.fail("a missing SDK must be a line in telemetry.log, not an exception")
    line = (tmp_path / ".orchestrate" / "telemetry.log").read_text()
    assert "ModuleNotFoundError" in line or "ImportError" in line
    assert [e["id"] for e in owed_spans.unsent()] == ["1" * 16]


def test_a_merge_is_owed_as_a_child_span_of_its_attempt_once(tmp_path):
    """The hook the merge queue calls (`Telemetry.merge_ended`)."""
    from orchestrate.core.spec import Workspace
    from orchestrate.runtime.state import Layout
    from orchestrate.runtime.telemetry import Telemetry
    (tmp_path / ".orchestrate").mkdir()
    telemetry = Telemetry(Workspace(tmp_path, ()), Layout(tmp_path), time.time,
                          {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
    record = StatusRecord(state=RunState.DONE, pipeline="p", agent="a", run_id="p.a.1.ab",
                          trace_id="2" * 32)
    for _ in range(2):
        telemetry.merge_ended("p:a", record, 1, 10.0, 12.0, "merge conflict in a.py",
                              **{"orchestrate.merge.into": "main"})
    [entry] = telemetry.owed.unsent()
    [span] = entry["spans"]
    assert (span["name"], span["trace_id"], span["parent_span_id"]) == (
        "p:a merge", "2" * 32, tracing.attempt_span_id("p.a.1.ab"))
    assert span["error"] == "merge conflict in a.py"
    assert span["attributes"]["orchestrate.merge.into"] == "main"
    from orchestrate.runtime import telemetry as module
    module._SENDERS.pop(tmp_path)   # nothing for this test process to send at its exit


def test_a_merge_is_a_child_span_of_the_attempt_that_made_its_branch(ws, receiver):
    """`merge = true`: each merge's outcome is a span under the attempt whose
    branch it merged, from the merge's start to its outcome; a conflict is ERROR."""
    ws.make_git_repo()
    git = ws.git
    git("checkout", "-qb", "landed")
    (ws.root / "a.txt").write_text("theirs\n")
    git("add", "a.txt")
    git("commit", "-qm", "other work")
    git("checkout", "-q", "main")
    ws.write_pipeline("p", '[agents.a]\ncommand = "echo mine > a.txt"\n'
                           'isolation = "worktree"\nmerge = true\nmerge_into = "landed"\n'
                           'merge_retries = 0\n'
                           '[agents.b]\ncommand = "echo fine > b.txt"\n'
                           'isolation = "worktree"\nmerge = true\nmerge_into = "clean"\n')
    ws.doit("wait", check_rc=1, env=otel(receiver.endpoint))
    assert ws.status("p", "a")["reason"] == "merge conflict in a.txt"
    spans = by_span_id(receiver.spans)
    [a_attempt], [b_attempt] = receiver.named("p:a"), receiver.named("p:b")
    [conflict], [landed] = receiver.named("p:a merge"), receiver.named("p:b merge")
    assert conflict["parent_span_id"] == a_attempt["span_id"]
    assert (conflict["status"], conflict["message"]) == (ERROR, "merge conflict in a.txt")
    assert conflict["attributes"]["orchestrate.merge.into"] == "landed"
    assert landed["parent_span_id"] == b_attempt["span_id"] and landed["status"] != ERROR
    assert landed["attributes"]["orchestrate.merge.into"] == "clean"
    for merge, attempt in ((conflict, a_attempt), (landed, b_attempt)):
        assert merge["trace_id"] == attempt["trace_id"]
        assert attempt["end_ns"] <= merge["start_ns"] <= merge["end_ns"]
    assert len(spans) == 5 and not owed(ws)   # the pipeline, two attempts, two merges
