"""Every fault kind, observed with a plain httpx client; fault plans, specs and causes."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from shardline._config import TRANSPORTS, Transport
from shardline._exceptions import Cause
from shardline._http import _no_tls_context
from shardline._transport import LeanTransport
from shardline.testing import (
    EXPECTED_CAUSE,
    EXPECTED_CAUSE_NON_STREAMING,
    FAULT_KINDS,
    FakeServer,
    Fault,
    FaultKind,
    FaultPlan,
    FaultSpecError,
    TimingModel,
    expected_cause,
    fake_text,
    open_fake_server,
)

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 6}
STREAM = {**CHAT, "stream": True}


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> Transport:
    """Each test that takes it runs on httpx's own transport and on the lean one."""
    return request.param  # type: ignore[no-any-return]


def client(server: FakeServer, transport: Transport = "httpx") -> httpx.AsyncClient:
    """An httpx client for ``server`` with no timeouts: the tests bound time themselves."""
    if transport == "lean":
        lean = LeanTransport(ssl_context=_no_tls_context(), max_connections=8, keepalive_expiry=5)
        return httpx.AsyncClient(base_url=server.base_url, timeout=None, transport=lean)
    return httpx.AsyncClient(base_url=server.base_url, timeout=None)


def plan(fault: Fault | str) -> FaultPlan:
    """A plan that gives every request ``fault``."""
    return FaultPlan(rates={fault: 1.0})


async def settle(server: FakeServer) -> None:
    """Wait until the server has no open connection left (bounded)."""
    with trio.fail_after(5):
        while server.statistics().connections_open:
            await trio.sleep(0.01)


async def read_lines(response: httpx.Response, lines: list[str], *, seconds: float) -> bool:
    """Append the response's lines to ``lines`` for up to ``seconds``; True if it ended."""
    with trio.move_on_after(seconds):
        async for line in response.aiter_lines():
            if line:
                lines.append(line)
        return True
    return False


def contents(lines: list[str]) -> list[str]:
    """The non-empty chat delta contents among SSE ``lines``."""
    out = []
    for line in lines:
        if line.startswith("data: {"):
            chunk = json.loads(line[6:])
            for choice in chunk.get("choices", []):
                text = choice.get("delta", {}).get("content")
                if text:
                    out.append(text)
    return out


# -- header-stage faults --------------------------------------------------------


async def test_stall_headers_sends_nothing_and_ends_when_client_leaves(
    autojump_clock: trio.testing.MockClock,
    transport: Transport,
) -> None:
    """stall_headers: no response at all; the handler ends once the client disconnects."""
    async with (
        open_fake_server(faults=plan("stall_headers")) as server,
        client(server, transport) as c,
    ):
        async with trio.open_nursery() as nursery:

            async def post() -> None:
                await c.post("/chat/completions", json=STREAM)

            nursery.start_soon(post)
            await trio.sleep(600)
            stats = server.statistics()
            assert stats.faults == {"stall_headers": 1}
            assert stats.in_flight == 1
            nursery.cancel_scope.cancel()
        await c.aclose()
        await settle(server)
        stats = server.statistics()
        assert stats.in_flight == 0
        assert stats.completed == 0


async def test_stall_headers_with_duration_is_a_slow_answer(
    autojump_clock: trio.testing.MockClock,
    transport: Transport,
) -> None:
    """A finite stall_headers delays the answer by its duration, then answers normally."""
    fault = Fault(kind="stall_headers", duration=3.0)
    async with (
        open_fake_server(faults=plan(fault)) as server,
        client(server, transport) as c,
    ):
        start = trio.current_time()
        response = await c.post("/chat/completions", json=CHAT)
        assert trio.current_time() - start == pytest.approx(3.0)
    assert response.json()["choices"][0]["message"]["content"] == fake_text(6)
    assert server.statistics().completed == 1


