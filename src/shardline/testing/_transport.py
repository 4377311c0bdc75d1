"""An in-memory fake of an OpenAI-compatible server, as an httpx transport.

Where :func:`open_fake_server` is a real server on a real socket, this is the
same protocol behind an :class:`httpx.AsyncBaseTransport`: no sockets, and
every delay is a :func:`trio.sleep`, so a whole pipeline run with stalls,
drips and 429 storms finishes in milliseconds under
``trio.testing.MockClock(autojump_threshold=0)`` (pytest-trio's
``autojump_clock`` fixture). Hypothesis properties over random fault plans use it.

Example::

    def first_attempt_stalls(item: str, attempt: int) -> str | None:
        return "stall_mid" if attempt == 1 else None

    def transport(shard: int) -> FakeTransport:
        return FakeTransport(plan=first_attempt_stalls)

    async with open_pipeline(config, transport=transport) as pipeline:
        ...
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator, Callable
from urllib.parse import unquote

import attrs
import httpx
import trio

__all__ = ["TRANSPORT_FAULTS", "FakeTransport", "FaultPicker"]

#: The faults :class:`FakeTransport` can serve (the fake server's names).
TRANSPORT_FAULTS = (
    "stall_headers",
    "stall_after_headers",
    "stall_mid",
    "drip",
    "rate_limit",
    "http_500",
    "http_502",
    "http_503",
    "reset",
    "truncate",
    "malformed",
    "error_event",
    "http_400",
)

FaultPicker = Callable[[str, int], str | None]
"""``plan(item_id, attempt) -> fault name or None``: which fault a request gets."""


def _no_faults(_item: str, _attempt: int) -> str | None:
    return None


def _chunk(content: str | None, *, role: bool = False, finish: str | None = None) -> bytes:
    delta: dict[str, str] = {}
    if role:
        delta["role"] = "assistant"
    if content is not None:
        delta["content"] = content
    body = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "fake",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def _usage_chunk(prompt: int, completion: int) -> bytes:
    body = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "fake",
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


class _Reset(httpx.ReadError):
    pass


@attrs.define(eq=False)
class FakeTransport(httpx.AsyncBaseTransport):
    """Serves chat completions from memory, with faults chosen per request.

    Args:
        plan: ``plan(item_id, attempt)`` names the fault for a request (from its
            ``x-shardline-item-id`` / ``x-shardline-attempt`` headers), or ``None``.
        ttft: Seconds before the first content event.
        itl: Seconds between content events.
        completion_tokens: Tokens per completion when the request has no ``max_tokens``.
        retry_after: The Retry-After, in seconds, of a ``rate_limit`` fault.
        stall_after: Content events sent before ``stall_mid`` (and ``drip``) stall.

    Attributes (counters a test reads):
        requests, in_flight, max_in_flight, faults (Counter by name),
        completed, prompt_tokens, completion_tokens (on completed responses).
    """

    plan: FaultPicker = _no_faults
    ttft: float = 0.05
    itl: float = 0.01
    completion_tokens: int = 8
    retry_after: float = 1.0
    stall_after: int = 2
    requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    faults: Counter[str] = attrs.field(factory=Counter)
    completed: int = 0
    prompt_tokens: int = 0
    completion_tokens_served: int = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        item = unquote(request.headers.get("x-shardline-item-id", str(self.requests)))
        attempt = int(request.headers.get("x-shardline-attempt", "1"))
        fault = self.plan(item, attempt)
        body = json.loads(await request.aread())
        messages = body.get("messages") or [{"content": body.get("prompt", "")}]
        prompt_text = " ".join(str(m.get("content", "")) for m in messages)
        prompt_tokens = max(1, len(prompt_text.split()))
        n = int(body.get("max_tokens") or self.completion_tokens)
        self._enter()
        try:
            if fault is not None:
                self.faults[fault] += 1
            if fault == "stall_headers":
                await trio.sleep_forever()
            if fault == "rate_limit":
                self._exit()
                return httpx.Response(
                    429,
                    headers={
                        "retry-after": str(max(0, round(self.retry_after))),
                        "retry-after-ms": str(int(self.retry_after * 1000)),
                    },
                    json={"error": {"message": "rate limited", "type": "rate_limit"}},
                )
            if fault is not None and fault.startswith("http_"):
                self._exit()
                status = int(fault.removeprefix("http_"))
                return httpx.Response(status, json={"error": {"message": fault}})
        except BaseException:
            self._exit()
            raise
        return httpx.Response(
            200,
            headers={"content-type": "text/event-stream"},
            stream=_Stream(self, fault, prompt_tokens, n),
        )

    def _enter(self) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _exit(self) -> None:
        self.in_flight -= 1


@attrs.define(eq=False)
class _Stream(httpx.AsyncByteStream):
    owner: FakeTransport
    fault: str | None
    prompt_tokens: int
    n: int
    closed: bool = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        o, fault = self.owner, self.fault
        if fault == "stall_after_headers":
            await trio.sleep_forever()
        await trio.sleep(o.ttft)
        yield _chunk("", role=True)
        for i in range(self.n):
            if i > 0:
                await trio.sleep(o.itl)
            if i == o.stall_after:
                if fault == "stall_mid":
                    await trio.sleep_forever()
                if fault == "drip":
                    while True:
                        yield b": keep-alive\n\n"
                        await trio.sleep(min(1.0, o.itl or 1.0))
                if fault == "reset":
                    raise _Reset("connection reset by peer")
                if fault == "malformed":
                    yield b'data: {"choices": [\n\n'
                if fault == "error_event":
                    yield b'data: {"error": {"message": "overloaded", "code": 503}}\n\n'
                    return
                if fault == "truncate":
                    return
            yield _chunk(f"tok{i} ")
        yield _chunk(None, finish="length" if self.n else "stop")
        yield _usage_chunk(self.prompt_tokens, self.n)
        yield b"data: [DONE]\n\n"
        o.completed += 1
        o.prompt_tokens += self.prompt_tokens
        o.completion_tokens_served += self.n

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            self.owner._exit()
