"""One HTTP/1.1 connection of the fake server, over h11, and its I/O primitives.

It owns the request loop (parse a request and its body with h11, hand it to
a handler, start the next cycle), the ways of writing to the socket (a fast
raw write, whole JSON responses), and the primitives that faults are built
from: staying silent (`Connection.stall`), sending keep-alive traffic
(`Connection.drip`), aborting with a TCP RST (`Connection.reset`) and closing
mid-response (`Connection.close`). What to answer is the handler's business
(`_routes`); how a response misbehaves is `_respond`'s.
"""

from __future__ import annotations

import http
import logging
import math
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any, Final

import h11
import trio

from ._faults import Fault
from ._state import ServerState
from ._wire import ResponseTemplate, error_body, frame
from ._wire_apis import EmbeddingTemplate, ResponsesTemplate

MAX_BODY_BYTES: Final = 8 * 1024 * 1024
"""Largest request body accepted (``413`` above it)."""
RECEIVE_BYTES: Final = 64 * 1024

REASONS: Final = {s.value: s.phrase.encode() for s in http.HTTPStatus}
JSON_HEADERS: Final = [(b"content-type", b"application/json")]

_logger = logging.getLogger("shardline")


class ClientGone(Exception):
    """The client closed or reset the connection (raised while stalling)."""


class Closed(Exception):
    """We aborted or closed the connection on purpose (a fault, or a preempted request)."""


Handler = Callable[["Connection", h11.Request, bytes, bool], Awaitable[None]]
"""``handler(conn, request, body, too_big)`` answers one request."""