async def test_stall_after_headers_sends_headers_then_nothing(
    autojump_clock: trio.testing.MockClock,
    transport: Transport,
) -> None:
    """stall_after_headers: 200 and headers arrive, then not one body byte."""
    async with (
        open_fake_server(faults=plan("stall_after_headers")) as server,
        client(server, transport) as c,
    ):
        async with c.stream("POST", "/chat/completions", json=STREAM) as response:
            assert response.status_code == 200
            assert response.headers["x-shardline-fault"] == "stall_after_headers"
            received: list[bytes] = []
            with trio.move_on_after(600):
                async for data in response.aiter_raw():
                    received.append(data)
            assert received == []
        await settle(server)
        assert server.statistics().faults == {"stall_after_headers": 1}


async def test_rate_limit_sends_429_with_retry_after_headers(transport: Transport) -> None:
    """rate_limit: 429 with retry-after in whole seconds and retry-after-ms."""
    fault = Fault(kind="rate_limit", retry_after=2.5)
    async with (
        open_fake_server(faults=plan(fault)) as server,
        client(server, transport) as c,
    ):
        response = await c.post("/chat/completions", json=STREAM)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "3"
    assert response.headers["retry-after-ms"] == "2500"
    assert response.json()["error"]["code"] == "rate_limit_exceeded"
    assert server.statistics().faults == {"rate_limit": 1}


@pytest.mark.parametrize(
    ("kind", "status"), [("http_500", 500), ("http_502", 502), ("http_503", 503)]
)
async def test_http_5xx_faults(kind: str, status: int, transport: Transport) -> None:
    """http_500/502/503 answer that status with an OpenAI-style error body."""
    async with (
        open_fake_server(faults=plan(kind)) as server,
        client(server, transport) as c,
    ):
        response = await c.post("/chat/completions", json=CHAT)
        again = await c.post("/chat/completions", json=STREAM)
    assert response.status_code == again.status_code == status
    assert response.json()["error"]["type"] == "server_error"
    assert server.statistics().faults == {kind: 2}
    assert server.statistics().connections_accepted == 1  # keep-alive survives errors


# -- mid-stream faults ---------------------------------------------------------------


async def test_stall_mid_stops_after_n_content_events(
    autojump_clock: trio.testing.MockClock,
    transport: Transport,
) -> None:
    """stall_mid: exactly after_events content events arrive, then silence."""
    fault = Fault(kind="stall_mid", after_events=2)
    async with (
        open_fake_server(faults=plan(fault)) as server,
        client(server, transport) as c,
    ):
        lines: list[str] = []
        async with c.stream("POST", "/chat/completions", json=STREAM) as response:
            ended = await read_lines(response, lines, seconds=600)
        assert not ended
        assert contents(lines) == ["the", " quick"]
        await settle(server)
        assert server.statistics().faults == {"stall_mid": 1}


async def test_drip_keeps_bytes_flowing_without_content(
    autojump_clock: trio.testing.MockClock,
    transport: Transport,
) -> None:
    """drip: keep-alive comments and empty deltas keep coming; no content ever does."""
    fault = Fault(kind="drip", interval=0.5)
    async with (
        open_fake_server(faults=plan(fault)) as server,
        client(server, transport) as c,
    ):
        lines: list[str] = []
        async with c.stream("POST", "/chat/completions", json=STREAM) as response:
            ended = await read_lines(response, lines, seconds=10)
        assert not ended
        assert contents(lines) == []
        assert sum(line.startswith(": keep-alive") for line in lines) >= 9
        assert sum(line.startswith("data: ") for line in lines) >= 10  # role + empty deltas
        await settle(server)
        assert server.statistics().in_flight == 0


async def test_drip_after_content(
    autojump_clock: trio.testing.MockClock, transport: Transport
) -> None:
    """drip with after_events=3: three content events, then only keep-alive traffic."""
    fault = Fault(kind="drip", after_events=3)
    async with (
        open_fake_server(faults=plan(fault)) as server,
        client(server, transport) as c,
    ):
        lines: list[str] = []
        async with c.stream("POST", "/chat/completions", json=STREAM) as response:
            await read_lines(response, lines, seconds=5)
        assert contents(lines) == ["the", " quick", " brown"]
        assert lines[-1].startswith((": keep-alive", "data: "))
        await settle(server)


