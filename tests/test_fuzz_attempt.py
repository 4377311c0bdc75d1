"""Fuzzing the attempt layer: nothing a server sends may crash an attempt or pass as an answer.

Two properties, through :func:`send_attempt` over an in-memory transport:

* arbitrary JSON values in every position of a stream chunk (or a whole
  response): the attempt either returns the complete answer, whose text is
  exactly the concatenation of choice 0's string contents, or raises a typed
  :class:`AttemptError`; an independent oracle says which;
* arbitrary bytes split at arbitrary points: the outcome is an answer or a
  typed ``AttemptError``, never another exception, and it does not depend on
  where the bytes were split.

``HYPOTHESIS_PROFILE=thorough`` runs 1,000 examples per property instead of CI's 60.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import httpx
from hypothesis import given
from hypothesis import strategies as st

from helpers import Body, run_virtual, split_at, sse
from shardline._attempt import AttemptResult, send_attempt
from shardline._config import Deadlines, Endpoint
from shardline._exceptions import AttemptError, ProtocolError, Truncated
from shardline._models import ChatRequest
from shardline._openai_apis import ResponsesAccumulator, parse_embeddings
from shardline._sse import SSEEvent

STREAM = Endpoint(base_url="http://fuzz.test/v1", model="m")
WHOLE = Endpoint(base_url="http://fuzz.test/v1", model="m", stream=False)
DEADLINES = Deadlines(connect=1.0, ttft=5.0, stall=5.0, attempt=30.0)
REQUEST = ChatRequest(messages=[{"role": "user", "content": "hi"}])

# Keys that are never one of the fields shardline reads, so a random object is
# "an object with nothing we know in it".
_keys = st.text(alphabet="xyz", min_size=1, max_size=3)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**40), max_value=2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=3),
    max_leaves=8,
)


def _send(parts: Sequence[bytes], *, endpoint: Endpoint, content_type: str) -> object:
    """The attempt's result, or the exception it raised (any exception)."""

    async def handler(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": content_type}, stream=Body(parts))

    async def main() -> object:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            try:
                return await send_attempt(client, endpoint, REQUEST, DEADLINES)
            except Exception as exc:
                return exc

    return run_virtual(main)


def _is_count(v: object) -> bool:
    return v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 0)


# position -> (is the value acceptable there?, does the chunk's content still count?)
def _valid_tool_calls(value: Any) -> bool:
    """Tool-call pieces a client can assemble: objects whose fields have their types, and
    every call that carries anything (an id, arguments) has a function name."""
    if value is None:
        return True
    if not isinstance(value, list):
        return False
    calls: dict[int, tuple[bool, bool]] = {}
    for j, piece in enumerate(value):
        if not isinstance(piece, dict) or not (
            piece.get("index") is None or _is_count(piece["index"])
        ):
            return False
        function = piece.get("function")
        if function is not None and not isinstance(function, dict):
            return False
        fields = [piece.get("id"), piece.get("type")]
        fields += [(function or {}).get("name"), (function or {}).get("arguments")]
        if not all(f is None or isinstance(f, str) for f in fields):
            return False
        index = j if piece.get("index") is None else piece["index"]
        named, used = calls.get(index, (False, False))
        calls[index] = (named or bool(fields[2]), used or bool(fields[0] or fields[3]))
    return all(named or not used for named, used in calls.values())


POSITIONS = {
    "chunk": lambda v: False,  # non-object chunks only (see the strategy)
    "choices": lambda v: v is None or (isinstance(v, list) and all(isinstance(c, dict) for c in v)),
    "choice": lambda v: isinstance(v, dict),
    "index": _is_count,
    "delta": lambda v: v is None or isinstance(v, dict),
    "content": lambda v: v is None or isinstance(v, str),
    "reasoning_content": lambda v: v is None or isinstance(v, str),
    "tool_calls": lambda v: _valid_tool_calls(v),
    "finish_reason": lambda v: v is None or isinstance(v, str),
    "usage": lambda v: v is None or isinstance(v, dict),
    "prompt_tokens": _is_count,
    "completion_tokens": _is_count,
}


