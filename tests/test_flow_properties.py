"""Hypothesis properties of AdaptiveLimit and HeaderPacer, on trio's virtual clock.

Each example is its own ``trio.run`` on a ``MockClock(autojump_threshold=0)``, so
minutes of simulated load cost milliseconds to a second. The strategies live here.
The simulated-server properties draw few examples of their own (a simulation is a
few thousand requests), so the CI profile stays fast.
"""

from __future__ import annotations

import os
import random
from collections.abc import Awaitable, Callable
from typing import Any

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from shardline._exceptions import Cause
from shardline._flow import AdaptiveLimit, FlowPermit
from shardline._flow_pacer import HeaderPacer
from shardline._ratelimit_headers import Quota, RateLimitInfo
from shardline.testing._load import Bucket
from test_flow_sim import CapacityServer, QueueServer, run_workload

#: Examples per simulated-server property (raise it for a thorough run).
SIM_EXAMPLES = int(os.environ.get("SHARDLINE_SIM_EXAMPLES", "6"))


def run_virtual(main: Callable[[], Awaitable[Any]]) -> Any:
    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


# -- strategies ----------------------------------------------------------------------


@st.composite
def limits(draw: st.DrawFn) -> dict[str, int]:
    """Bounds of an AdaptiveLimit: ceiling, a floor below it, an initial value between."""
    ceiling = draw(st.integers(1, 64))
    floor = draw(st.integers(1, ceiling))
    initial = draw(st.integers(floor, ceiling))
    return {"ceiling": ceiling, "floor": floor, "initial": initial}


_CAUSES = st.sampled_from(
    [
        (Cause.RATE_LIMITED, 429),
        (Cause.SERVER_ERROR, 503),
        (Cause.SERVER_ERROR, 500),
        (Cause.CONNECTION_LOST, None),
        (Cause.TTFT_TIMEOUT, None),
        (Cause.STALL_TIMEOUT, None),
        (Cause.CONNECT_ERROR, None),
        (Cause.CLIENT_ERROR, 400),
    ]
)

#: One step of a plan: acquire, end the oldest permit somehow, or let time pass.
operations = st.lists(
    st.one_of(
        st.just(("acquire",)),
        st.tuples(st.just("success"), st.one_of(st.none(), st.floats(0.01, 30.0))),
        st.tuples(st.just("failure"), _CAUSES),
        st.just(("ignore",)),
        st.tuples(st.just("sleep"), st.floats(0.0, 120.0)),
    ),
    max_size=200,
)


# -- the limit's invariants ----------------------------------------------------------


class CheckedLimit(AdaptiveLimit):
    """An AdaptiveLimit that checks, at the instant of every grant, that there was room."""

    grants: int = 0

    def _grant(self) -> FlowPermit:
        assert self.in_flight < self.limit, (self.in_flight, self.limit)
        self.grants += 1
        return super()._grant()


@given(bounds=limits(), plan=operations, latency=st.sampled_from([None, "default"]))
def test_limit_stays_within_bounds_and_grants_only_below_it(
    bounds: dict[str, int], plan: list[tuple[Any, ...]], latency: str | None
) -> None:
    """Whatever ends the attempts, the limit stays in [floor, ceiling] and a permit is granted
    only while in-flight is below the live limit."""

    async def main() -> None:
        extra: dict[str, Any] = {"latency": None} if latency is None else {}
        flow = AdaptiveLimit(**bounds, probe_interval=60.0, **extra)
        held: list[FlowPermit] = []
        for op in plan:
            if op[0] == "acquire":
                before = flow.in_flight
                limit = flow.limit
                try:
                    held.append(flow.acquire_nowait())
                except trio.WouldBlock:
                    assert before >= limit
                else:
                    assert before < limit
            elif op[0] == "sleep":
                await trio.sleep(op[1])
            elif held:
                permit = held.pop(0)
                if op[0] == "success":
                    flow.on_success(permit, ttft_s=op[1])
                elif op[0] == "failure":
                    cause, status = op[1]
                    flow.on_failure(permit, cause, status_code=status)
                else:
                    flow.on_ignore(permit)
            stats = flow.statistics()
            assert stats.floor <= stats.limit <= stats.ceiling
            assert stats.in_flight == len(held)

    run_virtual(main)


