"""A lean HTTP/1.1 transport for httpx on trio: one LIFO stack of idle sockets.

:class:`LeanTransport` implements :class:`httpx.AsyncBaseTransport`, so an
:class:`httpx.AsyncClient` built on it keeps httpx's whole API (URLs, headers,
auth, content decoding, ``client.stream``); only what lies under it changes.
httpcore's pool is general: it assigns requests to connections, queues them,
and wraps each body in several layers of async iterators. A shard does not
need that: its :class:`trio.CapacityLimiter` already bounds what is in flight,
so a connection is simply taken from the top of a stack of idle ones (the most
recently used, the warmest; the oldest expire at the bottom) or opened, and
put back when its response was read to the end.

What it does, and what it is not:

* HTTP/1.1 only: h11 writes the request and parses the response head (as
  in httpcore); the body's framing (``Content-Length``, chunked, until close)
  is decoded by :mod:`shardline._transport_body` with h11's rules and
  messages, at a fraction of the CPU per chunk. TLS through
  :class:`trio.SSLStream` with the caller's :class:`ssl.SSLContext`. No
  HTTP/2, no proxies: keep httpx's own transport for those.
* A connection goes back to the stack only when its response was read to the
  end and allows keep-alive (HTTP/1.1, no ``Connection: close``, nothing after
  the body); a response closed early (cancelled, abandoned, failed) closes its
  socket, so the server sees the client go.
* An idle connection is checked before reuse: if the server closed it (the
  socket is readable: EOF or stray bytes) it is dropped and another one taken
  or opened, before any byte of the request is sent. A connection that fails
  once the request is on its way is never silently retried.
* Errors are httpx's own (``ConnectError``, ``ConnectTimeout``, ``PoolTimeout``,
  ``ReadError``, ``WriteError``, ``RemoteProtocolError``, ...), with httpcore's
  messages, so code that classifies httpx errors needs no change.
* Request bodies are buffered and sent with the head in one write (JSON
  bodies, not uploads). An answer the server sent before it read the whole
  request (a 413, then a closed socket) is read rather than lost to the
  broken pipe, as in httpcore.
* A plain socket is waited for, then read with ``os.read`` (see
  ``_Connection._receive_posix``); :func:`direct_body` lets the attempt layer
  read a body without httpx's iterators.

Timeouts come from the request's ``timeout`` extension (the client's
:class:`httpx.Timeout`), as with httpx's own transport: ``pool`` to wait for
a free connection, ``connect`` for TCP plus TLS, ``read`` per read and
``write`` per request, each ``None`` for none.
"""

from __future__ import annotations

import collections
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import attrs
import h11
import httpx
import trio

from ._transport_body import Body, body_for
from ._validate import integer, number

__all__ = ["LeanTransport", "LeanTransportStatistics", "direct_body"]

#: Bytes asked of the socket per read (httpcore's figure).
_READ_SIZE = 64 * 1024

_Origin = tuple[bytes, str, int]

#: What a broken or closed socket raises, through trio's streams or sockets.
_NETWORK_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)

#: The key of a response's ``extensions`` that holds its lean body (see :func:`direct_body`).
_BODY = "shardline.lean_body"


@attrs.frozen(kw_only=True)
class LeanTransportStatistics:
    """A snapshot of a :class:`LeanTransport`'s connections.

    Attributes:
        connections_open: Sockets open now (idle plus in use).
        idle: Sockets waiting on the stack for the next request.
        in_use: Requests holding a connection now (sent, or body not closed yet).
        opened: Connections opened since the transport was made.
        reused: Requests sent on a connection taken from the stack.
        discarded_stale: Idle connections found closed by the server and dropped.
    """

    connections_open: int
    idle: int
    in_use: int
    opened: int
    reused: int
    discarded_stale: int


