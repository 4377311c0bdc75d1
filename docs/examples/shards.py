"""Watch shards while a batch runs: per-shard queues, in-flight caps, cooldowns."""

import trio

from shardline import (
    Backoff,
    ChatRequest,
    Endpoint,
    Outcome,
    Pipeline,
    PipelineConfig,
    RetryPolicy,
    open_pipeline,
)
from shardline.testing import TimingModel, open_fake_server


async def monitor(pipeline: Pipeline) -> None:
    """Print one line per shard every 0.25 s (in an application: a metrics task)."""
    while True:
        stats = pipeline.statistics()
        cells = [
            f"[{s.shard}] {s.in_flight}/{s.capacity} in flight, {s.queued:>2} queued"
            + (" cooling" if s.cooling else "")
            for s in stats.shards
        ]
        print(f"{stats.done:>3} done | " + " | ".join(cells))
        for s in stats.shards:
            assert s.in_flight <= s.capacity  # the bounds hold
            assert s.queued <= 16 + 2 * 4  # the queue, plus items taken but not sent
            assert s.busy <= 2 * 4  # items in progress: sending or between attempts
        await trio.sleep(0.25)


async def main() -> None:
    timing = TimingModel(ttft=0.05, itl=0.01, tokens_per_event=2)  # ~100 tokens/s
    faults = (
        "rate_limit=0.05:retry_after=0.3"  # a 429 cools its whole shard for 0.3 s
    )
    async with open_fake_server(timing=timing, faults=faults, seed=2) as server:
        config = PipelineConfig(
            endpoint=Endpoint(base_url=server.base_url, model="fake-model"),
            shard_count=3,
            concurrency=4,  # per shard: 12 requests in flight at most
            queue_size=16,  # per shard: 16 queued, plus 2 x 4 in progress at most
            routing="hash",  # the same id, the same shard (the default: least_loaded)
            retry=RetryPolicy(
                backoff=Backoff(initial=0.05, jitter=0.05), retry_after_jitter=0.05
            ),
        )
        requests = [
            ChatRequest(
                id=n,
                messages=[{"role": "user", "content": "Hi"}],
                params={"max_tokens": 8},
            )
            for n in range(100)
        ]
        async with open_pipeline(config) as pipeline:
            send, recv = trio.open_memory_channel[Outcome](8)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(monitor, pipeline)
                nursery.start_soon(pipeline.map, requests, send)
                async for _ in recv:
                    pass
                nursery.cancel_scope.cancel()  # stop the monitor
            print(pipeline)
        assert server.statistics().max_in_flight <= 12


trio.run(main)