def _stream(position: str, value: Any, contents: list[str]) -> tuple[list[object], str, bool]:
    """The chunks of a stream with ``value`` put at ``position`` of its second content chunk
    (or of the finish/usage chunk), the text an honest client reads, and whether it is valid."""
    chunks: list[object] = [{"choices": [{"index": 0, "delta": {"role": "assistant"}}]}]
    text = []
    for i, content in enumerate(contents):
        delta: dict[str, Any] = {"content": content}
        choice: dict[str, Any] = {"index": 0, "delta": delta}
        chunk: Any = {"choices": [choice]}
        counts = True
        if i == 1:
            if position == "chunk":
                chunk = value
            elif position == "choices":
                chunk["choices"] = value
                counts = False
            elif position == "choice":
                chunk["choices"] = [value]
                counts = False
            elif position == "index":
                choice["index"] = value
                counts = value in (None, 0)
            elif position == "delta":
                choice["delta"] = value
                counts = False
            elif position == "content":
                delta["content"] = value
                counts = isinstance(value, str)
                content = value if counts else ""
            elif position in ("reasoning_content", "tool_calls"):
                delta[position] = value
        chunks.append(chunk)
        if counts:
            text.append(content)
    finish: dict[str, Any] = {"index": 0, "delta": {}, "finish_reason": "stop"}
    usage: dict[str, Any] = {"prompt_tokens": 3, "completion_tokens": 4}
    if position == "finish_reason":
        finish["finish_reason"] = value
    elif position == "usage":
        usage = value
    elif position in ("prompt_tokens", "completion_tokens"):
        usage[position] = value
    chunks.append({"choices": [finish]})
    chunks.append({"choices": [], "usage": usage})
    valid = POSITIONS[position](value)
    return chunks, "".join(text), valid


positions = st.sampled_from(sorted(POSITIONS))
contents = st.lists(st.text(max_size=6), min_size=2, max_size=4)


@given(positions, json_values, contents, st.booleans())
def test_any_json_in_any_position_is_an_answer_or_a_typed_error(
    position: str, value: Any, texts: list[str], done: bool
) -> None:
    """A stream with any JSON value in one position: the exact answer, or a ProtocolError."""
    if position == "chunk" and isinstance(value, dict):
        value = [value]  # objects with unknown keys are fine; make it an array instead
    chunks, text, valid = _stream(position, value, texts)
    body = [sse(c) for c in chunks] + ([b"data: [DONE]\n\n"] if done else [])
    result = _send(body, endpoint=STREAM, content_type="text/event-stream")
    if valid and position == "finish_reason" and not value and not done:
        # Neither a finish reason nor [DONE]: a clean end is not a complete answer.
        assert isinstance(result, Truncated), result
    elif valid:
        assert isinstance(result, AttemptResult), result
        assert result.text == text
        # Never partial text as ok: a finish reason or [DONE] was seen.
        assert result.finish_reason is not None or done
    else:
        assert isinstance(result, ProtocolError), result
        assert not isinstance(result, AttemptResult)


whole_positions = st.sampled_from(["choices", "choice", "message", "content", "finish_reason"])


@given(whole_positions, json_values, st.text(max_size=8))
def test_any_json_in_a_whole_response_is_an_answer_or_a_typed_error(
    position: str, value: Any, content: str
) -> None:
    """A non-streamed body with any JSON value in one position: the answer, or a typed error."""
    message: Any = {"role": "assistant", "content": content}
    choice: Any = {"index": 0, "message": message, "finish_reason": "stop"}
    body: Any = {"choices": [choice], "usage": {"prompt_tokens": 1, "completion_tokens": 2}}
    expected_text = content
    if position == "choices":
        body["choices"] = value
        valid = isinstance(value, list) and bool(value) and all(isinstance(c, dict) for c in value)
        expected_text = ""
        truncated = valid  # choice 0 then has no finish reason
    elif position == "choice":
        body["choices"] = [value]
        valid = isinstance(value, dict)
        expected_text = ""
        truncated = valid
    elif position == "message":
        choice["message"] = value
        valid = value is None or isinstance(value, dict)
        expected_text = ""
        truncated = False
    elif position == "content":
        message["content"] = value
        valid = value is None or isinstance(value, str)
        expected_text = value if isinstance(value, str) else ""
        truncated = False
    else:
        choice["finish_reason"] = value
        valid = value is None or isinstance(value, str)
        truncated = not value
    result = _send([json.dumps(body).encode()], endpoint=WHOLE, content_type="application/json")
    if valid and not truncated:
        assert isinstance(result, AttemptResult), result
        assert result.text == expected_text
    else:
        assert isinstance(result, AttemptError), result
        if not valid:
            assert isinstance(result, ProtocolError), result


