"""The OpenTelemetry sink: GenAI client metrics and one span per attempt, equal to the report."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import pytest
import trio
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from report_sim import simulate
from shardline._backoff import Backoff, RetryPolicy
from shardline._config import Deadlines, Endpoint, PipelineConfig
from shardline._events import AttemptEnd, Event, FirstToken, ItemAdmitted, RunStart
from shardline._models import ChatRequest, Outcome
from shardline._pipeline import open_pipeline
from shardline._prometheus import DURATION_BUCKETS
from shardline._sinks import TeeSink
from shardline.report import OpenTelemetrySink, ReportBuilder, RunReport, compute_report
from shardline.testing import FakeServer, FaultPlan


class Recorded:
    """An SDK with in-memory reader and exporter, and the sink writing to it."""

    def __init__(self, **kwargs: Any) -> None:
        self.reader = InMemoryMetricReader()
        self.exporter = InMemorySpanExporter()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.sink = OpenTelemetrySink(
            meter_provider=MeterProvider(metric_readers=[self.reader]),
            tracer_provider=tracer_provider,
            **kwargs,
        )

    def feed(self, events: Iterable[Event]) -> None:
        for event in events:
            self.sink.emit(event)
        self.sink.close()

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        assert data is not None
        return [
            point
            for rm in data.resource_metrics
            for sm in rm.scope_metrics
            for metric in sm.metrics
            if metric.name == name
            for point in metric.data.data_points
        ]

    def total(self, name: str, key: str | None = None) -> Counter[str]:
        """Sum of a counter's values, or of a histogram's sums, by one attribute."""
        out: Counter[str] = Counter()
        for point in self.points(name):
            value = point.sum if hasattr(point, "bucket_counts") else point.value
            out[str(point.attributes.get(key)) if key else ""] += value
        return out

    def spans(self) -> tuple[ReadableSpan, ...]:
        return self.exporter.get_finished_spans()


def _check_totals(recorded: Recorded, report: RunReport) -> None:
    tokens = recorded.total("gen_ai.client.token.usage", "gen_ai.token.type")
    assert tokens == {"input": report.tokens_in_total, "output": report.tokens_out_total}
    retries = recorded.total("shardline.retries", "error.type")
    assert dict(retries) == report.retry_causes
    items = recorded.total("shardline.items", "shardline.status")
    expected = {"ok": report.succeeded, "failed": report.failed, "cancelled": report.cancelled}
    assert dict(items) == {k: v for k, v in expected.items() if v}
    failures: Counter[str] = Counter()
    for point in recorded.points("gen_ai.client.operation.duration"):
        cause = point.attributes.get("error.type")
        if cause is not None:
            failures[str(cause)] += point.count
    assert dict(failures) == report.attempt_failures


def test_totals_equal_the_report_of_a_simulated_run() -> None:
    """Token usage, retries by cause, items by status and failed attempts equal the report."""
    events = simulate(seed=11, items=300)
    recorded = Recorded()
    recorded.feed(events)
    _check_totals(recorded, compute_report(events, events_sha256=None))
    ttfc = recorded.points("gen_ai.client.operation.time_to_first_chunk")
    assert sum(p.count for p in ttfc) == sum(isinstance(e, FirstToken) for e in events)
    (duration, *_) = recorded.points("gen_ai.client.operation.duration")
    assert tuple(duration.explicit_bounds) == DURATION_BUCKETS


def test_one_span_per_attempt_inside_its_item_span() -> None:
    """Each attempt is a client span, child of its item's span, with its cause and times."""
    events = simulate(seed=12, items=40)
    run_start = events[0]
    assert isinstance(run_start, RunStart)
    recorded = Recorded(request_model="my-model")
    recorded.feed(events)
    spans = recorded.spans()
    items = {s.attributes["shardline.item_id"]: s for s in spans if s.name == "shardline.item"}
    attempts = [s for s in spans if s.kind is SpanKind.CLIENT]
    ends = [e for e in events if isinstance(e, AttemptEnd)]
    assert len(items) == sum(isinstance(e, ItemAdmitted) for e in events)
    assert len(attempts) == len(ends)
    by_key = {
        (s.attributes["shardline.item_id"], s.attributes["shardline.attempt"]): s for s in attempts
    }
    for end in ends:
        span = by_key[(end.item_id, end.attempt)]
        parent = items[str(end.item_id)]
        assert span.name == "chat my-model"
        assert span.parent is not None
        assert span.parent.span_id == parent.context.span_id
        assert span.context.trace_id == parent.context.trace_id
        assert span.end_time == round((run_start.started_at + end.t) * 1e9)
        assert span.attributes["gen_ai.request.model"] == "my-model"
        if end.cause is None:
            assert span.status.status_code is StatusCode.UNSET
            assert "error.type" not in span.attributes
        else:
            assert span.status.status_code is StatusCode.ERROR
            assert span.attributes["error.type"] == end.cause.value
            assert span.attributes["shardline.cause"] == end.cause.value
    retried = [s for s in items.values() if s.events]
    assert retried
    assert {ev.name for s in retried for ev in s.events} == {"retry_scheduled"}


