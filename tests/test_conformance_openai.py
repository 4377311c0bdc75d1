"""Conformance: the official ``openai`` client talks to the fake server, and every chunk and
response validates strictly against the ``openai`` package's own pydantic models.

The fake server runs in a child process (`fake_server_process`); the (synchronous)
``openai`` client and a raw ``httpx`` client run in the test process. Raw wire JSON is validated
with ``model_validate(..., strict=True)`` and must contain no field the models do not
know (``model_extra`` empty at every level).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Literal

import httpx
import openai
import pytest
from openai.types import Completion, CompletionChoice, CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import BaseModel, TypeAdapter

from shardline.testing import FakeServerProcess, fake_embedding, fake_server_process, fake_text

FAULTS = "rate_limit@item=rl,http_503@item=boom,error_event@item=err,truncate@item=trunc"


@pytest.fixture(scope="module")
def server() -> Iterator[FakeServerProcess]:
    """A fake server in a child process for this module (`fake_server_process`)."""
    with fake_server_process(faults=FAULTS) as fake:
        yield fake


@pytest.fixture
def client(server: FakeServerProcess) -> Iterator[openai.OpenAI]:
    """The official synchronous client, without retries."""
    with openai.OpenAI(base_url=server.base_url, api_key="sk-fake", max_retries=0) as c:
        yield c


def assert_no_extra(model: BaseModel, path: str = "$") -> None:
    """Fail if ``model`` or any nested model carries a field its class does not declare."""
    assert not model.model_extra, f"{path}: fields unknown to openai: {model.model_extra}"
    for name in model.model_fields_set:
        value = getattr(model, name)
        values = value if isinstance(value, list) else [value]
        for i, item in enumerate(values):
            if isinstance(item, BaseModel):
                assert_no_extra(
                    item, f"{path}.{name}[{i}]" if isinstance(value, list) else f"{path}.{name}"
                )


def strict(model: type[BaseModel], raw: dict[str, Any]) -> BaseModel:
    """Validate ``raw`` strictly against ``model`` and forbid unknown fields."""
    parsed = model.model_validate(raw, strict=True)
    assert_no_extra(parsed)
    return parsed


class StreamCompletionChoice(CompletionChoice):
    """A legacy streamed choice.

    The API streams ``finish_reason: null`` on every chunk but the last, while
    ``openai.types.CompletionChoice`` declares it non-optional (the SDK builds
    stream chunks without validation). Only that one field is relaxed here.
    """

    finish_reason: Literal["stop", "length", "content_filter"] | None  # type: ignore[assignment]


class StreamCompletion(Completion):
    """A legacy streamed chunk: :class:`openai.types.Completion` with relaxed choices."""

    choices: list[StreamCompletionChoice]  # type: ignore[assignment]


def raw_events(server: FakeServerProcess, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """POST a streamed request with httpx and return every ``data:`` JSON, checking [DONE]."""
    events: list[dict[str, Any]] = []
    lines: list[str] = []
    with (
        httpx.Client(base_url=server.base_url, timeout=30) as c,
        c.stream("POST", path, json=body) as response,
    ):
        assert response.status_code == 200
        for line in response.iter_lines():
            if line:
                lines.append(line)
    assert lines[-1] == "data: [DONE]"
    for line in lines[:-1]:
        assert line.startswith("data: ")
        events.append(json.loads(line[len("data: ") :]))
    return events


MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]


def test_chat_stream_chunks_validate(server: FakeServerProcess, client: openai.OpenAI) -> None:
    """Every streamed chat chunk (role, content, finish, usage) is a valid ChatCompletionChunk."""
    body = {
        "model": "gpt-fake",
        "messages": MESSAGES,
        "max_tokens": 5,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    events = raw_events(server, "/chat/completions", body)
    chunks = [strict(ChatCompletionChunk, e) for e in events]
    assert len(chunks) == 1 + 5 + 1 + 1

    stream = client.chat.completions.create(
        model="gpt-fake",
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    sdk_chunks = list(stream)
    for chunk in sdk_chunks:
        strict(ChatCompletionChunk, chunk.model_dump(mode="json", exclude_unset=True))
    text = "".join(ch.choices[0].delta.content or "" for ch in sdk_chunks if ch.choices)
    assert text == fake_text(5)
    assert sdk_chunks[0].choices[0].delta.role == "assistant"
    assert sdk_chunks[-2].choices[0].finish_reason == "length"
    assert sdk_chunks[-1].usage is not None
    assert sdk_chunks[-1].usage.completion_tokens == 5


def test_chat_non_stream_validates(server: FakeServerProcess, client: openai.OpenAI) -> None:
    """A non-streamed chat answer is a valid ChatCompletion, raw and through the SDK."""
    with httpx.Client(base_url=server.base_url, timeout=30) as c:
        raw = c.post("/chat/completions", json={"model": "m", "messages": MESSAGES}).json()
    strict(ChatCompletion, raw)
    answer = client.chat.completions.create(model="m", messages=MESSAGES)  # type: ignore[arg-type]
    strict(ChatCompletion, answer.model_dump(mode="json", exclude_unset=True))
    assert answer.choices[0].message.content == fake_text(16)
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + 16


def test_legacy_completions_validate(server: FakeServerProcess, client: openai.OpenAI) -> None:
    """Legacy completions, streamed and not, validate against openai's Completion."""
    whole = client.completions.create(model="m", prompt="Say hi", max_tokens=4)
    strict(Completion, whole.model_dump(mode="json", exclude_unset=True))
    assert whole.choices[0].text == fake_text(4)

    body = {
        "model": "m",
        "prompt": "Say hi",
        "max_tokens": 4,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    events = raw_events(server, "/completions", body)
    for event in events[:-2]:
        strict(StreamCompletion, event)
    strict(Completion, events[-2])  # the finish chunk is a complete Completion
    strict(Completion, events[-1])  # the usage chunk: choices == []

    stream = client.completions.create(model="m", prompt="Say hi", max_tokens=4, stream=True)
    text = "".join(ch.choices[0].text for ch in stream if ch.choices)
    assert text == fake_text(4)


def test_models_list_validates(client: openai.OpenAI) -> None:
    """GET /models parses with the SDK."""
    models = client.models.list()
    assert [m.id for m in models.data] == ["shardline-fake"]


def test_sdk_sees_faults_as_the_api_errors_it_knows(client: openai.OpenAI) -> None:
    """429, 503 and an in-band error event raise the SDK's own exception types."""

    def ask(item: str, *, stream: bool = False) -> Any:
        headers = {"x-shardline-item-id": item, "x-shardline-attempt": "1"}
        result = client.chat.completions.create(
            model="m",
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=stream,
            extra_headers=headers,
        )
        return list(result) if stream else result

    with pytest.raises(openai.RateLimitError) as rate_limited:
        ask("rl")
    assert rate_limited.value.response.headers["retry-after-ms"] == "1000"
    with pytest.raises(openai.InternalServerError):
        ask("boom")
    with pytest.raises(openai.APIError):
        ask("err", stream=True)
    # A truncated stream is NOT an error to the SDK: exactly what shardline must catch.
    chunks = ask("trunc", stream=True)
    assert all(ch.choices[0].finish_reason is None for ch in chunks)


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "extract",
            "description": "Record the extracted text.",
            "parameters": {"type": "object", "properties": {"text": {"type": "string"}}},
        },
    }
]


