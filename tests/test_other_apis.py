"""Embeddings and the Responses API: requests, the parsers at the boundary, and every fault
of the fake server ending in its cause (real sockets, short real-time deadlines)."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import httpx
import pytest
import trio

from shardline import EmbeddingRequest, ResponsesRequest
from shardline._attempt import send_attempt
from shardline._config import Deadlines, Endpoint
from shardline._exceptions import (
    AttemptError,
    Cause,
    ClientError,
    InputError,
    ProtocolError,
    RateLimited,
    ServerError,
    Truncated,
)
from shardline._http import make_client
from shardline._models import request_from_json
from shardline._openai_apis import ResponsesAccumulator, parse_embeddings, parse_response
from shardline._sse import SSEEvent
from shardline.testing import (
    FAULT_KINDS,
    FakeServer,
    Fault,
    FaultPlan,
    expected_cause,
    fake_embedding,
    fake_text,
)

SHORT = 0.3
DEADLINES = Deadlines(connect=1.0, ttft=SHORT, stall=SHORT, attempt=3.0)
TOLERANCE = 0.7
VECTORS = EmbeddingRequest(input=["alpha", "beta", "gamma"], params={"dimensions": 3})
ANSWER = ResponsesRequest(input="Say hi", params={"instructions": "Be brief."})


# -- requests -------------------------------------------------------------------------


def test_input_lines_name_their_api() -> None:
    """'input' needs an 'api'; 'api' must match the main field; to_json round-trips."""
    vec = request_from_json({"id": 1, "api": "embeddings", "input": ["a", "b"], "dimensions": 8})
    assert isinstance(vec, EmbeddingRequest)
    assert (vec.inputs, vec.params) == (2, {"dimensions": 8})
    assert request_from_json(vec.to_json()) == vec
    resp = request_from_json({"api": "responses", "input": "hi", "max_output_tokens": 4})
    assert isinstance(resp, ResponsesRequest)
    assert resp.max_tokens() == 4
    assert request_from_json(resp.to_json()) == resp
    chat = request_from_json({"api": "chat", "messages": [{"role": "user", "content": "x"}]})
    assert chat.api == "chat"
    cases = {
        "field 'input' needs 'api': 'embeddings' or 'responses'": {"input": "x"},
        "'api': 'chat' takes field 'messages', not 'input'": {"api": "chat", "input": "x"},
        "field 'api' must be one of chat, completions, embeddings, responses, got 'vectors'": {
            "api": "vectors",
            "input": "x",
        },
        "give one of 'messages', 'prompt' or 'input', not prompt and input": {
            "prompt": "p",
            "input": "x",
        },
    }
    for message, obj in cases.items():
        with pytest.raises(InputError) as info:
            request_from_json(obj, source="in.jsonl", line=3)
        assert str(info.value) == f"in.jsonl:3: {message}"


def test_embedding_inputs_are_checked_and_never_streamed() -> None:
    """Strings, token ids or lists of them; the body never asks for a stream."""
    assert EmbeddingRequest(input="one").inputs == 1
    assert EmbeddingRequest(input=[1, 2, 3]).inputs == 1
    assert EmbeddingRequest(input=[[1, 2], [3]]).inputs == 2
    body = VECTORS.body(model="m", stream=True)
    assert body == {"dimensions": 3, "model": "m", "input": ["alpha", "beta", "gamma"]}
    for bad in ([], [1, "a"], {"text": "a"}, [[]]):
        with pytest.raises(InputError, match=r"^input must be a string, or a non-empty list"):
            EmbeddingRequest(input=bad)
    with pytest.raises(InputError, match=r"^params must not set stream"):
        EmbeddingRequest(input="a", params={"stream": True})


def test_responses_body_streams_without_stream_options() -> None:
    """A streamed Responses body says stream: true and nothing the API does not take."""
    assert ANSWER.body(model="m", stream=True) == {
        "instructions": "Be brief.",
        "model": "m",
        "input": "Say hi",
        "stream": True,
    }
    assert ANSWER.prompt_text() == "Be brief.\nSay hi"
    with pytest.raises(InputError, match=r"^input\[0\] must be an input item object"):
        ResponsesRequest(input=["hi"])


# -- embeddings at the boundary ---------------------------------------------------------


def embeddings_body(data: list[Any], usage: object = None) -> bytes:
    body: dict[str, Any] = {"object": "list", "data": data, "model": "m"}
    if usage is not None:
        body["usage"] = usage
    return json.dumps(body).encode()


def test_vectors_come_back_in_input_order_floats_or_base64() -> None:
    """Indexes order the vectors; a base64 float32 vector decodes to the same numbers."""
    packed = base64.b64encode(struct.pack("<2f", 0.5, -1.25)).decode()
    raw = embeddings_body(
        [{"index": 1, "embedding": packed}, {"index": 0, "embedding": [1, 0.25]}],
        {"prompt_tokens": 7, "total_tokens": 7},
    )
    answer = parse_embeddings(raw, status_code=200, expected=2)
    assert answer.embeddings == ((1.0, 0.25), (0.5, -1.25))
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (7, 0)


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (
            [{"embedding": [1.0]}],
            Truncated,
            "response body has 1 of the 2 embeddings asked for",
        ),
        (
            [{"index": 0, "embedding": [1.0]}, {"index": 0, "embedding": [2.0]}],
            ProtocolError,
            "response body: data[1].index 0 appears twice",
        ),
        (
            [{"embedding": [1.0, "2"]}, {"embedding": [1.0]}],
            ProtocolError,
            "response body: data[0].embedding[1] must be a number, got string '2'",
        ),
        (
            [{"embedding": True}, {"embedding": [1.0]}],
            ProtocolError,
            "response body: data[0].embedding must be a list of numbers or a base64 string,"
            " got boolean True",
        ),
        (
            [{"embedding": [1.0]}, {"embedding": "AADAfw=="}],
            ProtocolError,
            "response body: data[1].embedding[0] must be a finite number, got number nan",
        ),
        (
            [{"embedding": "@@"}, {"embedding": [1.0]}],
            ProtocolError,
            "response body: data[0].embedding is not base64: '@@'",
        ),
    ],
)
def test_bad_embeddings_name_the_field(
    data: list[Any], error: type[AttemptError], message: str
) -> None:
    """A missing, repeated or wrongly typed vector is refused with the field named."""
    with pytest.raises(error) as info:
        parse_embeddings(embeddings_body(data), status_code=200, expected=2)
    assert type(info.value) is error
    assert info.value.message == message


# -- Responses at the boundary ----------------------------------------------------------


def event(kind: str, **fields: Any) -> SSEEvent:
    return SSEEvent(data=json.dumps({"type": kind, **fields}), event=kind)


def completed(status: str = "completed", output: list[Any] | None = None, **extra: Any) -> Any:
    response = {
        "status": status,
        "output": output or [],
        "usage": {"input_tokens": 4, "output_tokens": 6, "total_tokens": 10},
        **extra,
    }
    return event(f"response.{status}", response=response)


def test_responses_deltas_are_progress_and_make_the_answer() -> None:
    """Text, reasoning and argument deltas are progress; without a final output they are the
    answer; a function call's name comes from output_item.added."""
    acc = ResponsesAccumulator()
    item = {"type": "function_call", "call_id": "call_1", "name": "lookup", "arguments": ""}
    events = [
        event("response.created", response={"status": "in_progress", "output": []}),
        event("response.reasoning_text.delta", delta="Hmm.", output_index=0),
        event("response.output_text.delta", delta="", output_index=1),
        event("response.output_text.delta", delta="Hi", output_index=1),
        event("response.output_item.added", output_index=2, item=item),
        event("response.function_call_arguments.delta", delta='{"q": ', output_index=2),
        event("response.function_call_arguments.delta", delta="1}", output_index=2),
        completed(),
    ]
    assert [acc.feed(e) for e in events] == [False, True, False, True, False, True, True, True]
    answer = acc.answer()
    assert (answer.text, answer.reasoning, answer.finish_reason) == ("Hi", "Hmm.", "tool_calls")
    (call,) = answer.tool_calls
    assert (call.id, call.name, call.arguments_json()) == ("call_1", "lookup", {"q": 1})
    assert answer.usage is not None
    assert answer.usage.total_tokens == 10
    with pytest.raises(ProtocolError, match="data after the terminal event"):
        acc.feed(event("response.output_text.delta", delta="late"))


