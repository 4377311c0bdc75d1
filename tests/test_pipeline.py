"""The sharded pipeline on virtual time, against the in-memory fake transport."""

from __future__ import annotations

import zlib
from collections import Counter

import pytest
import trio
import trio.testing

from helpers import Transports
from shardline._backoff import Backoff, RetryPolicy
from shardline._config import Deadlines, Endpoint, FlowControl, PipelineConfig
from shardline._events import AttemptStart, ItemAdmitted, ItemEnd, ShardState
from shardline._exceptions import ConfigError, ItemCancelled, RateLimited, StallTimeout
from shardline._models import ChatRequest, Outcome, Status
from shardline._pipeline import open_pipeline
from shardline._sinks import MemoryEventSink
from shardline.testing import TimingModel, open_fake_server
from shardline.testing._transport import FakeTransport, FaultPicker

ENDPOINT = Endpoint(base_url="http://fake.invalid/v1", model="m", api_key="sk-test-SECRET")
FAST = RetryPolicy(
    max_attempts=3,
    backoff=Backoff(initial=0.1, max=1.0, multiplier=2.0, jitter=0.1),
    retry_after_jitter=0.1,
)
DEADLINES = Deadlines(connect=1.0, ttft=2.0, stall=1.0, attempt=10.0)


def req(i: int | str, **params: object) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": f"hello {i}"}], id=i, params=params)


def config(**overrides: object) -> PipelineConfig:
    values: dict[str, object] = {
        "endpoint": ENDPOINT,
        "shard_count": 2,
        "concurrency": 4,
        "queue_size": 4,
        "retry": FAST,
        "deadlines": DEADLINES,
        "drain_grace": 5.0,
        "seed": 1,
    }
    values.update(overrides)
    return PipelineConfig(**values)  # type: ignore[arg-type]


async def run_all(
    pipeline_config: PipelineConfig,
    n: int,
    transports: Transports,
    sink: MemoryEventSink | None = None,
) -> list[Outcome]:
    send, recv = trio.open_memory_channel[Outcome](8)
    got: list[Outcome] = []
    async with open_pipeline(pipeline_config, sink=sink, transport=transports) as pipeline:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pipeline.map, [req(i) for i in range(n)], send)
            async for outcome in recv:
                got.append(outcome)
    return got


async def test_complete_returns_result(autojump_clock: trio.testing.MockClock) -> None:
    """complete() sends one request and returns its text, usage and timing."""
    transports = Transports(completion_tokens=5)
    async with open_pipeline(config(), transport=transports) as pipeline:
        result = await pipeline.complete(req("a"))
    assert result.id == "a"
    assert result.text == "tok0 tok1 tok2 tok3 tok4 "
    assert result.usage.completion_tokens == 5
    assert result.usage.prompt_tokens == 2
    assert not result.usage.estimated
    assert result.attempts == 1
    assert result.ttft_s == pytest.approx(0.05)
    assert result.finish_reason == "length"


