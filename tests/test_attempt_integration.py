"""Attempts against the fake server: real sockets, real time, short deadlines.

Each fault of :mod:`shardline.testing` must end in its named cause within its
deadline (plus a tolerance for a loaded 2-core CI machine), and the *same*
client must then serve a clean request: no connection stuck in the pool.
``autojump_clock`` does not mix with real sockets, so these tests use real
time with deadlines of a few hundred milliseconds.
"""

from __future__ import annotations

import contextlib
import socket

import httpx
import pytest
import trio

from shardline._attempt import AttemptResult, send_attempt
from shardline._config import TRANSPORTS, Deadlines, Endpoint, Transport
from shardline._exceptions import (
    AttemptError,
    Cause,
    ConnectError,
    ConnectTimeout,
    PoolTimeout,
    RateLimited,
    StallTimeout,
)
from shardline._http import make_client
from shardline._models import ChatRequest
from shardline._transport import LeanTransport
from shardline.testing import (
    FAULT_KINDS,
    FakeServer,
    Fault,
    FaultPlan,
    expected_cause,
)

SHORT = 0.3
DEADLINES = Deadlines(connect=1.0, ttft=SHORT, stall=SHORT, attempt=3.0)
TOLERANCE = 0.7  # scheduling slack on a busy CI machine; deadlines themselves are exact
REQUEST = ChatRequest(messages=[{"role": "user", "content": "hello"}], params={"max_tokens": 8})
SECRET = "sk-integration-secret-value"


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> Transport:
    """Each test that takes it runs on httpx's own transport and on the lean one."""
    return request.param  # type: ignore[no-any-return]


def endpoint_for(server: FakeServer, transport: Transport, *, stream: bool = True) -> Endpoint:
    return Endpoint(
        base_url=server.base_url, api_key=SECRET, model="fake", stream=stream, transport=transport
    )


def headers(item: str, attempt: int) -> dict[str, str]:
    return {"x-shardline-item-id": item, "x-shardline-attempt": str(attempt)}


def assert_pool_clean(client: httpx.AsyncClient) -> None:
    """No request is queued or in flight, and every pooled connection is idle or closed."""
    if isinstance(client._transport, LeanTransport):
        stats = client._transport.statistics()
        assert stats.in_use == 0, stats
        assert stats.connections_open == stats.idle, stats
        return
    pool = client._transport._pool  # type: ignore[attr-defined]
    assert pool._requests == []
    for connection in pool.connections:
        assert connection.is_idle() or connection.is_closed(), connection


def deadline_for(cause: Cause) -> float:
    """The deadline that bounds a fault ending in ``cause`` (0 for immediate ones)."""
    if cause in (Cause.TTFT_TIMEOUT, Cause.STALL_TIMEOUT):
        return SHORT
    return 0.0


async def fault_then_success(
    server: FakeServer, fault: Fault, *, stream: bool, item: str, transport: Transport = "httpx"
) -> tuple[AttemptError, float, AttemptResult]:
    """Attempt 1 meets ``fault``; attempt 2 on the same client must succeed."""
    server.set_faults(FaultPlan(items={(item, 1): fault}))
    endpoint = endpoint_for(server, transport, stream=stream)
    async with make_client(endpoint, max_connections=2, deadlines=DEADLINES) as client:
        start = trio.current_time()
        with pytest.raises(AttemptError) as info:
            await send_attempt(client, endpoint, REQUEST, DEADLINES, headers=headers(item, 1))
        elapsed = trio.current_time() - start
        assert_pool_clean(client)
        result = await send_attempt(client, endpoint, REQUEST, DEADLINES, headers=headers(item, 2))
        assert_pool_clean(client)
    return info.value, elapsed, result


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
@pytest.mark.parametrize("kind", FAULT_KINDS)
async def test_each_fault_ends_in_its_cause_then_the_pool_serves_again(
    fake_server: FakeServer, kind: str, stream: bool, transport: Transport
) -> None:
    """Every fault kind ends in its expected cause within its deadline; a retry then succeeds."""
    fault = Fault(kind=kind)
    error, elapsed, result = await fault_then_success(
        fake_server, fault, stream=stream, item=kind, transport=transport
    )
    cause = expected_cause(fault, stream=stream)
    assert error.cause is cause, f"{kind}: {error!r}"
    assert elapsed <= deadline_for(cause) + TOLERANCE, f"{kind} took {elapsed:.3f}s"
    if cause in (Cause.TTFT_TIMEOUT, Cause.STALL_TIMEOUT):
        assert elapsed >= SHORT - 0.01
    assert SECRET not in str(error)
    assert result.finish_reason is not None
    assert result.text
    assert not result.usage.estimated


