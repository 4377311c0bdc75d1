"""The lean HTTP/1.1 transport on its own: reuse, staleness, bounds, timeouts, errors, TLS.

A small trio + h11 server numbers its connections and answers every request
with that number, so a test sees which socket carried which request.
"""

from __future__ import annotations

import functools
import gzip
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import h11
import httpx
import pytest
import trio
import trio.testing
import trustme

from shardline._config import Deadlines, Endpoint
from shardline._exceptions import ConfigError
from shardline._http import _no_tls_context, consume, make_client
from shardline._transport import (
    LeanTransport,
    LeanTransportStatistics,
    _Connection,
    direct_body,
)


@attrs.define(eq=False)
class NumberedServer:
    """Answers each request with the number of the connection it came on."""

    port: int = 0
    scheme: str = "http"
    accepted: int = 0
    open: int = 0
    #: Close each connection after its first response (no ``Connection: close``).
    close_after_response: bool = False
    #: Bytes sent instead of a response, then the connection is closed.
    raw: bytes | None = None
    #: Send the head and one byte of a chunked body, then wait for the client to leave.
    stall_body: bool = False
    gzip: bool = False
    chunked: bool = False
    #: Answer with ``Connection: close`` (and close).
    close_header: bool = False
    #: The ALPN protocols a TLS server accepts (``None``: no ALPN).
    alpn: list[str] | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/v1"

    async def handle(self, stream: trio.abc.Stream) -> None:
        number = self.accepted
        self.accepted += 1
        self.open += 1
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event: Any = conn.next_event()
                while type(event) is not h11.EndOfMessage:
                    if event is h11.NEED_DATA:
                        conn.receive_data(await stream.receive_some(65536))
                    elif type(event) is h11.ConnectionClosed:
                        return
                    event = conn.next_event()
                if self.raw is not None:
                    await stream.send_all(self.raw)
                    return
                if self.stall_body:
                    head = conn.send(h11.Response(status_code=200, headers=[], reason=b"OK"))
                    await stream.send_all((head or b"") + (conn.send(h11.Data(data=b"x")) or b""))
                    while await stream.receive_some(65536):
                        pass
                    return
                await stream.send_all(self.response(conn, number))
                if self.close_after_response or self.close_header:
                    return
                conn.start_next_cycle()
        except trio.BrokenResourceError:
            return
        finally:
            self.open -= 1

    def response(self, conn: h11.Connection, number: int) -> bytes:
        body = str(number).encode()
        headers = [("content-type", "text/plain")]
        if self.close_header:
            headers.append(("connection", "close"))
        if self.gzip:
            body = gzip.compress(body)
            headers.append(("content-encoding", "gzip"))
        if self.chunked:
            head = conn.send(h11.Response(status_code=200, headers=headers, reason=b"OK"))
            pieces = [conn.send(h11.Data(data=body[i : i + 1])) for i in range(len(body))]
            return b"".join(
                [head or b"", *(p or b"" for p in pieces), conn.send(h11.EndOfMessage()) or b""]
            )
        headers.append(("content-length", str(len(body))))
        return b"".join(
            part or b""
            for part in (
                conn.send(h11.Response(status_code=200, headers=headers, reason=b"OK")),
                conn.send(h11.Data(data=body)),
                conn.send(h11.EndOfMessage()),
            )
        )


@asynccontextmanager
async def numbered_server(
    tls: trustme.CA | None = None, **options: Any
) -> AsyncIterator[NumberedServer]:
    server = NumberedServer(**options)
    async with trio.open_nursery() as nursery:
        handler: Callable[[trio.abc.Stream], Any] = server.handle
        if tls is not None:
            server.scheme = "https"
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.issue_cert("127.0.0.1").configure_cert(context)
            if server.alpn is not None:
                context.set_alpn_protocols(server.alpn)

            async def handler(stream: trio.abc.Stream) -> None:
                await server.handle(trio.SSLStream(stream, context, server_side=True))

        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1")
        )
        server.port = listeners[0].socket.getsockname()[1]
        yield server
        nursery.cancel_scope.cancel()


def lean_client(
    max_connections: int = 4,
    *,
    expiry: float | None = 30.0,
    context: ssl.SSLContext | None = None,
    pool: float | None = 5.0,
) -> httpx.AsyncClient:
    transport = LeanTransport(
        ssl_context=context or _no_tls_context(),
        max_connections=max_connections,
        keepalive_expiry=expiry,
    )
    return httpx.AsyncClient(
        transport=transport, timeout=httpx.Timeout(None, connect=5.0, pool=pool)
    )


