"""A first sharded batch: 200 requests, 4 shards, a misbehaving server, a report."""

import trio

from shardline import (
    Backoff,
    ChatRequest,
    Deadlines,
    Endpoint,
    JsonlEventSink,
    Outcome,
    PipelineConfig,
    RetryPolicy,
    open_pipeline,
)
from shardline.events import EventFileReader
from shardline.report import compute_report, render_text
from shardline.testing import open_fake_server

# A few percent of the requests get a fault: 429s, 503s, resets, streams that stall.
FAULTS = (
    "rate_limit=0.05:retry_after=0.2,http_503=0.03,"
    "reset=0.02:after=2,stall_mid=0.02:after=3"
)


def requests() -> list[ChatRequest]:
    return [
        ChatRequest(
            id=f"q{n}",
            messages=[
                {"role": "user", "content": f"Write a haiku about the number {n}."}
            ],
            params={"max_tokens": 24},
        )
        for n in range(200)
    ]


async def main() -> None:
    async with open_fake_server(faults=FAULTS, seed=1) as server:
        config = PipelineConfig(
            endpoint=Endpoint(base_url=server.base_url, model="fake-model"),
            shard_count=4,
            concurrency=8,
            deadlines=Deadlines(ttft=2.0, stall=0.5),  # the fake server is fast
            retry=RetryPolicy(
                backoff=Backoff(initial=0.05, max=0.5, jitter=0.05),
                retry_after_jitter=0.05,
            ),
            seed=1,
        )
        ok = failed = 0
        with JsonlEventSink("events.jsonl") as sink:
            async with open_pipeline(config, sink=sink) as pipeline:
                send, recv = trio.open_memory_channel[Outcome](16)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(pipeline.map, requests(), send)
                    # in completion order; ends after the last
                    async for outcome in recv:
                        if outcome.ok:
                            ok += 1
                        else:
                            failed += 1
                            print(
                                f"{outcome.id}: {outcome.cause} after "
                                f"{outcome.attempts} attempts"
                            )
        print(f"{ok} ok, {failed} failed")
        assert ok + failed == 200

    with EventFileReader("events.jsonl") as reader:
        report = compute_report(reader, events_sha256=sink.hexdigest())
        print(render_text(report))
        assert report.items == 200
        assert report.retries > 0


trio.run(main)
