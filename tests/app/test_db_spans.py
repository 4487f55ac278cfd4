"""Statement spans: made only while an exporter is set up (issue 19: the no-op span cost a
context attach and detach per statement)."""

from __future__ import annotations

import contextlib

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from zapora.infra import db


def test_no_span_without_an_exporter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db, "tracing_enabled", lambda: False)
    assert isinstance(db._span("SELECT 1"), contextlib.nullcontext)


def test_statement_span_with_an_exporter(monkeypatch: pytest.MonkeyPatch) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(db, "tracing_enabled", lambda: True)
    monkeypatch.setattr(db, "tracer", provider.get_tracer("test"))
    with db._span("  select id from orders where id = %s"):
        pass
    (span,) = exporter.get_finished_spans()
    assert span.name == "SQL SELECT"
    assert span.attributes is not None
    assert span.attributes["db.system"] == "postgresql"
    assert span.attributes["db.statement"] == "  select id from orders where id = %s"