def test_the_final_output_is_the_answer_and_incomplete_is_length() -> None:
    """response.incomplete (max_output_tokens) is finish reason length; its output wins."""
    acc = ResponsesAccumulator()
    acc.feed(event("response.output_text.delta", delta="partial text"))
    message = {"type": "message", "content": [{"type": "output_text", "text": "final"}]}
    acc.feed(completed("incomplete", [message], incomplete_details={"reason": "max_output_tokens"}))
    answer = acc.answer()
    assert (answer.text, answer.finish_reason) == ("final", "length")


@pytest.mark.parametrize(
    ("ending", "error", "message"),
    [
        (
            completed("failed", error={"code": "server_error", "message": "boom"}),
            ServerError,
            "in-band error: boom (code=server_error)",
        ),
        (
            completed("failed", error={"code": "rate_limit_exceeded", "message": "slow"}),
            RateLimited,
            "in-band error: slow (code=rate_limit_exceeded)",
        ),
        (
            event("error", code="invalid_prompt", message="bad", param=None),
            ServerError,
            "in-band error: bad (code=invalid_prompt)",
        ),
        (
            event("error", code="400", message="bad"),
            ClientError,
            "in-band error: bad (code=400)",
        ),
    ],
)
def test_failed_and_error_events_raise_their_cause(
    ending: SSEEvent, error: type[AttemptError], message: str
) -> None:
    """response.failed and error events raise the error their code names, marked partial."""
    acc = ResponsesAccumulator()
    acc.feed(event("response.output_text.delta", delta="Hi"))
    with pytest.raises(error) as info:
        acc.feed(ending)
    assert type(info.value) is error
    assert info.value.message == message
    assert info.value.partial