async def test_reset_aborts_the_connection_mid_stream(transport: Transport) -> None:
    """reset: content arrives, then the TCP connection is reset (a read error)."""
    fault = Fault(kind="reset", after_events=2)
    async with (
        open_fake_server(faults=plan(fault)) as server,
        client(server, transport) as c,
    ):
        lines: list[str] = []
        async with c.stream("POST", "/chat/completions", json=STREAM) as response:
            with pytest.raises(httpx.ReadError):  # noqa: PT012
                async for line in response.aiter_lines():
                    lines.append(line)
        assert contents(lines) == ["the", " quick"]
        await settle(server)
        assert server.statistics().faults == {"reset": 1}


async def test_truncate_ends_cleanly_without_finish_or_done(transport: Transport) -> None:
    """truncate: the body ends cleanly with no finish_reason and no [DONE]; keep-alive holds."""
    fault = Fault(kind="truncate", after_events=3)
    async with (
        open_fake_server(faults=FaultPlan(requests={1: fault})) as server,
        client(server, transport) as c,
    ):
        lines: list[str] = []
        async with c.stream("POST", "/chat/completions", json=STREAM) as response:
            assert await read_lines(response, lines, seconds=5)
        assert contents(lines) == ["the", " quick", " brown"]
        assert "data: [DONE]" not in lines
        assert not any('"finish_reason":"' in line for line in lines)
        after = await c.post("/chat/completions", json=CHAT)
        assert after.status_code == 200
        # The client may hold the whole answer before the server's task counts it.
        await trio.testing.wait_all_tasks_blocked()
        stats = server.statistics()
    assert stats.connections_accepted == 1
    assert stats.faults == {"truncate": 1}
    assert stats.completed == 1


async def test_malformed_sends_one_broken_json_line(transport: Transport) -> None:
    """malformed: exactly one data line is not JSON; the rest of the stream looks normal."""
    async with (
        open_fake_server(faults=plan(Fault(kind="malformed", after_events=2))) as server,
        client(server, transport) as c,
    ):
        lines: list[str] = []
        async with c.stream("POST", "/chat/completions", json=STREAM) as response:
            assert await read_lines(response, lines, seconds=5)
    broken = []
    for line in lines:
        if line.startswith("data: {"):
            try:
                json.loads(line[6:])
            except ValueError:
                broken.append(line)
    assert len(broken) == 1
    assert lines[-1] == "data: [DONE]"
    assert server.statistics().faults == {"malformed": 1}


async def test_error_event_is_in_band(transport: Transport) -> None:
    """error_event: a data event with an "error" object, then [DONE], no finish_reason."""
    async with (
        open_fake_server(faults=plan("error_event")) as server,
        client(server, transport) as c,
    ):
        lines: list[str] = []
        async with c.stream("POST", "/chat/completions", json=STREAM) as response:
            assert response.status_code == 200
            assert await read_lines(response, lines, seconds=5)
    events = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    assert events[-1]["error"]["type"] == "server_error"
    assert lines[-1] == "data: [DONE]"
    assert not any('"finish_reason":"' in line for line in lines)
    assert contents(lines) == ["the"]


async def test_legacy_completions_get_faults_too(transport: Transport) -> None:
    """Legacy /completions streams are faulted the same way (here: truncate)."""
    body = {"prompt": "hi", "max_tokens": 4, "stream": True}
    async with (
        open_fake_server(faults=plan(Fault(kind="truncate", after_events=1))) as server,
        client(server, transport) as c,
    ):
        lines: list[str] = []
        async with c.stream("POST", "/completions", json=body) as response:
            assert await read_lines(response, lines, seconds=5)
    assert len(lines) == 1
    assert json.loads(lines[0][6:])["choices"][0]["text"] == "the"


