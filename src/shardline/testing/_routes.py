"""What the fake server answers to each request: routing, request checks, fault choice.

It owns the handler every connection runs (`handle`): the stats endpoint,
``/models``, the 4xx answers, and for a completion request its validation, its
item id and attempt (from the ``x-shardline-item-id`` / ``x-shardline-attempt``
headers), the fault the plan chooses for it, and the hand-off to `_respond`.
"""

from __future__ import annotations

import json
import math
from typing import Final
from urllib.parse import unquote

import attrs
import h11
import trio

from ._asked import (
    Asked,
    AskedEmbeddings,
    AskedResponse,
    parse_embedding_params,
    parse_params,
    parse_response_params,
)
from ._connection import ClientGone, Connection
from ._faults import FaultKind
from ._load import Running, format_reset
from ._malformed import HTML_PAGE
from ._respond import Template, fault_headers, stream_response, whole_response
from ._shapes import draw_variant
from ._stats import STATS_PATH
from ._wire import STATUS_FAULTS, ResponseTemplate, models_body
from ._wire_apis import EmbeddingTemplate, ResponsesTemplate

_STATS_PATH_BYTES: Final = STATS_PATH.encode()


async def handle(conn: Connection, request: h11.Request, body: bytes, too_big: bool) -> None:
    """Answer one request (the `Handler` of every connection)."""
    state = conn.state
    c = state.counters
    c.requests += 1
    path = request.target.split(b"?", 1)[0].rstrip(b"/")
    if path == _STATS_PATH_BYTES and request.method == b"GET":
        c.requests -= 1  # reading the counters is not traffic
        payload = json.dumps(c.snapshot().to_json()).encode()
        await conn.send_json(200, payload)
        return
    if path.endswith(b"/chat/completions"):
        endpoint = "chat.completions"
    elif path.endswith(b"/completions"):
        endpoint = "completions"
    elif path.endswith(b"/embeddings"):
        endpoint = "embeddings"
    elif path.endswith(b"/responses"):
        endpoint = "responses"
    elif path.endswith(b"/models"):
        endpoint = "models"
    else:
        endpoint = "other"
    c.by_endpoint[endpoint] += 1
    c.in_flight += 1
    if c.in_flight > c.max_in_flight:
        c.max_in_flight = c.in_flight
    try:
        if endpoint == "other":
            await conn.send_simple(404, "invalid_request_error", "unknown path")
        elif endpoint == "models":
            if request.method != b"GET":
                await conn.send_simple(405, "invalid_request_error", "use GET")
            else:
                await conn.send_json(200, models_body(state.models, state.created))
        elif request.method != b"POST":
            await conn.send_simple(405, "invalid_request_error", "use POST")
        elif too_big:
            await conn.send_simple(413, "invalid_request_error", "request body too large")
        else:
            await _completion(conn, request, body, endpoint=endpoint)
    finally:
        c.in_flight -= 1


def _shardline_headers(request: h11.Request) -> tuple[str | None, int | None]:
    item_id: str | None = None
    attempt: int | None = None
    for name, value in request.headers:
        if name == b"x-shardline-item-id":
            # shardline percent-encodes ids (headers are ASCII); plain ids pass as they are.
            item_id = unquote(value.decode("ascii", "replace"))
        elif name == b"x-shardline-attempt":
            try:
                attempt = int(value)
            except ValueError:
                attempt = None
    return item_id, attempt


