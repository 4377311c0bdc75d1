"""One attempt: one HTTP exchange that ends in bounded time, with a named cause.

:func:`send_attempt` sends one request through a shard's pooled
:class:`httpx.AsyncClient` and returns an :class:`AttemptResult`, or raises
the :class:`~shardline.AttemptError` subclass that names what went wrong.
Whatever the server does (say nothing, drip keep-alives, reset, close
early, send garbage), the attempt ends within its :class:`Deadlines`.

How the deadlines are enforced, with two trio cancel scopes::

    attempt scope   deadline = start + attempt             -> AttemptTimeout
      progress scope  deadline = start + ttft              -> TTFTTimeout
                      moved to now + stall at each content event
                                                           -> StallTimeout
        httpx: connect / pool timeouts (Deadlines.connect) -> ConnectTimeout / PoolTimeout

The progress scope is *one* scope whose deadline moves, not a scope per read:
only a content event (:meth:`StreamAccumulator.feed` says which) moves it, so
SSE comments, keep-alive bytes, empty deltas and role-only chunks cannot keep
a dead stream alive. That is the difference from a socket read timeout, which
every dripped byte resets.

Cancellation: the caller's own cancel scope wins. If it is cancelled, the
:class:`trio.Cancelled` propagates untouched (never turned into an
``AttemptError``), and httpx closes the half-read connection on the way out,
so the pool stays usable.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import attrs
import httpx
import trio

from ._answers import ToolCall
from ._config import Deadlines, Endpoint
from ._exceptions import (
    AttemptError,
    AttemptTimeout,
    ProtocolError,
    StallTimeout,
    Truncated,
    TTFTTimeout,
)
from ._http import MAX_RESPONSE_BYTES, consume, map_exceptions, raise_for_status, read_bounded
from ._models import EmbeddingRequest, Request, Usage, estimate_tokens
from ._openai import StreamAccumulator, parse_whole
from ._openai_apis import Accumulator, ResponsesAccumulator, parse_embeddings, parse_response
from ._sse import DEFAULT_MAX_LINE_BYTES, SSEDecoder
from ._wirecheck import Answer

__all__ = [
    "TAIL_GRACE",
    "AttemptResult",
    "send_attempt",
]

#: Once a stream is complete (finish reason or ``[DONE]`` seen), the seconds
#: allowed for its remaining bytes (usage chunk, ``[DONE]``, end of body). If they
#: do not come, the attempt still succeeds; only the connection is not reused.
TAIL_GRACE = 1.0


try:  # The shardline[fast] extra: orjson parses stream chunks about 2.5x faster.
    from orjson import loads as _orjson_loads
except ImportError:  # pragma: no cover - depends on the installed extras
    _json_loads: Callable[[str], Any] = json.loads
else:
    _json_loads = _orjson_loads

#: A stall is detected at most ``min(STALL_SLACK_MAX, stall * STALL_SLACK_RATIO)``
#: seconds after the stall deadline (never before it); see ``_read_stream``.
STALL_SLACK_RATIO = 0.05
STALL_SLACK_MAX = 1.0


@attrs.frozen(kw_only=True)
class AttemptResult:
    """What a successful attempt produced.

    Attributes:
        text: The completion text (choice 0's content, joined).
        finish_reason: The server's finish reason, or ``None`` when the stream
            ended with ``[DONE]`` but without one.
        usage: Token counts from the server's usage chunk, or an estimate
            (``usage.estimated``) when it sent none.
        ttft_s: Seconds from sending to the first content event (for a
            non-streamed response: to the complete body), ``None`` if no
            content ever arrived.
        duration_s: Seconds from sending to the end of the exchange.
        status_code: The HTTP status (200 in practice).
        tool_calls, reasoning, refusal, logprobs, embeddings: as in
            :class:`~shardline.Result`.
    """

    text: str
    finish_reason: str | None
    usage: Usage
    ttft_s: float | None
    duration_s: float
    status_code: int
    tool_calls: tuple[ToolCall, ...] = ()
    reasoning: str | None = None
    refusal: str | None = None
    logprobs: tuple[Mapping[str, Any], ...] | None = None
    embeddings: tuple[tuple[float, ...], ...] | None = None


class _State:
    """What an attempt knows so far; read when turning a deadline into an error."""

    __slots__ = (
        "acc",
        "body_deadline",
        "events_seen",
        "first_token_at",
        "keepalives",
        "last_progress_at",
        "start",
        "status_code",
    )

    def __init__(self, start: float, body_deadline: float) -> None:
        self.start = start
        #: The earliest of our own deadlines: error bodies must be read before it.
        self.body_deadline = body_deadline
        self.first_token_at: float | None = None
        self.status_code: int | None = None
        self.acc: Accumulator | None = None
        # What the timeout messages report about a stream.
        self.events_seen = 0
        self.keepalives = 0
        self.last_progress_at: float | None = None

    @property
    def partial(self) -> bool:
        """Did content arrive (even in the read whose later event failed)?"""
        if self.first_token_at is not None:
            return True
        return self.acc is not None and self.acc.progress_events > 0


async def send_attempt(
    client: httpx.AsyncClient,
    endpoint: Endpoint,
    request: Request,
    deadlines: Deadlines,
    *,
    headers: Mapping[str, str] | None = None,
    on_first_token: Callable[[float], None] | None = None,
    on_response: Callable[[httpx.Headers], object] | None = None,
) -> AttemptResult:
    """Send ``request`` once and read the whole answer within ``deadlines``.

    Streams when ``endpoint.stream`` and the request can stream (an
    embeddings request never does; a chat or completion stream asks for
    ``stream_options.include_usage`` so usage comes from the server);
    otherwise reads one JSON body, which must arrive whole within the TTFT
    deadline. A stream is a success only when it ended properly (a finish
    reason or ``[DONE]``; ``response.completed`` for the Responses API): a
    clean end without that is :class:`~shardline.Truncated`, never a silently
    short answer.

    It is not a retry loop: one call, one exchange. The pipeline decides about
    retries from the raised error's ``cause`` and ``retry_after``.

    Args:
        client: The shard's pooled client (see :func:`make_client`).
        endpoint: Base URL, auth, default model, stream flag.
        request: The request (chat, legacy completion, embeddings or Responses).
        deadlines: connect / ttft / stall / attempt, in seconds (``None`` = off).
        headers: Extra request headers (the pipeline's item id and attempt number).
        on_first_token: Called once, synchronously, with the TTFT in seconds
            when the first content event arrives.
        on_response: Called once, synchronously, with the response headers as
            soon as they arrive, whatever the status (rate-limit headers come
            on errors too).

    Returns:
        The :class:`AttemptResult`.

    Raises:
        RateLimited: HTTP 429 (``retry_after`` from its headers), or an in-band
            rate-limit error.
        ServerError: HTTP 5xx or an in-band ``error`` event.
        ClientError: another HTTP 4xx (not retried by default).
        ConnectError | ConnectTimeout | PoolTimeout: no connection.
        TTFTTimeout | StallTimeout | AttemptTimeout: a deadline expired.
        ConnectionLost: reset or closed mid-response.
        Truncated: the stream ended without a finish reason or ``[DONE]``.
        ProtocolError: malformed HTTP, SSE or JSON.

        Every error has ``partial=True`` when content had already arrived.

    Cancellation:
        Cancelling the caller's scope raises :class:`trio.Cancelled` out of
        this call, unchanged; the connection is closed and the pool stays usable.
    """
    start = trio.current_time()
    attempt_scope = trio.CancelScope(deadline=_at(start, deadlines.attempt))
    progress_scope = trio.CancelScope(deadline=_at(start, deadlines.ttft))
    state = _State(start, min(attempt_scope.deadline, progress_scope.deadline))
    with attempt_scope:
        mapped = map_exceptions(partial=lambda: state.partial, secret=endpoint.api_key)
        with progress_scope, mapped:
            return await _exchange(
                client,
                endpoint,
                request,
                deadlines,
                headers,
                on_first_token,
                on_response,
                state,
                progress_scope,
            )
        # Only the progress scope's own deadline gets us here.
        acc = state.acc
        if acc is not None and acc.complete:
            # The stream was complete; only its tail (usage, end of body) was late.
            with _decoding(f"stream event {acc.position}"):
                answer = acc.answer()
            return _result(state, answer, request, status_code=state.status_code or 200)
        await _outer_cancel_wins()
        now = trio.current_time()
        if state.first_token_at is None:
            raise TTFTTimeout(
                f"no content within ttft={deadlines.ttft}s of sending"
                f" ({now - start:.3f}s elapsed{_stream_note(state)})",
                status_code=state.status_code,
            )
        last = state.last_progress_at if acc is not None else state.first_token_at
        raise StallTimeout(
            f"no content within stall={deadlines.stall}s of the previous content event"
            f" ({now - (last or start):.3f}s since it{_stream_note(state)})",
            status_code=state.status_code,
            partial=True,
        )
    await _outer_cancel_wins()
    raise AttemptTimeout(
        f"exchange exceeded attempt={deadlines.attempt}s",
        status_code=state.status_code,
        partial=state.partial,
    )


@functools.lru_cache(maxsize=64)
def _url(base_url: str, path: str, api_version: str | None) -> httpx.URL:
    # httpx parses a str URL on every request: cache the parsed one per endpoint and path.
    return httpx.URL(Endpoint(base_url=base_url, azure_api_version=api_version).url_for(path))


def _at(start: float, seconds: float | None) -> float:
    return math.inf if seconds is None else start + seconds


async def _outer_cancel_wins() -> None:
    """If the caller was cancelled at the same time as our deadline, let that win.

    Our scope caught the ``Cancelled``; a checkpoint re-raises it when an
    enclosing scope is cancelled too, so the caller sees ``trio.Cancelled``
    rather than a timeout it did not ask about.
    """
    await trio.lowlevel.checkpoint_if_cancelled()


def _stream_note(state: _State) -> str:
    if state.acc is None or (state.events_seen == 0 and state.keepalives == 0):
        return ""
    return f"; {state.events_seen} events and {state.keepalives} keep-alive comments received"


async def _exchange(
    client: httpx.AsyncClient,
    endpoint: Endpoint,
    request: Request,
    deadlines: Deadlines,
    extra_headers: Mapping[str, str] | None,
    on_first_token: Callable[[float], None] | None,
    on_response: Callable[[httpx.Headers], object] | None,
    state: _State,
    progress: trio.CancelScope,
) -> AttemptResult:
    stream = endpoint.stream and request.streams
    body = request.body(model=endpoint.model, stream=stream)
    headers = endpoint.auth_headers()
    if extra_headers:
        headers.update(extra_headers)
    headers["accept"] = "text/event-stream" if stream else "application/json"
    # httpx parses a str URL on every request, and again to merge even empty
    # params: a cached httpx.URL with the query already in it saves both.
    url = _url(endpoint.base_url, request.path, endpoint.azure_api_version)
    async with client.stream("POST", url, json=body, headers=headers) as response:
        state.status_code = response.status_code
        if on_response is not None:
            on_response(response.headers)
        if response.status_code >= 300:
            await raise_for_status(response, endpoint, body_deadline=state.body_deadline)
        content_type = response.headers.get("content-type", "")
        media = content_type.partition(";")[0].strip().lower()
        is_json = media == "application/json" or media.endswith("+json")
        if stream and (media == "text/event-stream" or not media):
            return await _read_stream(response, request, deadlines, on_first_token, state, progress)
        if media and not is_json:
            # A gateway's HTML error page with a 200, a proxy's plain text...
            expected = "an event stream or JSON" if stream else "JSON"
            raise ProtocolError(
                f"expected {expected}, got content-type {content_type[:100]!r}",
                status_code=response.status_code,
            )
        # Non-streamed, or a server that ignored stream=true and answered JSON.
        raw = await read_bounded(response, MAX_RESPONSE_BYTES, what="response body")
        result = _parse_whole(raw, request, state, response.status_code)
        # The whole body is the first content; report it only once it proved valid.
        if on_first_token is not None:
            on_first_token(result.duration_s)
        return result


async def _read_stream(
    response: httpx.Response,
    request: Request,
    deadlines: Deadlines,
    on_first_token: Callable[[float], None] | None,
    state: _State,
    progress: trio.CancelScope,
) -> AttemptResult:
    decoder = SSEDecoder(max_line_bytes=DEFAULT_MAX_LINE_BYTES)
    acc: Accumulator
    if request.api == "responses":
        acc = ResponsesAccumulator(loads=_json_loads)
    else:
        acc = StreamAccumulator(loads=_json_loads)
    state.acc = acc
    stall = deadlines.stall
    # Moving a trio deadline costs a heap push (3-6 us); a read costs less than
    # that on a fast stream. So the stall deadline is moved only when it has
    # fallen behind, to `stall + slack` ahead: a stall is detected at most
    # `slack` late (never early), and the deadline moves about once per `slack`.
    slack = 0.0 if stall is None else min(STALL_SLACK_MAX, stall * STALL_SLACK_RATIO)
    tail_deadline: float | None = None

    def handle(chunk: bytes) -> None:
        nonlocal tail_deadline
        progressed = False
        position = acc.position
        try:  # _decoding, inlined: this runs once per read
            for event in decoder.feed(chunk):
                if acc.feed(event):
                    progressed = True
        except AttemptError:
            raise
        except Exception as exc:
            raise _undecodable(f"stream event {position + 1}", exc) from exc
        state.events_seen = decoder.events
        state.keepalives = decoder.comments
        if progressed:
            # One clock read per read, not per event: the events of one read
            # arrived together.
            now = trio.current_time()
            state.last_progress_at = now
            if state.first_token_at is None:
                state.first_token_at = now
                if on_first_token is not None:
                    on_first_token(now - state.start)
                # The TTFT deadline gives way to the stall deadline.
                progress.deadline = _at(now, stall) + slack
            elif stall is not None and progress.deadline < now + stall:
                progress.deadline = now + stall + slack
        if acc.complete:
            # Complete: the tail (usage chunk, [DONE], end of body) gets a short grace.
            if tail_deadline is None:
                tail_deadline = trio.current_time() + TAIL_GRACE
            if progress.deadline > tail_deadline:
                progress.deadline = tail_deadline

    await consume(response, handle)
    pending = decoder.pending_bytes
    with _decoding(f"stream event {acc.position + 1}"):
        for event in decoder.end():
            acc.feed(event)
    if not acc.complete:
        raise Truncated(
            f"stream ended without {acc.completion_mark}"
            f" after {acc.progress_events} content events"
            + (f" (an unfinished {pending}-byte line was dropped)" if pending else ""),
            status_code=response.status_code,
            partial=state.partial,
        )
    with _decoding(f"stream event {acc.position}"):
        answer = acc.answer()
    return _result(state, answer, request, status_code=response.status_code)


def _result(state: _State, answer: Answer, request: Request, *, status_code: int) -> AttemptResult:
    usage = answer.usage or _estimate_usage(request, answer)
    now = trio.current_time()
    ttft = None if state.first_token_at is None else state.first_token_at - state.start
    return AttemptResult(
        text=answer.text,
        finish_reason=answer.finish_reason,
        usage=usage,
        ttft_s=ttft,
        duration_s=now - state.start,
        status_code=status_code,
        tool_calls=answer.tool_calls,
        reasoning=answer.reasoning,
        refusal=answer.refusal,
        logprobs=answer.logprobs,
        embeddings=answer.embeddings,
    )


def _estimate_usage(request: Request, answer: Answer) -> Usage:
    out = answer.text + (answer.reasoning or "") + (answer.refusal or "")
    out += "".join(call.name + call.arguments for call in answer.tool_calls)
    return Usage(
        prompt_tokens=estimate_tokens(request.prompt_text()),
        completion_tokens=estimate_tokens(out) if out else 0,
        estimated=True,
    )


def _parse_whole(raw: bytes, request: Request, state: _State, status_code: int) -> AttemptResult:
    with _decoding("response body"):
        if isinstance(request, EmbeddingRequest):
            whole = parse_embeddings(
                raw, status_code=status_code, expected=request.inputs, loads=_json_loads
            )
        elif request.api == "responses":
            whole = parse_response(raw, status_code=status_code, loads=_json_loads)
        else:
            whole = parse_whole(raw, status_code=status_code, loads=_json_loads)
    if not whole.finish_reason and whole.embeddings is None:
        raise Truncated(
            "response has no finish reason", status_code=status_code, partial=bool(whole.text)
        )
    state.first_token_at = trio.current_time()
    return _result(state, whole, request, status_code=status_code)


@contextmanager
def _decoding(where: str) -> Iterator[None]:
    """The catch-all of the boundary: nothing the decoder or parser raises leaves as itself.

    :mod:`shardline._openai` checks every field it reads, so this should never
    fire; if server data still trips an unexpected exception there, it is a
    :class:`~shardline.ProtocolError` (the data is what was wrong), chained to
    the original for debugging.
    """
    try:
        yield
    except AttemptError:
        raise
    except Exception as exc:
        raise _undecodable(where, exc) from exc


def _undecodable(where: str, exc: Exception) -> ProtocolError:
    return ProtocolError(f"{where}: could not be decoded ({type(exc).__name__}: {str(exc)[:200]})")
