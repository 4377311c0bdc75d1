"""One attempt under deadlines, against in-memory fakes in virtual time.

Every fake here is an ``httpx.MockTransport`` whose handler or body stream
is scripted: bytes, sleeps, a raised exception, or a wait that never ends.
All tests run on the ``autojump_clock``, so a 5 s stall costs no real time
and each expiry can be asserted to the exact virtual second.
"""

from __future__ import annotations

import gzip
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import attrs
import httpx
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from helpers import chunk, run_virtual, sse
from shardline._attempt import (
    STALL_SLACK_MAX,
    STALL_SLACK_RATIO,
    TAIL_GRACE,
    AttemptResult,
    send_attempt,
)
from shardline._config import Deadlines, Endpoint, Transport
from shardline._exceptions import (
    AttemptError,
    AttemptTimeout,
    ClientError,
    ConfigError,
    ConnectError,
    ConnectionLost,
    ConnectTimeout,
    PoolTimeout,
    ProtocolError,
    RateLimited,
    ServerError,
    StallTimeout,
    Truncated,
    TTFTTimeout,
)
from shardline._http import (
    DEFAULT_KEEPALIVE_EXPIRY,
    ERROR_BODY_GRACE,
    make_client,
    map_exceptions,
)
from shardline._models import ChatRequest, CompletionRequest, Usage
from shardline._transport import LeanTransport

SECRET = "sk-test-0123456789abcdef"
ENDPOINT = Endpoint(base_url="http://fake.test/v1", api_key=SECRET, model="m")
NO_STREAM = Endpoint(base_url="http://fake.test/v1", api_key=SECRET, model="m", stream=False)
DEADLINES = Deadlines(connect=1.0, ttft=5.0, stall=2.0, attempt=30.0)
REQUEST = ChatRequest(messages=[{"role": "user", "content": "Say hello to the world"}])

Step = bytes | float | BaseException | None
"""A body script step: bytes to send, seconds to sleep, an exception to raise,
or ``None`` to block forever."""


class ScriptedBody(httpx.AsyncByteStream):
    """A response body that follows a script, step by step."""

    def __init__(self, steps: Sequence[Step]) -> None:
        self.steps = steps
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for step in self.steps:
            if step is None:
                await trio.sleep_forever()
            elif isinstance(step, float | int):
                await trio.sleep(step)
            elif isinstance(step, BaseException):
                raise step
            else:
                yield step

    async def aclose(self) -> None:
        self.closed = True


