"""Telemetry: every pipeline run a trace, every attempt a span, exported
over OTLP/HTTP to whatever the user runs (Jaeger, Tempo, Honeycomb, ...).

- A pipeline run's trace opens at the first launch of one of its agents
  when none is open (`telemetry/traces/<pipeline>.json`, fsynced before the
  launch, so the `TRACEPARENT` an agent gets is never lost), and closes at
  the first pass that finds nothing of the pipeline left to run (nothing
  running, launching, queued or waiting for a retry); its own span, the
  root of the trace, is then owed. Traces are kept whether export is on or
  not, so every agent gets a `TRACEPARENT`.
- An attempt's span (and its check's) is owed when the attempt ends, by
  whichever orchestrator process settles it (`attempt_ended`, called by the
  effect runner before the settled record is written). See `owed` for how
  each is sent once.
- Export is on when the environment names an OTLP endpoint
  (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else OTEL_EXPORTER_OTLP_ENDPOINT),
  else when `[tool.orchestrate.telemetry] endpoint` does; nothing here
  imports the SDK (`otlp` does, in the sender, when something is owed).
"""
from __future__ import annotations

import atexit
import os
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, NamedTuple

from ..core import tracing
from ..core.records import ACTIVE, RunState
from ..core.scheduler import Decision
from ..core.settings import TelemetrySettings
from ..core.spec import Agent, Workspace
from .faults import crash_point
from .state import FileCache, Layout, StatusRecord, write_json

if TYPE_CHECKING:
    from .engine import StateView
    from .owed import OwedSpans, Sender

EXIT_SECONDS = 3.0   # what a process exiting gives to sending what is owed
DOWN_TRY = 0.5       # ... when the receiver was found down moments ago
SERVICE_NAME = "orchestrate"


class ExportConfig(NamedTuple):
    """Where spans go: the traces URL (.../v1/traces) and the service's name."""
    endpoint: str
    service_name: str