def stats(client: httpx.AsyncClient) -> LeanTransportStatistics:
    transport = client._transport
    assert isinstance(transport, LeanTransport)
    return transport.statistics()


async def test_idle_connections_are_reused_last_in_first_out() -> None:
    """The connection released last carries the next request; two in flight use two."""
    async with numbered_server() as server, lean_client() as client:
        async with client.stream("GET", server.url) as a, client.stream("GET", server.url) as b:
            # Reading a body to its end releases its connection: 1 first, then 0.
            assert (await b.aread(), await a.aread()) == (b"1", b"0")
        assert (await client.get(server.url)).text == "0"  # 0 was released last
        async with client.stream("GET", server.url) as a, client.stream("GET", server.url) as b:
            assert (await a.aread(), await b.aread()) == (b"0", b"1")
        assert (await client.get(server.url)).text == "1"
        assert stats(client) == LeanTransportStatistics(
            connections_open=2, idle=2, in_use=0, opened=2, reused=4, discarded_stale=0
        )
        assert server.accepted == 2


async def test_a_connection_the_server_closed_is_replaced_before_sending() -> None:
    """An idle socket the server closed is dropped unused; the request goes on a new one."""
    async with numbered_server(close_after_response=True) as server, lean_client() as client:
        assert (await client.get(server.url)).text == "0"
        await trio.testing.wait_all_tasks_blocked()
        assert server.open == 0
        assert (await client.get(server.url)).text == "1"
        assert stats(client).discarded_stale == 1
        assert stats(client).reused == 0


async def test_cancelled_mid_body_closes_the_socket() -> None:
    """A response abandoned before its end closes its connection: the server sees it go."""
    async with numbered_server(stall_body=True) as server, lean_client() as client:
        with trio.move_on_after(0.05) as scope:
            async with client.stream("GET", server.url) as response:
                async for chunk in response.aiter_raw():
                    assert chunk == b"x"
        assert scope.cancelled_caught
        await trio.testing.wait_all_tasks_blocked()
        assert stats(client).connections_open == 0
        assert stats(client).in_use == 0
        assert server.open == 0


async def test_a_body_closed_early_is_not_reused() -> None:
    """Closing a response before reading its end closes the socket instead of pooling it."""
    async with numbered_server(chunked=True) as server, lean_client() as client:
        async with client.stream("GET", server.url) as response:
            assert response.status_code == 200
        assert stats(client).connections_open == 0
        assert (await client.get(server.url)).text == "1"
        assert stats(client).idle == 1


async def test_consume_reads_a_lean_body_directly() -> None:
    """consume reads the lean body without httpx's iterators, once; the socket is reused."""
    async with numbered_server(chunked=True) as server, lean_client() as client:
        for expected in (b"0", b"0"):
            async with client.stream("GET", server.url) as response:
                chunks: list[bytes] = []
                await consume(response, chunks.append)
                assert b"".join(chunks) == expected
                assert response.is_stream_consumed
                assert direct_body(response) is None  # read already
                with pytest.raises(httpx.StreamConsumed):
                    await response.aread()
        assert stats(client) == LeanTransportStatistics(
            connections_open=1, idle=1, in_use=0, opened=1, reused=1, discarded_stale=0
        )


async def test_a_handler_that_raises_leaves_a_lean_body_and_closes_its_socket() -> None:
    """A handler's exception leaves consume at once; the unread rest closes the socket."""

    def refuse(chunk: bytes) -> None:
        raise ValueError(f"no thanks: {chunk!r}")

    async with numbered_server(stall_body=True) as server, lean_client() as client:
        async with client.stream("GET", server.url) as response:
            with pytest.raises(ValueError, match=r"^no thanks: b'x'$"):
                await consume(response, refuse)
        await trio.testing.wait_all_tasks_blocked()
        assert stats(client).connections_open == 0
        assert server.open == 0


