"""Send a pipeline's GenAI metrics and spans to OpenTelemetry; keep the events."""

import trio
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

from shardline import (
    ChatRequest,
    Endpoint,
    JsonlEventSink,
    Outcome,
    PipelineConfig,
    TeeSink,
    open_pipeline,
)
from shardline.report import OpenTelemetrySink
from shardline.testing import open_fake_server


async def main() -> None:
    # In a service these would be OTLP exporters (opentelemetry-exporter-otlp);
    # in-memory ones let this example print what was recorded.
    reader = InMemoryMetricReader()
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    otel = OpenTelemetrySink(
        meter_provider=MeterProvider(metric_readers=[reader]),
        tracer_provider=tracer_provider,
    )
    sink = TeeSink(JsonlEventSink("otel-events.jsonl"), otel)

    async with open_fake_server(faults="http_503=0.1", seed=3) as server:
        config = PipelineConfig(
            endpoint=Endpoint(base_url=server.base_url, model="fake-model"),
            shard_count=2,
        )
        requests = [
            ChatRequest(messages=[{"role": "user", "content": f"Hello {n}"}])
            for n in range(40)
        ]
        async with open_pipeline(config, sink=sink) as pipeline:
            send, recv = trio.open_memory_channel[Outcome](8)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pipeline.map, requests, send)
                async for _ in recv:
                    pass
    sink.close()

    data = reader.get_metrics_data()
    assert data is not None
    for metric in data.resource_metrics[0].scope_metrics[0].metrics:
        if metric.name == "gen_ai.client.token.usage":
            for point in metric.data.data_points:
                kind = point.attributes["gen_ai.token.type"]
                print(
                    f"{metric.name} {kind}: "
                    f"{point.sum} tokens in {point.count} operations"
                )
    attempts = [s for s in spans.get_finished_spans() if s.name == "chat fake-model"]
    failed = [s for s in attempts if s.attributes.get("error.type")]
    print(
        f"{len(attempts)} attempt spans, {len(failed)} with error.type server_error"
    )
    assert all(s.attributes["error.type"] == "server_error" for s in failed)
    assert len(attempts) == 40 + len(failed)


trio.run(main)
