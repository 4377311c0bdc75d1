"""Both transports classify every answer alike: whole, cut, garbled, or split anywhere.

A server on a real socket sends a chat stream (chunked, with a Content-Length,
or ending at close), maybe cut short or with bytes flipped, in pieces split at
arbitrary points; :func:`send_attempt` reads it once through httpx's own
transport and once through the lean one. The outcomes must be the same: the
same text, or the same cause. (Not always the same ``partial`` flag: that one
depends on read boundaries, which differ. httpx hands up each HTTP chunk, the
lean transport each read; the SSE decoder decodes a whole chunk before
yielding its events, so a bad byte late in a read hides the content before
it.) Virtual time, so the pauses between pieces cost nothing.

``HYPOTHESIS_PROFILE=thorough`` runs 1,000 examples instead of CI's 30-60.
"""

from __future__ import annotations

import functools
from typing import Any

import h11
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from helpers import chunk, run_virtual
from shardline._attempt import send_attempt
from shardline._config import TRANSPORTS, Deadlines, Endpoint
from shardline._exceptions import AttemptError
from shardline._http import make_client
from shardline._models import ChatRequest

DEADLINES = Deadlines(connect=1.0, ttft=5.0, stall=5.0, attempt=30.0)
REQUEST = ChatRequest(messages=[{"role": "user", "content": "hi"}])
USAGE = b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}\n\n'


def response_bytes(body: bytes, framing: str) -> bytes:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
    if framing == "chunked":
        pieces = [body[i : i + 7] for i in range(0, len(body), 7)]
        framed = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
        return head + b"transfer-encoding: chunked\r\n\r\n" + framed
    if framing == "length":
        return head + b"content-length: %d\r\n\r\n" % len(body) + body
    return head + b"connection: close\r\n\r\n" + body


async def outcome(wire: bytes, cuts: list[int], transport: str) -> tuple[Any, ...]:
    """What send_attempt makes of ``wire`` (sent in pieces, then the socket closed)."""
    points = sorted({c % (len(wire) + 1) for c in cuts} | {len(wire)})

    async def serve(stream: trio.SocketStream) -> None:
        # Read the whole request (httpx writes head and body apart): closing a
        # socket with unread bytes would reset it, whatever we meant to send.
        conn = h11.Connection(h11.SERVER)
        event = conn.next_event()
        while type(event) is not h11.EndOfMessage:
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            event = conn.next_event()
        last = 0
        for point in points:
            await stream.send_all(wire[last:point])
            last = point
            await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, serve, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        endpoint = Endpoint(base_url=f"http://127.0.0.1:{port}/v1", model="m", transport=transport)
        async with make_client(endpoint, max_connections=1, deadlines=DEADLINES) as client:
            try:
                result = await send_attempt(client, endpoint, REQUEST, DEADLINES)
            except AttemptError as exc:
                found: tuple[Any, ...] = ("error", exc.cause)
            else:
                found = ("ok", result.text, result.finish_reason, result.usage.completion_tokens)
        nursery.cancel_scope.cancel()
    return found


@given(
    words=st.lists(st.sampled_from(["a", "bc", " déf", "\n"]), min_size=1, max_size=6),
    framing=st.sampled_from(["chunked", "length", "close"]),
    cut=st.none() | st.integers(0, 10_000),
    flip=st.none() | st.tuples(st.integers(0, 10_000), st.integers(1, 255)),
    cuts=st.lists(st.integers(0, 10_000), max_size=6),
)
def test_both_transports_classify_every_answer_alike(
    words: list[str],
    framing: str,
    cut: int | None,
    flip: tuple[int, int] | None,
    cuts: list[int],
) -> None:
    """The same bytes give the same answer or the same cause on either transport."""
    body = chunk(role=True) + b"".join(chunk(w) for w in words)
    body += chunk(finish="stop") + USAGE + b"data: [DONE]\n\n"
    wire = response_bytes(body, framing)
    if flip is not None:
        at = flip[0] % len(wire)
        wire = wire[:at] + bytes([wire[at] ^ flip[1]]) + wire[at + 1 :]
    if cut is not None:
        wire = wire[: cut % (len(wire) + 1)]

    async def main() -> list[tuple[Any, ...]]:
        return [await outcome(wire, cuts, transport) for transport in TRANSPORTS]

    httpx_outcome, lean_outcome = run_virtual(main)
    assert lean_outcome == httpx_outcome
    if cut is None and flip is None:
        assert httpx_outcome == ("ok", "".join(words), "stop", 2)
