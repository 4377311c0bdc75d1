"""Hedged requests on virtual time: one outcome per item, losers cancelled, the budget held."""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Callable

import httpx
import pytest
import trio
import trio.testing

from shardline._backoff import Backoff, RetryPolicy
from shardline._budget import RetryBudget
from shardline._cli import build_parser
from shardline._cli_options import build_config
from shardline._config import (
    TRANSPORTS,
    Deadlines,
    Endpoint,
    FlowControl,
    Hedging,
    PipelineConfig,
    Transport,
)
from shardline._events import (
    AttemptEnd,
    AttemptStart,
    EndpointState,
    HedgeSent,
    HedgeWon,
    ItemEnd,
)
from shardline._exceptions import ConfigError
from shardline._flow import AdaptiveLimit, FlowPermit
from shardline._hedge import HedgeBudget, Hedger, TtftWindow
from shardline._models import ChatRequest, Outcome, Status
from shardline._pipeline import open_pipeline
from shardline._sinks import MemoryEventSink
from shardline._state import RunState, Upstream
from shardline.report import RunReport, compute_report, render_text
from shardline.testing import LoadModel, TimingModel, open_fake_server
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
    report = compute_report(sink.events, events_sha256=None)
    assert (report.hedges, report.hedge_wins, report.retries) == (2, 2, 0)
    assert report.attempts == 22
    assert report.hedge_rate == pytest.approx(2 / 20)
    assert report.ttft_s.p99 is not None
    assert report.ttft_s.p99 > 1.0
    assert RunReport.from_json(report.to_json()) == report
    assert "2 sent (10.00 % extra requests), 2 won by the hedge" in render_text(report)


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


class StubShard:
    """What `Hedger.reserve` needs of a shard, over a real RunState and AdaptiveLimit."""

    def __init__(self, index: int, state: RunState) -> None:
        self.index = index
        self.state = state
        self.upstream = state.upstreams[0]
        self.client = httpx.AsyncClient()
        self.in_flight = 0
        self.load = 0
        self.cooling = False

    async def take_slot(self, token: object, tokens: int) -> tuple[FlowPermit | None, None]:
        flow = self.upstream.flow
        return (None if flow is None else await flow.acquire()), None

    def abandon(self, permit: FlowPermit | None, ticket: int | None) -> None:
        if permit is not None and self.upstream.flow is not None:
            self.upstream.flow.on_ignore(permit)

    def release_slot(self, token: object) -> None:
        pass


async def test_no_hedge_while_the_endpoint_is_overloaded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """No hedge goes while the live limit is cut below its ceiling (until it grows
    back past the refused level), while a shard cools down after a 429, or while
    retries wait for the retry budget."""
    flow = AdaptiveLimit(ceiling=4, initial=4)
    state = RunState(
        upstreams=[Upstream(index=0, endpoint=ENDPOINT, flow=flow)],
        deadlines=DEADLINES,
        retry=RETRY,
        emit=lambda _e: None,
        budget=RetryBudget(ratio=0.0, min_retries=0),
    )
    a, b = StubShard(0, state), StubShard(1, state)
    hedger = Hedger(Hedging(after=1.0, budget=1.0), [a, b])
    for _ in range(5):
        hedger.budget.record_request()

    async def reserve() -> int | None:
        reserved = await hedger.reserve(a, 10)
        if reserved is None:
            return None
        target, _token, permit, ticket = reserved
        target.abandon(permit, ticket)
        return target.index

    assert await reserve() == 1
    # A 503 cuts the limit below its ceiling: overloaded.
    flow.on_overload(await flow.acquire(), "server_error")
    assert flow.limit < flow.ceiling
    assert await reserve() is None
    # Successes grow it back to its ceiling: hedges go again.
    for _ in range(100):
        permits = [await flow.acquire() for _ in range(flow.limit)]
        for permit in permits:
            flow.on_success(permit, ttft_s=0.05)
    assert flow.limit == flow.ceiling
    assert await reserve() == 1
    # The only other shard cools down after a 429 (and then the origin does).
    b.cooling = True
    assert await reserve() is None
    b.cooling, a.cooling = False, True
    assert await reserve() is None
    a.cooling = False
    # A retry waits for the retry budget: the endpoint is failing.
    async with trio.open_nursery() as nursery:
        nursery.start_soon(state.budget.acquire_retry)
        await trio.testing.wait_all_tasks_blocked()
        assert state.budget.waiting == 1
        assert await reserve() is None
        nursery.cancel_scope.cancel()
    assert await reserve() == 1
    assert hedger.budget.hedges == 3


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


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_the_fake_servers_slow_first_attempts_are_hedged(
    autojump_clock: trio.testing.MockClock, transport: Transport
) -> None:
    """Against the fake server with slow first attempts (hedges are not slow there),
    `Hedging()` cuts the worst latency from the 6 s delay to about the p95 TTFT, on
    either transport (the lean one must close a losing leg's socket too)."""
    load = LoadModel(slow_first_share=0.04, slow_first_delay=6.0)
    timing = TimingModel(ttft=0.1, itl=0.001)
    async with open_fake_server(load=load, timing=timing, seed=3) as server:
        cfg = config(
            Hedging(),
            endpoint=Endpoint(base_url=server.base_url, model="m", transport=transport),
            flow=FlowControl(),
        )
        sink = MemoryEventSink()
        send, recv = trio.open_memory_channel[Outcome](8)
        got: list[Outcome] = []
        async with open_pipeline(cfg, sink=sink) as pipeline:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pipeline.map, [req(i) for i in range(400)], send)
                async for outcome in recv:
                    got.append(outcome)
        stats = server.statistics()
    check_one_outcome_each(got, sink, 400)
    assert all(o.status is Status.OK for o in got)
    sent = kinds(sink, HedgeSent)
    hedge_wins = [e for e in kinds(sink, HedgeWon) if e.leg == "hedge"]
    # The slow first attempts after the first `min_samples` TTFTs were all hedged.
    assert stats.slow_first_tokens >= 10
    assert len(hedge_wins) >= stats.slow_first_tokens - 3
    # The slow first legs that lost had their connection closed before their first
    # token: the server stopped working on them.
    assert stats.abandoned >= len(hedge_wins)
    assert len(sent) <= 0.05 * 400
    slow = sorted(o.latency_s for o in got)[-8:]
    assert sum(1 for t in slow if t > 6.0) <= 3


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([], None),
        (["--hedge-after", "auto"], Hedging()),
        (["--hedge-after", "1.5"], Hedging(after=1.5)),
        (["--hedge-budget", "0.02"], Hedging(budget=0.02)),
        (["--hedge-after", "2", "--hedge-budget", "0.1"], Hedging(after=2.0, budget=0.1)),
    ],
)
def test_cli_hedge_options(flags: list[str], expected: Hedging | None) -> None:
    """`shardline run --hedge-after auto|S --hedge-budget F`: either turns hedging on."""
    args = build_parser().parse_args(["run", "in.jsonl", "--base-url", "http://x/v1", *flags])
    assert build_config(args, {}).hedging == expected


