"""RPM and TPM limits on virtual time: three minutes of traffic in milliseconds."""

import httpx
import trio
import trio.testing

from shardline import ChatRequest, Endpoint, Outcome, PipelineConfig, open_pipeline

SSE = (
    b'data: {"choices":[{"index":0,"delta":{"content":"ok"},'
    b'"finish_reason":null}]}\n\n'
    b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    b'data: {"choices":[],"usage":{"prompt_tokens":20,"completion_tokens":1,'
    b'"total_tokens":21}}\n\n'
    b"data: [DONE]\n\n"
)
sent_at: list[float] = []  # when each request reached the "server", in trio time


def handler(request: httpx.Request) -> httpx.Response:
    """A server that answers at once: only the limits slow the run down."""
    sent_at.append(trio.current_time())
    return httpx.Response(
        200, headers={"content-type": "text/event-stream"}, content=SSE
    )


async def main() -> None:
    config = PipelineConfig(
        endpoint=Endpoint(base_url="http://llm.invalid/v1", model="m"),
        shard_count=4,
        rpm=30,  # at most 30 requests in any 60 s, all shards together
    )
    requests = [
        ChatRequest(messages=[{"role": "user", "content": "Hi"}]) for _ in range(75)
    ]
    start = trio.current_time()
    async with open_pipeline(
        config, transport=lambda shard: httpx.MockTransport(handler)
    ) as p:
        send, recv = trio.open_memory_channel[Outcome](16)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(p.map, requests, send)
            outcomes = [outcome async for outcome in recv]
    assert all(outcome.ok for outcome in outcomes)

    times = [t - start for t in sent_at]
    for minute in range(3):
        count = sum(1 for t in times if minute * 60 <= t < (minute + 1) * 60)
        print(f"minute {minute}: {count} requests")
    busiest = max(sum(1 for u in times if t <= u < t + 60) for t in times)
    print(
        f"busiest 60 s window: {busiest} requests; "
        f"run took {max(times):.0f} s of trio time"
    )
    assert busiest <= 30


# MockClock(autojump_threshold=0): whenever every task is waiting, jump to the
# next deadline.
trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