class _Connection:
    """One socket (plain or TLS) and its h11 state."""

    __slots__ = ("h11", "idle_since", "origin", "receive", "send", "socket", "stream")

    def __init__(self, origin: _Origin, stream: trio.abc.Stream, sock: trio.socket.SocketType):
        self.origin = origin
        self.stream = stream
        self.socket = sock
        self.h11 = h11.Connection(h11.CLIENT)  # a fresh one for each request
        self.idle_since = 0.0
        # A plain socket is read directly: trio's SocketStream adds a conflict
        # detector and an error-translating context manager to every read.
        # (SSLStream.receive_some is typed bytes | bytearray; it returns bytes.)
        self.receive: Callable[[int], Awaitable[bytes]]
        if not isinstance(stream, trio.SocketStream):
            self.receive = cast("Callable[[int], Awaitable[bytes]]", stream.receive_some)
        elif os.name == "posix":
            self.receive = self._receive_posix
        else:
            self.receive = sock.recv
        self.send: Callable[[bytes], Awaitable[None]] = stream.send_all

    def close(self) -> None:
        """Close the socket now, without blocking (no TLS close_notify: HTTP/1.1 needs none)."""
        self.socket.close()

    async def _receive_posix(self, size: int) -> bytes:
        """``self.socket.recv(size)``, for less CPU per call.

        trio's ``recv`` tries to read first, inside an async context manager,
        and on a stream whose bytes arrive one event at a time that first try
        fails (``BlockingIOError``, raised out through the context manager)
        nearly every time. Here the socket is waited for first, then read:
        ``wait_readable`` is the checkpoint, and when bytes are waiting already
        it returns at the next scheduler tick, as trio's own checkpoint after a
        read would. Measured side by side, this costs less CPU per event on
        paced and on burst streams alike (see the performance page).
        ``os.read`` on a socket is ``recv`` without flags; the descriptor is
        asked for each time, so a closed socket (-1) fails with ``EBADF`` and
        never reads a reused descriptor.
        """
        sock = self.socket
        while True:
            await trio.lowlevel.wait_readable(sock)
            try:
                return os.read(sock.fileno(), size)
            except BlockingIOError:  # pragma: no cover - a spurious wake-up
                pass


