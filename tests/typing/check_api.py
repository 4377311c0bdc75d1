"""Type-checked only: the public API's types, as a user's code sees them.

mypy --strict checks this file (``files`` in pyproject.toml); pytest never runs
it. Each ``assert_type`` pins what a checker infers for a call a user writes, so
an annotation that silently degrades to ``Any`` (or a wrong type) fails CI.
See docs/explanation/typing.md for why this replaces trio-typing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, assert_type

import trio

from shardline._config import Deadlines, Endpoint
from shardline._events import AttemptEnded, Event, ItemEnded, RunStarted
from shardline._exceptions import (
    AttemptError,
    Cause,
    ConfigError,
    DeadlineExceeded,
    InputError,
    ItemCancelled,
    RateLimited,
    ShardlineError,
    StallTimeout,
)
from shardline._models import (
    ChatRequest,
    CompletionRequest,
    ItemId,
    Outcome,
    Request,
    Result,
    Status,
    Usage,
    request_from_json,
)


def check_config() -> None:
    deadlines = Deadlines(connect=5.0, ttft=30.0, stall=10.0, attempt=None)
    assert_type(deadlines.stall, float | None)
    endpoint = Endpoint(base_url="http://127.0.0.1:8000/v1", model="m")
    assert_type(endpoint.model, str | None)
    assert_type(endpoint.headers, Mapping[str, str])
    assert_type(Endpoint.from_env({}), Endpoint)
    assert_type(endpoint.auth_headers(), dict[str, str])


def check_requests() -> None:
    chat = ChatRequest(messages=[{"role": "user", "content": "hi"}], params={"max_tokens": 8})
    assert_type(chat.messages, Sequence[Mapping[str, Any]])
    assert_type(chat.id, ItemId | None)
    assert_type(chat.max_tokens(), int | None)
    legacy = CompletionRequest(prompt="Once upon a time", id="story-1")
    assert_type(legacy.prompt, str)
    request = request_from_json({"id": 1, "prompt": "x"}, source="in.jsonl", line=1)
    assert_type(request, Request)
    assert_type(request, ChatRequest | CompletionRequest)


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


def check_events(event: Event) -> None:
    assert_type(event.t, float)
    assert_type(event.kind, str)
    if isinstance(event, AttemptEnded):
        assert_type(event.cause, str | None)
        assert_type(event.duration_s, float)
    elif isinstance(event, ItemEnded):
        assert_type(event.item_id, ItemId)
    elif isinstance(event, RunStarted):
        assert_type(event.config, dict[str, Any])


async def check_trio_channels() -> None:
    """trio's own inline types: the shapes shardline's API hands to users."""
    send, recv = trio.open_memory_channel[Outcome](64)
    assert_type(send, trio.MemorySendChannel[Outcome])
    assert_type(recv, trio.MemoryReceiveChannel[Outcome])
    limiter = trio.CapacityLimiter(16)
    assert_type(limiter.total_tokens, int | float)
    assert_type(trio.current_time(), float)

    async def consume(channel: trio.MemoryReceiveChannel[Outcome]) -> None:
        async with channel:
            async for outcome in channel:
                assert_type(outcome, Outcome)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume, recv)
        await send.aclose()