@pytest.mark.parametrize("kind", ["stall_mid", "drip"])
async def test_stalls_after_content_are_stall_timeouts(
    fake_server: FakeServer, kind: str, transport: Transport
) -> None:
    """After some content, silence or a keep-alive drip ends in stall_timeout, partial."""
    fault = Fault(kind=kind, after_events=2, interval=0.05)
    error, elapsed, _ = await fault_then_success(
        fake_server, fault, stream=True, item=f"{kind}-2", transport=transport
    )
    assert error.cause is Cause.STALL_TIMEOUT
    assert error.partial
    assert SHORT - 0.01 <= elapsed <= SHORT + TOLERANCE


async def test_rate_limit_carries_retry_after(fake_server: FakeServer) -> None:
    """A 429 reports the server's Retry-After (from retry-after-ms)."""
    fault = Fault(kind="rate_limit", retry_after=2.5)
    error, _, _ = await fault_then_success(fake_server, fault, stream=True, item="rl")
    assert isinstance(error, RateLimited)
    assert error.retry_after == 2.5


async def test_success_reuses_the_connection(fake_server: FakeServer, transport: Transport) -> None:
    """Sequential requests on one client share one keep-alive connection."""
    endpoint = endpoint_for(fake_server, transport)
    async with make_client(endpoint, max_connections=4, deadlines=DEADLINES) as client:
        for i in range(5):
            result = await send_attempt(
                client, endpoint, REQUEST, DEADLINES, headers=headers(str(i), 1)
            )
            assert result.finish_reason is not None
            assert result.ttft_s is not None
        assert_pool_clean(client)
    assert fake_server.statistics().connections_accepted == 1


async def test_concurrent_faults_do_not_exhaust_the_pool(
    fake_server: FakeServer, transport: Transport
) -> None:
    """Cap-many stalled attempts at once all end, then cap-many requests succeed at once."""
    cap = 3
    fake_server.set_faults(FaultPlan(items={(f"s{i}", 1): "stall_mid" for i in range(cap)}))
    endpoint = endpoint_for(fake_server, transport)
    causes: list[Cause] = []
    ok: list[AttemptResult] = []
    async with make_client(endpoint, max_connections=cap, deadlines=DEADLINES) as client:

        async def failing(i: int) -> None:
            try:
                await send_attempt(
                    client, endpoint, REQUEST, DEADLINES, headers=headers(f"s{i}", 1)
                )
            except AttemptError as exc:
                causes.append(exc.cause)

        async def succeeding(i: int) -> None:
            ok.append(
                await send_attempt(
                    client, endpoint, REQUEST, DEADLINES, headers=headers(f"s{i}", 2)
                )
            )

        async with trio.open_nursery() as nursery:
            for i in range(cap):
                nursery.start_soon(failing, i)
        assert causes == [Cause.STALL_TIMEOUT] * cap
        assert_pool_clean(client)
        async with trio.open_nursery() as nursery:
            for i in range(cap):
                nursery.start_soon(succeeding, i)
        assert len(ok) == cap
        assert_pool_clean(client)


async def test_pool_timeout_when_the_pool_is_held(
    fake_server: FakeServer, transport: Transport
) -> None:
    """With every pooled connection busy, another request ends in pool_timeout, not a hang."""
    fake_server.set_faults(FaultPlan(items={("hold", 1): "stall_headers"}))
    endpoint = endpoint_for(fake_server, transport)
    holding = Deadlines(connect=0.2, ttft=2.0, stall=2.0, attempt=3.0)
    async with make_client(endpoint, max_connections=1, deadlines=holding) as client:
        async with trio.open_nursery() as nursery:

            async def hold() -> None:
                with pytest.raises(AttemptError):
                    await send_attempt(
                        client, endpoint, REQUEST, holding, headers=headers("hold", 1)
                    )

            nursery.start_soon(hold)
            await trio.sleep(0.1)
            start = trio.current_time()
            with pytest.raises(PoolTimeout):
                await send_attempt(client, endpoint, REQUEST, holding, headers=headers("x", 1))
            assert trio.current_time() - start <= 0.2 + TOLERANCE
            nursery.cancel_scope.cancel()
        assert_pool_clean(client)
        result = await send_attempt(client, endpoint, REQUEST, holding, headers=headers("x", 2))
        assert result.finish_reason is not None


