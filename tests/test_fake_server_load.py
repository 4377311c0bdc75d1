"""The fake server's load models: capacity, queueing, rate limits, preemption, slow first tokens."""

from __future__ import annotations

import functools
import json
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from shardline.testing import (
    FakeServer,
    FaultPlan,
    LoadModel,
    TimingModel,
    count_prompt_tokens,
    fake_text,
    open_fake_server,
)
from shardline.testing._load import format_reset

CHAT = {"model": "m", "messages": [{"role": "user", "content": "abcdefgh"}], "max_tokens": 4}
STREAM = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}


def client(server: FakeServer) -> httpx.AsyncClient:
    """An httpx client with room for many concurrent connections and no timeouts."""
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    return httpx.AsyncClient(base_url=server.base_url, timeout=None, limits=limits)


def item(name: str, attempt: int = 1) -> dict[str, str]:
    """The shardline request headers of one attempt of item ``name``."""
    return {"x-shardline-item-id": name, "x-shardline-attempt": str(attempt)}


async def post_all(
    c: httpx.AsyncClient, n: int, body: dict[str, Any] = CHAT
) -> list[tuple[float, httpx.Response]]:
    """Send ``n`` requests at once; return (completion time, response) in completion order."""
    done: list[tuple[float, httpx.Response]] = []

    async def one() -> None:
        response = await c.post("/chat/completions", json=body)
        done.append((trio.current_time(), response))

    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(one)
    return done


# -- capacity --------------------------------------------------------------------


async def test_capacity_refuses_with_429_and_retry_after(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Beyond K in flight a request gets 429 with retry-after; the K in flight finish."""
    load = LoadModel(capacity=2, retry_after=1.5)
    async with (
        open_fake_server(load=load, timing=TimingModel(ttft=10.0)) as server,
        client(server) as c,
    ):
        done = await post_all(c, 5)
        later = await c.post("/chat/completions", json=CHAT)
        stats = server.statistics()
    statuses = sorted(r.status_code for _, r in done)
    assert statuses == [200, 200, 429, 429, 429]
    refused = [r for _, r in done if r.status_code == 429]
    assert {r.headers["retry-after"] for r in refused} == {"2"}
    assert {r.headers["retry-after-ms"] for r in refused} == {"1500"}
    assert refused[0].json()["error"]["code"] == "rate_limit_exceeded"
    assert later.status_code == 200
    assert stats.capacity_refusals == 3
    assert stats.max_generating == 2
    assert stats.completed == 3
    assert stats.faults == {}


async def test_capacity_503_without_retry_after(autojump_clock: trio.testing.MockClock) -> None:
    """overload="503" refuses with 503 and, with no retry_after, no retry-after header."""
    load = LoadModel(capacity=1, overload="503")
    async with (
        open_fake_server(load=load, timing=TimingModel(ttft=5.0)) as server,
        client(server) as c,
    ):
        done = await post_all(c, 3)
        stats = server.statistics()
    refused = [r for _, r in done if r.status_code != 200]
    assert [r.status_code for r in refused] == [503, 503]
    assert all("retry-after" not in r.headers for r in refused)
    assert stats.capacity_refusals == 2
    assert stats.max_generating == 1


# -- queueing --------------------------------------------------------------------


async def test_queue_serves_everyone_in_turn(autojump_clock: trio.testing.MockClock) -> None:
    """overload="queue": nothing is refused; beyond K requests wait, so latency grows in steps."""
    load = LoadModel(capacity=2, overload="queue")
    async with (
        open_fake_server(load=load, timing=TimingModel(ttft=1.0)) as server,
        client(server) as c,
    ):
        start = trio.current_time()
        done = await post_all(c, 6)
        stats = server.statistics()
    assert all(r.status_code == 200 for _, r in done)
    assert [round(t - start, 3) for t, _ in done] == [1.0, 1.0, 2.0, 2.0, 3.0, 3.0]
    assert stats.max_queued == 4
    assert stats.queued == 0
    assert stats.max_generating == 2
    assert stats.capacity_refusals == 0
    assert stats.completed == 6


async def test_queue_is_first_come_first_served(autojump_clock: trio.testing.MockClock) -> None:
    """Queued requests are served in arrival order."""
    load = LoadModel(capacity=1, overload="queue")
    order: list[str] = []
    async with (
        open_fake_server(load=load, timing=TimingModel(ttft=1.0)) as server,
        client(server) as c,
    ):

        async def one(name: str) -> None:
            await c.post("/chat/completions", json=CHAT, headers=item(name))
            order.append(name)

        async with trio.open_nursery() as nursery:
            for sent, name in enumerate("abcde", start=1):
                nursery.start_soon(one, name)
                # let this request reach the server before the next one is sent
                while server.statistics().requests < sent:
                    await trio.sleep(0.001)
    assert order == list("abcde")


async def test_a_client_leaving_the_queue_gives_up_its_place(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A queued request whose client disconnects leaves the queue and is never served."""
    load = LoadModel(capacity=1, overload="queue")
    async with (
        open_fake_server(load=load, timing=TimingModel(ttft=10.0)) as server,
        client(server) as c,
    ):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(c.post, "/chat/completions", json=CHAT))
            while server.statistics().generating < 1:
                await trio.sleep(0.001)
            # A client of its own: closing it closes the queued request's connection.
            async with client(server) as leaver:
                with trio.move_on_after(1.0):
                    await leaver.post("/chat/completions", json=CHAT)
                assert server.statistics().queued == 1
            await trio.sleep(0.5)
            assert server.statistics().queued == 0
        stats = server.statistics()
    assert stats.max_queued == 1
    assert stats.completed == 1
    assert stats.max_generating == 1


