"""Type-checked only: the public API's types, as a user's code sees them.

mypy --strict checks this file (``files`` in pyproject.toml); pytest never runs
it. Each ``assert_type`` pins what a checker infers for a call a user writes, so
an annotation that silently degrades to ``Any`` (or changes type) fails CI.
Only public names are used: ``shardline``, its public sub-namespaces
(``errors``, ``events``, ``report``) and ``shardline.testing``.
See docs/explanation/typing.md for why this replaces trio-typing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, assert_type

import trio

from shardline import (
    AttemptError,
    Backoff,
    Cause,
    ChatRequest,
    CompletionRequest,
    ConfigError,
    Deadlines,
    EmbeddingRequest,
    Endpoint,
    EventSink,
    InputError,
    ItemCancelled,
    JsonlEventSink,
    MemoryEventSink,
    Outcome,
    Pipeline,
    PipelineConfig,
    PipelineStatistics,
    Request,
    ResponsesRequest,
    Result,
    RetryPolicy,
    ShardlineError,
    ShardStatistics,
    Status,
    TeeSink,
    ToolCall,
    Usage,
    open_pipeline,
)
from shardline.errors import DeadlineExceeded, RateLimited, StallTimeout
from shardline.events import (
    AttemptEnd,
    AttemptOutcome,
    Event,
    EventFileReader,
    ItemEnd,
    ItemId,
    RunEnd,
    RunEndReason,
    RunStart,
    ShardCondition,
    ShardState,
)
from shardline.report import (
    LiveMetrics,
    LiveSnapshot,
    Percentiles,
    RunReport,
    compute_report,
    render_text,
)
from shardline.testing import (
    FakeServer,
    FakeServerStatistics,
    FakeTransport,
    Fault,
    FaultKind,
    FaultPlan,
    TimingModel,
    expected_cause,
    fetch_statistics,
    open_fake_server,
)


def check_config() -> None:
    deadlines = Deadlines(connect=5.0, ttft=30.0, stall=10.0, attempt=None)
    assert_type(deadlines.stall, float | None)
    endpoint = Endpoint(base_url="http://127.0.0.1:8000/v1", model="m")
    assert_type(endpoint.model, str | None)
    assert_type(endpoint.headers, Mapping[str, str])
    assert_type(Endpoint.from_env({}), Endpoint)
    policy = RetryPolicy(
        max_attempts=3, backoff=Backoff(initial=0.1), retry_on={Cause.SERVER_ERROR}
    )
    assert_type(policy.max_total_delay(), float)
    assert_type(policy.retry_on, frozenset[Cause])
    assert_type(policy.budget_window, float | None)
    config = PipelineConfig(endpoint=endpoint, shard_count=4, deadlines=deadlines, retry=policy)
    assert_type(config.shard_count, int)
    assert_type(config.rpm, float | None)
    assert_type(PipelineConfig.from_env({}, shard_count=2), PipelineConfig)


def check_requests() -> None:
    chat = ChatRequest(messages=[{"role": "user", "content": "hi"}], params={"max_tokens": 8})
    assert_type(chat.messages, Sequence[Mapping[str, Any]])
    assert_type(chat.id, ItemId | None)
    assert_type(chat.max_tokens(), int | None)
    legacy = CompletionRequest(prompt="Once upon a time", id="story-1")
    assert_type(legacy.prompt, str)
    request: Request = legacy
    assert_type(request, ChatRequest | CompletionRequest | EmbeddingRequest | ResponsesRequest)
    vectors = EmbeddingRequest(input=["a", "b"], id="e-1")
    assert_type(vectors.inputs, int)
    answer = ResponsesRequest(input="Say hi", params={"max_output_tokens": 8})
    assert_type(answer.max_tokens(), int | None)


def check_results(result: Result) -> None:
    assert_type(result.tool_calls, tuple[ToolCall, ...])
    assert_type(result.reasoning, str | None)
    assert_type(result.embeddings, tuple[tuple[float, ...], ...] | None)
    for call in result.tool_calls:
        assert_type(call.arguments_json(), dict[str, Any])
        assert_type(call.arguments_valid, bool)


def check_outcomes(outcome: Outcome) -> None:
    assert_type(outcome.ok, bool)
    assert_type(outcome.status, Status)
    assert_type(outcome.cause, Cause | None)
    assert_type(outcome.error, ShardlineError | None)
    if outcome.result is not None:
        result = outcome.result
        assert_type(result, Result)
        assert_type(result.text, str)
        assert_type(result.usage, Usage)
        assert_type(result.usage.total_tokens, int)
        assert_type(result.ttft_s, float | None)


def check_errors(exc: BaseException) -> None:
    if isinstance(exc, AttemptError):
        assert_type(exc.cause, Cause)
        assert_type(exc.status_code, int | None)
        assert_type(exc.retry_after, float | None)
        assert_type(exc.shard, int | None)
    # Deadline errors are also the builtin TimeoutError; config and input errors ValueError.
    timeout: TimeoutError = StallTimeout("no content for 30 s")
    value_error: ValueError = ConfigError("concurrency must be >= 1, got 0")
    bad_line: ValueError = InputError("missing field 'messages'", source="in.jsonl", line=3)
    deadline: AttemptError = DeadlineExceeded("x")
    assert_type(RateLimited.cause, Cause)
    assert_type(ItemCancelled().item_id, object)
    del timeout, value_error, bad_line, deadline


def check_events_and_report(event: Event, path: str) -> None:
    assert_type(event.t, float)
    assert_type(event.kind, str)
    if isinstance(event, AttemptEnd):
        assert_type(event.outcome, AttemptOutcome)
        assert_type(event.cause, Cause | None)
        assert_type(event.duration_s, float)
    elif isinstance(event, ItemEnd):
        assert_type(event.item_id, ItemId)
        assert_type(event.status, Status)
    elif isinstance(event, ShardState):
        assert_type(event.state, ShardCondition)
    elif isinstance(event, RunEnd):
        assert_type(event.reason, RunEndReason)
    elif isinstance(event, RunStart):
        assert_type(event.config, dict[str, Any])
    with EventFileReader(path) as reader:
        report = compute_report(reader, events_sha256=reader.hexdigest())
    assert_type(report, RunReport)
    assert_type(report.ttft_s, Percentiles)
    assert_type(report.ttft_s.p99, float | None)
    assert_type(report.success_rate, float | None)
    assert_type(render_text(report), str)


def check_sinks(path: str) -> None:
    memory = MemoryEventSink()
    live = LiveMetrics()
    sink: EventSink = TeeSink(JsonlEventSink(path), memory, live)
    assert_type(live.snapshot(), LiveSnapshot)
    assert_type(memory.events, list[Event])
    sink.close()


def check_enum_fields_take_strings() -> None:
    """Enum fields accept their string values (a converter), and read back as the enum."""
    ended = AttemptEnd(t=1.0, item_id="a", shard=0, attempt=1, outcome="failed", cause="truncated")
    assert_type(ended.outcome, AttemptOutcome)
    item = ItemEnd(t=1.0, item_id="a", shard=None, status=Status.OK, attempts=1, latency_s=0.1)
    assert_type(item.cause, Cause | None)
    assert_type(RunEnd(t=2.0, reason="completed").reason, RunEndReason)


async def check_pipeline(config: PipelineConfig, requests: list[Request]) -> None:
    """The pipeline and trio's own inline types, together, as an application uses them."""
    async with open_pipeline(config, sink=MemoryEventSink(), run_id="r1") as pipeline:
        assert_type(pipeline, Pipeline)
        result = await pipeline.complete(requests[0])
        assert_type(result, Result)
        send, recv = trio.open_memory_channel[Outcome](64)
        assert_type(send, trio.MemorySendChannel[Outcome])
        assert_type(recv, trio.MemoryReceiveChannel[Outcome])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pipeline.map, requests, send)
            async for outcome in recv:
                assert_type(outcome, Outcome)
        assert_type(await pipeline.submit(requests[0], send.clone()), ItemId)
        stats = pipeline.statistics()
        assert_type(stats, PipelineStatistics)
        assert_type(stats.shards, tuple[ShardStatistics, ...])
        assert_type(pipeline.reject("line-3", InputError("bad")), Outcome)