async def _completion(
    conn: Connection, request: h11.Request, body: bytes, *, endpoint: str
) -> None:
    state = conn.state
    c = state.counters
    try:
        params = json.loads(body)
        if not isinstance(params, dict):
            raise TypeError("body must be a JSON object")
    except (ValueError, TypeError):
        await conn.send_simple(400, "invalid_request_error", "body is not a JSON object")
        return
    chat = endpoint == "chat.completions"
    parsed: Asked | AskedEmbeddings | AskedResponse | str
    if endpoint == "embeddings":
        parsed = parse_embedding_params(params)
    elif endpoint == "responses":
        parsed = parse_response_params(params, default_max_tokens=state.default_max_tokens)
    else:
        parsed = parse_params(params, chat=chat, default_max_tokens=state.default_max_tokens)
    if isinstance(parsed, str):
        await conn.send_simple(400, "invalid_request_error", parsed)
        return
    c.completion_requests += 1
    sequence = c.completion_requests
    item_id, attempt = _shardline_headers(request)
    model = params.get("model")
    if not isinstance(model, str) or not model:
        model = state.models[0]
    resp: Template
    if isinstance(parsed, AskedEmbeddings):
        stream = False
        resp = EmbeddingTemplate(
            texts=parsed.texts,
            prompt_tokens=parsed.prompt_tokens,
            model=model,
            dimensions=parsed.dimensions,
            base64=parsed.base64,
        )
    elif isinstance(parsed, AskedResponse):
        stream = parsed.stream
        resp = ResponsesTemplate(
            id=f"resp_shardline{sequence}",
            created=state.created,
            model=model,
            prompt_tokens=parsed.prompt_tokens,
            completion_tokens=parsed.completion_tokens,
            incomplete=parsed.incomplete,
            tool_name=parsed.tool_name,
            reasoning=parsed.reasoning,
        )
    else:
        stream, include_usage = parsed.stream, parsed.include_usage
        if include_usage and state.no_usage:
            include_usage = False
            c.usage_withheld += 1
        resp = ResponseTemplate(
            chat=chat,
            id=f"{'chatcmpl' if chat else 'cmpl'}-shardline{sequence}",
            created=state.created,
            model=model,
            prompt_tokens=parsed.prompt_tokens,
            completion_tokens=parsed.completion_tokens,
            finish_reason=parsed.finish_reason,
            include_usage=include_usage,
            tool_name=parsed.tool_name,
            reasoning_key=parsed.reasoning_key,
            logprobs=parsed.logprobs,
        )
    prompt_tokens, completion_tokens = resp.prompt_tokens, resp.completion_tokens
    key = f"item\0{item_id}\0{attempt}" if item_id is not None else f"seq\0{sequence}"
    gate = state.gate
    if gate.requests is not None or gate.tokens is not None:
        tokens = prompt_tokens + completion_tokens
        wait, short, headers = gate.charge(tokens, trio.current_time())
        conn.extra_headers.extend(headers)
        if wait > 0.0:
            c.rate_limit_refusals += 1
            await _refuse_rate(conn, wait, short, tokens)
            return
    delay = 0.0
    # A hedge (a second leg of a slow attempt) models another replica: not slow.
    hedge = (b"x-shardline-hedge", b"1") in request.headers
    if attempt == 1 and not hedge and gate.slow_first(seed=state.seed, key=f"{item_id}"):
        c.slow_first_tokens += 1
        delay = gate.model.slow_first_delay
    answer = _Answer(conn, resp, stream, sequence, item_id, attempt, key, delay)
    if gate.model.preempt:
        await _one_at_a_time(conn, answer)
    elif gate.limiter is not None:
        await _within_capacity(conn, gate.limiter, answer)
    else:
        await answer.run()


@attrs.define(eq=False)
class _Answer:
    """Everything needed to answer one admitted completion request."""

    conn: Connection
    resp: Template
    stream: bool
    sequence: int
    item_id: str | None
    attempt: int | None
    key: str
    delay: float

    async def run(self) -> None:
        """Serve the response, misbehaving as the fault plan says."""
        c = self.conn.state.counters
        c.generating += 1
        c.max_generating = max(c.max_generating, c.generating)
        try:
            await self._run()
        finally:
            c.generating -= 1

    async def _run(self) -> None:
        conn, state = self.conn, self.conn.state
        arrived = trio.current_time()
        fault = state.faults.choose(
            seed=state.seed, sequence=self.sequence, item_id=self.item_id, attempt=self.attempt
        )
        if (
            fault is not None
            and fault.kind is FaultKind.MALFORMED_SHAPE
            and fault.variant is None
            and isinstance(self.resp, ResponseTemplate)  # the variants name chat fields
        ):
            variant = draw_variant(seed=state.seed, key=self.key, stream=self.stream)
            fault = attrs.evolve(fault, variant=variant)
        if fault is not None and fault.kind is FaultKind.HTML_PAGE:
            conn.count_fault(fault)
            html = b"text/html; charset=utf-8"
            await conn.send_json(200, HTML_PAGE, fault_headers(fault), content_type=html)
            return
        if fault is not None and fault.kind in STATUS_FAULTS:
            conn.count_fault(fault)
            status, error_type, message, code = STATUS_FAULTS[fault.kind]
            extra = [(b"x-shardline-fault", fault.kind.value.encode())]
            if fault.kind is FaultKind.RATE_LIMIT:
                extra += _retry_after(fault.retry_after)
            await conn.send_simple(status, error_type, message, code=code, extra=extra)
            return
        if fault is not None and fault.kind is FaultKind.STALL_HEADERS:
            conn.count_fault(fault)
            await conn.stall(fault.duration)
            fault = None  # a finite stall: carry on as a slow server
        if self.stream:
            assert not isinstance(self.resp, EmbeddingTemplate)  # embeddings never stream
            await stream_response(conn, self.resp, fault, arrived, first_token_delay=self.delay)
        else:
            await whole_response(conn, self.resp, fault, arrived, first_token_delay=self.delay)


