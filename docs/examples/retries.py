"""Retries: backoff, Retry-After cooling a whole shard, a budget pacing storms."""

import trio

from shardline import (
    Backoff,
    ChatRequest,
    Endpoint,
    MemoryEventSink,
    Outcome,
    PipelineConfig,
    RetryPolicy,
    open_pipeline,
)
from shardline.events import AttemptEnd, AttemptStart, RetryScheduled, ShardState
from shardline.testing import open_fake_server

POLICY = RetryPolicy(
    max_attempts=6,
    backoff=Backoff(initial=0.05, max=0.4, multiplier=2.0, jitter=0.05),
    retry_after_cap=1.0,  # honour Retry-After up to 1 s
    retry_after_jitter=0.05,
    budget_ratio=0.2,  # retries <= 20 % of requests ...
    budget_min_retries=2,  # ... plus 2; the others wait for the budget ...
    budget_max_wait=0.5,  # ... at most 0.5 s here (60 s by default), then go anyway
)


async def run(faults: str, n: int) -> tuple[list[Outcome], MemoryEventSink]:
    sink = MemoryEventSink()
    async with open_fake_server(faults=faults, seed=1) as server:
        config = PipelineConfig(
            endpoint=Endpoint(base_url=server.base_url, model="fake-model"),
            shard_count=2,
            retry=POLICY,
        )
        requests = [
            ChatRequest(messages=[{"role": "user", "content": "Hi"}])
            for _ in range(n)
        ]
        async with open_pipeline(config, sink=sink) as pipeline:
            send, recv = trio.open_memory_channel[Outcome](n)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pipeline.map, requests, send)
                outcomes = [outcome async for outcome in recv]
    return outcomes, sink


async def main() -> None:
    # 1. A rate-limited server: 429 with Retry-After 0.2 s on a fifth of the requests.
    outcomes, sink = await run("rate_limit=0.2:retry_after=0.2", n=40)
    retries = [e for e in sink if isinstance(e, RetryScheduled)]
    cooldowns = [
        e for e in sink if isinstance(e, ShardState) and e.state == "cooling"
    ]
    print(
        f"rate limited: {sum(o.ok for o in outcomes)}/40 ok, {len(retries)} retries,"
    )
    print(
        f"  {len(cooldowns)} shard cooldowns, first waits {retries[0].delay_s:.2f} s"
    )
    assert all(o.ok for o in outcomes)
    # Retry-After plus its jitter:
    assert all(0.2 <= r.delay_s <= 0.25 for r in retries)

    # 2. A dead backend: every request fails with 503. The budget paces the
    #    retries: until a retry has waited budget_max_wait (0.5 s after the first
    #    failure at the earliest), at most 20 % x 40 + 2 retries are sent.
    outcomes, sink = await run("http_503=1.0", n=40)
    first_failure = min(e.t for e in sink if isinstance(e, AttemptEnd))
    retry_sends = [e for e in sink if isinstance(e, AttemptStart) and e.attempt > 1]
    early = [e for e in retry_sends if e.t < first_failure + POLICY.budget_max_wait]
    ok = sum(o.ok for o in outcomes)
    print(f"dead backend: {ok}/40 ok, {len(retry_sends)} retries,")
    print(
        f"  {len(early)} of them in the first 0.5 s "
        "(the budget allows 0.2 x 40 + 2 = 10)"
    )
    assert len(early) <= 0.2 * 40 + 2
    assert {o.cause for o in outcomes} == {"server_error"}
    # paced, never dropped
    assert all(o.attempts == POLICY.max_attempts for o in outcomes)


trio.run(main)