def test_close_ends_unfinished_items() -> None:
    """An item that never ended (a killed run) still gets its span ended, marked unfinished."""
    recorded = Recorded()
    recorded.feed(
        [
            RunStart(t=0.0, run_id="r", started_at=1e9, shard_count=1, config={}),
            ItemAdmitted(t=0.1, item_id=7, shard=0),
        ]
    )
    (span,) = recorded.spans()
    assert span.attributes["shardline.status"] == "unfinished"
    assert span.attributes["shardline.item_id"] == "7"
    assert "OpenTelemetrySink" in repr(recorded.sink)


def test_server_attributes_from_the_endpoint() -> None:
    """server.address and server.port come from the endpoint's base URL, model from config."""
    recorded = Recorded()
    config = {"endpoint": {"base_url": "https://api.example.com/v1", "model": "m1"}}
    recorded.feed(
        [
            RunStart(t=0.0, run_id="r", started_at=1e9, shard_count=1, config=config),
            AttemptEnd(
                t=1.0, item_id="a", shard=0, attempt=1, outcome="failed", cause="server_error",
                duration_s=0.5,
            ),
        ]
    )  # fmt: skip
    (point,) = recorded.points("gen_ai.client.operation.duration")
    assert dict(point.attributes) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "m1",
        "server.address": "api.example.com",
        "server.port": 443,
        "error.type": "server_error",
    }


def test_missing_opentelemetry_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without opentelemetry installed, making the sink says which extra to install."""
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with pytest.raises(ImportError, match=r"pip install 'shardline\[otel\]'"):
        OpenTelemetrySink()


async def test_totals_equal_the_report_of_a_real_run(
    fake_server_factory: Callable[..., Awaitable[FakeServer]],
) -> None:
    """Against the fake server with faults: the OTel totals equal the live report's."""
    plan = FaultPlan(
        items={
            ("1", 1): "rate_limit",
            ("2", 1): "http_500",
            ("3", 1): "truncate",
            ("4", 1): "reset",
            ("5", 1): "http_502",
            ("5", 2): "http_502",  # attempts run out: a failed item
        }
    )
    with trio.fail_after(30):
        server = await fake_server_factory(faults=plan)
        config = PipelineConfig(
            endpoint=Endpoint(base_url=server.base_url, model="m", api_key="sk-otel"),
            shard_count=2,
            concurrency=4,
            retry=RetryPolicy(
                max_attempts=2,
                backoff=Backoff(initial=0.01, max=0.05, multiplier=2.0, jitter=0.01),
                retry_after_jitter=0.0,
                retry_after_cap=0.05,
                budget_ratio=1.0,
            ),
            deadlines=Deadlines(connect=2.0, ttft=2.0, stall=1.0, attempt=10.0),
        )
        builder = ReportBuilder()
        recorded = Recorded()
        sink = TeeSink(builder, recorded.sink)
        requests = [
            ChatRequest(messages=[{"role": "user", "content": f"q {i}"}], id=str(i))
            for i in range(30)
        ]
        send, recv = trio.open_memory_channel[Outcome](30)
        async with open_pipeline(config, sink=sink) as pipeline, trio.open_nursery() as n:
            n.start_soon(pipeline.map, requests, send)
            outcomes = [o async for o in recv]
        sink.close()
    report = builder.build()
    assert len(outcomes) == 30
    assert (report.succeeded, report.failed) == (29, 1)
    _check_totals(recorded, report)
    assert report.tokens_out_total > 0
    spans = recorded.spans()
    assert sum(s.kind is SpanKind.CLIENT for s in spans) == report.attempts
    assert all("sk-otel" not in str(s.to_json()) for s in spans)


async def test_item_span_is_a_child_of_the_callers_span(
    fake_server_factory: Callable[..., Awaitable[FakeServer]],
) -> None:
    """An item submitted under the caller's span is traced inside it."""
    recorded = Recorded()
    tracer = recorded.sink._tracer
    with trio.fail_after(30):
        server = await fake_server_factory()
        config = PipelineConfig(endpoint=Endpoint(base_url=server.base_url, model="m"))
        async with open_pipeline(config, sink=recorded.sink) as pipeline:
            with tracer.start_as_current_span("handler"):
                await pipeline.complete(ChatRequest(messages=[{"role": "user", "content": "hi"}]))
    recorded.sink.close()
    spans = {s.name: s for s in recorded.spans()}
    item, handler = spans["shardline.item"], spans["handler"]
    assert item.parent is not None
    assert item.parent.span_id == handler.context.span_id
    assert spans["chat m"].parent is not None
    assert spans["chat m"].parent.span_id == item.context.span_id
