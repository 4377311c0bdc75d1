"""Export a pipeline's metrics to Prometheus, and keep the events file as well."""

import trio
from prometheus_client import CollectorRegistry, generate_latest

from shardline import (
    ChatRequest,
    Endpoint,
    JsonlEventSink,
    Outcome,
    PipelineConfig,
    TeeSink,
    open_pipeline,
)
from shardline.report import PrometheusSink
from shardline.testing import open_fake_server


async def main() -> None:
    registry = CollectorRegistry()  # your own registry, not the global one
    sink = TeeSink(JsonlEventSink("service-events.jsonl"), PrometheusSink(registry))

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

    # What a Prometheus server scraping /metrics would read:
    text = generate_latest(registry).decode()
    for line in text.splitlines():
        if line.startswith(("shardline_items_total", "shardline_retries_total")):
            print(line)
    assert 'shardline_items_total{status="ok"} 40.0' in text


trio.run(main)