USAGE = sse({"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 3}})
DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"
GOOD = [chunk(role=True), chunk("Hello"), chunk(" world"), chunk(finish="stop"), USAGE, DONE]
SSE_HEADERS = {"content-type": "text/event-stream"}


class Fake:
    """A MockTransport-backed client whose responses come from ``respond``."""

    def __init__(self, respond: Callable[[httpx.Request], Awaitable[httpx.Response]]) -> None:
        self.requests: list[httpx.Request] = []
        self.bodies: list[ScriptedBody] = []
        self.respond = respond

        async def handler(request: httpx.Request) -> httpx.Response:
            self.requests.append(request)
            return await self.respond(request)

        self.client = httpx.AsyncClient(transport=httpx.MockTransport(handler))

    @classmethod
    def streaming(
        cls,
        steps: Sequence[Step],
        *,
        status: int = 200,
        headers: dict[str, str] | None = None,
        delay: float | None = 0.0,
    ) -> Fake:
        """Answer every request with ``status``/``headers`` after ``delay`` (None: never)."""
        fake: Fake

        async def respond(_request: httpx.Request) -> httpx.Response:
            if delay is None:
                await trio.sleep_forever()
            await trio.sleep(delay)
            body = ScriptedBody(steps)
            fake.bodies.append(body)
            return httpx.Response(status, headers=headers or SSE_HEADERS, stream=body)

        fake = cls(respond)
        return fake


async def attempt(
    fake: Fake,
    *,
    endpoint: Endpoint = ENDPOINT,
    deadlines: Deadlines = DEADLINES,
    request: ChatRequest | CompletionRequest = REQUEST,
    **kwargs: Any,
) -> AttemptResult:
    return await send_attempt(fake.client, endpoint, request, deadlines, **kwargs)


async def expect_error(
    fake: Fake, error_type: type[AttemptError], at: float | None = None, **kwargs: Any
) -> AttemptError:
    """Run one attempt; assert it raises exactly ``error_type``, at virtual time ``at``."""
    start = trio.current_time()
    with pytest.raises(error_type) as info:
        await attempt(fake, **kwargs)
    assert type(info.value) is error_type
    if at is not None:
        elapsed = trio.current_time() - start
        if error_type is StallTimeout:
            # A stall is detected at most `slack` after its deadline, never before.
            stall = kwargs.get("deadlines", DEADLINES).stall
            slack = min(STALL_SLACK_MAX, stall * STALL_SLACK_RATIO)
            assert at - 1e-9 <= elapsed <= at + slack + 1e-9
        else:
            assert elapsed == pytest.approx(at)
    assert SECRET not in str(info.value)
    for body in fake.bodies:
        assert body.closed, "the response body was not closed"
    return info.value


# Success ---------------------------------------------------------------------


async def test_streamed_success(autojump_clock: trio.testing.MockClock) -> None:
    """A normal stream gives the text, finish reason, server usage, TTFT and duration."""
    fake = Fake.streaming([chunk(role=True), 0.5, chunk("Hello"), 0.25, *GOOD[2:]])
    ttfts: list[float] = []
    result = await attempt(
        fake,
        headers={"x-shardline-item-id": "7", "x-shardline-attempt": "1"},
        on_first_token=ttfts.append,
    )
    assert result == AttemptResult(
        text="Hello world",
        finish_reason="stop",
        usage=Usage(prompt_tokens=11, completion_tokens=3),
        ttft_s=0.5,
        duration_s=0.75,
        status_code=200,
    )
    assert ttfts == [0.5]
    sent = fake.requests[0]
    assert sent.url == "http://fake.test/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {SECRET}"
    assert sent.headers["x-shardline-item-id"] == "7"
    assert sent.headers["accept"] == "text/event-stream"
    body = json.loads(sent.content)
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["model"] == "m"


@pytest.mark.parametrize("split", [1, 7, 10_000])
async def test_a_compressed_stream_is_decoded(split: int) -> None:
    """A gzip-encoded event stream goes through httpx's decoder (plain ones skip it)."""
    packed = gzip.compress(b"".join(GOOD))
    pieces = [packed[i : i + split] for i in range(0, len(packed), split)]
    fake = Fake.streaming(pieces, headers={**SSE_HEADERS, "content-encoding": "gzip"})
    result = await attempt(fake)
    assert (result.text, result.finish_reason, result.usage.completion_tokens) == (
        "Hello world",
        "stop",
        3,
    )


async def test_usage_is_estimated_when_server_sends_none(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Without a usage chunk the counts are estimated and marked so."""
    fake = Fake.streaming([chunk("Hello world!"), chunk(finish="length"), DONE])
    result = await attempt(fake)
    assert result.usage == Usage(prompt_tokens=6, completion_tokens=3, estimated=True)
    assert result.finish_reason == "length"


async def test_done_without_finish_reason_is_success(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """[DONE] alone ends a stream properly (finish_reason None)."""
    result = await attempt(Fake.streaming([chunk("x"), DONE]))
    assert (result.text, result.finish_reason) == ("x", None)


async def test_finish_reason_without_done_is_success(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A finish reason then a clean end is a success even without [DONE]."""
    result = await attempt(Fake.streaming([chunk("x"), chunk(finish="stop")]))
    assert result.finish_reason == "stop"


async def test_tail_that_never_comes_still_succeeds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """After the finish reason, a server that goes silent costs TAIL_GRACE, not a failure."""
    start = trio.current_time()
    result = await attempt(Fake.streaming([chunk("x"), chunk(finish="stop"), None]))
    assert result.finish_reason == "stop"
    assert trio.current_time() - start == pytest.approx(TAIL_GRACE)


async def test_crlf_keepalives_and_comments_are_tolerated(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """CRLF line ends and comments between events do not disturb decoding."""
    raw = b"".join([KEEPALIVE, chunk("a"), b": ping\n\n", chunk("b", finish="stop"), DONE])
    result = await attempt(Fake.streaming([raw.replace(b"\n", b"\r\n")]))
    assert result.text == "ab"


async def test_legacy_completion_stream(autojump_clock: trio.testing.MockClock) -> None:
    """A legacy /completions stream is read from choices[].text."""
    steps = [
        sse({"choices": [{"index": 0, "text": "ab", "finish_reason": None}]}),
        sse({"choices": [{"index": 0, "text": "c", "finish_reason": "stop"}]}),
        DONE,
    ]
    fake = Fake.streaming(steps)
    result = await attempt(fake, request=CompletionRequest(prompt="abc"))
    assert result.text == "abc"
    assert fake.requests[0].url.path == "/v1/completions"


async def test_azure_endpoint_sends_api_key_header_and_version(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Azure mode sends the api-key header and the api-version query parameter."""
    endpoint = Endpoint(base_url="http://fake.test/openai", api_key=SECRET, azure_api_version="v1")
    fake = Fake.streaming(GOOD)
    await attempt(fake, endpoint=endpoint)
    sent = fake.requests[0]
    assert sent.headers["api-key"] == SECRET
    assert "authorization" not in sent.headers
    assert sent.url.params["api-version"] == "v1"


# Deadlines ------------------------------------------------------------------


async def test_no_headers_is_ttft_timeout(autojump_clock: trio.testing.MockClock) -> None:
    """A server that never answers ends at exactly the TTFT deadline."""
    fake = Fake.streaming(GOOD, delay=None)
    await expect_error(fake, TTFTTimeout, at=5.0)


async def test_headers_then_silence_is_ttft_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Headers without any body bytes end at the TTFT deadline."""
    await expect_error(Fake.streaming([None]), TTFTTimeout, at=5.0)


async def test_dripped_non_progress_is_ttft_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Keep-alives, role-only chunks and empty deltas forever are not a first token."""
    drip: list[Step] = [chunk(role=True)]
    for _ in range(100):
        drip += [0.1, KEEPALIVE, 0.1, chunk(""), 0.1, chunk(role=True)]
    error = await expect_error(Fake.streaming(drip), TTFTTimeout, at=5.0)
    assert error.partial is False
    assert "keep-alive" in str(error)


async def test_drip_after_content_is_stall_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """After content, a drip of non-progress ends at last content + stall."""
    drip: list[Step] = [0.5, chunk("Hi")]
    for _ in range(100):
        drip += [0.25, KEEPALIVE, 0.25, chunk("")]
    error = await expect_error(Fake.streaming(drip), StallTimeout, at=0.5 + 2.0)
    assert error.partial is True


async def test_silence_after_content_is_stall_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Content, then nothing: stall deadline after the last content event."""
    steps: list[Step] = [chunk("a"), 1.5, chunk("b"), 1.5, chunk("c"), None]
    await expect_error(Fake.streaming(steps), StallTimeout, at=3.0 + 2.0)


async def test_slow_steady_stream_is_attempt_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Content every second never stalls, but the attempt deadline still ends it."""
    steps: list[Step] = [x for _ in range(100) for x in (1.0, chunk("t"))]
    deadlines = Deadlines(connect=1, ttft=5, stall=2, attempt=7.5)
    error = await expect_error(Fake.streaming(steps), AttemptTimeout, at=7.5, deadlines=deadlines)
    assert error.partial is True


async def test_ttft_none_waits_for_attempt_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With ttft disabled, a silent server ends at the attempt deadline."""
    deadlines = Deadlines(connect=1, ttft=None, stall=2, attempt=9)
    await expect_error(Fake.streaming([None]), AttemptTimeout, at=9, deadlines=deadlines)


async def test_attempt_deadline_earlier_than_ttft(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The earlier of the two deadlines names the cause."""
    deadlines = Deadlines(connect=1, ttft=5, stall=2, attempt=3)
    await expect_error(Fake.streaming([None]), AttemptTimeout, at=3, deadlines=deadlines)


# Cancellation ----------------------------------------------------------------


async def test_caller_cancellation_propagates(autojump_clock: trio.testing.MockClock) -> None:
    """The caller's own scope cancels the attempt with trio.Cancelled, not a timeout."""
    fake = Fake.streaming([chunk("a"), None])
    with trio.move_on_after(1.0) as scope:
        await attempt(fake)
    assert scope.cancelled_caught
    assert fake.bodies[0].closed


async def test_caller_deadline_equal_to_ttft_wins(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """When the caller's deadline and the TTFT deadline coincide, Cancelled wins."""
    fake = Fake.streaming([None])
    with trio.move_on_after(5.0) as scope:
        await attempt(fake)
    assert scope.cancelled_caught


async def test_caller_cancel_during_headers(autojump_clock: trio.testing.MockClock) -> None:
    """Cancelling while waiting for headers propagates Cancelled too."""
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(attempt, Fake.streaming(GOOD, delay=None))
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()
    assert scope.cancelled_caught


# HTTP status -------------------------------------------------------------------


async def test_429_is_rate_limited_with_retry_after(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """429 gives RateLimited with retry_after from retry-after-ms and the server's message."""
    body = json.dumps({"error": {"message": "Rate limit reached", "type": "requests"}})
    fake = Fake.streaming(
        [body.encode()],
        status=429,
        headers={"content-type": "application/json", "retry-after-ms": "1500", "retry-after": "2"},
    )
    error = await expect_error(fake, RateLimited)
    assert error.retry_after == 1.5
    assert error.status_code == 429
    assert "Rate limit reached" in str(error)


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (500, ServerError),
        (502, ServerError),
        (503, ServerError),
        (400, ClientError),
        (404, ClientError),
        (422, ClientError),
    ],
)
async def test_status_codes_map_to_causes(
    autojump_clock: trio.testing.MockClock, status: int, error_type: type[AttemptError]
) -> None:
    """5xx is server_error, other 4xx client_error; the status code is kept."""
    fake = Fake.streaming(
        [b"upstream trouble"],
        status=status,
        headers={"content-type": "text/plain", "retry-after": "3"},
    )
    error = await expect_error(fake, error_type)
    assert error.status_code == status
    assert error.retry_after == 3.0
    assert "upstream trouble" in str(error)


async def test_api_key_echoed_by_server_is_scrubbed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A server echoing the key in its error message never gets it into ours."""
    body = json.dumps({"error": {"message": f"Incorrect API key provided: {SECRET}"}})
    fake = Fake.streaming([body.encode()], status=401)
    error = await expect_error(fake, ClientError)
    assert "***" in str(error)


async def test_slow_error_body_does_not_hide_the_status(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An error body that never ends is abandoned after ERROR_BODY_GRACE; the status wins."""
    fake = Fake.streaming([b'{"error": ', None], status=503)
    await expect_error(fake, ServerError, at=ERROR_BODY_GRACE)


async def test_huge_error_body_is_read_only_in_part(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Only a bounded prefix of an error body is read, and the message is short."""
    fake = Fake.streaming([b"x" * 65536] * 1000, status=500)
    error = await expect_error(fake, ServerError)
    assert len(str(error)) < 1000


async def test_redirect_is_a_protocol_error(autojump_clock: trio.testing.MockClock) -> None:
    """Redirects are not followed: a 3xx is a protocol error."""
    fake = Fake.streaming([b""], status=307, headers={"location": "http://elsewhere/"})
    await expect_error(fake, ProtocolError)


# Transport failures -------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "error_type"),
    [
        (httpx.ConnectError("connection refused"), ConnectError),
        (httpx.ConnectTimeout("timed out"), ConnectTimeout),
        (httpx.PoolTimeout("pool full"), PoolTimeout),
        (
            httpx.RemoteProtocolError("Server disconnected without sending a response."),
            ConnectionLost,
        ),
        (httpx.RemoteProtocolError("illegal status line"), ProtocolError),
        (httpx.ReadError("connection reset by peer"), ConnectionLost),
        (httpx.WriteError("broken pipe"), ConnectionLost),
        (httpx.ReadTimeout("read timed out"), TTFTTimeout),
        (httpx.UnsupportedProtocol("ftp"), ConnectionLost),
    ],
)
async def test_transport_errors_before_response(
    autojump_clock: trio.testing.MockClock, exc: httpx.HTTPError, error_type: type[AttemptError]
) -> None:
    """httpx errors raised before a response map to their causes, chained with from."""

    async def respond(_request: httpx.Request) -> httpx.Response:
        raise exc

    error = await expect_error(Fake(respond), error_type)
    assert error.__cause__ is exc
    assert error.partial is False


async def test_reset_mid_stream_is_connection_lost(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A reset after content is connection_lost with partial=True."""
    fake = Fake.streaming([chunk("Hel"), httpx.ReadError("[Errno 104] Connection reset")])
    error = await expect_error(fake, ConnectionLost)
    assert error.partial is True


async def test_incomplete_chunked_body_is_connection_lost(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """h11's 'peer closed connection without sending complete message body' is connection_lost."""
    exc = httpx.RemoteProtocolError(
        "peer closed connection without sending complete message body: incomplete chunked read"
    )
    await expect_error(Fake.streaming([chunk("a"), exc]), ConnectionLost)


async def test_map_exceptions_passes_cancelled_and_others() -> None:
    """The mapping only touches httpx errors and our own; anything else passes unchanged."""
    with pytest.raises(KeyError), map_exceptions():
        raise KeyError("x")
    with pytest.raises(ConnectError) as info, map_exceptions(partial=lambda: True):
        raise httpx.ConnectError("no")
    assert info.value.partial is False  # nothing arrives before a connection exists


# Stream content faults ----------------------------------------------------------


async def test_clean_end_without_finish_is_truncated(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Content then a clean end, without finish reason or [DONE], is truncated."""
    error = await expect_error(Fake.streaming([chunk("Hel"), chunk("lo")]), Truncated)
    assert error.partial is True
    assert "2 content events" in str(error)


async def test_empty_body_is_truncated(autojump_clock: trio.testing.MockClock) -> None:
    """A 200 with an empty body is truncated, not partial."""
    error = await expect_error(Fake.streaming([]), Truncated)
    assert error.partial is False


async def test_unfinished_last_line_is_truncated(autojump_clock: trio.testing.MockClock) -> None:
    """A body cut in the middle of a line is truncated, and says so."""
    error = await expect_error(Fake.streaming([chunk("a"), b'data: {"choi']), Truncated)
    assert "unfinished" in str(error)


async def test_malformed_json_is_protocol_error(autojump_clock: trio.testing.MockClock) -> None:
    """Broken JSON in a data event is protocol_error, even if the stream carries on."""
    steps = [chunk("a"), b'data: {"choices": [nul\n\n', chunk(finish="stop"), DONE]
    error = await expect_error(Fake.streaming(steps), ProtocolError)
    assert error.partial is True
    assert isinstance(error.__cause__, ValueError)


async def test_endless_line_is_protocol_error(autojump_clock: trio.testing.MockClock) -> None:
    """A line that never ends is cut off at the line bound, not buffered forever."""
    steps: list[Step] = [b"data: ", *([b"x" * 65536] * 64)]
    error = await expect_error(Fake.streaming(steps), ProtocolError)
    assert "max_line_bytes" in str(error)


async def test_in_band_error_event_is_server_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An in-band error object after content is server_error, partial."""
    steps = [chunk("a"), sse({"error": {"message": "overloaded", "type": "server_error"}}), DONE]
    error = await expect_error(Fake.streaming(steps), ServerError)
    assert error.partial is True
    assert "overloaded" in str(error)


async def test_in_band_rate_limit_is_rate_limited(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An in-band error with code 429 is rate_limited."""
    steps = [sse({"error": {"message": "slow down", "code": 429}})]
    await expect_error(Fake.streaming(steps), RateLimited)


async def test_json_answer_to_stream_request_is_accepted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A server that ignores stream=true and answers JSON is still understood."""
    body = {"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}]}
    fake = Fake.streaming([json.dumps(body).encode()], headers={"content-type": "application/json"})
    result = await attempt(fake)
    assert (result.text, result.finish_reason) == ("hi", "stop")
    assert result.usage.estimated


# Non-streamed --------------------------------------------------------------------


def whole(text: str, finish: str | None = "stop", usage: bool = True) -> bytes:
    obj: dict[str, Any] = {
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
        ]
    }
    if usage:
        obj["usage"] = {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
    return json.dumps(obj).encode()


JSON_HEADERS = {"content-type": "application/json"}


async def test_non_streamed_success(autojump_clock: trio.testing.MockClock) -> None:
    """Non-streamed: one JSON body; TTFT is when it arrived; no stream options are sent."""
    fake = Fake.streaming([whole("hi there")], headers=JSON_HEADERS, delay=1.5)
    ttfts: list[float] = []
    result = await attempt(fake, endpoint=NO_STREAM, on_first_token=ttfts.append)
    assert result.text == "hi there"
    assert result.usage == Usage(prompt_tokens=4, completion_tokens=2)
    assert result.ttft_s == ttfts[0] == 1.5
    body = json.loads(fake.requests[0].content)
    assert "stream" not in body
    assert "stream_options" not in body


async def test_non_streamed_stall_is_ttft_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Half a body then silence: the body is the first content, so ttft_timeout."""
    fake = Fake.streaming([whole("hi")[:10], None], headers=JSON_HEADERS)
    await expect_error(fake, TTFTTimeout, at=5.0, endpoint=NO_STREAM)


@pytest.mark.parametrize(
    ("body", "error_type"),
    [
        (whole("half", finish=None), Truncated),
        (b"{not json", ProtocolError),
        (b"[]", ProtocolError),
        (b'{"choices": []}', ProtocolError),
        (b'{"error": {"message": "boom"}}', ServerError),
    ],
)
async def test_non_streamed_faults(
    autojump_clock: trio.testing.MockClock, body: bytes, error_type: type[AttemptError]
) -> None:
    """Non-streamed bodies without a finish reason, or not JSON, or errors, fail by name."""
    fake = Fake.streaming([body], headers=JSON_HEADERS)
    await expect_error(fake, error_type, endpoint=NO_STREAM)


async def test_non_streamed_reset_is_connection_lost(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A reset while reading a non-streamed body is connection_lost."""
    fake = Fake.streaming([b'{"choi', httpx.ReadError("reset")], headers=JSON_HEADERS)
    await expect_error(fake, ConnectionLost, endpoint=NO_STREAM)


# The client --------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["lean", "httpx"])
async def test_make_client_sizes_the_pool_and_disables_read_timeout(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pool holds cap connections, all kept alive; read timeout is off, connect/pool set."""
    for name in ("http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    deadlines = Deadlines(connect=3.0, ttft=10, stall=5, attempt=60)
    endpoint = attrs.evolve(ENDPOINT, transport=transport)
    client = make_client(endpoint, max_connections=7, deadlines=deadlines)
    async with client:
        assert client.timeout == httpx.Timeout(connect=3.0, read=None, write=None, pool=3.0)
        if transport == "lean":
            assert isinstance(client._transport, LeanTransport)
            assert client._transport._max == 7
            assert client._transport._expiry == DEFAULT_KEEPALIVE_EXPIRY
        else:
            pool = client._transport._pool  # type: ignore[attr-defined]
            assert pool._max_connections == 7
            assert pool._max_keepalive_connections == 7
        assert not client.follow_redirects


async def test_make_client_http2() -> None:
    """HTTP/2 is used when the endpoint asks for it (or a ConfigError names the extra)."""
    endpoint = Endpoint(base_url="http://fake.test/v1", http2=True)
    try:
        import h2  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match=r"shardline\[http2\]"):
            make_client(endpoint, max_connections=1, deadlines=DEADLINES)
        return
    async with make_client(endpoint, max_connections=1, deadlines=DEADLINES) as client:
        assert client._transport._pool._http2  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("base_url", "environ", "loads_the_ca_bundle"),
    [
        ("http://fake.test/v1", {}, False),
        ("https://fake.test/v1", {}, True),
        ("http://fake.test/v1", {"HTTPS_PROXY": "https://proxy.test:3128"}, True),
        ("http://fake.test/v1", {"all_proxy": "http://proxy.test:3128"}, True),
    ],
)
async def test_make_client_loads_the_ca_bundle_only_when_tls_may_happen(
    base_url: str,
    environ: dict[str, str],
    loads_the_ca_bundle: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A plain-http endpoint without a proxy skips the CA bundle; its context trusts nothing."""
    for name in ("http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    endpoint = Endpoint(base_url=base_url)
    async with make_client(endpoint, max_connections=1, deadlines=DEADLINES) as client:
        if isinstance(client._transport, LeanTransport):
            context = client._transport._ssl_context
        else:  # httpx's transport, under a proxy
            context = client._transport._pool._ssl_context  # type: ignore[attr-defined]
    assert (context.cert_store_stats()["x509_ca"] > 0) is loads_the_ca_bundle
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "max_connections must be >= 1, got 0"),
        (2.0, "max_connections must be an integer, got 2.0"),
    ],
)
def test_make_client_validates_max_connections(value: Any, message: str) -> None:
    """A bad pool size is a ConfigError naming the parameter."""
    with pytest.raises(ConfigError) as info:
        make_client(ENDPOINT, max_connections=value, deadlines=DEADLINES)
    assert str(info.value) == message


# Properties -----------------------------------------------------------------------

contents = st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=12)


@given(
    contents,
    st.lists(st.integers(min_value=0, max_value=10_000), max_size=10),
    st.lists(st.sampled_from([0.0, 0.01, 0.1]), min_size=1, max_size=5),
    st.booleans(),
)
def test_any_chunking_and_pacing_within_deadlines_succeeds(
    parts: list[str], cuts: list[int], gaps: list[float], keepalives: bool
) -> None:
    """However the bytes are split and paced within the deadlines, the text comes out whole.

    At most 11 pieces, at most 0.1 s apart: content events are < stall apart.
    """
    events = [chunk(role=True)]
    for p in parts:
        events.append(chunk(p))
        if keepalives:
            events.append(KEEPALIVE)
    events += [chunk(finish="stop"), USAGE, DONE]
    raw = b"".join(events)
    points = sorted({c % (len(raw) + 1) for c in cuts})
    pieces = [raw[a:b] for a, b in zip([0, *points], [*points, len(raw)], strict=True)]
    steps: list[Step] = []
    for i, piece in enumerate(pieces):
        steps += [gaps[i % len(gaps)], piece]
    deadlines = Deadlines(connect=1, ttft=5, stall=2, attempt=1000)

    async def main() -> AttemptResult:
        return await attempt(Fake.streaming(steps), deadlines=deadlines)

    result = run_virtual(main)
    assert result.text == "".join(parts)
    assert result.finish_reason == "stop"


@given(
    contents,
    st.integers(min_value=0, max_value=12),
    st.floats(min_value=0.0, max_value=1.5),
    st.booleans(),
)
def test_a_stream_that_stops_progressing_ends_at_its_deadline(
    parts: list[str], stop_after: int, gap: float, drip: bool
) -> None:
    """Content until some point, then silence or a drip: the right timeout, exactly on time."""
    stop_after = min(stop_after, len(parts))
    steps: list[Step] = [chunk(role=True)]
    for p in parts[:stop_after]:
        steps += [gap, chunk(p)]
    if drip:
        steps += [x for _ in range(200) for x in (0.5, KEEPALIVE, 0.5, chunk(""))]
    else:
        steps.append(None)
    deadlines = Deadlines(connect=1, ttft=5, stall=2, attempt=1000)

    async def main() -> tuple[AttemptError, float]:
        start = trio.current_time()
        try:
            await attempt(Fake.streaming(steps), deadlines=deadlines)
        except AttemptError as exc:
            return exc, trio.current_time() - start
        raise AssertionError("the attempt succeeded")

    error, elapsed = run_virtual(main)
    if stop_after == 0:
        assert isinstance(error, TTFTTimeout)
        assert elapsed == pytest.approx(5.0)
        assert not error.partial
    else:
        assert isinstance(error, StallTimeout)
        # On time: at most the stall slack (5 % of stall) late, never early.
        assert stop_after * gap + 2.0 - 1e-9 <= elapsed <= stop_after * gap + 2.0 * 1.05 + 1e-9
        assert error.partial


async def test_non_streamed_error_body_is_not_partial(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A 200 whose body is an error object fails without calling on_first_token."""
    fake = Fake.streaming([b'{"error": {"message": "boom"}}'], headers=JSON_HEADERS)
    calls: list[float] = []
    error = await expect_error(fake, ServerError, endpoint=NO_STREAM, on_first_token=calls.append)
    assert error.partial is False
    assert calls == []