def test_whole_response_body() -> None:
    """A non-streamed response: message text, refusal, reasoning summary, usage."""
    body = {
        "status": "completed",
        "output": [
            {"type": "reasoning", "summary": [{"type": "summary_text", "text": "thought"}]},
            {
                "type": "message",
                "content": [
                    {"type": "output_text", "text": "Hello"},
                    {"type": "refusal", "refusal": "no more"},
                ],
            },
        ],
        "usage": {"input_tokens": 3, "output_tokens": 2},
    }
    answer = parse_response(json.dumps(body).encode(), status_code=200)
    assert (answer.text, answer.refusal, answer.reasoning) == ("Hello", "no more", "thought")
    assert (answer.finish_reason, answer.usage and answer.usage.total_tokens) == ("stop", 5)
    body["output"] = [{"type": "message", "content": [{"type": "output_text", "text": 5}]}]
    with pytest.raises(ProtocolError) as info:
        parse_response(json.dumps(body).encode(), status_code=200)
    assert info.value.message == (
        "response body: response.output[0].content[0].text must be a string or null, got integer 5"
    )


# -- against the fake server ------------------------------------------------------------


def endpoint_for(server: FakeServer, *, stream: bool) -> Endpoint:
    return Endpoint(base_url=server.base_url, api_key="sk-x", model="fake", stream=stream)


def headers(item: str, attempt: int) -> dict[str, str]:
    return {"x-shardline-item-id": item, "x-shardline-attempt": str(attempt)}


