"""Testing code built on shardline against the fake server (pytest, trio_mode)."""

from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from shardline import (
    AttemptError,
    Backoff,
    ChatRequest,
    Deadlines,
    Endpoint,
    Outcome,
    Pipeline,
    PipelineConfig,
    RetryPolicy,
    open_pipeline,
)
from shardline.testing import (
    FakeServer,
    FakeTransport,
    Fault,
    FaultPlan,
    LoadModel,
    TimingModel,
    expected_cause,
    open_fake_server,
)


# --- the code under test: yours ------------------------------------------------
async def summarize(pipeline: Pipeline, doc_id: str, text: str) -> str:
    request = ChatRequest(
        id=doc_id,
        messages=[{"role": "user", "content": f"Summarize: {text}"}],
        params={"max_tokens": 8},
    )
    result = await pipeline.complete(request)
    return result.text


# --- the tests ----------------------------------------------------------------
def config_for(server: FakeServer, **overrides: object) -> PipelineConfig:
    """Short deadlines and delays: the fake server answers in milliseconds."""
    defaults: dict[str, object] = {
        "endpoint": Endpoint(base_url=server.base_url, model="test-model"),
        "shard_count": 2,
        "deadlines": Deadlines(ttft=0.5, stall=0.2, attempt=5.0),
        "retry": RetryPolicy(backoff=Backoff(initial=0.01, max=0.05, jitter=0.01)),
    }
    return PipelineConfig(**{**defaults, **overrides})  # type: ignore[arg-type]


async def test_summaries_survive_first_attempt_faults() -> None:
    """Scripted faults on first attempts are retried; the caller never sees them."""
    plan = FaultPlan(
        items={
            ("doc-1", 1): "reset",  # the connection drops mid-stream
            ("doc-2", 1): Fault(kind="rate_limit", retry_after=0.05),
            ("doc-3", 1): Fault(kind="stall_mid", after_events=2),
        }
    )
    async with open_fake_server(faults=plan) as server:
        async with open_pipeline(config_for(server)) as pipeline:
            for n in (1, 2, 3, 4):
                assert await summarize(pipeline, f"doc-{n}", "some text") != ""
    stats = server.statistics()
    assert dict(stats.faults) == {"reset": 1, "rate_limit": 1, "stall_mid": 1}
    assert stats.completed == 4


@pytest.mark.fake_server(faults="rate_limit=0.3:retry_after=0.05", seed=4)
async def test_summaries_under_rate_limits(fake_server: FakeServer) -> None:
    """With 30 % of requests rate limited, every summary still arrives."""
    async with open_pipeline(config_for(fake_server)) as pipeline:
        summaries = [await summarize(pipeline, f"doc-{n}", "text") for n in range(10)]
    assert all(summaries)
    assert fake_server.statistics().faults["rate_limit"] > 0


async def test_summaries_from_a_busy_server() -> None:
    """A server that queues beyond 2 in flight is slower; every summary arrives."""
    load = LoadModel(capacity=2, overload="queue")
    summaries: dict[str, str] = {}

    async def one(pipeline: Pipeline, doc_id: str) -> None:
        summaries[doc_id] = await summarize(pipeline, doc_id, "text")

    async with open_fake_server(load=load, timing=TimingModel(ttft=0.01)) as server:
        async with (
            open_pipeline(config_for(server)) as pipeline,
            trio.open_nursery() as nursery,
        ):
            for n in range(8):
                nursery.start_soon(one, pipeline, f"doc-{n}")
    assert len(summaries) == 8
    assert all(summaries.values())
    stats = server.statistics()
    # the server never answered more than its capacity
    assert stats.max_generating == 2
    assert stats.max_queued > 0  # and the others waited their turn


@pytest.mark.parametrize(
    "kind", ["stall_headers", "drip", "reset", "truncate", "malformed"]
)
async def test_each_fault_is_reported_with_its_cause(
    kind: str, fake_server_factory: Callable[..., Awaitable[FakeServer]]
) -> None:
    """Without retries, each fault surfaces as the error class of its cause."""
    server = await fake_server_factory(faults=FaultPlan(items={"doc": kind}))
    config = config_for(server, retry=RetryPolicy(max_attempts=1))
    async with open_pipeline(config) as pipeline:
        with pytest.raises(AttemptError) as info:
            await summarize(pipeline, "doc", "some text")
    assert info.value.cause == expected_cause(kind)
    assert info.value.item_id == "doc"


async def test_production_deadlines_on_virtual_time(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The default 30 s stall deadline, tested in milliseconds with FakeTransport."""

    def stall_first_attempts(item_id: str, attempt: int) -> str | None:
        return "stall_mid" if attempt == 1 else None

    config = PipelineConfig(
        endpoint=Endpoint(base_url="http://llm.invalid/v1", model="m")
    )
    started = trio.current_time()
    async with open_pipeline(
        config, transport=lambda shard: FakeTransport(plan=stall_first_attempts)
    ) as pipeline:
        result = await pipeline.complete(
            ChatRequest(id="doc", messages=[{"role": "user", "content": "Hi"}])
        )
    assert result.attempts == 2
    assert trio.current_time() - started >= 30  # virtual seconds: the stall deadline


# --- a property, with hypothesis: any faults, any attempts, no item lost -------
FAULTS = st.sampled_from(
    ["stall_mid", "drip", "reset", "truncate", "rate_limit", "http_503"]
)
ITEMS = [str(n) for n in range(12)]


@settings(max_examples=25, deadline=None)
@given(
    plan=st.dictionaries(st.tuples(st.sampled_from(ITEMS), st.integers(1, 3)), FAULTS)
)
def test_every_item_ends_exactly_once(plan: dict[tuple[str, int], str]) -> None:
    """Whatever fault strikes whichever attempt, each item gets one outcome."""

    async def run() -> list[Outcome]:
        config = PipelineConfig(
            endpoint=Endpoint(base_url="http://llm.invalid/v1", model="m"),
            shard_count=3,
            concurrency=2,
            retry=RetryPolicy(max_attempts=3),
        )
        requests = [
            ChatRequest(id=i, messages=[{"role": "user", "content": "Hi"}])
            for i in ITEMS
        ]
        outcomes: list[Outcome] = []

        def picker(item_id: str, attempt: int) -> str | None:
            return plan.get((item_id, attempt))

        async with open_pipeline(
            config, transport=lambda shard: FakeTransport(plan=picker)
        ) as pipeline:
            send, recv = trio.open_memory_channel[Outcome](len(requests))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pipeline.map, requests, send)
                outcomes = [outcome async for outcome in recv]
        return outcomes

    outcomes = trio.run(run, clock=trio.testing.MockClock(autojump_threshold=0))
    # none lost, none twice
    assert sorted(str(o.id) for o in outcomes) == sorted(ITEMS)
    for outcome in outcomes:
        assert outcome.ok or outcome.cause is not None
        assert outcome.attempts <= 3