async def test_map_gives_every_item_exactly_one_outcome(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """map() yields one outcome per input, all ok, and closes the channel at the end."""
    transports = Transports()
    outcomes = await run_all(config(), 50, transports)
    assert sorted(o.id for o in outcomes) == list(range(50))  # type: ignore[type-var]
    assert all(o.status is Status.OK for o in outcomes)
    assert sum(t.requests for t in transports.by_shard.values()) == 50


async def test_rate_limit_retries_and_cools_only_its_shard(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A 429 with Retry-After is retried after the wait and cools only its own shard."""
    sink = MemoryEventSink()
    transports = Transports(
        plan=lambda item, attempt: "rate_limit" if item == "0" and attempt == 1 else None,
        retry_after=3.0,
    )
    outcomes = await run_all(config(), 10, transports, sink)
    by_id = {o.id: o for o in outcomes}
    assert by_id[0].ok
    assert by_id[0].attempts == 2
    assert by_id[0].latency_s >= 3.0
    states = [e for e in sink.events if isinstance(e, ShardState)]
    assert [s.state for s in states] == ["cooling", "resumed"]
    assert states[0].shard == by_id[0].shard


async def test_complete_raises_typed_error_with_context(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An item that fails every attempt raises the last attempt's typed error."""
    transports = Transports(plan=lambda item, attempt: "stall_mid", completion_tokens=6)
    async with open_pipeline(config(), transport=transports) as pipeline:
        with pytest.raises(StallTimeout) as info:
            await pipeline.complete(req("x"))
    err = info.value
    assert err.item_id == "x"
    assert err.attempt == 3
    assert err.shard in (0, 1)
    assert "sk-test-SECRET" not in str(err)


async def test_client_error_is_not_retried(autojump_clock: trio.testing.MockClock) -> None:
    """A 400 fails at once: client_error is not retried by default."""
    transports = Transports(plan=lambda item, attempt: "http_400")
    async with open_pipeline(config(), transport=transports) as pipeline:
        with pytest.raises(Exception) as info:
            await pipeline.complete(req("x"))
    assert getattr(info.value, "attempt", None) == 1


async def test_stalled_shard_does_not_stop_the_others(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Every request of shard 0 stalls; shard 1's items still all succeed."""
    transports_box: dict[int, FakeTransport] = {}

    def transport(shard: int) -> FakeTransport:
        plan: FaultPicker = (lambda i, a: "stall_headers") if shard == 0 else (lambda i, a: None)
        transports_box[shard] = FakeTransport(plan=plan)
        return transports_box[shard]

    cfg = config(deadlines=Deadlines(connect=1, ttft=30.0, stall=30.0, attempt=60.0))
    send, recv = trio.open_memory_channel[Outcome](100)
    done_at: dict[int, float] = {}
    async with open_pipeline(cfg, transport=transport) as pipeline:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pipeline.map, [req(i) for i in range(40)], send)
            async for o in recv:
                done_at.setdefault(o.shard or 0, trio.current_time())
                if o.shard == 1:
                    assert o.ok
    assert transports_box[1].completed > 0
    assert transports_box[0].completed == 0


async def test_leaving_the_block_drains(autojump_clock: trio.testing.MockClock) -> None:
    """Leaving early: queued items end cancelled, in-flight ones finish within the grace."""
    transports = Transports(ttft=1.0)
    cfg = config(shard_count=1, concurrency=2, queue_size=10, drain_grace=5.0)
    send, recv = trio.open_memory_channel[Outcome](100)
    async with open_pipeline(cfg, transport=transports) as pipeline:
        for i in range(10):
            await pipeline.submit(req(i), send.clone())
        await trio.testing.wait_all_tasks_blocked()
        assert pipeline.statistics().in_flight == 2
    send.close()
    outcomes = [o async for o in recv]
    statuses = Counter(o.status for o in outcomes)
    assert len(outcomes) == 10
    assert statuses[Status.OK] == 2
    assert statuses[Status.CANCELLED] == 8
    assert all(isinstance(o.error, ItemCancelled) for o in outcomes if not o.ok)


async def test_drain_grace_cancels_stuck_work(autojump_clock: trio.testing.MockClock) -> None:
    """In-flight work that does not finish within the grace is cancelled, with an outcome."""
    transports = Transports(plan=lambda i, a: "stall_headers")
    cfg = config(
        shard_count=1,
        drain_grace=2.0,
        deadlines=Deadlines(connect=1, ttft=100, stall=100, attempt=100),
    )
    send, recv = trio.open_memory_channel[Outcome](10)
    start = trio.current_time()
    async with open_pipeline(cfg, transport=transports) as pipeline:
        await pipeline.submit(req(1), send.clone())
        await trio.testing.wait_all_tasks_blocked()
    assert trio.current_time() - start == pytest.approx(2.0)
    send.close()
    [outcome] = [o async for o in recv]
    assert outcome.status is Status.CANCELLED
    assert outcome.attempts == 1


async def test_caller_cancellation_cancels_the_item(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Cancelling complete()'s caller cancels the request; the pool stays usable."""
    sink = MemoryEventSink()
    transports = Transports(plan=lambda i, a: "stall_headers" if i == "slow" else None)
    cfg = config(shard_count=1, deadlines=Deadlines(connect=1, ttft=100, stall=100, attempt=100))
    async with open_pipeline(cfg, sink=sink, transport=transports) as pipeline:
        with trio.move_on_after(3):
            await pipeline.complete(req("slow"))
        result = await pipeline.complete(req("fast"))
        assert result.ok if hasattr(result, "ok") else result.text
        assert pipeline.statistics().in_flight == 0
    ended = {e.item_id: e for e in sink.events if isinstance(e, ItemEnd)}
    assert ended["slow"].status == "cancelled"
    assert ended["fast"].status == "ok"
    assert transports.by_shard[0].in_flight == 0


async def test_statistics_and_repr(autojump_clock: trio.testing.MockClock) -> None:
    """statistics() reports queued and in-flight work per shard; repr hides secrets."""
    transports = Transports(ttft=1.0)
    cfg = config(shard_count=1, concurrency=3, queue_size=5)
    send, recv = trio.open_memory_channel[Outcome](100)
    async with open_pipeline(cfg, transport=transports) as pipeline:
        for i in range(8):
            await pipeline.submit(req(i), send.clone())
        await trio.testing.wait_all_tasks_blocked()
        stats = pipeline.statistics()
        assert stats.in_flight == 3
        assert stats.queued == 5
        assert stats.shards[0].capacity == 3
        assert "3/3 in flight, 5 queued" in repr(pipeline._shards[0])  # the internal shard's repr
        assert "SECRET" not in repr(pipeline) + repr(cfg)
        async with recv:
            send.close()
            for _ in range(8):
                await recv.receive()
        assert pipeline.statistics().ok == 8


async def test_rpm_limit_holds_over_every_window(autojump_clock: trio.testing.MockClock) -> None:
    """With rpm=10, no 60 s window holds more than 10 attempt starts."""
    sink = MemoryEventSink()
    transports = Transports()
    await run_all(config(rpm=10), 35, transports, sink)
    starts = sorted(e.t for e in sink.events if isinstance(e, AttemptStart))
    assert len(starts) == 35
    for i, t in enumerate(starts):
        assert sum(1 for u in starts[i:] if u < t + 60.0) <= 10


async def test_hash_routing_is_stable(autojump_clock: trio.testing.MockClock) -> None:
    """The same id always lands on the same shard: CRC-32 of the id, modulo the shards."""
    sink = MemoryEventSink()
    await run_all(config(shard_count=4, routing="hash"), 20, Transports(), sink)
    first = {e.item_id: e.shard for e in sink.events if isinstance(e, ItemAdmitted)}
    assert first == {i: zlib.crc32(str(i).encode()) % 4 for i in range(20)}
    assert len(set(first.values())) > 1


async def test_least_loaded_routing_spreads_work(autojump_clock: trio.testing.MockClock) -> None:
    """least_loaded routing puts work on the emptiest shard."""
    sink = MemoryEventSink()
    await run_all(config(shard_count=3, routing="least_loaded"), 30, Transports(), sink)
    per_shard = Counter(e.shard for e in sink.events if isinstance(e, ItemAdmitted))
    assert set(per_shard) == {0, 1, 2}


async def test_least_loaded_runs_as_many_items_as_slots_in_one_wave(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """N items for N slots all start at once: an item between the queue and its
    task counts as load (it did not: at 8 x 64, two of 512 waited a whole request)."""
    shard_count, concurrency = 8, 32
    n = shard_count * concurrency
    sink = MemoryEventSink()
    async with open_fake_server(timing=TimingModel(ttft=2.0, itl=1.0)) as server:
        cfg = config(
            endpoint=Endpoint(base_url=server.base_url, api_key="sk-test", model="m"),
            shard_count=shard_count,
            concurrency=concurrency,
            flow=FlowControl(adaptive=False),
            routing="least_loaded",
            deadlines=Deadlines(),
        )
        send, recv = trio.open_memory_channel[Outcome](8)
        outcomes: list[Outcome] = []
        async with open_pipeline(cfg, sink=sink) as pipeline, trio.open_nursery() as nursery:
            nursery.start_soon(pipeline.map, [req(i) for i in range(n)], send)
            outcomes.extend([outcome async for outcome in recv])
    assert len(outcomes) == n
    assert all(o.ok for o in outcomes)
    starts = [e.t for e in sink.events if isinstance(e, AttemptStart)]
    assert len(starts) == n
    assert max(starts) < 1.0, sorted(starts)[-3:]
    per_shard = Counter(e.shard for e in sink.events if isinstance(e, ItemAdmitted))
    assert set(per_shard.values()) == {concurrency}


def test_config_validation_messages() -> None:
    """Bad config values raise ConfigError naming the parameter and the bound."""
    with pytest.raises(ConfigError, match=r"^concurrency must be >= 1, got 0$"):
        PipelineConfig(concurrency=0)
    with pytest.raises(ConfigError, match=r"^shard_count must be >= 1, got 0$"):
        PipelineConfig(shard_count=0)
    with pytest.raises(ConfigError, match=r"^routing must be 'hash' or 'least_loaded'"):
        PipelineConfig(routing="random")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^rpm must be > 0 requests per minute, got 0$"):
        PipelineConfig(rpm=0)
    with pytest.raises(ConfigError, match=r"^tpm must be a number of tokens per minute or None"):
        PipelineConfig(tpm="lots")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^shard_count must be an integer, got 2.5$"):
        PipelineConfig(shard_count=2.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^drain_grace must be finite, got nan$"):
        PipelineConfig(drain_grace=float("nan"))
    with pytest.raises(ConfigError, match=r"^stall must be finite, got inf$"):
        Deadlines(stall=float("inf"))


def test_config_from_env() -> None:
    """from_env reads SHARD_COUNT, LLM_CONCURRENCY and the OpenAI variables."""
    cfg = PipelineConfig.from_env(
        {
            "SHARD_COUNT": "8",
            "LLM_CONCURRENCY": "32",
            "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
            "OPENAI_API_KEY": "sk-test-SECRET",
            "LLM_RETRY_BACKOFF_S": "0.25",
        }
    )
    assert cfg.shard_count == 8
    assert cfg.concurrency == 32
    assert cfg.endpoint.base_url == "http://127.0.0.1:9/v1"
    assert cfg.retry.backoff.initial == 0.25
    assert "SECRET" not in repr(cfg)
    assert "SECRET" not in str(cfg.safe_dict())
    with pytest.raises(ConfigError, match="SHARD_COUNT must be an integer"):
        PipelineConfig.from_env({"SHARD_COUNT": "many"})


def test_rate_limited_error_type() -> None:
    """RateLimited carries the cause vocabulary."""
    assert RateLimited("x").cause.value == "rate_limited"


async def test_paced_429_retries_do_not_spend_the_budget(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Retries after a 429 with Retry-After bypass the budget; blind retries wait for it."""
    no_budget = RetryPolicy(
        max_attempts=3,
        backoff=Backoff(initial=0.1, max=1.0, multiplier=2.0, jitter=0.1),
        budget_ratio=0.0,
        budget_min_retries=0,
        budget_max_wait=30.0,
    )
    rate_limited = Transports(plan=lambda item, attempt: "rate_limit" if attempt == 1 else None)
    start = trio.current_time()
    outcomes = await run_all(config(retry=no_budget), 12, rate_limited)
    assert all(o.ok and o.attempts == 2 for o in outcomes)
    assert trio.current_time() - start < 30.0

    failing = Transports(plan=lambda item, attempt: "http_503" if attempt == 1 else None)
    start = trio.current_time()
    outcomes = await run_all(config(retry=no_budget), 12, failing)
    # A spent budget paces the blind retries (here: each waits budget_max_wait);
    # it never turns them into failures.
    assert all(o.ok and o.attempts == 2 for o in outcomes)
    assert trio.current_time() - start >= 30.0


async def test_non_ascii_ids_are_sent_percent_encoded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An id the HTTP header cannot carry as-is is percent-encoded, and scripted faults find it."""
    transports = Transports(
        plan=lambda item, attempt: "http_503" if (item, attempt) == ("café ☕", 1) else None
    )
    async with open_pipeline(config(shard_count=1), transport=transports) as pipeline:
        result = await pipeline.complete(req("café ☕"))
    assert result.attempts == 2
    assert transports.by_shard[0].faults["http_503"] == 1


async def test_cancel_stops_in_flight_work_now(autojump_clock: trio.testing.MockClock) -> None:
    """pipeline.cancel() ends in-flight and queued items as cancelled, without the grace."""
    transports = Transports(plan=lambda i, a: "stall_headers")
    cfg = config(shard_count=1, concurrency=2, queue_size=4, drain_grace=100.0,
                 deadlines=Deadlines(connect=1, ttft=100, stall=100, attempt=100))  # fmt: skip
    send, recv = trio.open_memory_channel[Outcome](10)
    start = trio.current_time()
    async with open_pipeline(cfg, transport=transports) as pipeline:
        for i in range(5):
            await pipeline.submit(req(i), send.clone())
        await trio.testing.wait_all_tasks_blocked()
        pipeline.cancel()
    assert trio.current_time() - start < 1.0
    send.close()
    outcomes = [o async for o in recv]
    assert len(outcomes) == 5
    assert all(o.status is Status.CANCELLED for o in outcomes)