def export_config(settings: TelemetrySettings, environ: Mapping[str, str]) -> ExportConfig | None:
    """Where spans go, None when export is off. The environment wins over
    the workspace's setting, as OpenTelemetry's variables do everywhere."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true" or \
            environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return None
    traces = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    base = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip() or settings.endpoint or ""
    if not traces and not base:
        return None
    endpoint = traces or _signal_url(base)
    return ExportConfig(endpoint, environ.get("OTEL_SERVICE_NAME", "").strip() or SERVICE_NAME)


def _signal_url(base: str) -> str:
    """OTLP's rule: the base endpoint plus the signal's path."""
    base = base.rstrip("/")
    return base if base.endswith("/v1/traces") else f"{base}/v1/traces"


def _read_trace(path: Path) -> dict[str, Any] | None:
    """A trace file; a torn or hand-edited one counts as none (a new trace opens)."""
    import json
    try:
        data = json.loads(path.read_bytes())
    except (FileNotFoundError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("trace_id"), str) else None


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return None


def _moves(decision: Decision) -> bool:
    """Something of the pipeline can still run without a person: launched,
    running, queued behind a cap, or waiting for a retry (as `can_advance`)."""
    return decision.launch or decision.state in (RunState.RUNNING, RunState.LAUNCHING) or (
        not decision.blocked and (decision.state == RunState.QUEUED or (
            decision.state == RunState.WAITING and decision.timed)))


class Telemetry:
    """One engine's side of telemetry: the traces of pipeline runs and the
    spans owed; the sending is the process's (`sender_for`)."""

    def __init__(self, workspace: Workspace, layout: Layout, clock: Callable[[], float],
                 environ: Mapping[str, str] | None = None):
        self.layout = layout
        self.clock = clock
        self.config = export_config(workspace.telemetry,
                                    os.environ if environ is None else environ)
        self.traces_dir = layout.base / "telemetry" / "traces"
        self.traces: FileCache[dict[str, Any]] = FileCache(_read_trace)
        self.owed: OwedSpans | None = None
        self.sender: Sender | None = None
        if self.config is not None:   # the sending side is imported only now
            from .owed import OwedSpans
            self.owed = OwedSpans(layout)
            self.sender = sender_for(layout, self.config)

    def trace_path(self, pipeline: str) -> Path:
        return self.traces_dir / f"{pipeline}.json"

    # -- at a launch (under the scheduling lock) -----------------------------------
    def trace_of(self, pipeline: str) -> str:
        """The trace id of the pipeline's run, opened now if none is open."""
        path = self.trace_path(pipeline)
        trace = self.traces.get(path)
        if trace is not None:
            return str(trace["trace_id"])
        trace = {"trace_id": secrets.token_hex(16), "pipeline": pipeline,
                 "started": self.clock()}
        self.traces_dir.mkdir(parents=True, exist_ok=True)
        write_json(path, trace, durable=True)
        self.traces.remember(path, trace)
        return str(trace["trace_id"])

    @staticmethod
    def traceparent(trace_id: str, run_id: str) -> str:
        """The W3C `TRACEPARENT` naming the attempt `run_id`'s span."""
        return tracing.traceparent(trace_id, tracing.attempt_span_id(run_id))

    # -- when an attempt ends (the effect runner, under the lock) --------------------
    def attempt_ended(self, agent: Agent, started: StatusRecord, ended: StatusRecord,
                      verdict: Any = None) -> None:
        """Owe the attempt's span (and its check's), before the record that
        settles it is written: a crash in between settles it again, and
        `owe` then records nothing new."""
        if self.owed is None or not started.run_id:
            return
        run_id = started.run_id
        now = self.clock()
        trace_id = started.trace_id or self._current_trace(agent.pipeline) or \
            tracing.child_span_id(run_id, "trace") * 2
        spans = [tracing.attempt_span(agent, started, ended, trace_id, now)]
        begin = _mtime(self.layout.check_marker(run_id))
        if verdict is not None and begin is not None:
            end = _mtime(self.layout.check_verdict(run_id)) or now
            spans.append(tracing.check_span(agent, run_id, trace_id, verdict, begin, end))
        guard = {"status": f"status/{agent.pipeline}/{agent.name}.json", "run_id": run_id}
        if self.owed.owe(tracing.attempt_span_id(run_id), spans, guard):
            crash_point("telemetry-recorded")
            self.wake()

    def merge_ended(self, task: str, record: StatusRecord, number: int, begin: float,
                    end: float, error: str | None, **attributes: Any) -> None:
        """For the merge queue (`Landing the work`): owe the span of the
        `number`th merge of `record`'s run, a child of its attempt's span;
        `error`: why it did not land (None: merged). Calling it again for the
        same merge records nothing new."""
        if self.owed is None or not record.run_id:
            return
        trace_id = record.trace_id or self._current_trace(record.pipeline) or \
            tracing.child_span_id(record.run_id, "trace") * 2
        span = tracing.merge_span(task, record.run_id, trace_id, number, begin, end, error,
                                  attributes)
        if self.owed.owe(span["span_id"], [span], {}):
            self.wake()

    def _current_trace(self, pipeline: str) -> str | None:
        trace = self.traces.get(self.trace_path(pipeline))
        return None if trace is None else str(trace["trace_id"])

    # -- after each pass (under the lock) -------------------------------------------
    def observe(self, view: "StateView", decisions: dict[str, Decision]) -> None:
        """Close the trace of each pipeline with an open trace that has
        nothing left to run. Most passes find every open trace's pipeline
        moving within its first decisions, so the scan stops early."""
        undecided = {p.name for p in view.workspace.pipelines
                     if self.traces.get(self.trace_path(p.name)) is not None}
        if not undecided:
            return
        for decision in decisions.values():
            name = decision.agent.pipeline
            if name in undecided and _moves(decision):
                undecided.discard(name)
                if not undecided:
                    return
        for name in undecided:
            trace = self.traces.get(self.trace_path(name))
            if trace is not None and not self._others_move(view, name, decisions):
                self._close(view, name, trace, decisions)

    @staticmethod
    def _pipeline_agents(view: "StateView", name: str) -> tuple[Agent, ...]:
        try:
            return view.workspace.pipeline(name).agents
        except KeyError:   # a pipeline only its running stand-ins still name
            return ()

    def _others_move(self, view: "StateView", name: str, decisions: dict[str, Decision]
                     ) -> bool:
        """Agents of the pipeline outside the pass's selection that run or retry."""
        for agent in self._pipeline_agents(view, name):
            if agent.task in decisions:
                continue
            record = view.record(agent)
            if record is not None and (record.state in ACTIVE or (
                    record.state == RunState.WAITING and record.retry_at is not None)):
                return True
        return False

    def _close(self, view: "StateView", name: str, trace: dict[str, Any],
               decisions: dict[str, Decision]) -> None:
        trace_id = str(trace["trace_id"])
        path = self.trace_path(name)
        if self.owed is not None:
            states: dict[str, int] = {}
            ends: list[float] = []
            for agent in self._pipeline_agents(view, name):
                decision = decisions.get(agent.task)
                record = view.record(agent)
                state = str(decision.state) if decision else str(record.state if record
                                                                  else RunState.PENDING)
                states[state] = states.get(state, 0) + 1
                if record is not None and record.trace_id == trace_id:
                    ends.append(tracing.epoch_of(record.ended_at) or 0.0)
            begin = float(trace.get("started") or self.clock())
            end = max(ends, default=0.0) or self.clock()
            span = tracing.pipeline_span(name, trace_id, begin, end, states)
            guard = {"trace": f"telemetry/traces/{name}.json", "trace_id": trace_id}
            if self.owed.owe(span["span_id"], [span], guard):
                self.wake()
        path.unlink(missing_ok=True)
        self.traces.forget(path)

    # -- sending -----------------------------------------------------------------------
    def wake(self) -> None:
        if self.sender is not None:
            self.sender.wake()

    def start_sending(self) -> None:
        """Send from a thread of this process from now on (the advancer,
        `doit wait`: processes that stay, and fork no more)."""
        if self.sender is not None:
            self.sender.start()