# -- rate limits -----------------------------------------------------------------


async def test_rpm_limit_headers_and_429(autojump_clock: trio.testing.MockClock) -> None:
    """An RPM limit is announced on every response; beyond it a 429 says when to retry."""
    async with open_fake_server(load=LoadModel(rpm=3)) as server, client(server) as c:
        answers = [await c.post("/chat/completions", json=CHAT) for _ in range(4)]
        await trio.sleep(20.0)
        healed = await c.post("/chat/completions", json=CHAT)
        stats = server.statistics()
    assert [r.status_code for r in answers] == [200, 200, 200, 429]
    assert [r.headers["x-ratelimit-limit-requests"] for r in answers] == ["3"] * 4
    assert [r.headers["x-ratelimit-remaining-requests"] for r in answers] == ["2", "1", "0", "0"]
    assert [r.headers["x-ratelimit-reset-requests"] for r in answers] == [
        "20s",
        "40s",
        "1m0s",
        "1m0s",
    ]
    assert "x-ratelimit-limit-tokens" not in answers[0].headers
    refused = answers[3]
    assert refused.headers["retry-after"] == "20"
    assert refused.headers["retry-after-ms"] == "20000"
    error = refused.json()["error"]
    assert error["type"] == "requests"
    assert error["code"] == "rate_limit_exceeded"
    assert error["message"].startswith("Rate limit reached for requests per min (RPM): Limit 3")
    assert healed.status_code == 200
    assert healed.headers["x-ratelimit-remaining-requests"] == "0"
    assert stats.rate_limit_refusals == 1
    assert stats.completed == 4


async def test_tpm_limit_counts_prompt_and_max_tokens(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A TPM limit charges prompt + max_tokens; too large a request can never fit."""
    tokens = count_prompt_tokens(8) + 4
    async with open_fake_server(load=LoadModel(tpm=60, rpm=600)) as server, client(server) as c:
        first = await c.post("/chat/completions", json=CHAT)
        huge = await c.post("/chat/completions", json={**CHAT, "max_tokens": 100})
        stream = await c.post("/chat/completions", json=STREAM)
        stats = server.statistics()
    assert first.headers["x-ratelimit-limit-tokens"] == "60"
    assert first.headers["x-ratelimit-remaining-tokens"] == str(60 - tokens)
    assert first.headers["x-ratelimit-reset-tokens"] == format_reset(tokens)
    assert first.headers["x-ratelimit-limit-requests"] == "600"
    assert first.headers["x-ratelimit-reset-requests"] == "100ms"
    assert huge.status_code == 429
    assert "retry-after" not in huge.headers
    assert huge.json()["error"]["message"] == (
        "Request too large for tokens per min (TPM): Limit 60, "
        f"Requested {count_prompt_tokens(8) + 100}."
    )
    assert stream.status_code == 200
    assert stream.headers["x-ratelimit-remaining-tokens"] == str(60 - 2 * tokens)
    assert stats.rate_limit_refusals == 1


async def test_rate_limit_headers_ride_on_fault_responses() -> None:
    """A fault's error response carries the rate-limit headers too."""
    async with (
        open_fake_server(load=LoadModel(rpm=100), faults="http_503@request=1") as server,
        client(server) as c,
    ):
        response = await c.post("/chat/completions", json=CHAT)
    assert response.status_code == 503
    assert response.headers["x-ratelimit-remaining-requests"] == "99"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.02, "20ms"),
        (0.0001, "1ms"),
        (1.5, "1.5s"),
        (6.0, "6s"),
        (59.9999, "1m0s"),
        (360, "6m0s"),
        (90.25, "1m30.25s"),
        (3723.5, "1h2m3.5s"),
    ],
)
def test_format_reset_like_openai(seconds: float, text: str) -> None:
    """Resets are durations in OpenAI's style, rounded up to the millisecond."""
    assert format_reset(seconds) == text


