"""Deadlines that know what progress is: drips and stalls end in bounded time."""

import trio

from shardline import (
    ChatRequest,
    Deadlines,
    Endpoint,
    Outcome,
    PipelineConfig,
    RetryPolicy,
    open_pipeline,
)
from shardline.testing import open_fake_server

# Each item gets a different misbehaviour, on every attempt.
FAULTS = ",".join(
    [
        "stall_headers@item=no-headers",  # accepts the request, never answers
        "stall_after_headers@item=no-body",  # 200 and headers, then nothing
        "stall_mid@item=stalls:after=3",  # three tokens, then silence
        # one token, then keep-alives forever:
        "drip@item=drips:after=1:interval=0.05",
    ]
)


async def main() -> None:
    async with open_fake_server(faults=FAULTS) as server:
        config = PipelineConfig(
            endpoint=Endpoint(base_url=server.base_url, model="fake-model"),
            deadlines=Deadlines(ttft=1.0, stall=0.5, attempt=10.0),
            retry=RetryPolicy(max_attempts=1),  # no retries: show each first failure
        )
        ids = ["fine", "no-headers", "no-body", "stalls", "drips"]
        requests = [
            ChatRequest(id=i, messages=[{"role": "user", "content": "Hi"}])
            for i in ids
        ]
        started = trio.current_time()
        outcomes: dict[object, Outcome] = {}
        async with open_pipeline(config) as pipeline:
            send, recv = trio.open_memory_channel[Outcome](len(requests))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pipeline.map, requests, send)
                async for outcome in recv:
                    outcomes[outcome.id] = outcome
        elapsed = trio.current_time() - started

    for item_id in ids:
        outcome = outcomes[item_id]
        print(f"{item_id:>10}: {outcome.status} {outcome.cause or ''}")
    print(f"all ended in {elapsed:.1f} s")
    expected = {
        "fine": None,
        "no-headers": "ttft_timeout",
        "no-body": "ttft_timeout",
        "stalls": "stall_timeout",
        "drips": "stall_timeout",  # keep-alives are not progress
    }
    causes = {i: outcomes[i].cause for i in ids}
    unexpected = {i: outcomes[i].error for i in ids if causes[i] != expected[i]}
    assert not unexpected, unexpected
    assert elapsed < 10  # bounded: without deadlines, four of these would hang


trio.run(main)