def _retry_after(seconds: float) -> list[tuple[bytes, bytes]]:
    return [
        (b"retry-after", b"%d" % math.ceil(seconds)),
        (b"retry-after-ms", b"%d" % math.ceil(seconds * 1000)),
    ]


async def _refuse_rate(conn: Connection, wait: float, short: str, tokens: int) -> None:
    """Answer 429 for a request over the RPM or TPM limit (headers already set)."""
    gate = conn.state.gate
    limit = gate.model.rpm if short == "requests" else gate.model.tpm
    unit = "requests per min (RPM)" if short == "requests" else "tokens per min (TPM)"
    requested = 1 if short == "requests" else tokens
    if math.isinf(wait):
        message = f"Request too large for {unit}: Limit {limit}, Requested {requested}."
        extra: list[tuple[bytes, bytes]] = []
    else:
        message = (
            f"Rate limit reached for {unit}: Limit {limit}, Requested {requested}. "
            f"Please try again in {format_reset(wait)}."
        )
        extra = _retry_after(wait)
    await conn.send_simple(429, short, message, code="rate_limit_exceeded", extra=extra)


async def _within_capacity(
    conn: Connection, limiter: trio.CapacityLimiter, answer: _Answer
) -> None:
    """Answer within the server's capacity: refuse beyond it, or queue (FIFO)."""
    state = conn.state
    c = state.counters
    model = state.gate.model
    token = object()
    try:
        limiter.acquire_on_behalf_of_nowait(token)
    except trio.WouldBlock:
        if model.overload != "queue":
            c.capacity_refusals += 1
            fault = FaultKind.RATE_LIMIT if model.overload == "429" else FaultKind.HTTP_503
            status, error_type, message, code = STATUS_FAULTS[fault]
            extra = _retry_after(model.retry_after) if model.retry_after is not None else []
            await conn.send_simple(status, error_type, message, code=code, extra=extra)
            return
        await _wait_turn(conn, limiter, token)
    try:
        await answer.run()
    finally:
        limiter.release_on_behalf_of(token)


async def _wait_turn(conn: Connection, limiter: trio.CapacityLimiter, token: object) -> None:
    """Wait in the queue for a slot; give the place up if the client leaves.

    Raises:
        ClientGone: if the client disconnected while waiting (no slot is held).
    """
    c = conn.state.counters
    c.queued += 1
    c.max_queued = max(c.max_queued, c.queued)
    gone = acquired = False
    try:
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                nonlocal gone
                await conn.wait_client_gone()
                gone = True
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            await limiter.acquire_on_behalf_of(token)
            acquired = True
            nursery.cancel_scope.cancel()
    finally:
        c.queued -= 1
    if gone:
        if acquired:
            limiter.release_on_behalf_of(token)
        raise ClientGone


async def _one_at_a_time(conn: Connection, answer: _Answer) -> None:
    """Serve as llama.cpp does: a new request cuts the one in flight, then runs alone."""
    gate = conn.state.gate
    if gate.running is not None:
        gate.running.cut = True
        gate.running.scope.cancel()
    me = Running(scope=trio.CancelScope())
    gate.running = me
    try:
        with me.scope:
            await answer.run()
    finally:
        if gate.running is me:
            gate.running = None
    if me.scope.cancelled_caught:
        conn.state.counters.preempted += 1
        await conn.close()