async def test_caller_cancellation_leaves_the_pool_clean(
    fake_server: FakeServer, transport: Transport
) -> None:
    """Cancelling mid-stream from outside raises Cancelled and the next request works."""
    fake_server.set_faults(FaultPlan(items={("c", 1): Fault(kind="stall_mid", after_events=1)}))
    endpoint = endpoint_for(fake_server, transport)
    slow = Deadlines(connect=1.0, ttft=5.0, stall=5.0, attempt=10.0)
    async with make_client(endpoint, max_connections=1, deadlines=slow) as client:
        with trio.move_on_after(0.2) as scope:
            await send_attempt(client, endpoint, REQUEST, slow, headers=headers("c", 1))
        assert scope.cancelled_caught
        assert_pool_clean(client)
        result = await send_attempt(client, endpoint, REQUEST, slow, headers=headers("c", 2))
        assert result.finish_reason is not None


async def test_connection_refused_is_connect_error(transport: Transport) -> None:
    """Nothing listening: connect_error, quickly."""
    with trio.socket.socket() as sock:  # find a free port, then close it
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    endpoint = Endpoint(base_url=f"http://127.0.0.1:{port}/v1", api_key=SECRET, transport=transport)
    async with make_client(endpoint, max_connections=1, deadlines=DEADLINES) as client:
        with pytest.raises(ConnectError) as info:
            await send_attempt(client, endpoint, REQUEST, DEADLINES)
        assert SECRET not in str(info.value)
        assert isinstance(info.value.__cause__, httpx.ConnectError)


async def test_full_accept_queue_is_connect_timeout(transport: Transport) -> None:
    """A listener whose accept queue is full drops our SYN: connect_timeout at the deadline."""
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)  # never accepts; a backlog of 0 fills after one or two connects
        port = listener.getsockname()[1]
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        await trio.sleep(0.05)
        endpoint = Endpoint(
            base_url=f"http://127.0.0.1:{port}/v1", api_key=SECRET, transport=transport
        )
        deadlines = Deadlines(connect=0.2, ttft=2.0, stall=1.0, attempt=3.0)
        async with make_client(endpoint, max_connections=1, deadlines=deadlines) as client:
            start = trio.current_time()
            with pytest.raises(ConnectTimeout):
                await send_attempt(client, endpoint, REQUEST, deadlines)
            assert 0.19 <= trio.current_time() - start <= 0.2 + TOLERANCE
            assert_pool_clean(client)
    finally:
        for sock in [listener, *fillers]:
            sock.close()


async def test_a_read_timeout_never_fires_on_a_drip_but_the_stall_deadline_does(
    fake_server: FakeServer,
) -> None:
    """The counter-example: httpx's per-read timeout is reset by every keep-alive byte.

    openai-python's 600 s read timeout is this, scaled up: a server dripping
    keep-alives keeps the stream alive forever. The stall deadline does not care.
    """
    drip = Fault(kind="drip", after_events=1, interval=0.05)
    fake_server.set_faults(FaultPlan(items={("drip", None): drip}))
    endpoint = endpoint_for(fake_server, "httpx")
    body = REQUEST.body(model="fake", stream=True)
    read_timeout = httpx.Timeout(5.0, read=SHORT)
    async with httpx.AsyncClient(timeout=read_timeout) as plain:
        with trio.move_on_after(4 * SHORT) as watchdog:
            async with plain.stream(
                "POST", endpoint.url_for(REQUEST.path), json=body, headers=headers("drip", 1)
            ) as response:
                async for _ in response.aiter_raw():
                    pass
        assert watchdog.cancelled_caught, "the read timeout fired (it should not on a drip)"
    async with make_client(endpoint, max_connections=1, deadlines=DEADLINES) as client:
        start = trio.current_time()
        with pytest.raises(StallTimeout):
            await send_attempt(client, endpoint, REQUEST, DEADLINES, headers=headers("drip", 2))
        assert trio.current_time() - start <= SHORT + TOLERANCE


async def test_http2_client_works_against_an_http11_server(fake_server: FakeServer) -> None:
    """http2=True negotiates down to HTTP/1.1 on plain http:// and still succeeds."""
    pytest.importorskip("h2")
    endpoint = Endpoint(base_url=fake_server.base_url, api_key=SECRET, model="fake", http2=True)
    async with make_client(endpoint, max_connections=1, deadlines=DEADLINES) as client:
        result = await send_attempt(client, endpoint, REQUEST, DEADLINES)
        assert result.finish_reason is not None
        assert_pool_clean(client)