def test_cli_hedge_after_must_be_auto_or_seconds(capsys: pytest.CaptureFixture[str]) -> None:
    """Anything but 'auto' or a number for --hedge-after is a usage error."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "in.jsonl", "--hedge-after", "soon"])
    assert "--hedge-after: expected 'auto' or a number of seconds, got 'soon'" in (
        capsys.readouterr().err
    )


class _SlowHereFailingThere:
    """Shard 0 (endpoint A): first legs answer after 2 s. Shard 1 (endpoint B): every
    request gets a 503."""

    def __init__(self) -> None:
        self.slow = SlowFirst(slow=lambda _item: True, delay=2.0)
        self.failing = FakeTransport(plan=lambda _item, _attempt: "http_503")

    def __call__(self, shard: int) -> httpx.AsyncBaseTransport:
        return self.slow(shard) if shard == 0 else self.failing


async def test_a_hedge_leg_tells_its_own_endpoint_how_it_went(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Hedges that fail on endpoint B open B's circuit (then no hedge goes there), and
    the races A's first legs win count for A, not for B."""
    a = Endpoint(base_url="http://a.invalid/v1", model="m")
    b = Endpoint(base_url="http://b.invalid/v1", model="m")
    on_a = [str(i) for i in range(200) if zlib.crc32(str(i).encode()) % 2 == 0][:12]
    cfg = config(
        Hedging(after=1.0, budget=1.0),
        endpoint=Endpoint(),
        endpoints=(a, b),
        routing="hash",  # every item on shard 0 (endpoint A)
    )
    transports = _SlowHereFailingThere()
    sink = MemoryEventSink()
    send, recv = trio.open_memory_channel[Outcome](8)
    async with open_pipeline(cfg, sink=sink, transport=transports) as pipeline:
        async with trio.open_nursery() as nursery:
            requests = [ChatRequest(messages=[{"role": "user", "content": i}], id=i) for i in on_a]
            nursery.start_soon(pipeline.map, requests, send)
            got = [outcome async for outcome in recv]
    assert sorted(o.id for o in got) == sorted(on_a)
    assert all(o.status is Status.OK and o.attempts == 1 for o in got)
    changes = [(e.endpoint, e.new) for e in kinds(sink, EndpointState)]
    assert (1, "open") in changes
    assert all(endpoint == 1 for endpoint, _ in changes)
    opened = next(e.t for e in kinds(sink, EndpointState) if e.new == "open")
    sent = kinds(sink, HedgeSent)
    assert len(sent) >= 5  # the breaker's threshold
    assert all(e.t <= opened for e in sent)
    assert transports.failing.requests == len(sent)