# -- llama.cpp: one at a time, preempted, no usage ----------------------------------


async def test_preempt_cuts_the_stream_in_flight(autojump_clock: trio.testing.MockClock) -> None:
    """preempt=True: a new request closes the stream in flight (no finish) and is served."""
    timing = TimingModel(itl=1.0)
    body = {**STREAM, "max_tokens": 10}
    async with (
        open_fake_server(load=LoadModel(preempt=True), timing=timing) as server,
        client(server) as c,
    ):
        lines: list[str] = []
        async with c.stream("POST", "/chat/completions", json=body) as first:
            iterator = first.aiter_lines()
            while len([ln for ln in lines if '"content":"' in ln]) < 3:
                lines.append(await anext(iterator))
            second = await c.post("/chat/completions", json=body)
            with pytest.raises(httpx.RemoteProtocolError):
                lines.extend([line async for line in iterator])
        stats = server.statistics()
    assert not any('"finish_reason":"' in ln for ln in lines)
    assert "data: [DONE]" not in lines
    assert second.status_code == 200
    assert '"finish_reason":"length"' in second.text
    assert stats.preempted == 1
    assert stats.completed == 1


async def test_a_write_that_sent_every_byte_is_not_undone_by_a_cancel() -> None:
    """The last write of an answer, then a cancel: the bytes are gone, so no Cancelled.

    A one-at-a-time server counted such an answer as preempted although the client
    had all of it (a CI flake: the server said 9 cuts, the client saw 8).
    """
    from shardline.testing._connection import Connection
    from shardline.testing._state import ServerState

    state = ServerState(
        timing=TimingModel(), seed=0, default_max_tokens=8, models=("m",), faults=FaultPlan()
    )
    left, right = trio.socket.socketpair()
    with left, right:
        conn = Connection(state, trio.SocketStream(left))
        with trio.CancelScope() as scope:
            scope.cancel()
            await conn.write(bytearray(b"0\r\n\r\n"), checkpoint=True)
        assert not scope.cancelled_caught
        assert await right.recv(16) == b"0\r\n\r\n"


async def test_preempt_cuts_a_non_streamed_request(autojump_clock: trio.testing.MockClock) -> None:
    """A non-streamed request in flight is cut too: its connection closes with no answer."""
    async with (
        open_fake_server(load=LoadModel(preempt=True), timing=TimingModel(ttft=5.0)) as server,
        client(server) as c,
    ):
        outcome: list[object] = []

        async def first() -> None:
            try:
                await c.post("/chat/completions", json=CHAT)
            except httpx.RemoteProtocolError as exc:
                outcome.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(first)
            await trio.sleep(1.0)
            second = await c.post("/chat/completions", json=CHAT)
        stats = server.statistics()
    assert len(outcome) == 1
    assert second.status_code == 200
    assert stats.preempted == 1