def test_chat_tool_call_stream_validates_and_the_sdk_assembles_it(
    server: FakeServerProcess, client: openai.OpenAI
) -> None:
    """A request with tools streams one call (valid chunks); the SDK's own accumulator
    assembles the same call shardline does, with arguments that are JSON."""
    body = {
        "model": "m",
        "messages": MESSAGES,
        "tools": TOOLS,
        "max_tokens": 6,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    events = raw_events(server, "/chat/completions", body)
    chunks = [strict(ChatCompletionChunk, e) for e in events]
    first_call = chunks[1].choices[0].delta.tool_calls  # type: ignore[attr-defined]
    assert first_call is not None
    assert first_call[0].id == "call_shardline" + chunks[0].id.rpartition("shardline")[2]
    with client.chat.completions.stream(
        model="m",
        messages=MESSAGES,  # type: ignore[arg-type]
        tools=TOOLS,  # type: ignore[arg-type]
        max_tokens=6,
    ) as stream:
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    (tool_call,) = choice.message.tool_calls
    assert tool_call.type == "function"
    assert tool_call.function.name == "extract"
    assert json.loads(tool_call.function.arguments) == {"text": fake_text(6)}


def test_chat_tool_call_non_stream_validates(
    server: FakeServerProcess, client: openai.OpenAI
) -> None:
    """A non-streamed tool call is a valid ChatCompletion; tool_choice picks the function."""
    tools = [*TOOLS, {"type": "function", "function": {"name": "other"}}]
    answer = client.chat.completions.create(
        model="m",
        messages=MESSAGES,  # type: ignore[arg-type]
        tools=tools,  # type: ignore[arg-type]
        tool_choice={"type": "function", "function": {"name": "other"}},
        max_tokens=3,
    )
    strict(ChatCompletion, answer.model_dump(mode="json", exclude_unset=True))
    message = answer.choices[0].message
    assert message.content is None
    assert message.tool_calls is not None
    assert message.tool_calls[0].function.name == "other"  # type: ignore[union-attr]
    assert answer.choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize(
    ("extra", "key"),
    [({"reasoning_effort": "low"}, "reasoning_content"), ({"reasoning": {}}, "reasoning")],
)
def test_reasoning_stream_validates_apart_from_its_reasoning_key(
    server: FakeServerProcess, extra: dict[str, Any], key: str
) -> None:
    """Reasoning streams as vLLM (reasoning_content) or OpenRouter (reasoning) send it: every
    chunk is a valid ChatCompletionChunk once that one key, unknown to openai, is set aside."""
    body = {"model": "m", "messages": MESSAGES, "max_tokens": 6, "stream": True, **extra}
    events = raw_events(server, "/chat/completions", body)
    thought = ""
    for event in events:
        for choice in event["choices"]:
            piece = choice["delta"].pop(key, None)
            assert piece is None or isinstance(piece, str)
            thought += piece or ""
        strict(ChatCompletionChunk, event)
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events)
    assert (thought, text) == (fake_text(3), fake_text(3))