class Connection:
    """One HTTP/1.1 connection: a request loop over h11."""

    __slots__ = ("conn", "extra_headers", "fd", "state", "stream")

    def __init__(self, state: ServerState, stream: trio.SocketStream) -> None:
        self.state = state
        self.stream = stream
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        # Hot path: on POSIX, write to the (non-blocking) socket directly and only
        # fall back to trio's send_all when the kernel buffer is full.
        self.fd = stream.socket.fileno() if os.name == "posix" else -1
        #: Headers every response to the current request carries (``x-ratelimit-*``).
        self.extra_headers: list[tuple[bytes, bytes]] = []

    async def write(self, data: bytearray, *, checkpoint: bool) -> None:
        """Send ``data``; a checkpoint only if ``checkpoint`` or the kernel buffer is full.

        Only for call sites that reach a checkpoint soon anyway (the next
        ``sleep_until``, or the next request's receive), or that pass
        ``checkpoint=True``. ``send_all`` costs two scheduler passes per call,
        which is most of the cost of a paced event.
        """
        if self.fd >= 0:
            try:
                sent = os.write(self.fd, data)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                raise trio.BrokenResourceError(f"client connection failed: {exc}") from exc
            if sent == len(data):
                if checkpoint:
                    # The bytes are gone: like trio's own send, a schedule point
                    # that cannot raise Cancelled for an operation that happened
                    # (a one-at-a-time server would count a whole answer as cut).
                    await trio.lowlevel.cancel_shielded_checkpoint()
                return
            del data[:sent]
        await self.stream.send_all(data)

    async def _next_event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                data = await self.stream.receive_some(RECEIVE_BYTES)
                self.conn.receive_data(data)
                continue
            return event

    async def run(self, handler: Handler) -> None:
        """Serve requests with ``handler`` until the client closes the connection."""
        while True:
            try:
                event = await self._next_event()
            except h11.RemoteProtocolError:
                await self.send_simple(400, "invalid_request_error", "malformed HTTP request")
                return
            if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return
            if not isinstance(event, h11.Request):  # pragma: no cover - h11 guarantees
                return
            body = bytearray()
            too_big = False
            while True:
                try:
                    part = await self._next_event()
                except h11.RemoteProtocolError:
                    return
                if isinstance(part, h11.Data):
                    if len(body) + len(part.data) > MAX_BODY_BYTES:
                        too_big = True
                    else:
                        body += part.data
                elif isinstance(part, h11.EndOfMessage):
                    break
                else:
                    return  # connection closed mid-request
            self.extra_headers = []
            try:
                await handler(self, event, bytes(body), too_big)
            except (ClientGone, Closed):
                return
            if self.conn.our_state is not h11.DONE or self.conn.their_state is not h11.DONE:
                return
            self.conn.start_next_cycle()

    # -- whole responses -------------------------------------------------------

    async def send_json(
        self,
        status: int,
        payload: bytes,
        extra: list[tuple[bytes, bytes]] | None = None,
        *,
        content_type: bytes = b"application/json",
    ) -> None:
        """Send a complete response with a ``content-length`` body."""
        headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(payload))]
        headers += self.extra_headers
        if extra:
            headers.extend(extra)
        reason = REASONS.get(status, b"")
        data = self.conn.send(h11.Response(status_code=status, headers=headers, reason=reason))
        assert data is not None
        data += self.conn.send(h11.Data(data=payload)) or b""
        data += self.conn.send(h11.EndOfMessage()) or b""
        await self.stream.send_all(data)

    async def send_simple(
        self,
        status: int,
        error_type: str,
        message: str,
        *,
        code: str | None = None,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        """Send an OpenAI-style error response (if no response was started)."""
        if self.conn.our_state is not h11.SEND_RESPONSE:
            return
        payload = error_body(message, error_type, code)
        await self.send_json(status, payload, extra)

    # -- bookkeeping -----------------------------------------------------------

    def count_fault(self, fault: Fault) -> None:
        """Count one fault served."""
        counters = self.state.counters
        counters.faults[fault.kind.value] += 1
        if fault.variant is not None:
            counters.shapes[fault.variant.value] += 1

    def complete(self, resp: ResponseTemplate | ResponsesTemplate | EmbeddingTemplate) -> None:
        """Count one completion served correctly to its end."""
        c = self.state.counters
        c.completed += 1
        c.prompt_tokens += resp.prompt_tokens
        c.completion_tokens += resp.completion_tokens

    # -- stalls, drips, resets and closes ----------------------------------------

    async def wait_client_gone(self) -> None:
        """Return when the client closes or resets the connection.

        Bytes the client sends meanwhile are handed to h11 (up to a bound) so a
        pipelined request is not lost.
        """
        received = 0
        while True:
            try:
                data = await self.stream.receive_some(RECEIVE_BYTES)
            except trio.BrokenResourceError:
                return
            if not data:
                return
            received += len(data)
            if received > MAX_BODY_BYTES:
                return
            self.conn.receive_data(data)

    async def wait_first_token(self, due: float) -> None:
        """Wait until ``due`` (trio time), the first token's time; notice a client leaving.

        A real server stops working on a request whose client disconnected during
        prefill; so does this one (counted as ``abandoned``), which frees its slot at
        once for queued requests.

        Raises:
            ClientGone: if the client disconnects first; the connection is done.
        """

        async def prefill() -> bool:
            await self.state.ticker.sleep_until(due)
            return False

        if await self._unless_client_goes(prefill):
            self.state.counters.abandoned += 1
            raise ClientGone

    async def _unless_client_goes(self, work: Callable[[], Awaitable[bool]]) -> bool:
        """Run ``work`` while watching the client; return whether the client went.

        ``work`` returns ``True`` when it saw the client go itself (a failed
        send); if the watcher sees it first, ``work`` is cancelled.
        """
        gone = False
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                nonlocal gone
                await self.wait_client_gone()
                gone = True
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            if await work():
                gone = True
            nursery.cancel_scope.cancel()
        return gone

    async def stall(self, duration: float | None) -> None:
        """Send nothing for ``duration`` seconds (``None``: forever).

        Raises:
            ClientGone: if the client disconnects first; the connection is done.
        """
        with trio.move_on_after(math.inf if duration is None else duration):
            await self.wait_client_gone()
            raise ClientGone

    async def drip(self, fault: Fault, data_event: bytes) -> None:
        """Send keep-alive traffic (no content) every ``fault.interval`` seconds.

        Alternates an SSE comment with ``data_event`` (an empty delta; for a
        non-streamed body, a space). Runs for ``fault.duration`` (``None``:
        forever) or until the client disconnects (raises `ClientGone`).
        """
        comment = data_event if data_event == b" " else b": keep-alive\n\n"

        async def beat() -> bool:
            with trio.move_on_after(math.inf if fault.duration is None else fault.duration):
                beats = 0
                try:
                    while True:
                        out = bytearray()
                        frame(out, comment if beats % 2 == 0 else data_event)
                        await self.stream.send_all(out)
                        beats += 1
                        await trio.sleep(fault.interval)
                except trio.BrokenResourceError:
                    return True
            return False

        if await self._unless_client_goes(beat):
            raise ClientGone

    async def reset(self) -> None:
        """Abort the connection: ``SO_LINGER`` 0 then close sends a TCP RST.

        Raises:
            Closed: always; the connection is done.
        """
        sock = self.stream.socket
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        raise Closed

    async def close(self) -> None:
        """Close the connection mid-response: a clean FIN, no terminating chunk.

        Raises:
            Closed: always; the connection is done.
        """
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(self.stream)
        raise Closed


async def serve_connection(state: ServerState, stream: trio.SocketStream, handler: Handler) -> None:
    """Serve one accepted connection to its end, counting it; never raises ``Exception``."""
    c = state.counters
    c.connections_accepted += 1
    c.connections_open += 1
    conn = Connection(state, stream)
    try:
        await conn.run(handler)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the client went away; nothing to answer
    except Exception:
        # One bad exchange must not take the whole server (and the user's test
        # nursery) down: log it, count it, drop this connection.
        c.internal_errors += 1
        _logger.exception("fake server: internal error on a connection; closing it")
    finally:
        c.connections_open -= 1
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(stream)
