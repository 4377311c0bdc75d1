"""Nothing a server sends may crash a run or pass as an answer; misuse is a clear error.

One test per defect found by trying shardline as a new user would (issue 12).
Each failed before its fix.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from helpers import Body, mock_transports, sse
from shardline._backoff import Backoff, RetryPolicy
from shardline._config import Deadlines, Endpoint, PipelineConfig
from shardline._events import AttemptEnd, ItemEnd, RunEnd
from shardline._exceptions import (
    ConfigError,
    InputError,
    InternalError,
    ProtocolError,
)
from shardline._models import ChatRequest, CompletionRequest, Outcome, Status
from shardline._pipeline import open_pipeline
from shardline._sinks import MemoryEventSink

ENDPOINT = Endpoint(base_url="http://fake.invalid/v1", model="m")
FAST = RetryPolicy(max_attempts=3, backoff=Backoff(initial=0.1, max=0.5, jitter=0.1))


def config(**overrides: Any) -> PipelineConfig:
    values: dict[str, Any] = {
        "endpoint": ENDPOINT,
        "shard_count": 2,
        "concurrency": 4,
        "retry": FAST,
        "deadlines": Deadlines(connect=1.0, ttft=2.0, stall=1.0, attempt=10.0),
        "seed": 1,
    }
    values.update(overrides)
    return PipelineConfig(**values)


def chat(i: int | str | None = None) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": f"hello {i}"}], id=i)


def good_stream(text: str = "hi") -> list[bytes]:
    return [
        sse({"choices": [{"index": 0, "delta": {"content": text}}]}),
        sse({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
        sse({"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 1}}),
        b"data: [DONE]\n\n",
    ]


def streamed(parts: list[bytes], content_type: str = "text/event-stream") -> httpx.Response:
    return httpx.Response(200, headers={"content-type": content_type}, stream=Body(parts))


def attempt_of(request: httpx.Request) -> int:
    return int(request.headers["x-shardline-attempt"])


async def run_items(
    cfg: PipelineConfig, requests: list[ChatRequest], answer: Any, sink: MemoryEventSink
) -> list[Outcome]:
    send, recv = trio.open_memory_channel[Outcome](len(requests))
    async with open_pipeline(cfg, sink=sink, transport=mock_transports(answer)) as pipeline:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pipeline.map, requests, send)
            return [o async for o in recv]


# -- server data -----------------------------------------------------------


async def test_choices_not_a_list_is_a_retried_protocol_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """`{"choices": 1}` on a first attempt is protocol_error, retried; the run goes on."""

    def answer(request: httpx.Request) -> httpx.Response:
        if attempt_of(request) == 1:
            return streamed([sse({"choices": 1}), *good_stream()])
        return streamed(good_stream("fine"))

    sink = MemoryEventSink()
    outcomes = await run_items(config(), [chat(i) for i in range(20)], answer, sink)
    assert len(outcomes) == 20
    assert all(o.ok and o.result is not None and o.result.text == "fine" for o in outcomes)
    causes = {e.cause for e in sink.events if isinstance(e, AttemptEnd) and e.cause}
    assert causes == {"protocol_error"}
    messages = [e.message for e in sink.events if isinstance(e, AttemptEnd) and e.message]
    assert all(
        "stream event 1: choices must be an array or null, got integer 1" in m for m in messages
    )


async def test_content_of_the_wrong_type_never_becomes_text(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A number as `content` (with a finish reason) is a protocol error, not an ok ''."""
    bad = sse({"choices": [{"index": 0, "delta": {"content": 5}, "finish_reason": "stop"}]})
    sink = MemoryEventSink()
    cfg = config(retry=RetryPolicy(max_attempts=1))
    outcomes = await run_items(cfg, [chat(1)], lambda r: streamed([bad, b"data: [DONE]\n\n"]), sink)
    (outcome,) = outcomes
    assert outcome.status is Status.FAILED
    assert isinstance(outcome.error, ProtocolError)
    assert "choices[0].delta.content must be a string or null, got integer 5" in str(outcome.error)


@pytest.mark.parametrize("stream", [True, False])
async def test_a_200_with_an_html_page_is_a_protocol_error_naming_the_type(
    autojump_clock: trio.testing.MockClock, stream: bool
) -> None:
    """A gateway's HTML page with a 200 is protocol_error naming the content type, not truncated."""
    page = [b"<html><body>Bad gateway</body></html>"]
    sink = MemoryEventSink()
    endpoint = Endpoint(base_url="http://fake.invalid/v1", model="m", stream=stream)
    cfg = config(endpoint=endpoint, retry=RetryPolicy(max_attempts=1))
    outcomes = await run_items(
        cfg, [chat(1)], lambda r: streamed(page, "text/html; charset=utf-8"), sink
    )
    error = outcomes[0].error
    assert isinstance(error, ProtocolError)
    assert "got content-type 'text/html; charset=utf-8'" in str(error)