def test_embeddings_validate_and_the_sdk_decodes_them(client: openai.OpenAI) -> None:
    """Embeddings (float, and the SDK's default base64) are valid CreateEmbeddingResponses
    holding the same deterministic vectors."""
    floats = client.embeddings.create(
        model="m", input=["alpha", "beta"], dimensions=4, encoding_format="float"
    )
    strict(CreateEmbeddingResponse, floats.model_dump(mode="json", exclude_unset=True))
    assert [e.embedding for e in floats.data] == [
        fake_embedding("alpha", 4),
        fake_embedding("beta", 4),
    ]
    assert floats.usage.prompt_tokens == floats.usage.total_tokens == 2 + 1  # 5 and 4 chars
    packed = client.embeddings.create(model="m", input="alpha")  # base64 on the wire
    assert packed.data[0].embedding == pytest.approx(fake_embedding("alpha"), abs=1e-6)


def test_responses_stream_events_validate_and_the_sdk_assembles_them(
    server: FakeServerProcess, client: openai.OpenAI
) -> None:
    """Every streamed Responses event validates strictly as the event type it names; the SDK's
    stream helper ends with the same text and usage; the non-streamed object validates too."""
    body = {"model": "m", "input": "hello", "reasoning": {}, "max_output_tokens": 6}
    with (
        httpx.Client(base_url=server.base_url, timeout=30) as c,
        c.stream("POST", "/responses", json={**body, "stream": True}) as response,
    ):
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line]
    names = [line.removeprefix("event: ") for line in lines[::2]]
    events = [json.loads(line.removeprefix("data: ")) for line in lines[1::2]]
    assert [e["type"] for e in events] == names
    adapter: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
    for raw in events:
        assert_no_extra(adapter.validate_python(raw, strict=True))
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert names[-1] == "response.incomplete"

    with client.responses.stream(model="m", input="hello") as stream:
        final = stream.get_final_response()
    assert final.output_text == fake_text(16)
    assert final.usage is not None
    assert final.usage.output_tokens == 16
    whole = client.responses.create(model="m", input=[{"role": "user", "content": "hi"}])
    strict(Response, whole.model_dump(mode="json", exclude_unset=True))
    assert (whole.status, whole.output_text) == ("completed", fake_text(16))


def test_responses_function_call_validates(client: openai.OpenAI) -> None:
    """A Responses request with tools gets one function call the SDK parses."""
    tools = [{"type": "function", "name": "extract", "parameters": {}, "strict": False}]
    whole = client.responses.create(model="m", input="x", tools=tools)  # type: ignore[arg-type]
    strict(Response, whole.model_dump(mode="json", exclude_unset=True))
    (call,) = whole.output
    assert call.type == "function_call"
    assert json.loads(call.arguments) == {"text": fake_text(16)}
