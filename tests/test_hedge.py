"""Hedged requests on virtual time: one outcome per item, losers cancelled, the budget held."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import httpx
import pytest
import trio
import trio.testing

from shardline._backoff import Backoff, RetryPolicy
from shardline._config import Deadlines, Endpoint, FlowControl, Hedging, PipelineConfig
from shardline._events import (
    AttemptEnd,
    AttemptStart,
    HedgeSent,
    HedgeWon,
    ItemEnd,
    LimitChange,
)
from shardline._exceptions import ConfigError
from shardline._hedge import HedgeBudget, TtftWindow
from shardline._models import ChatRequest, Outcome, Status
from shardline._pipeline import open_pipeline
from shardline._sinks import MemoryEventSink
from shardline.testing._transport import FakeTransport

ENDPOINT = Endpoint(base_url="http://fake.invalid/v1", model="m")
RETRY = RetryPolicy(max_attempts=3, backoff=Backoff(initial=0.1, max=1.0, jitter=0.1))
DEADLINES = Deadlines(connect=1.0, ttft=30.0, stall=5.0, attempt=60.0)


def config(hedging: Hedging | None, **overrides: object) -> PipelineConfig:
    values: dict[str, object] = {
        "endpoint": ENDPOINT,
        "shard_count": 2,
        "concurrency": 8,
        "queue_size": 8,
        "retry": RETRY,
        "deadlines": DEADLINES,
        "flow": FlowControl(adaptive=False),
        "hedging": hedging,
        "seed": 1,
    }
    values.update(overrides)
    return PipelineConfig(**values)  # type: ignore[arg-type]


class SlowFirst:
    """Per-shard transports where the first leg of a chosen item is slow to its first
    token: it waits ``delay`` and then answers (``delay=None``: it never sends content,
    its stream stays open until the client closes it). Hedges (``x-shardline-hedge``)
    and retries are fast."""

    def __init__(self, slow: Callable[[str], bool], delay: float | None) -> None:
        self.slow = slow
        self.delay = delay
        self.fast = FakeTransport()
        self.stalled = FakeTransport(plan=lambda _i, _a: "stall_after_headers")
        self.hedges = 0
        self.first_legs_slow = 0

    def __call__(self, _shard: int) -> httpx.AsyncBaseTransport:
        return _Route(self)


class _Route(httpx.AsyncBaseTransport):
    def __init__(self, owner: SlowFirst) -> None:
        self.owner = owner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        o = self.owner
        item = request.headers["x-shardline-item-id"]
        hedge = request.headers.get("x-shardline-hedge") == "1"
        o.hedges += hedge
        if not hedge and request.headers["x-shardline-attempt"] == "1" and o.slow(item):
            o.first_legs_slow += 1
            if o.delay is None:
                return await o.stalled.handle_async_request(request)
            await trio.sleep(o.delay)
        return await o.fast.handle_async_request(request)


def req(i: int) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": f"hello {i}"}], id=str(i))


async def run_all(
    cfg: PipelineConfig, n: int, transports: SlowFirst
) -> tuple[list[Outcome], MemoryEventSink]:
    sink = MemoryEventSink()
    send, recv = trio.open_memory_channel[Outcome](8)
    got: list[Outcome] = []
    async with open_pipeline(cfg, sink=sink, transport=transports) as pipeline:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pipeline.map, [req(i) for i in range(n)], send)
            async for outcome in recv:
                got.append(outcome)
    return got, sink


def kinds(sink: MemoryEventSink, cls: type) -> list:  # type: ignore[type-arg]
    return [e for e in sink.events if isinstance(e, cls)]


def check_one_outcome_each(got: list[Outcome], sink: MemoryEventSink, n: int) -> None:
    assert sorted(int(o.id) for o in got) == list(range(n))
    ends = Counter(e.item_id for e in kinds(sink, ItemEnd))
    assert set(ends.values()) == {1}
    assert len(ends) == n


async def test_a_hedge_wins_over_a_stalled_first_leg(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A first leg with no content after `after` gets a hedge on the other shard; the
    hedge wins, the stalled leg is cancelled and its stream closed; one outcome each."""
    transports = SlowFirst(slow=lambda item: item in {"13", "17"}, delay=None)
    got, sink = await run_all(config(Hedging(after=1.0, budget=1.0)), 20, transports)
    check_one_outcome_each(got, sink, 20)
    assert all(o.status is Status.OK for o in got)
    assert transports.first_legs_slow == 2
    assert transports.stalled.requests == 2
    assert transports.stalled.in_flight == 0
    assert transports.fast.in_flight == 0
    sent = kinds(sink, HedgeSent)
    assert sorted(e.item_id for e in sent) == ["13", "17"]
    assert all(e.hedge_shard != e.shard and e.after_s == 1.0 for e in sent)
    won = kinds(sink, HedgeWon)
    assert sorted((e.item_id, e.leg) for e in won) == [("13", "hedge"), ("17", "hedge")]
    lost = [e for e in kinds(sink, AttemptEnd) if e.message == "lost the hedge race"]
    assert sorted(e.item_id for e in lost) == ["13", "17"]
    # The item's TTFT counts from its first send: 1 s waiting, then the hedge's 0.05 s.
    by_id = {o.id: o for o in got}
    for item in ("13", "17"):
        result = by_id[item].result
        assert result is not None
        assert result.attempts == 1
        assert result.ttft_s == pytest.approx(1.05)
        assert by_id[item].latency_s >= 1.05
    # Hedges are not retries.
    assert sum(o.attempts - 1 for o in got) == 0