class _AnswersBeforeReading(trio.abc.Stream):
    """A peer that answers (or not) and breaks the pipe before reading the request."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        raise trio.BrokenResourceError from BrokenPipeError(32, "Broken pipe")

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        out, self.answer = self.answer, b""
        return out

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def _send_to_early(answer: bytes) -> tuple[httpx.Response, bytes]:
    """Send a request to an _AnswersBeforeReading peer; its response and body."""
    transport = LeanTransport(
        ssl_context=_no_tls_context(), max_connections=1, keepalive_expiry=None
    )
    a, b = socket.socketpair()
    b.close()
    with a:
        sock = trio.socket.from_stdlib_socket(a)
        conn = _Connection((b"http", "early.test", 80), _AnswersBeforeReading(answer), sock)
        request = httpx.Request("POST", "http://early.test/v1", content=b"x" * 100)
        response = await transport._send(conn, request, {})
        body = b"".join([chunk async for chunk in response.stream])  # type: ignore[union-attr]
        assert not response.stream._keep_alive  # type: ignore[union-attr]
        return response, body


async def test_an_answer_sent_before_the_request_was_read_beats_the_broken_pipe() -> None:
    """A 413 sent before the server read the request is the answer (as in httpcore)."""
    response, body = await _send_to_early(
        b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 9\r\n\r\ntoo large"
    )
    assert (response.status_code, body) == (413, b"too large")


async def test_a_broken_pipe_without_an_answer_is_a_write_error() -> None:
    """With nothing to read, the broken pipe is the error, with the OS's words."""
    with pytest.raises(httpx.WriteError, match=r"^\[Errno 32\] Broken pipe$"):
        await _send_to_early(b"")


async def test_connection_close_is_honoured() -> None:
    """A response with Connection: close is read whole, and its socket is not kept."""
    async with numbered_server(close_header=True) as server, lean_client() as client:
        assert (await client.get(server.url)).text == "0"
        assert stats(client).connections_open == 0
        assert (await client.get(server.url)).text == "1"
        assert stats(client).discarded_stale == 0