# -- the process's senders, and what it sends before it exits ---------------------
_SENDERS: dict[Path, Sender] = {}
_EXIT = {"registered": False, "advancer_sends": False}


def sender_for(layout: Layout, config: ExportConfig) -> Sender:
    """One sender per workspace per process (engines come and go: the
    advancer makes a new one when pipeline files change)."""
    from .owed import OwedSpans, Sender
    sender = _SENDERS.get(layout.root)
    if sender is None or sender.config != config:
        sender = _SENDERS[layout.root] = Sender(OwedSpans(layout), config)
    if not _EXIT["registered"]:
        _EXIT["registered"] = True
        atexit.register(_at_exit)
    return sender


def advancer_sends() -> None:
    """This `doit` forked an advancer, which sends what is owed: returning
    does not wait for the receiver."""
    _EXIT["advancer_sends"] = True


def this_process_sends() -> None:
    """This process waits for the pipeline (`doit wait`): it sends before it exits."""
    _EXIT["advancer_sends"] = False


def _at_exit() -> None:
    if not _EXIT["advancer_sends"]:
        send_before_exit()


def send_before_exit(seconds: float = EXIT_SECONDS) -> None:
    """Send what is owed, for `seconds` at most, also what another process
    is sending right now (waited for). Moments after a process found the
    receiver down, only a short try (`DOWN_TRY`): a refused connection
    costs milliseconds, a receiver that does not answer no more than that."""
    started = time.monotonic()
    for sender in list(_SENDERS.values()):
        owed = sender.owed
        if not owed.anything_owed():
            continue
        limit = DOWN_TRY if owed.receiver_down(time.time()) else seconds
        try:
            sender.send_owed(min(started + seconds, time.monotonic() + limit),
                             wait_for_others=True)
        except Exception as err:   # nothing may fail a command at its exit
            owed.failed(0, sender.config.endpoint, f"{type(err).__name__}: {err}")