async def test_fake_server_answers_both_apis(fake_server: FakeServer) -> None:
    """Deterministic vectors (float and base64), a streamed answer that thinks, then calls."""
    base64_request = EmbeddingRequest(input="alpha", params={"encoding_format": "base64"})
    tools = [{"type": "function", "name": "lookup", "parameters": {}}]
    thinking = ResponsesRequest(input="hi", params={"reasoning": {}, "max_output_tokens": 6})
    calling = ResponsesRequest(input="hi", params={"tools": tools})
    for stream in (True, False):
        endpoint = endpoint_for(fake_server, stream=stream)
        async with make_client(endpoint, max_connections=2, deadlines=DEADLINES) as client:
            vectors = await send_attempt(client, endpoint, VECTORS, DEADLINES)
            assert vectors.embeddings == tuple(
                tuple(fake_embedding(t, 3)) for t in ("alpha", "beta", "gamma")
            )
            assert (vectors.usage.prompt_tokens, vectors.usage.completion_tokens) == (5, 0)
            packed = await send_attempt(client, endpoint, base64_request, DEADLINES)
            assert packed.embeddings is not None
            assert packed.embeddings[0] == pytest.approx(fake_embedding("alpha"), abs=1e-6)
            thought = await send_attempt(client, endpoint, thinking, DEADLINES)
            assert (thought.reasoning, thought.text) == (fake_text(3), fake_text(3))
            assert (thought.finish_reason, thought.usage.completion_tokens) == ("length", 6)
            called = await send_attempt(client, endpoint, calling, DEADLINES)
            assert called.finish_reason == "tool_calls"
            assert called.tool_calls[0].arguments_json() == {"text": fake_text(16)}


@pytest.mark.parametrize(
    ("request_", "stream"),
    [(VECTORS, False), (ANSWER, True), (ANSWER, False)],
    ids=["embeddings", "responses-stream", "responses-whole"],
)
@pytest.mark.parametrize("kind", FAULT_KINDS)
async def test_each_fault_ends_in_its_cause_then_the_next_attempt_succeeds(
    fake_server: FakeServer,
    kind: str,
    request_: EmbeddingRequest | ResponsesRequest,
    stream: bool,
) -> None:
    """Every fault kind strikes these APIs too and ends in the cause it names, in time."""
    item = f"{request_.api}-{stream}-{kind}"
    fake_server.set_faults(FaultPlan(items={(item, 1): Fault(kind=kind)}))
    endpoint = endpoint_for(fake_server, stream=stream)
    cause = expected_cause(kind, stream=stream and request_.streams)
    async with make_client(endpoint, max_connections=2, deadlines=DEADLINES) as client:
        start = trio.current_time()
        with pytest.raises(AttemptError) as info:
            await send_attempt(client, endpoint, request_, DEADLINES, headers=headers(item, 1))
        elapsed = trio.current_time() - start
        result = await send_attempt(client, endpoint, request_, DEADLINES, headers=headers(item, 2))
    assert info.value.cause is cause, f"{kind}: {info.value!r}"
    limit = SHORT if cause in (Cause.TTFT_TIMEOUT, Cause.STALL_TIMEOUT) else 0.0
    assert elapsed <= limit + TOLERANCE
    assert result.embeddings or result.text


async def test_a_responses_stream_without_its_terminal_event_is_truncated() -> None:
    """Deltas and then a clean end, but no response.completed: truncated, partial."""
    body = b"".join(
        b"event: response.output_text.delta\ndata: "
        + json.dumps({"type": "response.output_text.delta", "delta": word}).encode()
        + b"\n\n"
        for word in ("Hello", " world")
    )

    def handler(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    endpoint = Endpoint(base_url="http://fake.test/v1", api_key="sk-x", model="m")
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(Truncated) as info:
            await send_attempt(client, endpoint, ANSWER, DEADLINES)
    assert info.value.message == "stream ended without response.completed after 2 content events"
    assert info.value.partial