class LeanTransport(httpx.AsyncBaseTransport):
    """An :class:`httpx.AsyncBaseTransport` for HTTP/1.1 on trio, with a LIFO idle stack.

    Use it as httpx's own: ``httpx.AsyncClient(transport=LeanTransport(...))``;
    closing the client closes every connection. See the module docstring for
    what it does and does not do.

    Args:
        ssl_context: The TLS context for ``https://`` URLs.
        max_connections: Sockets open at once, at most (idle plus in use); a
            request beyond that waits for one (``pool`` timeout).
        keepalive_expiry: Seconds an idle connection may wait for reuse;
            ``None`` keeps it until the server closes it.
    """

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext,
        max_connections: int,
        keepalive_expiry: float | None,
    ) -> None:
        integer("max_connections", ge=1)(None, None, max_connections)
        number("keepalive_expiry", ge=0, unit="seconds", optional=True)(
            None, None, keepalive_expiry
        )
        self._ssl_context = ssl_context
        self._max = max_connections
        self._expiry = keepalive_expiry
        self._slots = trio.Semaphore(max_connections)
        self._idle: collections.deque[_Connection] = collections.deque()
        self._open = 0
        self._opened = 0
        self._reused = 0
        self._stale = 0
        self._closed = False

    def statistics(self) -> LeanTransportStatistics:
        """The counts of a :class:`LeanTransportStatistics`, now."""
        return LeanTransportStatistics(
            connections_open=self._open,
            idle=len(self._idle),
            in_use=self._max - self._slots.value,
            opened=self._opened,
            reused=self._reused,
            discarded_stale=self._stale,
        )

    def __repr__(self) -> str:
        in_use = self._max - self._slots.value
        return (
            f"<LeanTransport: {in_use}/{self._max} in use, {len(self._idle)} idle,"
            f" {self._open} open>"
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` on an idle or new connection; the response streams its body."""
        if self._closed:
            raise RuntimeError("the transport is closed")
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        url = request.url
        scheme = url.raw_scheme
        if scheme not in (b"http", b"https"):
            raise httpx.UnsupportedProtocol(
                f"the lean transport speaks http and https, not {url.scheme!r}", request=request
            )
        port = url.port or (443 if scheme == b"https" else 80)
        # The ASCII host (IDNA-encoded; httpx's `url.host` is the unicode form).
        origin: _Origin = (scheme, url.raw_host.decode("ascii"), port)
        # Requests of a shard are bounded by its limiter already: a wait here is rare.
        with trio.move_on_after(_seconds(timeouts.get("pool"))) as waiting:
            await self._slots.acquire()
        if waiting.cancelled_caught:
            raise httpx.PoolTimeout(
                f"no connection became free within {timeouts.get('pool')} s", request=request
            )
        try:
            conn = self._take_idle(origin)
            if conn is None:
                conn = await self._connect(origin, timeouts.get("connect"), request)
            else:
                self._reused += 1
            try:
                return await self._send(conn, request, timeouts)
            except BaseException:
                self._drop(conn)
                raise
        except BaseException:
            self._slots.release()
            raise

    async def aclose(self) -> None:
        """Close every idle connection; those in use close when their response does."""
        self._closed = True
        while self._idle:
            self._drop(self._idle.pop())
        await trio.lowlevel.checkpoint()

    # -- connections -----------------------------------------------------------

    def _take_idle(self, origin: _Origin) -> _Connection | None:
        """The most recently used live idle connection to ``origin``, or ``None``."""
        idle = self._idle
        if self._expiry is not None:
            # The stack's bottom holds the oldest: drop those idle too long.
            oldest_allowed = trio.current_time() - self._expiry
            while idle and idle[0].idle_since < oldest_allowed:
                self._drop(idle.popleft())
        for index in range(len(idle) - 1, -1, -1):
            conn = idle[index]
            if conn.origin != origin:
                continue
            del idle[index]
            if conn.socket.is_readable():
                # An idle HTTP/1.1 connection has nothing to say: readable means
                # the server closed it (EOF) or broke it. Nothing was sent on it.
                self._stale += 1
                self._drop(conn)
                continue
            return conn
        if idle and self._open >= self._max:
            # At the bound, with idle sockets to other origins only: make room.
            self._drop(idle.popleft())
        return None

    async def _connect(
        self, origin: _Origin, connect_timeout: float | None, request: httpx.Request
    ) -> _Connection:
        scheme, host, port = origin
        with trio.move_on_after(_seconds(connect_timeout)):
            try:
                tcp = await trio.open_tcp_stream(host, port)
            except OSError as exc:
                raise httpx.ConnectError(str(exc) or type(exc).__name__, request=request) from exc
            stream: trio.abc.Stream = tcp
            try:
                if scheme == b"https":
                    tls = trio.SSLStream(
                        tcp, self._ssl_context, server_hostname=host, https_compatible=True
                    )
                    await tls.do_handshake()
                    protocol = tls.selected_alpn_protocol()
                    if protocol not in (None, "http/1.1"):
                        # The context offered more (httpcore sets "h2" on the
                        # contexts of its HTTP/2 pools): this speaks HTTP/1.1.
                        raise httpx.ConnectError(
                            f"the server chose {protocol!r} by ALPN; the lean transport"
                            " speaks HTTP/1.1 only",
                            request=request,
                        )
                    stream = tls
            except BaseException as exc:
                tcp.socket.close()
                if isinstance(exc, trio.BrokenResourceError | ssl.SSLError | OSError):
                    cause = exc.__cause__ if exc.__cause__ is not None else exc
                    raise httpx.ConnectError(
                        str(cause) or type(cause).__name__, request=request
                    ) from exc
                raise
            conn = _Connection(origin, stream, tcp.socket)
            self._open += 1
            self._opened += 1
            return conn
        raise httpx.ConnectTimeout(
            f"connecting took more than {connect_timeout} s", request=request
        )

    def _drop(self, conn: _Connection) -> None:
        conn.close()
        self._open -= 1

    def _release(self, conn: _Connection, *, reusable: bool) -> None:
        """Called once per request, by its body's ``aclose``: keep or close, free the slot."""
        if reusable and not self._closed:
            conn.idle_since = trio.current_time()
            self._idle.append(conn)
        else:
            self._drop(conn)
        self._slots.release()

    # -- one exchange ----------------------------------------------------------

    async def _send(
        self, conn: _Connection, request: httpx.Request, timeouts: dict[str, float | None]
    ) -> httpx.Response:
        state = conn.h11 = h11.Connection(h11.CLIENT)
        try:
            content = request.content
        except httpx.RequestNotRead:
            content = b"".join([chunk async for chunk in request.stream])  # type: ignore[union-attr]
        try:
            parts = [
                state.send(
                    h11.Request(
                        method=request.method,
                        target=request.url.raw_path,
                        headers=request.headers.raw,
                    )
                )
            ]
            if content:
                parts.append(state.send(h11.Data(data=content)))
            parts.append(state.send(h11.EndOfMessage()))
        except h11.LocalProtocolError as exc:
            raise httpx.LocalProtocolError(str(exc), request=request) from exc
        write_timeout = timeouts.get("write")
        write_error: httpx.WriteError | None = None
        with trio.move_on_after(_seconds(write_timeout)) as writing:
            try:
                await conn.send(b"".join(parts))
            except _NETWORK_ERRORS as exc:
                # A server may answer before it has read the whole request (a 413
                # for a large prompt) and close: its answer is worth more than
                # the broken pipe, so read it if it came (as httpcore does).
                write_error = httpx.WriteError(_describe(exc), request=request)
                write_error.__cause__ = exc
        if writing.cancelled_caught:
            raise httpx.WriteTimeout(f"writing took more than {write_timeout} s", request=request)
        read_timeout = timeouts.get("read")
        while True:
            try:
                event = await _next_event(conn, read_timeout, request)
            except httpx.TransportError:
                if write_error is None:
                    raise
                raise write_error from write_error.__cause__
            if type(event) is h11.Response:
                break
            if type(event) is h11.InformationalResponse:
                continue
            if type(event) is h11.ConnectionClosed:
                raise httpx.RemoteProtocolError(
                    "Server disconnected without sending a response.", request=request
                )
            raise httpx.RemoteProtocolError(  # pragma: no cover - h11 sends no other
                f"unexpected {type(event).__name__} before the response", request=request
            )
        # h11 parsed and validated the head; the body is decoded without it.
        body, keep_alive = body_for(request.method.encode(), event)
        leftover = state.trailing_data[0]
        response = httpx.Response(
            status_code=event.status_code,
            headers=event.headers.raw_items(),
            stream=_Body(
                self,
                conn,
                body,
                leftover,
                keep_alive=keep_alive and state.our_state is h11.DONE and write_error is None,
                request=request,
                read_timeout=read_timeout,
            ),
            extensions={
                "http_version": b"HTTP/" + event.http_version,
                "reason_phrase": event.reason,
            },
        )
        response.extensions[_BODY] = response.stream
        return response


async def _next_event(conn: _Connection, read_timeout: float | None, request: httpx.Request) -> Any:
    """h11's next event, reading from the socket as it needs."""
    state = conn.h11
    while True:
        try:
            event = state.next_event()
        except h11.RemoteProtocolError as exc:
            raise httpx.RemoteProtocolError(str(exc), request=request) from exc
        if event is not h11.NEED_DATA:
            return event
        data = await _read(conn, read_timeout, request)
        if not data and state.their_state is h11.SEND_RESPONSE:
            raise httpx.RemoteProtocolError(
                "Server disconnected without sending a response.", request=request
            )
        state.receive_data(data)


async def _read(conn: _Connection, read_timeout: float | None, request: httpx.Request) -> bytes:
    try:
        if read_timeout is None:
            return await conn.receive(_READ_SIZE)
        with trio.move_on_after(read_timeout):
            return await conn.receive(_READ_SIZE)
    except _NETWORK_ERRORS as exc:
        raise httpx.ReadError(_describe(exc), request=request) from exc
    raise httpx.ReadTimeout(f"no data within {read_timeout} s", request=request)


class _Body(httpx.AsyncByteStream):
    """A response body: the payload bytes of each read, as they arrive.

    One read gives one chunk, however many HTTP chunks (SSE events) it holds:
    each chunk costs a trip through httpx's iterators, or none when read
    through :func:`direct_body`. ``aclose`` returns the
    connection to the stack only when the body was read to its end and the
    connection can be kept; otherwise it closes the socket.
    """

    __slots__ = (
        "_complete",
        "_conn",
        "_decoder",
        "_keep_alive",
        "_pending",
        "_read_timeout",
        "_request",
        "_transport",
    )

    def __init__(
        self,
        transport: LeanTransport,
        conn: _Connection,
        decoder: Body,
        pending: bytes,
        *,
        keep_alive: bool,
        request: httpx.Request,
        read_timeout: float | None,
    ) -> None:
        self._transport: LeanTransport | None = transport
        self._conn = conn
        self._decoder = decoder
        #: Body bytes that came with the head.
        self._pending = pending
        self._keep_alive = keep_alive
        self._request = request
        self._read_timeout = read_timeout
        self._complete = decoder.done

    def __aiter__(self) -> _Body:
        return self

    async def __anext__(self) -> bytes:
        if self._complete or self._transport is None:
            raise StopAsyncIteration
        decoder = self._decoder
        while True:
            if self._pending or decoder.error is not None:
                data, self._pending = self._pending, b""
            else:
                data = await _read(self._conn, self._read_timeout, self._request)
            try:
                if not data:
                    decoder.eof()
                    self._complete = True
                    raise StopAsyncIteration
                out = decoder.feed(data)
            except h11.RemoteProtocolError as exc:
                raise httpx.RemoteProtocolError(str(exc), request=self._request) from exc
            if decoder.done:
                self._complete = True
            if out:
                return out
            if decoder.done:
                raise StopAsyncIteration

    async def aclose(self) -> None:
        transport = self._transport
        if transport is not None:
            self._transport = None
            reusable = self._complete and self._keep_alive and self._decoder.reusable
            transport._release(self._conn, reusable=reusable)


def direct_body(response: httpx.Response) -> AsyncIterator[bytes] | None:
    """The body of a lean transport's ``response``, to read without httpx's iterators.

    Each chunk is the payload of one socket read, exactly as
    ``response.aiter_raw()`` gives it, minus two async generators per read.
    ``None`` for a response of another transport, or one whose body is being
    or was read already. It marks the response's stream consumed, so httpx's
    own reads of it raise ``StreamConsumed``; closing the response
    (``client.stream``'s exit) still releases the connection.
    """
    body = response.extensions.get(_BODY)
    if body is None or response.is_stream_consumed:
        return None
    response.is_stream_consumed = True
    return cast("_Body", body)


def _seconds(timeout: float | None) -> float:
    return float("inf") if timeout is None else timeout


def _describe(exc: BaseException) -> str:
    """The OS error under trio's wrapper, as httpcore reports it."""
    cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else None
    shown = cause if cause is not None else exc
    return str(shown) or type(shown).__name__