async def test_read_and_write_timeouts_of_httpx_are_honoured(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """httpx.Timeout(read=...) bounds each read: a silent body ends in ReadTimeout."""
    async with numbered_server(stall_body=True) as server, lean_client() as client:
        start = trio.current_time()
        with pytest.raises(httpx.ReadTimeout):
            await client.get(server.url, timeout=httpx.Timeout(5.0, read=2.0))
        assert trio.current_time() - start == pytest.approx(2.0)
        assert stats(client).connections_open == 0


async def test_at_most_max_connections_then_pool_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A request beyond max_connections waits for one; past the pool timeout it fails."""
    async with numbered_server() as server, lean_client(2, pool=1.0) as client:
        async with client.stream("GET", server.url) as a, client.stream("GET", server.url) as b:
            start = trio.current_time()
            with pytest.raises(httpx.PoolTimeout):
                await client.get(server.url)
            assert trio.current_time() - start == pytest.approx(1.0)
            assert stats(client).connections_open == 2
            await a.aread()
            await b.aread()
        assert (await client.get(server.url)).status_code == 200
        assert stats(client).opened == 2


async def test_idle_connections_expire(autojump_clock: trio.testing.MockClock) -> None:
    """A connection idle longer than keepalive_expiry is closed, not reused."""
    async with numbered_server() as server, lean_client(expiry=10.0) as client:
        assert (await client.get(server.url)).text == "0"
        await trio.sleep(5)
        assert (await client.get(server.url)).text == "0"
        await trio.sleep(11)
        assert (await client.get(server.url)).text == "1"
        assert stats(client).connections_open == 1


async def test_connect_timeout_on_virtual_time(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connect that never completes ends in ConnectTimeout at the connect deadline."""

    async def never(*_args: object, **_kwargs: object) -> trio.SocketStream:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    monkeypatch.setattr(trio, "open_tcp_stream", never)
    async with lean_client() as client:
        start = trio.current_time()
        with pytest.raises(httpx.ConnectTimeout):
            await client.get("http://127.0.0.1:9/v1")
        assert trio.current_time() - start == pytest.approx(5.0)
        assert stats(client) == LeanTransportStatistics(
            connections_open=0, idle=0, in_use=0, opened=0, reused=0, discarded_stale=0
        )


async def test_hosts_are_connected_to_by_their_ascii_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An internationalised host name is resolved (and sent as SNI) in its IDNA form."""
    asked: list[tuple[str, int]] = []

    async def refuse(host: str, port: int, **_kwargs: object) -> trio.SocketStream:
        asked.append((host, port))
        raise OSError("refused")

    monkeypatch.setattr(trio, "open_tcp_stream", refuse)
    async with lean_client() as client:
        with pytest.raises(httpx.ConnectError, match=r"^refused$"):
            await client.get("https://münchen.example/v1")
    assert asked == [("xn--mnchen-3ya.example", 443)]


async def test_connection_refused_is_a_connect_error() -> None:
    """A port nobody listens on: httpx.ConnectError, and the slot is free again."""
    with trio.socket.socket() as probe:
        await probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with lean_client(1) as client:
        for _ in range(2):
            with pytest.raises(httpx.ConnectError):
                await client.get(f"http://127.0.0.1:{port}/v1")
        assert stats(client).in_use == 0


@pytest.mark.parametrize(
    ("raw", "error", "match"),
    [
        (b"", httpx.RemoteProtocolError, "Server disconnected without sending a response"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12",
            httpx.RemoteProtocolError,
            "peer closed",
        ),
        (b"NOT HTTP AT ALL\r\n\r\n", httpx.RemoteProtocolError, "illegal status line"),
    ],
)
async def test_broken_answers_raise_httpx_errors(
    raw: bytes, error: type[Exception], match: str
) -> None:
    """No answer, a short body and garbage raise httpx's own errors, as httpcore's would."""
    async with numbered_server(raw=raw) as server, lean_client() as client:
        with pytest.raises(error, match=match):
            await client.get(server.url)
        assert stats(client).connections_open == 0


async def test_content_encoding_is_left_to_httpx() -> None:
    """The transport hands raw bytes up; httpx decodes gzip."""
    async with numbered_server(gzip=True, chunked=True) as server, lean_client() as client:
        response = await client.get(server.url)
        assert response.headers["content-encoding"] == "gzip"
        assert response.text == "0"
        assert response.http_version == "HTTP/1.1"
        assert response.reason_phrase == "OK"


async def test_request_bodies_are_sent() -> None:
    """A JSON body arrives whole (the fake server echoes nothing, so count its requests)."""
    async with numbered_server() as server, lean_client() as client:
        response = await client.post(server.url, json={"a": 1})
        assert response.text == "0"

        async def parts() -> AsyncIterator[bytes]:
            yield b'{"a":'
            yield b"1}"

        response = await client.post(server.url, content=parts())
        assert response.text == "0"


async def test_a_server_that_chooses_h2_by_alpn_is_refused() -> None:
    """A context that offers h2 (as httpcore's HTTP/2 pools leave it) cannot smuggle h2 in."""
    ca = trustme.CA()
    context = ssl.create_default_context()
    ca.configure_trust(context)
    context.set_alpn_protocols(["h2", "http/1.1"])
    async with numbered_server(tls=ca, alpn=["h2"]) as server, lean_client(context=context) as c:
        with pytest.raises(
            httpx.ConnectError,
            match=r"^the server chose 'h2' by ALPN; the lean transport speaks HTTP/1.1 only$",
        ):
            await c.get(server.url)
        assert stats(c).connections_open == 0
    async with (
        numbered_server(tls=ca, alpn=["http/1.1"]) as server,
        lean_client(context=context) as c,
    ):
        assert (await c.get(server.url)).text == "0"


async def test_http2_endpoints_do_not_share_the_lean_transports_tls_context() -> None:
    """httpcore sets ALPN on its context: an HTTP/2 client gets one of its own."""
    pytest.importorskip("h2")
    url = "https://a.test/v1"
    deadlines = Deadlines()
    async with (
        make_client(Endpoint(base_url=url), max_connections=1, deadlines=deadlines) as lean,
        make_client(
            Endpoint(base_url=url, http2=True), max_connections=1, deadlines=deadlines
        ) as h2,
    ):
        assert isinstance(lean._transport, LeanTransport)
        h2_context = h2._transport._pool._ssl_context  # type: ignore[attr-defined]
        assert lean._transport._ssl_context is not h2_context


async def test_https_through_ssl_stream() -> None:
    """https:// URLs go through trio's SSLStream with the given context, and are reused."""
    ca = trustme.CA()
    context = ssl.create_default_context()
    ca.configure_trust(context)
    async with numbered_server(tls=ca) as server, lean_client(context=context) as client:
        assert (await client.get(server.url)).text == "0"
        assert (await client.get(server.url)).text == "0"
        untrusting = lean_client(context=ssl.create_default_context(cafile=None, cadata=None))
        async with untrusting:
            with pytest.raises(httpx.ConnectError):
                await untrusting.get(server.url)


async def test_aclose_closes_every_connection() -> None:
    """Closing the client closes its idle sockets; the server sees them go."""
    async with numbered_server() as server:
        async with lean_client() as client:
            async with client.stream("GET", server.url), client.stream("GET", server.url):
                pass
            assert stats(client).idle == 0  # closed unread: not pooled
            await client.get(server.url)
            await client.get(server.url)
            assert stats(client).idle == 1
        await trio.testing.wait_all_tasks_blocked()
        assert stats(client).connections_open == 0
        assert server.open == 0


def test_transport_arguments_are_validated() -> None:
    """max_connections and keepalive_expiry name themselves when wrong."""
    with pytest.raises(ConfigError, match=r"^max_connections must be >= 1, got 0$"):
        LeanTransport(ssl_context=_no_tls_context(), max_connections=0, keepalive_expiry=1.0)
    with pytest.raises(ConfigError, match=r"^keepalive_expiry must be >= 0 seconds, got -1$"):
        LeanTransport(ssl_context=_no_tls_context(), max_connections=1, keepalive_expiry=-1)


def test_endpoint_transport_is_validated() -> None:
    """transport is 'httpx' or 'lean'; 'lean' refuses HTTP/2; the environment can set it."""
    with pytest.raises(ConfigError, match=r"^transport must be 'httpx' or 'lean', got 'h3'$"):
        Endpoint(transport="h3")  # type: ignore[arg-type]
    with pytest.raises(
        ConfigError,
        match=r"^transport='lean' speaks HTTP/1.1 only: use transport='httpx' with http2=True$",
    ):
        Endpoint(transport="lean", http2=True)
    assert Endpoint.from_env({"SHARDLINE_TRANSPORT": " Lean "}).transport == "lean"
    assert Endpoint.from_env({}).transport == "lean"
    assert Endpoint(http2=True).transport == "httpx"
    assert Endpoint.from_env({"SHARDLINE_TRANSPORT": "httpx"}).transport == "httpx"
    assert Endpoint(transport="lean").safe_dict()["transport"] == "lean"


async def test_make_client_picks_the_transport(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """transport='lean' builds a LeanTransport, unless a proxy is set: then httpx's, logged."""
    caplog.set_level(logging.INFO, logger="shardline")
    for name in (
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
    ):
        monkeypatch.delenv(name, raising=False)
    endpoint = Endpoint(base_url="http://lean.test/v1", transport="lean")
    async with make_client(endpoint, max_connections=3, deadlines=Deadlines()) as client:
        assert isinstance(client._transport, LeanTransport)
        assert repr(client._transport) == "<LeanTransport: 0/3 in use, 0 idle, 0 open>"
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.test:3128")
    proxied = Endpoint(base_url="http://proxied.lean.test/v1", transport="lean")
    async with make_client(proxied, max_connections=3, deadlines=Deadlines()) as client:
        assert isinstance(client._transport, httpx.AsyncHTTPTransport)
    assert "a proxy is set in the environment" in caplog.text


def test_the_command_line_chooses_the_transport() -> None:
    """--transport wins over SHARDLINE_TRANSPORT; a bad variable names option and variable."""
    from shardline._cli import build_parser
    from shardline._cli_options import UsageError, build_config

    parser = build_parser()
    args = parser.parse_args(["run", "in.jsonl", "--transport", "lean"])
    assert build_config(args, {}).endpoint.transport == "lean"
    args = parser.parse_args(["run", "in.jsonl"])
    assert build_config(args, {}).endpoint.transport == "lean"
    assert build_config(args, {"SHARDLINE_TRANSPORT": "httpx"}).endpoint.transport == "httpx"
    chosen = parser.parse_args(["run", "in.jsonl", "--transport", "httpx"])
    assert build_config(chosen, {"SHARDLINE_TRANSPORT": "lean"}).endpoint.transport == "httpx"
    several = parser.parse_args(
        [
            "run",
            "in.jsonl",
            "--transport",
            "lean",
            "--base-url",
            "http://a/v1",
            "--base-url",
            "http://b/v1",
        ]
    )
    assert {e.transport for e in build_config(several, {}).all_endpoints()} == {"lean"}
    with pytest.raises(
        UsageError,
        match=r"^invalid value for --transport \(SHARDLINE_TRANSPORT\): "
        r"transport must be 'httpx' or 'lean', got 'fast'$",
    ):
        build_config(args, {"SHARDLINE_TRANSPORT": "fast"})