async def test_the_first_leg_wins_when_its_content_comes_first(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A slow first leg that answers before the hedge's first token wins; the hedge
    is cancelled."""
    transports = SlowFirst(slow=lambda item: item == "5", delay=0.97)
    got, sink = await run_all(config(Hedging(after=1.0, budget=1.0)), 10, transports)
    check_one_outcome_each(got, sink, 10)
    assert [(e.item_id, e.leg) for e in kinds(sink, HedgeWon)] == [("5", "first")]
    lost = [e for e in kinds(sink, AttemptEnd) if e.message == "lost the hedge race"]
    assert [(e.item_id, e.shard) for e in lost] == [("5", kinds(sink, HedgeSent)[0].hedge_shard)]
    assert transports.fast.in_flight == 0


async def test_no_hedge_before_the_minimum_samples(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """`after="p95"` sends no hedge until the endpoint has `min_samples` TTFTs."""
    transports = SlowFirst(slow=lambda item: int(item) < 6, delay=5.0)
    got, sink = await run_all(
        config(Hedging(after="p95", budget=1.0, min_samples=30), concurrency=2, queue_size=2),
        24,
        transports,
    )
    check_one_outcome_each(got, sink, 24)
    assert kinds(sink, HedgeSent) == []
    assert transports.first_legs_slow == 6


async def test_hedges_after_the_learned_p95(autojump_clock: trio.testing.MockClock) -> None:
    """Once the window holds `min_samples` TTFTs, a slow first leg is hedged after
    their p95 (the fake transport's 0.05 s)."""
    transports = SlowFirst(slow=lambda item: int(item) >= 40 and int(item) % 10 == 0, delay=5.0)
    got, sink = await run_all(
        config(Hedging(after="p95", budget=0.2, min_samples=20), concurrency=2, queue_size=2),
        80,
        transports,
    )
    check_one_outcome_each(got, sink, 80)
    sent = kinds(sink, HedgeSent)
    assert sorted(e.item_id for e in sent) == ["40", "50", "60", "70"]
    assert all(e.after_s == pytest.approx(0.05) for e in sent)
    assert all(o.latency_s < 1.0 for o in got)


async def test_the_hedge_rate_never_exceeds_the_budget(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With far more slow first legs than the budget allows, hedges stay at most
    `budget` x requests at every moment of the run."""
    transports = SlowFirst(slow=lambda item: int(item) % 3 == 0, delay=3.0)
    got, sink = await run_all(config(Hedging(after=0.5, budget=0.05)), 300, transports)
    check_one_outcome_each(got, sink, 300)
    hedges = starts = 0
    for event in sink.events:
        if isinstance(event, AttemptStart):
            starts += 1
        elif isinstance(event, HedgeSent):
            hedges += 1
            # The hedge's own attempt_start comes after this event.
            assert hedges <= 0.05 * (starts - (hedges - 1)) + 1e-9
    assert hedges >= 10  # the budget was used, not idle
    assert transports.hedges == hedges


async def test_no_hedge_while_the_endpoint_is_overloaded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """After the server refused requests and the live limit was cut below its
    ceiling, slow first legs are not hedged."""
    transports = SlowFirst(slow=lambda item: int(item) >= 8, delay=2.0)

    def plan(item: str, attempt: int) -> str | None:
        return "http_503" if int(item) < 4 and attempt == 1 else None

    transports.fast = FakeTransport(plan=plan)
    cfg = config(Hedging(after=0.5, budget=1.0), flow=FlowControl(initial=4))
    got, sink = await run_all(cfg, 16, transports)
    check_one_outcome_each(got, sink, 16)
    assert transports.first_legs_slow == 8
    # The 503s cut the limit from 4 to 1; hedging waits until it has grown back
    # past the level the server refused.
    changes = kinds(sink, LimitChange)
    assert [c.new for c in changes[:3]] == [3, 2, 1]
    recovered = next(c.t for c in changes if c.new > 4)
    sent = kinds(sink, HedgeSent)
    assert all(e.t >= recovered for e in sent)
    unhedged = {o.id for o in got} - {e.item_id for e in sent}
    assert {"8", "9", "10", "11"} <= unhedged
    assert all(o.latency_s >= 2.0 for o in got if o.id in {"8", "9", "10", "11"})


async def test_cancel_with_hedges_in_flight_gives_one_outcome_each(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Pipeline.cancel() while both legs of hedged attempts are in flight: every item
    gets exactly one outcome, and every stream is closed."""
    transports = SlowFirst(slow=lambda item: int(item) % 2 == 0, delay=None)
    sink = MemoryEventSink()
    send, recv = trio.open_memory_channel[Outcome](16)
    got: list[Outcome] = []
    cfg = config(Hedging(after=0.5, budget=1.0))
    async with open_pipeline(cfg, sink=sink, transport=transports) as pipeline:
        # Every leg stalls, so both legs are in flight when the pipeline is cancelled.
        transports.fast.plan = lambda _i, _a: "stall_after_headers"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pipeline.map, [req(i) for i in range(6)], send)
            await trio.sleep(2.0)
            assert len(kinds(sink, HedgeSent)) == 6
            pipeline.cancel()
            async for outcome in recv:
                got.append(outcome)
    check_one_outcome_each(got, sink, 6)
    assert {o.status for o in got} == {Status.CANCELLED}
    assert transports.fast.in_flight == 0
    assert transports.stalled.in_flight == 0


def test_hedging_config_is_validated() -> None:
    """Hedging's fields are checked, with messages that name them."""
    with pytest.raises(
        ConfigError, match=r"^after must be 'p95' or a number of seconds, got 'p99'$"
    ):
        Hedging(after="p99")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^after must be > 0 seconds, got 0$"):
        Hedging(after=0)
    with pytest.raises(ConfigError, match=r"^budget must be <= 1, got 1.5$"):
        Hedging(budget=1.5)
    with pytest.raises(ConfigError, match=r"^budget must be > 0, got 0$"):
        Hedging(budget=0)
    with pytest.raises(ConfigError, match=r"^min_samples must be >= 1, got 0$"):
        Hedging(min_samples=0)
    assert PipelineConfig().hedging is None


def test_ttft_window_quantiles() -> None:
    """The window keeps the last `size` TTFTs; quantiles are nearest-rank."""
    window = TtftWindow(size=100)
    for i in range(1, 201):
        window.observe(i / 100)
    assert window.count == 100
    assert window.quantile(0.95) == 1.95
    assert window.quantile(0.0) == 1.01
    assert window.quantile(1.0) == 2.0


def test_hedge_budget_is_a_capped_token_bucket() -> None:
    """Hedges stay at most ratio x requests, and idle requests bank at most `burst`."""
    budget = HedgeBudget(ratio=0.05, burst=2.0)
    spent = 0
    for _ in range(1000):
        budget.record_request()
        if budget.available:
            budget.spend()
            spent += 1
        assert budget.hedges <= 0.05 * budget.requests + 1e-9
    assert spent == 50
    for _ in range(1000):
        budget.record_request()
    banked = 0
    while budget.available:
        budget.spend()
        banked += 1
    assert banked == 2