async def test_no_usage_withholds_the_usage_chunk() -> None:
    """no_usage=True: no usage chunk even with include_usage; the answer is otherwise complete."""
    async with open_fake_server(no_usage=True) as server, client(server) as c:
        streamed = await c.post("/chat/completions", json=STREAM)
        whole = await c.post("/chat/completions", json=CHAT)
        stats = server.statistics()
    chunks = [json.loads(ln[6:]) for ln in streamed.text.splitlines() if ln.startswith("data: {")]
    assert all("usage" not in ch for ch in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    text = "".join(ch["choices"][0]["delta"].get("content") or "" for ch in chunks)
    assert text == fake_text(4)
    assert whole.json()["usage"]["completion_tokens"] == 4  # non-streamed bodies keep usage
    assert stats.usage_withheld == 1
    assert stats.completed == 2


# -- slow first tokens -------------------------------------------------------------


async def ttft(c: httpx.AsyncClient, headers: dict[str, str]) -> float:
    """Seconds from sending a streamed request to its first content line."""
    start = trio.current_time()
    first: float | None = None
    async with c.stream("POST", "/chat/completions", json=STREAM, headers=headers) as r:
        async for line in r.aiter_lines():
            if first is None and '"content":"' in line and '"content":""' not in line:
                first = trio.current_time() - start
    assert first is not None
    return first


async def test_slow_first_tokens_hit_a_seeded_share_of_first_attempts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A share of first attempts waits the delay before its first token; retries do not."""
    load = LoadModel(slow_first_share=0.25, slow_first_delay=6.0)
    timing = TimingModel(ttft=0.1)
    async with open_fake_server(load=load, timing=timing, seed=5) as server, client(server) as c:
        firsts = {f"i{n}": await ttft(c, item(f"i{n}")) for n in range(80)}
        slow = [name for name, t in firsts.items() if t > 1.0]
        retries = [await ttft(c, item(name, 2)) for name in slow]
        anonymous = await ttft(c, {})
        stats = server.statistics()
    assert 8 <= len(slow) <= 32
    assert all(abs(firsts[name] - 6.1) < 1e-6 for name in slow)
    assert all(abs(t - 0.1) < 1e-6 for t in retries)
    assert abs(anonymous - 0.1) < 1e-6
    assert stats.slow_first_tokens == len(slow)
    assert stats.completed == 80 + len(slow) + 1
    # Same seed, same items: the same ones are slow on another server.
    async with open_fake_server(load=load, timing=timing, seed=5) as again, client(again) as c:
        assert [n for n in firsts if await ttft(c, item(n)) > 1.0] == slow


@pytest.mark.parametrize("body", [STREAM, CHAT], ids=["stream", "whole"])
async def test_leaving_before_the_first_token_frees_the_slot(
    autojump_clock: trio.testing.MockClock, body: dict[str, Any]
) -> None:
    """A slow first attempt abandoned by its client stops at once; the retry gets the slot."""
    load = LoadModel(capacity=1, overload="queue", slow_first_share=1.0, slow_first_delay=6.0)
    async with open_fake_server(load=load) as server, client(server) as c:
        async with client(server) as leaver:  # closing it closes the abandoned connection
            with trio.move_on_after(1.0):
                await leaver.post("/chat/completions", json=body, headers=item("x", 1))
        start = trio.current_time()
        retry = await c.post("/chat/completions", json=body, headers=item("x", 2))
        elapsed = trio.current_time() - start
        stats = server.statistics()
    assert retry.status_code == 200
    assert elapsed < 0.5  # not queued behind the 6 s first token
    assert stats.abandoned == 1
    assert stats.slow_first_tokens == 1
    assert stats.completed == 1
    assert stats.generating == 0


async def test_slow_first_token_non_streamed(autojump_clock: trio.testing.MockClock) -> None:
    """A slow first attempt of a non-streamed request answers whole, late."""
    load = LoadModel(slow_first_share=1.0, slow_first_delay=3.0)
    async with open_fake_server(load=load) as server, client(server) as c:
        start = trio.current_time()
        response = await c.post("/chat/completions", json=CHAT, headers=item("x"))
        elapsed = trio.current_time() - start
    assert response.json()["choices"][0]["message"]["content"] == fake_text(4)
    assert abs(elapsed - 3.0) < 1e-6


# -- configuration -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"capacity": 0}, "capacity must be an integer >= 1 or None, got 0"),
        ({"overload": "drop"}, "overload must be one of 429, 503, queue, got 'drop'"),
        ({"retry_after": -1.0}, "retry_after must be a finite number >= 0 or None, got -1.0"),
        ({"rpm": 2.5}, "rpm must be an integer >= 1 or None, got 2.5"),
        ({"tpm": 0}, "tpm must be an integer >= 1 or None, got 0"),
        ({"slow_first_share": 1.5}, "slow_first_share must be between 0 and 1, got 1.5"),
        (
            {"slow_first_delay": float("inf")},
            "slow_first_delay must be a finite number >= 0, got inf",
        ),
        (
            {"preempt": True, "capacity": 2},
            "preempt serves one request at a time; capacity must be None, got 2",
        ),
    ],
)
def test_load_model_validation(kwargs: dict[str, Any], message: str) -> None:
    """Bad load settings raise ValueError naming the parameter and the bound."""
    with pytest.raises(ValueError) as info:
        LoadModel(**kwargs)
    assert str(info.value) == message


async def test_load_and_faults_compose(autojump_clock: trio.testing.MockClock) -> None:
    """An admitted request still meets its scripted fault; the server exposes its load model."""
    load = LoadModel(capacity=4)
    plan = FaultPlan(items={("a", 1): "http_500"})
    async with open_fake_server(load=load, faults=plan) as server, client(server) as c:
        failed = await c.post("/chat/completions", json=CHAT, headers=item("a", 1))
        ok = await c.post("/chat/completions", json=CHAT, headers=item("a", 2))
        assert server.load is load
        assert server.no_usage is False
        stats = server.statistics()
    assert (failed.status_code, ok.status_code) == (500, 200)
    assert stats.faults == {"http_500": 1}
    assert stats.generating == 0
