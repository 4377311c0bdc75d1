"""Simulated servers on trio's virtual clock, shared by the flow tests and ``sim_flow.py``.

Three load models, each a coroutine that "serves" one request and says how it ended:

* :class:`CapacityServer` -- takes ``capacity`` requests at once and refuses the
  rest at once with 429 (or 503): a provider or gateway with a concurrency cap.
* :class:`QueueServer` -- takes ``capacity`` at once and queues the rest first in,
  first out, so TTFT = prefill + time spent queued (about ``queue_depth *
  service / capacity``): vLLM-like, it never refuses.
* :class:`CutServer` -- serves one request at a time and cuts the one in flight
  when another arrives (``connection_lost``): llama.cpp's server with defaults.

:func:`run_workload` drives ``workers`` tasks (retrying, like shards) against one
server through one :class:`AdaptiveLimit` and returns a :class:`SimResult`.
The tests at the bottom check the models themselves.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable

import attrs
import pytest
import trio
import trio.testing

from shardline._exceptions import Cause
from shardline._flow import AdaptiveLimit, LimitStep

#: (cause or None for success, HTTP status or None, TTFT in seconds or None)
Served = tuple[Cause | None, int | None, float | None]


@attrs.define(eq=False)
class CapacityServer:
    """More than ``capacity`` requests in flight: the extra one gets ``status`` at once."""

    capacity: int
    rng: random.Random
    status: int = 429
    prefill: tuple[float, float] = (0.2, 0.2)
    service: tuple[float, float] = (1.0, 3.0)
    in_server: int = 0
    peak: int = 0

    async def serve(self) -> Served:
        self.in_server += 1
        self.peak = max(self.peak, self.in_server)
        try:
            if self.in_server > self.capacity:
                await trio.sleep(0.01)
                cause = Cause.RATE_LIMITED if self.status == 429 else Cause.SERVER_ERROR
                return cause, self.status, None
            prefill = self.rng.uniform(*self.prefill)
            await trio.sleep(prefill)
            await trio.sleep(self.rng.uniform(*self.service))
            return None, 200, prefill
        finally:
            self.in_server -= 1


@attrs.define(eq=False)
class QueueServer:
    """``capacity`` decode slots; the rest wait first in, first out; nothing is refused."""

    capacity: int
    rng: random.Random
    prefill: tuple[float, float] = (0.2, 0.2)
    service: tuple[float, float] = (1.0, 3.0)
    in_server: int = 0
    peak: int = 0
    _slots: trio.CapacityLimiter = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._slots = trio.CapacityLimiter(self.capacity)

    async def serve(self) -> Served:
        self.in_server += 1
        self.peak = max(self.peak, self.in_server)
        arrived = trio.current_time()
        try:
            async with self._slots:
                await trio.sleep(self.rng.uniform(*self.prefill))
                ttft = trio.current_time() - arrived
                await trio.sleep(self.rng.uniform(*self.service))
            return None, 200, ttft
        finally:
            self.in_server -= 1


@attrs.define(eq=False)
class CutServer:
    """One at a time; a new arrival cuts the stream in flight (``connection_lost``)."""

    rng: random.Random
    prefill: float = 0.2
    service: tuple[float, float] = (1.0, 3.0)
    _current: trio.CancelScope | None = None
    in_server: int = 0
    peak: int = 0

    async def serve(self) -> Served:
        if self._current is not None:
            self._current.cancel()
        self.in_server += 1
        self.peak = max(self.peak, self.in_server)
        try:
            with trio.CancelScope() as scope:
                self._current = scope
                await trio.sleep(self.prefill)
                await trio.sleep(self.rng.uniform(*self.service))
                return None, 200, self.prefill
            # Cut by a newer request: the client sees the stream end mid-response.
            return Cause.CONNECTION_LOST, 200, self.prefill
        finally:
            self.in_server -= 1
            if self._current is scope:
                self._current = None


@attrs.define(eq=False)
class NoisyServer:
    """Background loss: a share ``loss`` of requests fails at random whatever the load
    (resets, 503s, stalls of a flaky gateway), on top of ``inner`` (its capacity)."""

    inner: CapacityServer
    loss: float
    rng: random.Random

    @property
    def in_server(self) -> int:
        return self.inner.in_server

    @property
    def peak(self) -> int:
        return self.inner.peak

    async def serve(self) -> Served:
        if self.rng.random() < self.loss:
            await trio.sleep(self.rng.uniform(0.05, 0.5))
            return self.rng.choice([Cause.CONNECTION_LOST, Cause.SERVER_ERROR]), 503, None
        return await self.inner.serve()


Server = CapacityServer | QueueServer | CutServer | NoisyServer


@attrs.define(eq=False)
class SimResult:
    """What one simulated run measured."""

    duration: float
    successes: int = 0
    overloads: int = 0
    attempts: int = 0
    ttft_total: float = 0.0
    max_in_flight_at_acquire: int = 0
    limit_violations: int = 0
    trace: list[tuple[float, int]] = attrs.field(factory=list)

    def mean_limit(self, since: float) -> float:
        """The limit's time-weighted mean from ``since`` to the end of the run."""
        total = 0.0
        points = [*self.trace, (self.duration, self.trace[-1][1])]
        for (t0, value), (t1, _) in itertools.pairwise(points):
            lo, hi = max(t0, since), min(t1, self.duration)
            if hi > lo:
                total += value * (hi - lo)
        return total / (self.duration - since)

    @property
    def mean_ttft(self) -> float:
        return self.ttft_total / self.successes if self.successes else math.nan

    def overshoot(self, capacity: int, since: float) -> float:
        """Largest limit above ``capacity`` after ``since``, as a fraction of it."""
        peak = max((v for t, v in self.trace if t >= since), default=self.trace[-1][1])
        return max(0.0, (peak - capacity) / capacity)


