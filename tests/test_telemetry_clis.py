"""Which real agent CLIs export their own spans under the TRACEPARENT
orchestrate gives them (README "Telemetry"): each runs through orchestrate
against the mock API (tests/mock_api.py) with its telemetry switched on,
pointed at the test's OTLP receiver, which also receives orchestrate's spans.

Observed with Claude Code 2.1.197, codex-cli 0.169.0 and gemini-cli 0.61.0:
claude and codex continue the attempt's trace; gemini exports a trace of
its own (it does not read TRACEPARENT). aider has no OpenTelemetry export.
"""
from __future__ import annotations

import json

import pytest

from conftest import wait_until
from otlp_receiver import Receiver
from orchestrate.core import tracing
from test_real_clis import api, cli_env, home, pipeline  # noqa: F401  (fixtures)

pytestmark = pytest.mark.real_cli


def telemetry_on(preset: str, env: dict[str, str], endpoint: str, home) -> None:  # noqa: F811
    """Each CLI's own switch, as the README's recipe says."""
    if preset == "claude":
        env.update(CLAUDE_CODE_ENABLE_TELEMETRY="1", CLAUDE_CODE_ENHANCED_TELEMETRY_BETA="1",
                   OTEL_TRACES_EXPORTER="otlp", OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf")
    elif preset == "codex":
        config = home / ".codex" / "config.toml"
        config.write_text(config.read_text() + '\n[otel]\ntrace_exporter = { otlp-http = { '
                          f'endpoint = "{endpoint}/v1/traces", protocol = "binary" }} }}\n')
    else:
        settings = home / ".gemini" / "settings.json"
        chosen = json.loads(settings.read_text())
        chosen["telemetry"] = {"enabled": True, "target": "local", "otlpEndpoint": endpoint,
                               "otlpProtocol": "http", "useCollector": True}
        settings.write_text(json.dumps(chosen))


def run_traced(ws, preset, api, home) -> tuple[dict, list[dict], Receiver]:  # noqa: F811
    with Receiver() as receiver:
        env = cli_env(preset, api, "ok", home)
        telemetry_on(preset, env, receiver.endpoint, home)
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.endpoint
        ws.write_pipeline("p", pipeline(preset))
        ws.doit("wait", env=env, timeout=180, check_rc=0)
        # the CLI flushed its own spans when it exited; ours went before doit wait returned
        theirs = wait_until(lambda: [s for s in receiver.spans
                                     if s["resource"].get("service.name") != "orchestrate"],
                            30, f"{preset}'s own spans")
        [ours] = receiver.named("p:a")
        return ours, theirs, receiver


@pytest.mark.parametrize("preset", ["claude", "codex"])
def test_a_cli_with_telemetry_on_nests_its_spans_under_the_attempt(ws, api, home, preset):  # noqa: F811
    attempt, theirs, _ = run_traced(ws, preset, api, home)
    run_id = ws.status("p", "a")["run_id"]
    assert attempt["span_id"] == tracing.attempt_span_id(run_id)
    children = [s for s in theirs if s["parent_span_id"] == attempt["span_id"]]
    assert children and all(s["trace_id"] == attempt["trace_id"] for s in children)


def test_gemini_exports_a_trace_of_its_own(ws, api, home):  # noqa: F811
    attempt, theirs, _ = run_traced(ws, "gemini", api, home)
    assert all(s["trace_id"] != attempt["trace_id"] for s in theirs)