async def check_async_input(pipeline: Pipeline, send: trio.MemorySendChannel[Outcome]) -> None:
    async def generate() -> AsyncIterator[Request]:
        for n in range(3):
            yield ChatRequest(id=n, messages=[{"role": "user", "content": str(n)}])

    await pipeline.map(generate(), send)  # an async iterable of requests is accepted too


async def check_testing() -> None:
    plan = FaultPlan(items={("a", 1): "reset", "b": Fault(kind=FaultKind.HTTP_503)})
    assert_type(FaultPlan.parse("rate_limit=0.1"), FaultPlan)
    assert_type(expected_cause("drip"), Cause)
    timing = TimingModel(ttft=0.1, itl=0.01)
    async with open_fake_server(faults=plan, timing=timing, seed=1) as server:
        assert_type(server, FakeServer)
        assert_type(server.base_url, str)
        stats = server.statistics()
        assert_type(stats, FakeServerStatistics)
        assert_type(stats.faults, Mapping[str, int])
        config = PipelineConfig(endpoint=Endpoint(base_url=server.base_url))
        async with open_pipeline(config) as pipeline:
            assert_type(pipeline.statistics().ok, int)


async def check_virtual_time(config: PipelineConfig) -> None:
    """FakeTransport: a pipeline with no sockets, for tests on trio's MockClock."""

    def plan(item_id: str, attempt: int) -> str | None:
        return "stall_mid" if attempt == 1 else None

    transports: dict[int, FakeTransport] = {}

    def transport(shard: int) -> FakeTransport:
        transports[shard] = FakeTransport(plan=plan)
        return transports[shard]

    async with open_pipeline(config, transport=transport) as pipeline:
        assert_type(pipeline.statistics().retries, int)
    assert_type(transports[0].requests, int)
    assert_type(fetch_statistics("http://127.0.0.1:8000/v1"), FakeServerStatistics)