async def run_workload(
    server: Server,
    flow: AdaptiveLimit,
    *,
    workers: int,
    duration: float,
    rng: random.Random,
    retry_delay: Callable[[random.Random], float] = lambda r: r.uniform(0.0, 0.5),
) -> SimResult:
    """``workers`` tasks send through ``flow`` to ``server`` for ``duration`` virtual seconds.

    A worker that got an overload waits ``retry_delay`` outside its permit and sends
    again, as a shard's retry does. Every acquire checks that in-flight (this permit
    included) is within the live limit.
    """
    start = trio.current_time()
    result = SimResult(duration=duration)
    result.trace.append((0.0, flow.limit))

    def changed(change: LimitStep) -> None:
        result.trace.append((change.t - start, change.new))

    flow.on_change = changed

    async def worker() -> None:
        while True:
            permit = await flow.acquire()
            held = flow.in_flight
            result.max_in_flight_at_acquire = max(result.max_in_flight_at_acquire, held)
            if held > flow.limit:
                result.limit_violations += 1
            result.attempts += 1
            cause, status, ttft = await server.serve()
            if cause is None:
                result.successes += 1
                result.ttft_total += ttft or 0.0
                flow.on_success(permit, ttft_s=ttft)
            else:
                result.overloads += 1
                flow.on_failure(permit, cause, status_code=status)
                await trio.sleep(retry_delay(rng))

    with trio.move_on_after(duration):
        async with trio.open_nursery() as nursery:
            for _ in range(workers):
                nursery.start_soon(worker)
    return result


async def test_capacity_server_refuses_beyond_capacity(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The capacity model answers 429 to the request that makes it exceed its capacity."""
    server = CapacityServer(capacity=2, rng=random.Random(1))
    outcomes: list[Served] = []

    async def one() -> None:
        outcomes.append(await server.serve())

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(one)
    assert sorted(o[1] or 0 for o in outcomes) == [200, 200, 429]
    assert server.in_server == 0


async def test_queue_server_queues_and_ttft_grows(autojump_clock: trio.testing.MockClock) -> None:
    """The queueing model never refuses; a request beyond capacity waits, so its TTFT grows."""
    server = QueueServer(capacity=1, rng=random.Random(1), service=(1.0, 1.0))
    ttfts: list[float] = []

    async def one() -> None:
        cause, _, ttft = await server.serve()
        assert cause is None
        assert ttft is not None
        ttfts.append(ttft)

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(one)
    assert sorted(ttfts) == [
        pytest.approx(0.2),
        pytest.approx(1.4),
        pytest.approx(2.6),
    ]


async def test_cut_server_cuts_the_stream_in_flight(autojump_clock: trio.testing.MockClock) -> None:
    """The one-at-a-time model cuts the earlier request (connection_lost) when another arrives."""
    server = CutServer(rng=random.Random(1))
    outcomes: list[Served] = []

    async def one(delay: float) -> None:
        await trio.sleep(delay)
        outcomes.append(await server.serve())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, 0.0)
        nursery.start_soon(one, 0.1)
    assert [o[0] for o in outcomes] == [Cause.CONNECTION_LOST, None]
