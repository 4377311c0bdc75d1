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

from ._connection import Connection
from ._faults import FaultKind
from ._malformed import HTML_PAGE
from ._respond import fault_headers, stream_response, whole_response
from ._shapes import draw_variant
from ._stats import STATS_PATH
from ._wire import STATUS_FAULTS, ResponseTemplate, models_body, parse_params

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
            await _completion(conn, request, body, chat=endpoint == "chat.completions")
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


async def _completion(conn: Connection, request: h11.Request, body: bytes, *, chat: bool) -> None:
    state = conn.state
    c = state.counters
    arrived = trio.current_time()
    try:
        params = json.loads(body)
        if not isinstance(params, dict):
            raise TypeError("body must be a JSON object")
    except (ValueError, TypeError):
        await conn.send_simple(400, "invalid_request_error", "body is not a JSON object")
        return
    parsed = parse_params(params, chat=chat, default_max_tokens=state.default_max_tokens)
    if isinstance(parsed, str):
        await conn.send_simple(400, "invalid_request_error", parsed)
        return
    prompt_tokens, completion_tokens, finish_reason, stream, include_usage = parsed
    c.completion_requests += 1
    sequence = c.completion_requests
    item_id, attempt = _shardline_headers(request)
    fault = state.faults.choose(
        seed=state.seed, sequence=sequence, item_id=item_id, attempt=attempt
    )
    model = params.get("model")
    if not isinstance(model, str) or not model:
        model = state.models[0]
    resp = ResponseTemplate(
        chat=chat,
        id=f"{'chatcmpl' if chat else 'cmpl'}-shardline{sequence}",
        created=state.created,
        model=model,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        finish_reason=finish_reason,
        include_usage=include_usage,
    )
    if fault is not None and fault.kind is FaultKind.MALFORMED_SHAPE and fault.variant is None:
        key = f"item\0{item_id}\0{attempt}" if item_id is not None else f"seq\0{sequence}"
        fault = attrs.evolve(fault, variant=draw_variant(seed=state.seed, key=key, stream=stream))
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
            extra.append((b"retry-after", b"%d" % math.ceil(fault.retry_after)))
            extra.append((b"retry-after-ms", b"%d" % round(fault.retry_after * 1000)))
        await conn.send_simple(status, error_type, message, code=code, extra=extra)
        return
    if fault is not None and fault.kind is FaultKind.STALL_HEADERS:
        conn.count_fault(fault)
        await conn.stall(fault.duration)
        fault = None  # a finite stall: carry on as a slow server
    if stream:
        await stream_response(conn, resp, fault, arrived)
    else:
        await whole_response(conn, resp, fault, arrived)