# -- one item's defect -------------------------------------------------------


async def test_a_defect_costs_only_its_item_and_stays_loud(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug raising inside one item's attempt fails that item (internal_error); others finish."""

    def answer(request: httpx.Request) -> httpx.Response:
        if request.headers["x-shardline-item-id"] == "7":
            raise RuntimeError("a bug in the stack below the attempt")
        return streamed(good_stream())

    sink = MemoryEventSink()
    caplog.set_level(logging.ERROR, logger="shardline")
    send, recv = trio.open_memory_channel[Outcome](30)
    async with open_pipeline(config(), sink=sink, transport=mock_transports(answer)) as pipeline:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pipeline.map, [chat(i) for i in range(30)], send)
            outcomes = {o.id: o async for o in recv}
        stats = pipeline.statistics()
    assert len(outcomes) == 30
    bad = outcomes[7]
    assert bad.status is Status.FAILED
    assert isinstance(bad.error, InternalError)
    assert isinstance(bad.error.__cause__, RuntimeError)
    assert bad.attempts == 1  # a defect is never retried
    assert all(o.ok for i, o in outcomes.items() if i != 7)
    assert stats.internal_errors == 1
    # Loud: logged with its traceback, and the traceback is in the events.
    assert any("internal error" in r.getMessage() and r.exc_info for r in caplog.records)
    (ended,) = [e for e in sink.events if isinstance(e, ItemEnd) and e.item_id == 7]
    assert ended.cause == "internal_error"
    assert ended.message is not None
    assert "RuntimeError: a bug in the stack" in ended.message
    assert "Traceback" in ended.message


async def test_complete_raises_the_defect_of_its_item(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """complete() raises InternalError for its own item; the pipeline keeps serving."""
    calls = 0

    def answer(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ZeroDivisionError("bug")
        return streamed(good_stream("after"))

    async with open_pipeline(config(shard_count=1), transport=mock_transports(answer)) as pipeline:
        with pytest.raises(InternalError) as info:
            await pipeline.complete(chat(1))
        assert info.value.item_id == 1
        result = await pipeline.complete(chat(2))
    assert result.text == "after"


# -- bad requests ------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"messages": "hello"}, "messages must be a list of message objects, got str: 'hello'"),
        ({"messages": [1, 2]}, "messages[0] must be an object with a string 'role', got int: 1"),
        ({"messages": []}, "messages must not be empty"),
        ({"messages": [{"content": "x"}]}, "messages[0] must have a string 'role'"),
        (
            {"messages": [{"role": "user"}], "params": {"x": object}},
            "params.x must be JSON, got type",
        ),
        (
            {"messages": [{"role": "user"}], "params": {"t": float("nan")}},
            "params.t must be JSON: nan is not a finite number",
        ),
        (
            {"messages": [{"role": "user"}], "params": {"stream": False}},
            "params must not set stream",
        ),
        ({"messages": [{"role": "user"}], "id": 1.5}, "id must be a string or an integer"),
    ],
)
def test_requests_are_checked_when_built(kwargs: dict[str, Any], message: str) -> None:
    """A request the API cannot take is an InputError naming the field, at construction."""
    with pytest.raises(InputError) as info:
        ChatRequest(**kwargs)
    assert message in str(info.value)


def test_completion_prompt_must_be_a_string() -> None:
    """A legacy completion's prompt is checked too."""
    with pytest.raises(InputError, match="prompt must be a string, got list"):
        CompletionRequest(prompt=["a"])  # type: ignore[arg-type]


def test_a_request_is_frozen_deeply_and_hashable() -> None:
    """params and messages cannot change after creation, and equal requests hash equal."""
    params = {"max_tokens": 5, "response_format": {"type": "json_object"}}
    a = ChatRequest(messages=[{"role": "user", "content": "x"}], params=params)
    params["max_tokens"] = 99  # the caller's dict is not the request's
    assert a.params["max_tokens"] == 5
    with pytest.raises(TypeError):
        a.params["max_tokens"] = 6  # type: ignore[index]
    with pytest.raises(TypeError):
        a.params["response_format"]["type"] = "text"
    b = ChatRequest(
        messages=[{"role": "user", "content": "x"}],
        params={"response_format": {"type": "json_object"}, "max_tokens": 5},
    )
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1
    # What is sent is plain JSON, a fresh dict each time.
    body = a.body(model="m", stream=False)
    assert json.loads(json.dumps(body)) == body
    body["max_tokens"] = 1
    assert a.body(model="m", stream=False)["max_tokens"] == 5