GOOD = [
    b"data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": word}}]}).encode()
    for word in ("Hel", "lo ", "wor", "ld")
]
GOOD_BYTES = (
    b"\n\n".join(GOOD)
    + b'\n\ndata: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at ``cuts``, without empty pieces."""
    return [p for p in split_at(data, cuts) if p]


def _summary(result: object) -> tuple[str, str]:
    if isinstance(result, AttemptResult):
        return ("ok", result.text)
    assert isinstance(result, AttemptError), f"not a typed error: {result!r}"
    return (result.cause.value, "")


@given(
    st.binary(max_size=200),
    st.binary(max_size=60),
    st.lists(st.integers(min_value=0), max_size=12),
    st.lists(st.integers(min_value=0), max_size=12),
)
def test_arbitrary_bytes_split_anywhere(
    prefix: bytes, garbage: bytes, cuts_a: list[int], cuts_b: list[int]
) -> None:
    """Arbitrary bytes split at arbitrary points: an answer or a typed error, whatever the split."""
    data = prefix + GOOD_BYTES[: len(GOOD_BYTES) // 2] + garbage
    first = _summary(_send(_split(data, cuts_a), endpoint=STREAM, content_type="text/event-stream"))
    second = _summary(
        _send(_split(data, cuts_b), endpoint=STREAM, content_type="text/event-stream")
    )
    assert first == second


@given(st.lists(st.integers(min_value=0), max_size=20))
def test_a_good_stream_split_anywhere_is_the_exact_answer(cuts: list[int]) -> None:
    """The same good stream, split at any points (inside UTF-8 or CRLF too), gives its text."""
    result = _send(_split(GOOD_BYTES, cuts), endpoint=STREAM, content_type="text/event-stream")
    assert isinstance(result, AttemptResult)
    assert result.text == "Hello world"


_RESPONSES_EVENTS = st.sampled_from(
    [
        "response.created",
        "response.output_text.delta",
        "response.reasoning_text.delta",
        "response.function_call_arguments.delta",
        "response.output_item.added",
        "response.completed",
        "response.incomplete",
        "response.failed",
        "error",
        None,
    ]
)
_RESPONSES_KEYS = st.sampled_from(
    ["delta", "output_index", "item", "response", "code", "message", "error", "type"]
)
_RESPONSE_OBJECTS = st.fixed_dictionaries(
    {},
    optional={
        "status": st.sampled_from(["completed", "incomplete", "failed", "in_progress"])
        | json_values,
        "output": json_values
        | st.lists(
            st.fixed_dictionaries(
                {"type": st.sampled_from(["message", "function_call", "reasoning"])},
                optional={
                    "content": json_values,
                    "summary": json_values,
                    "name": json_values,
                    "arguments": json_values,
                    "call_id": json_values,
                },
            ),
            max_size=2,
        ),
        "usage": json_values,
        "error": json_values,
        "incomplete_details": json_values,
    },
)


@given(
    st.lists(
        st.tuples(
            _RESPONSES_EVENTS,
            st.dictionaries(_RESPONSES_KEYS, json_values | _RESPONSE_OBJECTS, max_size=4),
        ),
        max_size=6,
    )
)
def test_any_responses_event_sequence_is_an_answer_or_a_typed_error(
    events: list[tuple[str | None, dict[str, Any]]],
) -> None:
    """Responses API events with any JSON in their fields never raise anything but an
    AttemptError, and a complete stream always has an answer or a ProtocolError."""
    acc = ResponsesAccumulator()
    try:
        for kind, fields in events:
            payload = dict(fields)
            if kind is not None:
                payload["type"] = kind
            acc.feed(SSEEvent(data=json.dumps(payload), event=kind or "message"))
        if acc.complete:
            answer = acc.answer()
            assert answer.finish_reason
            assert all(call.name for call in answer.tool_calls)
    except AttemptError:
        pass


@given(
    st.lists(
        st.fixed_dictionaries(
            {},
            optional={
                "index": json_values,
                "embedding": json_values
                | st.text(max_size=12)
                | st.sampled_from(["AADAfw==", "AACAfw==", [1.0, float("nan")]]),
            },
        )
        | json_values,
        max_size=3,
    )
    | json_values,
    json_values,
)
def test_any_embeddings_body_is_vectors_or_a_typed_error(data: Any, usage: Any) -> None:
    """An embeddings body with any JSON as its data and usage: one vector per input, each a
    tuple of floats, or an AttemptError."""
    raw = json.dumps({"object": "list", "data": data, "usage": usage}).encode()
    try:
        answer = parse_embeddings(raw, status_code=200, expected=2)
    except AttemptError:
        return
    assert answer.embeddings is not None
    assert len(answer.embeddings) == 2
    assert all(isinstance(x, float) for vector in answer.embeddings for x in vector)
    json.dumps(answer.embeddings, allow_nan=False)  # what the output file can hold
