"""Hypothesis properties of the pipeline: random configs and fault plans, on virtual time."""

from __future__ import annotations

from collections import Counter

import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from helpers import Transports, run_virtual
from shardline._backoff import Backoff, RetryPolicy
from shardline._config import Deadlines, Endpoint, Hedging, PipelineConfig
from shardline._events import AttemptStart, ItemEnd
from shardline._models import ChatRequest, Outcome, Status
from shardline._pipeline import open_pipeline
from shardline._ratelimit import SlidingWindowLimiter
from shardline._sinks import MemoryEventSink

FAULTS = [
    None,
    None,
    None,
    "stall_headers",
    "stall_after_headers",
    "stall_mid",
    "drip",
    "rate_limit",
    "http_500",
    "http_503",
    "http_400",
    "reset",
    "truncate",
    "malformed",
    "error_event",
]

#: What the in-memory transport's faults must end as (its drip starts after content).
TRANSPORT_CAUSE = {
    "stall_headers": "ttft_timeout",
    "stall_after_headers": "ttft_timeout",
    "stall_mid": "stall_timeout",
    "drip": "stall_timeout",
    "rate_limit": "rate_limited",
    "http_500": "server_error",
    "http_503": "server_error",
    "http_400": "client_error",
    "reset": "connection_lost",
    "truncate": "truncated",
    "malformed": "protocol_error",
    "error_event": "server_error",
}

configs = st.builds(
    PipelineConfig,
    endpoint=st.just(Endpoint(base_url="http://fake.invalid/v1", model="m")),
    shard_count=st.integers(1, 4),
    concurrency=st.integers(1, 4),
    queue_size=st.integers(1, 4),
    routing=st.sampled_from(["hash", "least_loaded"]),
    rpm=st.one_of(st.none(), st.integers(5, 60)),
    retry=st.builds(
        RetryPolicy,
        max_attempts=st.integers(1, 4),
        backoff=st.just(Backoff(initial=0.1, max=2.0, multiplier=2.0, jitter=0.2)),
        budget_ratio=st.sampled_from([0.0, 0.2, 1.0]),
        budget_min_retries=st.integers(0, 5),
    ),
    deadlines=st.just(Deadlines(connect=1.0, ttft=2.0, stall=1.0, attempt=6.0)),
    hedging=st.one_of(
        st.none(),
        st.builds(
            Hedging,
            after=st.sampled_from([0.02, 0.5, "p95"]),
            budget=st.sampled_from([0.05, 1.0]),
            min_samples=st.integers(1, 5),
        ),
    ),
    seed=st.integers(0, 2**16),
)
fault_plans = st.dictionaries(
    st.tuples(st.integers(0, 29).map(str), st.integers(1, 4)), st.sampled_from(FAULTS)
)


def run_case(config: PipelineConfig, plan: dict[tuple[str, int], str | None], n: int) -> None:
    sink = MemoryEventSink()
    transports = Transports(
        plan=lambda item, attempt: plan.get((item, attempt)), completion_tokens=4
    )
    violations: list[str] = []

    async def main() -> list[Outcome]:
        send, recv = trio.open_memory_channel[Outcome](4)
        got: list[Outcome] = []
        async with open_pipeline(config, sink=sink, transport=transports) as pipeline:

            async def monitor() -> None:
                while True:
                    for s in pipeline.statistics().shards:
                        # Not sent yet: in the queue, or taken from it (at most 2 x cap).
                        if s.queued > config.queue_size + 2 * s.capacity:
                            violations.append(f"shard {s.shard} queued {s.queued}")
                        if s.in_flight > s.capacity or s.busy > 2 * s.capacity:
                            violations.append(f"shard {s.shard} in flight {s.in_flight}")
                    await trio.sleep(0.05)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(monitor)
                async with trio.open_nursery() as inner:
                    requests = [
                        ChatRequest(messages=[{"role": "user", "content": "x"}], id=str(i))
                        for i in range(n)
                    ]
                    inner.start_soon(pipeline.map, requests, send)
                    async for outcome in recv:
                        got.append(outcome)
                nursery.cancel_scope.cancel()
        return got

    outcomes = run_virtual(main)

    # Every submitted item gets exactly one terminal outcome: none lost, none duplicated.
    assert sorted(o.id for o in outcomes) == sorted(str(i) for i in range(n))
    ended = Counter(e.item_id for e in sink.events if isinstance(e, ItemEnd))
    assert all(count == 1 for count in ended.values())
    assert len(ended) == n
    # While the pipeline ran, no one-item outcome is "cancelled": nothing was drained away.
    assert all(o.status in (Status.OK, Status.FAILED) for o in outcomes)
    # Items without a fault on their first attempt and no retries needed succeed.
    for o in outcomes:
        if all(plan.get((str(o.id), a)) is None for a in range(1, 5)):
            assert o.ok, o
    # A failed item names the cause of its last attempt's fault.
    for o in outcomes:
        if not o.ok:
            fault = plan.get((str(o.id), o.attempts))
            assert fault is not None, o
            assert o.cause is not None, o
            assert o.cause.value == TRANSPORT_CAUSE[fault], (fault, o)
    # Caps and bounds held at every sample and in the transports' own counters.
    assert not violations, violations[:3]
    for t in transports.by_shard.values():
        assert t.max_in_flight <= config.concurrency
        assert t.in_flight == 0
    # RPM: no 60 s window holds more attempt starts than the limit.
    if config.rpm is not None:
        starts = sorted(e.t for e in sink.events if isinstance(e, AttemptStart))
        for i, t0 in enumerate(starts):
            assert sum(1 for u in starts[i:] if u < t0 + 60.0) <= config.rpm


@given(config=configs, plan=fault_plans, n=st.integers(0, 30))
def test_every_item_ends_once_within_caps(
    config: PipelineConfig, plan: dict[tuple[str, int], str | None], n: int
) -> None:
    """Under any config and fault plan: one outcome per item, caps and limits hold."""
    run_case(config, plan, n)


@given(
    limit=st.integers(1, 50),
    charges=st.lists(st.tuples(st.floats(0, 30), st.integers(1, 20)), max_size=40),
)
def test_sliding_window_never_exceeds_its_limit(
    limit: int, charges: list[tuple[float, int]]
) -> None:
    """The TPM/RPM limiter never lets more than `limit` through in any window."""

    async def main() -> list[tuple[float, float]]:
        limiter = SlidingWindowLimiter(limit=limit, window=60.0)
        granted: list[tuple[float, float]] = []
        async with trio.open_nursery() as nursery:
            for delay, amount in charges:

                async def one(delay: float = delay, amount: int = amount) -> None:
                    await trio.sleep(delay)
                    await limiter.acquire(amount)
                    granted.append((trio.current_time(), amount))

                nursery.start_soon(one)
        return granted

    granted = run_virtual(main)
    granted.sort()
    for i, (t0, _) in enumerate(granted):
        window = [a for (u, a) in granted[i:] if u < t0 + 60.0]
        # A single charge above the limit goes alone; otherwise the sum fits.
        assert sum(window) <= limit or len(window) == 1