@pytest.mark.parametrize("bad", ["hello", {"messages": []}, 42])
async def test_complete_and_submit_reject_what_is_not_a_request(
    autojump_clock: trio.testing.MockClock, bad: Any
) -> None:
    """complete() and submit() given something that is not a request raise TypeError at once."""
    async with open_pipeline(
        config(), transport=mock_transports(lambda r: streamed(good_stream()))
    ) as p:
        with pytest.raises(
            TypeError, match=r"^complete\(\) takes a ChatRequest, CompletionRequest,"
        ):
            await p.complete(bad)
        send, _recv = trio.open_memory_channel[Outcome](1)
        with pytest.raises(TypeError, match=r"^submit\(\) takes a ChatRequest, CompletionRequest,"):
            await p.submit(bad, send)
        # The pipeline is unharmed.
        assert (await p.complete(chat(1))).text == "hi"


async def test_submitting_twice_with_one_channel_is_an_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The pipeline owns (and closes) the channel it is given: giving it twice is a ValueError."""
    async with open_pipeline(
        config(), transport=mock_transports(lambda r: streamed(good_stream()))
    ) as p:
        send, recv = trio.open_memory_channel[Outcome](2)
        await p.submit(chat(1), send)
        with pytest.raises(ValueError, match="pass a fresh clone each time"):
            await p.submit(chat(2), send)
        assert (await recv.receive()).ok


# -- ids ---------------------------------------------------------------------


async def test_generated_ids_never_collide_with_user_ids(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An item without id next to an item with id 1: two items in stats and in the report."""
    from shardline.report import compute_report

    sink = MemoryEventSink()
    async with open_pipeline(
        config(), sink=sink, transport=mock_transports(lambda r: streamed(good_stream()))
    ) as p:
        first = await p.complete(chat(1))
        second = await p.complete(chat(None))
        assert first.id == 1
        assert isinstance(second.id, str)
        assert second.id.startswith(p.run_id + "#")
        with pytest.raises(ValueError, match="has the form of the ids this pipeline generates"):
            await p.complete(chat(f"{p.run_id}#5"))
        assert p.statistics().done == 2
    assert compute_report(sink.events, events_sha256="0" * 64).items == 2


# -- configuration and the run ----------------------------------------------


async def test_openai_without_a_key_is_refused_before_anything_is_sent() -> None:
    """The library refuses OpenAI's URL without an API key up front, like the CLI."""
    cfg = PipelineConfig(endpoint=Endpoint(base_url="https://api.openai.com/v1"))
    with pytest.raises(ConfigError, match="needs an API key and none is set"):
        async with open_pipeline(cfg):
            pass  # pragma: no cover


async def test_an_error_in_the_block_ends_the_run_as_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An exception raised by the caller inside the block is run_end reason `error`."""
    sink = MemoryEventSink()
    with pytest.raises(KeyError):
        async with open_pipeline(config(), sink=sink, transport=mock_transports(lambda r: 1)):
            raise KeyError("caller's bug")
    assert [e.reason for e in sink.events if isinstance(e, RunEnd)] == ["error"]


async def test_cancellation_ends_the_run_as_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Cancelling the block is run_end reason `cancelled`."""
    sink = MemoryEventSink()
    with trio.move_on_after(1):
        async with open_pipeline(config(), sink=sink, transport=mock_transports(lambda r: 1)):
            await trio.sleep_forever()
    assert [e.reason for e in sink.events if isinstance(e, RunEnd)] == ["cancelled"]


async def test_a_failing_client_leaks_nothing_and_ends_the_run() -> None:
    """If building shard k's client fails, the clients built before it are closed, and
    run_start gets its run_end."""
    built: list[httpx.AsyncBaseTransport] = []
    closed: list[int] = []

    class Tracked(httpx.MockTransport):
        async def aclose(self) -> None:
            closed.append(1)

    def factory(shard: int) -> httpx.AsyncBaseTransport:
        if shard == 2:
            raise OSError("no more file descriptors")
        t = Tracked(lambda r: httpx.Response(200))
        built.append(t)
        return t

    sink = MemoryEventSink()
    with pytest.raises(OSError, match="no more file descriptors"):
        async with open_pipeline(config(shard_count=4), sink=sink, transport=factory):
            pass  # pragma: no cover
    assert len(built) == 2
    assert len(closed) == 2
    assert [type(e).__name__ for e in sink.events] == ["RunStart", "RunEnd"]
    assert sink.events[-1].reason == "error"  # type: ignore[union-attr]


async def test_latency_is_read_once(autojump_clock: trio.testing.MockClock) -> None:
    """The result's latency and the outcome's are one reading of the clock."""
    sink = MemoryEventSink()
    outcomes = await run_items(
        config(), [chat(i) for i in range(5)], lambda r: streamed(good_stream()), sink
    )
    for o in outcomes:
        assert o.result is not None
        assert o.result.latency_s == o.latency_s
