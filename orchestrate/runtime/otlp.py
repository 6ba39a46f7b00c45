"""The only module that imports the OpenTelemetry SDK: spans as recorded
(dicts, `core/tracing.py`) to the SDK's `ReadableSpan`s, sent by the
official OTLP/HTTP (protobuf) exporter.

Imported by the sender only when something is owed and export is on, so no
`doit` pays the SDK's import (~0.2 s) otherwise.
"""
from __future__ import annotations

import logging
from typing import Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

SCOPE = InstrumentationScope("orchestrate", "0.1.0")


class _LastWords(logging.Handler):
    """The exporter says why an export failed only in its log: keep the
    last message for telemetry.log, and let nothing reach stderr."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.last = ""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.last = record.getMessage()
        except Exception:   # a malformed log call must not break sending
            self.last = str(record.msg)


_WORDS = _LastWords()
_EXPORTER_LOG = logging.getLogger("opentelemetry")
_EXPORTER_LOG.addHandler(_WORDS)
_EXPORTER_LOG.propagate = False


def _context(trace_id: str, span_id: str) -> SpanContext:
    return SpanContext(int(trace_id, 16), int(span_id, 16), is_remote=False,
                       trace_flags=TraceFlags(TraceFlags.SAMPLED))


def readable(span: dict[str, Any], resource: Resource) -> ReadableSpan:
    parent = span.get("parent_span_id")
    error = span.get("error")
    return ReadableSpan(
        name=span["name"], context=_context(span["trace_id"], span["span_id"]),
        parent=_context(span["trace_id"], parent) if parent else None,
        resource=resource, attributes=span.get("attributes") or {}, kind=SpanKind.INTERNAL,
        status=Status(StatusCode.ERROR, str(error)[:500]) if error else Status(StatusCode.UNSET),
        start_time=int(span["start_ns"]), end_time=int(span["end_ns"]),
        instrumentation_scope=SCOPE)


class Exporter:
    """One OTLP/HTTP exporter for a process's life: `send` returns None when
    the receiver took the spans, else why not (one line)."""

    def __init__(self, endpoint: str, service_name: str):
        # headers: the exporter reads OTEL_EXPORTER_OTLP_(TRACES_)HEADERS itself
        self.endpoint = endpoint
        # not Resource.create: its detectors run in a thread pool, which a
        # process that sends while it exits can no longer start
        self.resource = OTELResourceDetector().detect().merge(Resource({
            "service.name": service_name, "telemetry.sdk.language": "python",
            "telemetry.sdk.name": "opentelemetry"}))
        self.exporters: dict[float, OTLPSpanExporter] = {}

    def _exporter(self, timeout: float) -> OTLPSpanExporter:
        key = round(max(timeout, 0.1), 1)
        if key not in self.exporters:
            self.exporters[key] = OTLPSpanExporter(endpoint=self.endpoint, timeout=key)
        return self.exporters[key]

    def send(self, spans: list[dict[str, Any]], timeout: float) -> str | None:
        _WORDS.last = ""
        try:
            result = self._exporter(timeout).export([readable(s, self.resource) for s in spans])
        except Exception as err:   # a bad span or a library bug: said, never raised
            return f"{type(err).__name__}: {err}"
        if result == SpanExportResult.SUCCESS:
            return None
        return _WORDS.last or "export failed"
