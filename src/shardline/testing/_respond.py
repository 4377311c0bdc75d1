"""How the fake server writes a completion response, and how each fault strikes it.

It owns fault execution: a streamed response (`stream_response`) is paced by
the timing model and coalesces every due event into one chunked frame; a
fault strikes at its content event (stall, drip, reset, truncate, malformed,
in-band error); a non-streamed response (`whole_response`) is sent whole when
its last token is due, or misbehaves the non-streamed way. Which fault a
request gets, and whether it is admitted at all, is decided before (`_routes`).
"""

from __future__ import annotations

from typing import Final

import h11
import trio

from ._connection import JSON_HEADERS, Connection
from ._faults import Fault, FaultKind
from ._malformed import TAIL_VARIANTS, shape_body, shape_event, shape_tail
from ._wire import ResponseTemplate, error_body, frame
from ._wire_apis import EmbeddingTemplate, ResponsesTemplate

#: What `stream_response` can stream, and what `whole_response` can send.
Streamed = ResponseTemplate | ResponsesTemplate
Template = ResponseTemplate | ResponsesTemplate | EmbeddingTemplate

FLUSH_BYTES: Final = 64 * 1024
"""Pending events are framed and written once they reach this many bytes."""


def fault_headers(fault: Fault) -> list[tuple[bytes, bytes]]:
    """The response headers that name the fault (and shape variant) served."""
    headers = [(b"x-shardline-fault", fault.kind.value.encode())]
    if fault.variant is not None:
        headers.append((b"x-shardline-shape", fault.variant.value.encode()))
    return headers


async def stream_response(
    conn: Connection,
    resp: Streamed,
    fault: Fault | None,
    arrived: float,
    *,
    first_token_delay: float = 0.0,
) -> None:
    """Stream ``resp`` as SSE, paced from ``arrived``, with ``fault`` striking in it.

    ``first_token_delay`` is added before the first content event (a slow first token).
    """
    timing = conn.state.timing
    headers = [
        (b"content-type", b"text/event-stream; charset=utf-8"),
        (b"cache-control", b"no-cache"),
        (b"transfer-encoding", b"chunked"),
        *conn.extra_headers,
    ]
    if fault is not None:
        headers.extend(fault_headers(fault))
    head = conn.conn.send(h11.Response(status_code=200, headers=headers, reason=b"OK"))
    assert head is not None
    if fault is not None and fault.kind is FaultKind.STALL_AFTER_HEADERS:
        await conn.stream.send_all(head)
        conn.count_fault(fault)
        await conn.stall(fault.duration)
        fault = None
        out = bytearray()
    else:
        out = bytearray(head)
    if resp.chat:
        frame(out, resp.role_event())

    total = resp.completion_tokens
    per_event = timing.tokens_per_event
    n_events = (total + per_event - 1) // per_event
    strike = min(fault.after_events, n_events) if fault is not None else -1
    if fault is not None and fault.variant in TAIL_VARIANTS:
        strike = n_events
    due = arrived + timing.ttft + first_token_delay
    itl = timing.itl
    now = trio.current_time()
    pending = bytearray()  # events not yet framed
    sent = 0
    spoiled = False
    for index in range(n_events + 1):
        if index == strike:
            assert fault is not None
            if pending:
                frame(out, pending)
                pending.clear()
            outcome = await _strike_stream(conn, resp, fault, out, sent)
            out = bytearray()
            if outcome == "end":
                return
            # After a malformed event the rest is sent, but no correct client
            # counts the response as a success, so neither does the server.
            spoiled = fault.kind in (FaultKind.MALFORMED, FaultKind.MALFORMED_SHAPE)
            # a finite stall or drip: the rest arrives late, keep pacing from now
            now = trio.current_time()
            due = max(due, now)
        if index == n_events:
            break
        count = min(per_event, total - sent)
        if due > now:
            if pending:
                frame(out, pending)
                pending.clear()
            if out:
                await conn.write(out, checkpoint=False)  # sleep_until checkpoints
                out = bytearray()
            if sent == 0:
                await conn.wait_first_token(due)  # notices a client that left meanwhile
            else:
                await conn.state.ticker.sleep_until(due)
            now = trio.current_time()
        pending += resp.content_event(sent, count)
        sent += count
        due += itl * count
        if len(pending) >= FLUSH_BYTES:
            frame(out, pending)
            pending.clear()
            await conn.write(out, checkpoint=True)
            out = bytearray()
    pending += resp.finish_event()
    if resp.include_usage:
        pending += resp.usage_event()
    pending += resp.done_marker
    frame(out, pending)
    out += conn.conn.send(h11.EndOfMessage()) or b""
    await conn.write(out, checkpoint=True)
    if not spoiled:
        conn.complete(resp)


