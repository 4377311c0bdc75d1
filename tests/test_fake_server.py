"""The fake server's well-behaved protocol: endpoints, shapes, determinism, timing, counters."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import trio

from shardline.testing import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_MODEL,
    FakeServer,
    TimingModel,
    count_prompt_tokens,
    fake_text,
    open_fake_server,
    serve_fake_server,
)

CHAT = {"model": "m", "messages": [{"role": "user", "content": "abcdefgh"}]}


async def collect_sse(
    client: httpx.AsyncClient, path: str, body: dict[str, Any]
) -> tuple[httpx.Response, list[str]]:
    """POST ``body`` streamed and return the response and its ``data:`` payloads."""
    data: list[str] = []
    async with client.stream("POST", path, json=body) as response:
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                data.append(line[len("data: ") :])
    return response, data


async def test_chat_stream_shapes_and_order() -> None:
    """A streamed chat answer is role chunk, content chunks, finish chunk, usage chunk, [DONE]."""
    async with open_fake_server() as server, httpx.AsyncClient(base_url=server.base_url) as c:
        body = {**CHAT, "max_tokens": 5, "stream": True, "stream_options": {"include_usage": True}}
        response, data = await collect_sse(c, "/chat/completions", body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert {ch["object"] for ch in chunks} == {"chat.completion.chunk"}
    assert len({ch["id"] for ch in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    contents = [ch["choices"][0]["delta"]["content"] for ch in chunks[1:-2]]
    assert "".join(contents) == fake_text(5)
    assert len(contents) == 5
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {
        "prompt_tokens": count_prompt_tokens(8),
        "completion_tokens": 5,
        "total_tokens": count_prompt_tokens(8) + 5,
    }
    assert all(ch["usage"] is None for ch in chunks[:-1])


async def test_chat_stream_without_usage_has_no_usage_chunk() -> None:
    """Without stream_options.include_usage no chunk carries a usage field."""
    async with open_fake_server() as server, httpx.AsyncClient(base_url=server.base_url) as c:
        _, data = await collect_sse(c, "/chat/completions", {**CHAT, "stream": True})
    chunks = [json.loads(d) for d in data[:-1]]
    assert all("usage" not in ch for ch in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    text = "".join(ch["choices"][0]["delta"].get("content") or "" for ch in chunks)
    assert text == fake_text(DEFAULT_MAX_TOKENS)


async def test_chat_non_stream_is_deterministic() -> None:
    """Two identical non-streamed requests get the same text and usage."""
    async with open_fake_server() as server, httpx.AsyncClient(base_url=server.base_url) as c:
        body = {**CHAT, "max_completion_tokens": 7}
        first = (await c.post("/chat/completions", json=body)).json()
        second = (await c.post("/chat/completions", json=body)).json()
    assert first["choices"] == second["choices"]
    assert first["choices"][0]["message"]["content"] == fake_text(7)
    assert first["choices"][0]["finish_reason"] == "length"
    assert first["usage"]["completion_tokens"] == 7
    assert first["object"] == "chat.completion"


async def test_legacy_completions_stream_and_not() -> None:
    """Legacy /completions streams text chunks and answers whole bodies too."""
    async with open_fake_server() as server, httpx.AsyncClient(base_url=server.base_url) as c:
        body = {"model": "m", "prompt": "x" * 9, "max_tokens": 3}
        whole = (await c.post("/completions", json=body)).json()
        _, data = await collect_sse(
            c,
            "/completions",
            {**body, "stream": True, "stream_options": {"include_usage": True}},
        )
    assert whole["object"] == "text_completion"
    assert whole["choices"][0]["text"] == fake_text(3)
    assert whole["usage"]["prompt_tokens"] == count_prompt_tokens(9) == 3
    chunks = [json.loads(d) for d in data[:-1]]
    assert "".join(ch["choices"][0]["text"] for ch in chunks if ch["choices"]) == fake_text(3)
    assert chunks[-1]["usage"]["completion_tokens"] == 3


async def test_models_lists_configured_models() -> None:
    """GET /models lists the server's models; requests without a model echo the first."""
    async with (
        open_fake_server(models=("a", "b")) as server,
        httpx.AsyncClient(base_url=server.base_url) as c,
    ):
        models = (await c.get("/models")).json()
        answer = (await c.post("/chat/completions", json={"messages": CHAT["messages"]})).json()
    assert [m["id"] for m in models["data"]] == ["a", "b"]
    assert answer["model"] == "a"