# -- non-streamed requests ------------------------------------------------------------


async def test_non_stream_truncate_malformed_error(transport: Transport) -> None:
    """Non-streamed: truncate has finish_reason null, malformed is not JSON, error_event is 200."""
    faults = FaultPlan(requests={1: "truncate", 2: "malformed", 3: "error_event"})
    async with (
        open_fake_server(faults=faults) as server,
        client(server, transport) as c,
    ):
        truncated = await c.post("/chat/completions", json=CHAT)
        malformed = await c.post("/chat/completions", json=CHAT)
        error = await c.post("/chat/completions", json=CHAT)
    choice = truncated.json()["choices"][0]
    assert choice["finish_reason"] is None
    assert choice["message"]["content"] == fake_text(3)
    with pytest.raises(ValueError, match=r"Extra data|Expecting"):
        json.loads(malformed.content)
    assert error.status_code == 200
    assert error.json()["error"]["type"] == "server_error"
    assert server.statistics().completed == 0


async def test_non_stream_stalls_and_reset(
    autojump_clock: trio.testing.MockClock, transport: Transport
) -> None:
    """Non-streamed: stall_mid sends half a body then stalls; drip sends spaces; reset aborts."""
    faults = FaultPlan(requests={1: "stall_mid", 2: "drip", 3: "reset"})
    async with (
        open_fake_server(faults=faults) as server,
        client(server, transport) as c,
    ):
        for expected in ("half", "spaces"):
            received = bytearray()
            async with c.stream("POST", "/chat/completions", json=CHAT) as response:
                with trio.move_on_after(5):
                    async for data in response.aiter_raw():
                        received += data
            if expected == "half":
                assert received.startswith(b'{"id":')
                assert len(received) < int(response.headers["content-length"])
            else:
                assert received.strip() == b""
                assert len(received) >= 10
        with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
            await c.post("/chat/completions", json=CHAT)
        await settle(server)
        assert server.statistics().faults == {"stall_mid": 1, "drip": 1, "reset": 1}


# -- lifetime ---------------------------------------------------------------------------