@given(bounds=limits(), seed=st.integers(0, 2**32 - 1), workers=st.integers(1, 40))
def test_concurrent_acquirers_never_exceed_the_live_limit(
    bounds: dict[str, int], seed: int, workers: int
) -> None:
    """Tasks that acquire, hold for a random time and end randomly never hold more permits than
    the limit allowed at the moment each was granted."""

    async def main() -> None:
        rng = random.Random(seed)
        flow = CheckedLimit(**bounds)

        async def worker() -> None:
            for _ in range(10):
                permit = await flow.acquire()
                await trio.sleep(rng.uniform(0.0, 2.0))
                roll = rng.random()
                if roll < 0.2:
                    flow.on_overload(permit, Cause.RATE_LIMITED)
                elif roll < 0.3:
                    flow.on_ignore(permit)
                else:
                    flow.on_success(permit, ttft_s=rng.uniform(0.1, 1.0))

        granted_over: list[int] = []

        async def watch() -> None:
            # Grants happen only below the limit: every acquire that completed saw room.
            while True:
                await trio.sleep(0.05)
                if flow.in_flight > flow.ceiling:
                    granted_over.append(flow.in_flight)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            async with trio.open_nursery() as inner:
                for _ in range(workers):
                    inner.start_soon(worker)
            nursery.cancel_scope.cancel()
        assert not granted_over
        assert flow.grants == 10 * workers
        assert flow.in_flight == 0
        assert flow.statistics().waiting == 0

    run_virtual(main)


# -- against simulated servers -------------------------------------------------------


@settings(max_examples=SIM_EXAMPLES)
@given(
    capacity=st.integers(2, 16),
    headroom=st.integers(2, 6),
    service=st.tuples(st.floats(0.5, 2.0), st.floats(1.0, 3.0)),
    status=st.sampled_from([429, 503]),
    seed=st.integers(0, 2**32 - 1),
)
def test_limit_settles_near_a_constant_capacity(
    capacity: int, headroom: int, service: tuple[float, float], status: int, seed: int
) -> None:
    """Against a server that refuses beyond K in flight, the limit settles within 25 % of K,
    and no permit is ever granted above the live limit."""
    lo, spread = service
    rng = random.Random(seed)
    ceiling = capacity * headroom
    server = CapacityServer(capacity=capacity, rng=rng, status=status, service=(lo, lo * spread))

    async def main() -> Any:
        flow = AdaptiveLimit(ceiling=ceiling)
        return await run_workload(server, flow, workers=ceiling + 8, duration=300.0, rng=rng)

    result = run_virtual(main)
    mean = result.mean_limit(since=150.0)
    assert 0.75 * capacity <= mean <= 1.25 * capacity, (mean, capacity)
    assert result.limit_violations == 0


@settings(max_examples=SIM_EXAMPLES)
@given(
    capacity=st.integers(2, 16),
    prefill=st.tuples(st.floats(0.05, 0.5), st.floats(1.0, 3.0)),
    seed=st.integers(0, 2**32 - 1),
)
def test_limit_does_not_run_to_the_ceiling_on_a_queueing_server(
    capacity: int, prefill: tuple[float, float], seed: int
) -> None:
    """Against a server that queues beyond K (TTFT grows with the queue, nothing is refused),
    the TTFT signal keeps the limit far from a ceiling of 8 K."""
    lo, spread = prefill
    rng = random.Random(seed)
    ceiling = 8 * capacity
    server = QueueServer(capacity=capacity, rng=rng, prefill=(lo, lo * spread))

    async def main() -> Any:
        flow = AdaptiveLimit(ceiling=ceiling)
        return await run_workload(server, flow, workers=ceiling + 8, duration=300.0, rng=rng)

    result = run_virtual(main)
    assert result.mean_limit(since=150.0) <= 0.5 * ceiling
    assert result.overloads == 0