async def _strike_stream(
    conn: Connection, resp: Streamed, fault: Fault, out: bytearray, sent: int
) -> str:
    """Apply a mid-stream fault. Returns ``"end"`` or ``"continue"``."""
    kind = fault.kind
    conn.count_fault(fault)
    if kind is FaultKind.STALL_MID:
        if out:
            await conn.stream.send_all(out)
        await conn.stall(fault.duration)
        return "continue"
    if kind is FaultKind.DRIP:
        if out:
            await conn.stream.send_all(out)
        await conn.drip(fault, resp.empty_event() if resp.chat else resp.content_event(0, 0))
        return "continue"
    if kind is FaultKind.RESET:
        if out:
            await conn.stream.send_all(out)
        await conn.reset()
    if kind is FaultKind.TRUNCATE:
        out += conn.conn.send(h11.EndOfMessage()) or b""
        await conn.stream.send_all(out)
        return "end"
    if kind is FaultKind.MALFORMED:
        frame(out, resp.malformed_event(sent))
        await conn.stream.send_all(out)
        return "continue"
    if kind is FaultKind.MALFORMED_SHAPE and isinstance(resp, ResponsesTemplate):
        frame(out, resp.shape_event())
        await conn.stream.send_all(out)
        return "continue"
    if kind is FaultKind.MALFORMED_SHAPE:
        assert isinstance(resp, ResponseTemplate)
        assert fault.variant is not None  # drawn when the request was admitted
        if fault.variant in TAIL_VARIANTS:
            frame(out, shape_tail(resp, fault.variant))
            final = True
        else:
            event, final = shape_event(resp, fault.variant, sent)
            frame(out, event)
        if final:
            out += conn.conn.send(h11.EndOfMessage()) or b""
        await conn.stream.send_all(out)
        return "end" if final else "continue"
    if kind is FaultKind.ERROR_EVENT:
        frame(out, resp.error_event() + resp.done_marker)
        out += conn.conn.send(h11.EndOfMessage()) or b""
        await conn.stream.send_all(out)
        return "end"
    raise AssertionError(f"unexpected mid-stream fault {kind}")  # pragma: no cover


async def whole_response(
    conn: Connection,
    resp: Template,
    fault: Fault | None,
    arrived: float,
    *,
    first_token_delay: float = 0.0,
) -> None:
    """Send ``resp`` as one JSON body when its last token is due, or misbehave as ``fault`` says.

    ``first_token_delay`` is added before the body (a slow first token).
    """
    timing = conn.state.timing
    n = resp.completion_tokens
    due = arrived + timing.ttft + first_token_delay + timing.itl * max(0, n - 1)
    if due > trio.current_time():
        await conn.wait_first_token(due)
    else:
        await trio.lowlevel.checkpoint()
    kind = fault.kind if fault is not None else None
    if kind is FaultKind.TRUNCATE:
        payload = resp.whole_body(text_tokens=n // 2, finish_reason=None)
    elif kind is FaultKind.MALFORMED:
        payload = resp.whole_body()[:-7] + b'"}]}}{'
    elif kind is FaultKind.MALFORMED_SHAPE:
        assert fault is not None
        if isinstance(resp, ResponseTemplate):
            assert fault.variant is not None  # drawn when the request was admitted
            payload = shape_body(resp, fault.variant)
        else:
            payload = resp.shape_body()
    elif kind is FaultKind.ERROR_EVENT:
        payload = error_body(
            "The server had an error while processing your request.", "server_error", None
        )
    else:
        payload = resp.whole_body()
    headers = [*JSON_HEADERS, *conn.extra_headers]
    if fault is not None:
        headers.extend(fault_headers(fault))
    if kind is FaultKind.DRIP:
        headers.append((b"transfer-encoding", b"chunked"))
    else:
        headers.append((b"content-length", b"%d" % len(payload)))
    head = conn.conn.send(h11.Response(status_code=200, headers=headers, reason=b"OK"))
    assert head is not None
    if fault is None or kind in (
        FaultKind.TRUNCATE,
        FaultKind.MALFORMED,
        FaultKind.MALFORMED_SHAPE,
        FaultKind.ERROR_EVENT,
    ):
        if fault is not None:
            conn.count_fault(fault)
        data = head + (conn.conn.send(h11.Data(data=payload)) or b"")
        data += conn.conn.send(h11.EndOfMessage()) or b""
        await conn.stream.send_all(data)
        if fault is None:
            conn.complete(resp)
        return
    assert fault is not None
    conn.count_fault(fault)
    half = len(payload) // 2
    if kind is FaultKind.STALL_AFTER_HEADERS:
        await conn.stream.send_all(head)
        await conn.stall(fault.duration)
        rest = payload
    elif kind is FaultKind.STALL_MID:
        await conn.stream.send_all(head + (conn.conn.send(h11.Data(data=payload[:half])) or b""))
        await conn.stall(fault.duration)
        rest = payload[half:]
    elif kind is FaultKind.DRIP:
        await conn.stream.send_all(head)
        await conn.drip(fault, b" ")
        rest = payload
    elif kind is FaultKind.RESET:
        await conn.stream.send_all(head + (conn.conn.send(h11.Data(data=payload[:half])) or b""))
        await conn.reset()
        raise AssertionError("unreachable")  # pragma: no cover
    else:  # pragma: no cover - every kind is handled above
        raise AssertionError(f"unexpected fault {kind}")
    data = (conn.conn.send(h11.Data(data=rest)) or b"") + (
        conn.conn.send(h11.EndOfMessage()) or b""
    )
    await conn.stream.send_all(data)
    conn.complete(resp)