async def test_stalled_handlers_end_with_the_server(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Leaving open_fake_server ends a stalled response: the client sees the connection close."""
    errors: list[BaseException] = []
    async with httpx.AsyncClient(timeout=None) as c:

        async def post(url: str) -> None:
            try:
                await c.post(f"{url}/chat/completions", json=CHAT)
            except httpx.HTTPError as exc:
                errors.append(exc)

        async with (
            trio.open_nursery() as nursery,
            open_fake_server(faults=plan("stall_headers")) as server,
        ):
            nursery.start_soon(post, server.base_url)
            await trio.sleep(100)
            assert server.statistics().in_flight == 1
    assert len(errors) == 1
    assert isinstance(errors[0], httpx.RemoteProtocolError)


async def test_set_faults_heals_the_server(transport: Transport) -> None:
    """set_faults(None) makes later requests succeed."""
    async with (
        open_fake_server(faults=plan("http_503")) as server,
        client(server, transport) as c,
    ):
        assert (await c.post("/chat/completions", json=CHAT)).status_code == 503
        server.set_faults(None)
        assert (await c.post("/chat/completions", json=CHAT)).status_code == 200
    assert not server.faults


# -- plans --------------------------------------------------------------------------------


async def test_items_script_by_item_and_attempt(transport: Transport) -> None:
    """(item, attempt) keys fault one attempt; a bare item id faults every attempt."""
    faults = FaultPlan(items={("a", 1): "http_500", "b": "http_502"})
    async with (
        open_fake_server(faults=faults) as server,
        client(server, transport) as c,
    ):

        async def status(item: str, attempt: int) -> int:
            headers = {"x-shardline-item-id": item, "x-shardline-attempt": str(attempt)}
            response = await c.post("/chat/completions", json=CHAT, headers=headers)
            return response.status_code

        assert [await status("a", 1), await status("a", 2)] == [500, 200]
        assert [await status("b", 1), await status("b", 2)] == [502, 502]
        assert await status("c", 1) == 200
        assert (await c.post("/chat/completions", json=CHAT)).status_code == 200


async def test_requests_script_without_headers(transport: Transport) -> None:
    """requests={2: ...} faults the second completion request of a header-less client."""
    async with (
        open_fake_server(faults=FaultPlan(requests={2: "http_500"})) as server,
        client(server, transport) as c,
    ):
        await c.get("/models")  # not a completion request: not counted
        codes = [(await c.post("/completions", json={"prompt": "x"})).status_code for _ in range(3)]
    assert codes == [200, 500, 200]


def draw(plan: FaultPlan, seed: int, items: range) -> list[str]:
    """The items of ``items`` (first attempts) that ``plan`` faults under ``seed``."""
    return [
        str(i)
        for i in items
        if plan.choose(seed=seed, sequence=i + 1, item_id=str(i), attempt=1) is not None
    ]


def test_rates_are_seeded_and_order_independent() -> None:
    """Rate draws depend on seed and item, not on arrival order; the rate is about right."""
    faults = FaultPlan(rates={"rate_limit": 0.2, "reset": 0.1})
    first = draw(faults, 1, range(2000))
    assert first == draw(faults, 1, range(2000))
    assert first != draw(faults, 2, range(2000))
    assert 0.25 < len(first) / 2000 < 0.35
    kinds = {
        faults.choose(seed=1, sequence=999, item_id=i, attempt=1).kind  # type: ignore[union-attr]
        for i in first
    }
    assert kinds == {FaultKind.RATE_LIMIT, FaultKind.RESET}
    # the same item on another attempt is an independent draw
    second = [i for i in first if faults.choose(seed=1, sequence=0, item_id=i, attempt=2)]
    assert len(second) < len(first)


async def test_rate_faults_are_counted_by_kind(transport: Transport) -> None:
    """statistics().faults counts rate-drawn faults by kind; completed counts the rest."""
    async with (
        open_fake_server(faults="http_500=0.5", seed=3) as server,
        client(server, transport) as c,
    ):
        codes = [(await c.post("/chat/completions", json=CHAT)).status_code for _ in range(40)]
        await trio.testing.wait_all_tasks_blocked()  # the server counts its last answer
        stats = server.statistics()
    assert stats.faults == {"http_500": codes.count(500)}
    assert stats.completed == codes.count(200)
    assert 0 < codes.count(500) < 40
    assert stats.completion_tokens == 6 * codes.count(200)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("", FaultPlan()),
        (" rate_limit=0.05 , reset=0.01", FaultPlan(rates={"rate_limit": 0.05, "reset": 0.01})),
        (
            "rate_limit=0.5:retry_after=2",
            FaultPlan(rates={Fault(kind="rate_limit", retry_after=2.0): 0.5}),
        ),
        (
            "stall_mid@item=a/1:after=3",
            FaultPlan(items={("a", 1): Fault(kind="stall_mid", after_events=3)}),
        ),
        ("reset@item=x/y", FaultPlan(items={"x/y": "reset"})),
        ("drip@request=4:interval=0.1", FaultPlan(requests={4: Fault(kind="drip", interval=0.1)})),
    ],
)
def test_parse_spec(spec: str, expected: FaultPlan) -> None:
    """The --faults text spec builds the plan it describes."""
    assert FaultPlan.parse(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("bogus=0.1", "unknown fault kind 'bogus'"),
        ("reset=lots", "rate must be a number in [0, 1], got 'lots'"),
        ("reset=1.5", "rate of reset must be between 0 and 1, got 1.5"),
        ("reset=0.6,http_500=0.6", "fault rates must add up to <= 1, got 1.2"),
        ("reset", "expected KIND=RATE or KIND@item=ID[/N] or KIND@request=N"),
        ("reset@who=3", "target must be item=ID[/ATTEMPT] or request=N"),
        ("reset=0.1:speed=3", "unknown parameter 'speed=3'"),
        ("stall_mid=0.1:after=-1", "after_events must be an integer >= 0, got -1"),
    ],
)
def test_parse_spec_errors_name_the_problem(spec: str, message: str) -> None:
    """A bad spec raises FaultSpecError naming the entry and the problem."""
    with pytest.raises(FaultSpecError) as info:
        FaultPlan.parse(spec)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "nope"}, "unknown fault kind 'nope'"),
        ({"kind": "drip", "interval": 0}, "interval must be a finite number > 0, got 0"),
        ({"kind": "rate_limit", "retry_after": -1}, "retry_after must be a finite number >= 0"),
    ],
)
def test_fault_validation(kwargs: dict[str, Any], message: str) -> None:
    """Fault rejects bad parameters with a message naming the parameter."""
    with pytest.raises(ValueError) as info:
        Fault(**kwargs)
    assert message in str(info.value)


def test_expected_causes_cover_every_kind() -> None:
    """Every kind has an expected cause, streamed and not; drip and stall_mid follow content."""
    assert set(EXPECTED_CAUSE) == set(EXPECTED_CAUSE_NON_STREAMING) == set(FaultKind)
    assert tuple(FAULT_KINDS) == tuple(k.value for k in FaultKind)
    assert expected_cause("rate_limit") is Cause.RATE_LIMITED
    assert expected_cause("http_502") is Cause.SERVER_ERROR
    assert expected_cause("drip") is Cause.TTFT_TIMEOUT
    assert expected_cause(Fault(kind="drip", after_events=1)) is Cause.STALL_TIMEOUT
    assert expected_cause("stall_mid") is Cause.STALL_TIMEOUT
    assert expected_cause(Fault(kind="stall_mid", after_events=0)) is Cause.TTFT_TIMEOUT
    assert expected_cause("stall_mid", stream=False) is Cause.TTFT_TIMEOUT
    assert expected_cause("truncate") is Cause.TRUNCATED
    assert expected_cause("malformed") is Cause.PROTOCOL_ERROR
    assert expected_cause("error_event") is Cause.SERVER_ERROR
    assert expected_cause("reset") is Cause.CONNECTION_LOST


async def test_timing_applies_after_a_finite_stall(
    autojump_clock: trio.testing.MockClock, transport: Transport
) -> None:
    """A finite stall_mid delays the rest of the stream, which then completes normally."""
    fault = Fault(kind="stall_mid", after_events=1, duration=5.0)
    async with (
        open_fake_server(faults=plan(fault), timing=TimingModel(itl=1.0)) as server,
        client(server, transport) as c,
    ):
        start = trio.current_time()
        lines: list[str] = []
        async with c.stream("POST", "/chat/completions", json=STREAM) as response:
            assert await read_lines(response, lines, seconds=100)
        elapsed = trio.current_time() - start
    assert "".join(contents(lines)) == fake_text(6)
    assert elapsed == pytest.approx(5.0 + 4 * 1.0)  # the stall absorbs one itl
    assert lines[-1] == "data: [DONE]"


async def test_unparsable_attempt_header_matches_every_attempt_rules_only(
    transport: Transport,
) -> None:
    """A non-integer x-shardline-attempt counts as no attempt: only bare item rules match."""
    faults = FaultPlan(items={("a", 1): "http_500", "b": "http_502"})
    async with open_fake_server(faults=faults) as server, client(server, transport) as c:
        a = await c.post(
            "/chat/completions",
            json=CHAT,
            headers={"x-shardline-item-id": "a", "x-shardline-attempt": "first"},
        )
        b = await c.post(
            "/chat/completions",
            json=CHAT,
            headers={"x-shardline-item-id": "b", "x-shardline-attempt": "first"},
        )
    assert (a.status_code, b.status_code) == (200, 502)