async def test_tokens_per_event_batches_content() -> None:
    """tokens_per_event=4 sends 10 tokens in 3 content events."""
    timing = TimingModel(tokens_per_event=4)
    async with (
        open_fake_server(timing=timing) as server,
        httpx.AsyncClient(base_url=server.base_url) as c,
    ):
        _, data = await collect_sse(
            c, "/chat/completions", {**CHAT, "max_tokens": 10, "stream": True}
        )
    contents = [json.loads(d)["choices"][0]["delta"].get("content") for d in data[1:-2]]
    assert contents == [fake_text(4), fake_text(4, start=4), fake_text(2, start=8)]


async def test_timing_model_on_virtual_time(autojump_clock: trio.testing.MockClock) -> None:
    """TTFT and inter-token latency are honoured exactly in trio time."""
    timing = TimingModel(ttft=2.0, itl=0.5, tokens_per_event=2)
    async with (
        open_fake_server(timing=timing) as server,
        httpx.AsyncClient(base_url=server.base_url) as c,
    ):
        start = trio.current_time()
        seen: list[float] = []
        body = {**CHAT, "max_tokens": 6, "stream": True}
        async with c.stream("POST", "/chat/completions", json=body) as response:
            async for line in response.aiter_lines():
                if line.startswith("data: {") and '"content":"' in line and '"role"' not in line:
                    seen.append(trio.current_time() - start)
    assert seen == pytest.approx([2.0, 3.0, 4.0])


async def test_non_stream_waits_for_generation(autojump_clock: trio.testing.MockClock) -> None:
    """A non-streamed answer arrives after ttft + itl * (tokens - 1)."""
    timing = TimingModel(ttft=1.0, itl=0.25)
    async with (
        open_fake_server(timing=timing) as server,
        httpx.AsyncClient(base_url=server.base_url) as c,
    ):
        start = trio.current_time()
        await c.post("/chat/completions", json={**CHAT, "max_tokens": 5})
        assert trio.current_time() - start == pytest.approx(2.0)


async def test_statistics_count_requests_and_tokens() -> None:
    """statistics() counts connections, requests by endpoint, completions and tokens."""
    async with open_fake_server() as server, httpx.AsyncClient(base_url=server.base_url) as c:
        await c.get("/models")
        await c.post("/chat/completions", json={**CHAT, "max_tokens": 3})
        await collect_sse(c, "/completions", {"prompt": "abcd", "max_tokens": 2, "stream": True})
        await c.post("/nope", json={})
        stats = server.statistics()
    assert stats.connections_accepted == 1
    assert stats.requests == 4
    assert dict(stats.requests_by_endpoint) == {
        "models": 1,
        "chat.completions": 1,
        "completions": 1,
        "other": 1,
    }
    assert stats.completed == 2
    assert stats.completion_tokens == 5
    assert stats.prompt_tokens == count_prompt_tokens(8) + count_prompt_tokens(4)
    assert stats.in_flight == 0
    assert stats.max_in_flight == 1
    assert stats.faults_total == 0
    assert stats.internal_errors == 0


async def test_max_in_flight_tracks_concurrency(autojump_clock: trio.testing.MockClock) -> None:
    """Five concurrent slow requests show max_in_flight == 5."""
    async with (
        open_fake_server(timing=TimingModel(ttft=1.0)) as server,
        httpx.AsyncClient(base_url=server.base_url) as c,
    ):

        async def post() -> None:
            await c.post("/chat/completions", json=CHAT)

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(post)
        stats = server.statistics()
    assert stats.max_in_flight == 5
    assert stats.completed == 5
    assert stats.connections_accepted == 5


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model": "m"}, "'messages' must be a non-empty list"),
        ({**CHAT, "max_tokens": 0}, "'max_tokens' must be an integer >= 1"),
        ({**CHAT, "n": 2}, "the fake server supports only n=1"),
    ],
)
async def test_bad_requests_get_400(body: dict[str, Any], message: str) -> None:
    """Invalid bodies get an OpenAI-style 400 error naming the problem."""
    async with open_fake_server() as server, httpx.AsyncClient(base_url=server.base_url) as c:
        response = await c.post("/chat/completions", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["message"] == message


async def test_non_json_body_and_wrong_method() -> None:
    """A non-JSON body is a 400; GET on a completion endpoint is a 405."""
    async with open_fake_server() as server, httpx.AsyncClient(base_url=server.base_url) as c:
        bad = await c.post("/chat/completions", content=b"{nope")
        wrong = await c.get("/chat/completions")
    assert bad.status_code == 400
    assert wrong.status_code == 405


async def test_nursery_start_form_and_base_url() -> None:
    """serve_fake_server reports a FakeServer with a loopback base URL, and stops on cancel."""
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_fake_server)
        assert isinstance(server, FakeServer)
        assert server.base_url == f"http://127.0.0.1:{server.port}/v1"
        async with httpx.AsyncClient(base_url=server.base_url) as c:
            assert (await c.get("/models")).json()["data"][0]["id"] == DEFAULT_MODEL
        nursery.cancel_scope.cancel()
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(base_url=server.base_url) as c:
            await c.get("/models")