# -- the pacer -----------------------------------------------------------------------


@settings(max_examples=300)
@given(
    quota=st.integers(1, 40),
    window=st.floats(1.0, 60.0),
    workers=st.integers(1, 30),
    seed=st.integers(0, 2**32 - 1),
)
def test_pacer_never_overruns_an_announced_request_quota(
    quota: int, window: float, workers: int, seed: int
) -> None:
    """Senders paced by a server's fixed-window quota headers never exceed the quota in a
    window, so the server never has to refuse."""

    async def main() -> None:
        rng = random.Random(seed)
        pacer = HeaderPacer(rng=rng)
        start = trio.current_time()
        used: dict[int, int] = {}

        def report(now: float) -> RateLimitInfo:
            index = int((now - start) // window)
            reset_at = start + (index + 1) * window
            remaining = quota - used.get(index, 0)
            return RateLimitInfo(
                requests=Quota(limit=quota, remaining=max(0, remaining), reset_at=reset_at)
            )

        refused = 0

        async def worker() -> None:
            nonlocal refused
            for _ in range(5):
                await pacer.wait()
                now = trio.current_time()
                index = int((now - start) // window)
                if used.get(index, 0) >= quota:
                    refused += 1
                else:
                    used[index] = used.get(index, 0) + 1
                await trio.sleep(rng.uniform(0.0, 0.5))  # the response's headers arrive
                pacer.observe(report(trio.current_time()))

        pacer.observe(report(start))
        async with trio.open_nursery() as nursery:
            for _ in range(workers):
                nursery.start_soon(worker)
        assert refused == 0
        assert all(count <= quota for count in used.values())

    run_virtual(main)


@settings(max_examples=300)
@given(
    per_minute=st.integers(20, 240),
    workers=st.integers(8, 24),
    seed=st.integers(0, 2**32 - 1),
)
def test_pacer_keeps_up_with_a_continuously_refilled_quota_without_overrunning_it(
    per_minute: int, workers: int, seed: int
) -> None:
    """Against OpenAI's token bucket (reset = until full), the pacer learns the refill:
    no request is refused, and once the bucket is empty requests go at its refill rate
    rather than one bucketful per reset."""

    async def main() -> None:
        rng = random.Random(seed)
        pacer = HeaderPacer(rng=rng)
        bucket = Bucket(per_minute)
        start = trio.current_time()
        requests = per_minute + 2 * per_minute // 3  # a bucketful, then 40 s of refill
        sent = refused = 0
        last_sent = start

        async def worker() -> None:
            nonlocal sent, refused, last_sent
            while sent < requests:
                ticket = await pacer.wait()
                if sent >= requests:
                    pacer.unanswered(ticket)
                    return
                now = trio.current_time()
                if bucket.wait_for(1, now) > 0.0:
                    refused += 1
                else:
                    bucket.level -= 1
                    sent += 1
                    last_sent = now
                headers = {k.decode(): v.decode() for k, v in bucket.headers(b"requests")}
                await trio.sleep(rng.uniform(0.0, 0.2))  # the response's headers arrive
                pacer.observe_headers(headers, ticket=ticket)

        # What the server announced before the run (with no report at all, a burst
        # larger than the quota is not the pacer's to stop).
        pacer.observe_headers({k.decode(): v.decode() for k, v in bucket.headers(b"requests")})
        async with trio.open_nursery() as nursery:
            for _ in range(workers):
                nursery.start_soon(worker)
        assert refused == 0
        # The refill is 2/3 of a minute's worth: 40 s at the bucket's rate. A pacer
        # that read "reset" as a fixed window would wait a full minute for it.
        assert last_sent - start < 52.0

    run_virtual(main)