async def test_azure_style_paths_are_served() -> None:
    """Any path ending in /chat/completions is served (Azure deployment URLs)."""
    async with open_fake_server() as server, httpx.AsyncClient() as c:
        url = f"http://127.0.0.1:{server.port}/openai/deployments/d/chat/completions?api-version=1"
        response = await c.post(url, json=CHAT)
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ttft": -1.0}, "ttft must be a finite number >= 0, got -1.0"),
        ({"itl": float("inf")}, "itl must be a finite number >= 0, got inf"),
        ({"tokens_per_event": 0}, "tokens_per_event must be an integer >= 1, got 0"),
    ],
)
def test_timing_model_validation(kwargs: dict[str, Any], message: str) -> None:
    """TimingModel rejects bad values with a message naming the parameter and bound."""
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        TimingModel(**kwargs)


def test_fake_text_and_prompt_rule() -> None:
    """fake_text is a deterministic word sequence; prompts count ceil(chars / 4), min 1."""
    assert fake_text(3) == "the quick brown"
    assert fake_text(2, start=1) == " quick brown"
    assert fake_text(0) == ""
    assert [count_prompt_tokens(n) for n in (0, 1, 4, 5)] == [1, 1, 1, 2]


async def test_paced_streams_end_with_the_server(autojump_clock: trio.testing.MockClock) -> None:
    """Leaving open_fake_server cancels a stream parked between two events."""
    lines: list[str] = []
    errors: list[Exception] = []
    async with httpx.AsyncClient(timeout=None) as c, trio.open_nursery() as nursery:
        async with open_fake_server(timing=TimingModel(itl=1000.0)) as server:

            async def read() -> None:
                try:
                    url = f"{server.base_url}/chat/completions"
                    async with c.stream("POST", url, json={**CHAT, "stream": True}) as r:
                        async for line in r.aiter_lines():
                            if line:
                                lines.append(line)
                except httpx.HTTPError as exc:
                    errors.append(exc)

            nursery.start_soon(read)
            await trio.sleep(10)
            assert server.statistics().in_flight == 1
    assert len(lines) == 2  # the role chunk and the first token
    assert len(errors) == 1
    assert isinstance(errors[0], httpx.RemoteProtocolError)


@pytest.mark.parametrize(
    ("prompt", "prompt_tokens"),
    [("abcdefghi", 3), (["abcd"], 1), ([101, 102, 103, 104, 105], 5)],
    ids=["string", "list-of-one", "token-ids"],
)
async def test_legacy_prompt_forms(prompt: Any, prompt_tokens: int) -> None:
    """Legacy prompts may be a string, a one-string list or token ids; usage counts them."""
    async with open_fake_server() as server, httpx.AsyncClient(base_url=server.base_url) as c:
        answer = (await c.post("/completions", json={"prompt": prompt, "max_tokens": 2})).json()
    assert answer["usage"]["prompt_tokens"] == prompt_tokens


async def test_chat_content_parts_are_counted() -> None:
    """List-of-parts message content counts the characters of its text parts."""
    parts = [{"type": "text", "text": "abcd"}, {"type": "text", "text": "efgh"}]
    body = {"messages": [{"role": "user", "content": parts}], "max_tokens": 1}
    async with open_fake_server() as server, httpx.AsyncClient(base_url=server.base_url) as c:
        answer = (await c.post("/chat/completions", json=body)).json()
    assert answer["usage"]["prompt_tokens"] == count_prompt_tokens(8) == 2
