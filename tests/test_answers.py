"""Every kind of chat answer is kept: tool calls (assembled by index), reasoning, refusals,
logprobs; in the result, the output JSONL and the events."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from helpers import chunk, sse
from shardline import ChatRequest, Deadlines, Endpoint, ToolCall
from shardline._attempt import send_attempt
from shardline._events import AttemptEnd, AttemptStart, ItemAdmitted, ItemEnd, RunStart
from shardline._exceptions import ProtocolError, ToolArgumentsError, Truncated
from shardline._jsonl_output import outcome_to_json
from shardline._models import Outcome, Result, Status, Usage
from shardline._openai import StreamAccumulator, parse_whole
from shardline._report import RunReport
from shardline._report_builder import compute_report
from shardline._report_text import render_text
from shardline._sse import SSEEvent

ENDPOINT = Endpoint(base_url="http://fake.test/v1", api_key="sk-test", model="m")
WHOLE = Endpoint(base_url="http://fake.test/v1", api_key="sk-test", model="m", stream=False)
DEADLINES = Deadlines(connect=1.0, ttft=5.0, stall=2.0, attempt=30.0)
REQUEST = ChatRequest(messages=[{"role": "user", "content": "Weather in Oslo and Rome?"}])
DONE = b"data: [DONE]\n\n"


def delta(payload: dict[str, Any], *, finish: str | None = None, **choice: Any) -> bytes:
    """A chat chunk whose choice 0 has ``payload`` as its delta."""
    return sse({"choices": [{"index": 0, "delta": payload, "finish_reason": finish, **choice}]})


def call(index: int, *, id: str | None = None, name: str | None = None, args: str = "") -> dict:
    """One tool-call piece, as a delta's ``tool_calls`` holds it."""
    piece: dict[str, Any] = {"index": index}
    if id is not None:
        piece.update(id=id, type="function")
    function: dict[str, Any] = {"arguments": args}
    if name is not None:
        function["name"] = name
    piece["function"] = function
    return piece


#: Two parallel calls, their pieces interleaved; call 1's id is repeated (some servers do).
PARALLEL = [
    delta({"role": "assistant", "content": None}),
    delta({"tool_calls": [call(0, id="call_a", name="weather", args="")]}),
    delta({"tool_calls": [call(1, id="call_b", name="weather", args='{"city"')]}),
    delta({"tool_calls": [call(0, args='{"city": "Os')]}),
    delta({"tool_calls": [call(1, id="call_b", args=': "Rome"}')]}),
    delta({"tool_calls": [call(0, args='lo"}')]}),
    delta({}, finish="tool_calls"),
    DONE,
]


def feed(events: Sequence[bytes]) -> StreamAccumulator:
    acc = StreamAccumulator()
    for raw in events:
        acc.feed(SSEEvent(data=raw.decode().removeprefix("data: ").rstrip("\n")))
    return acc


def streamed(events: Sequence[bytes]) -> httpx.AsyncClient:
    body = b"".join(events)

    def handler(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


def test_parallel_tool_calls_are_assembled_by_index() -> None:
    """Pieces are joined per index; a repeated id is kept once; calls come in index order."""
    acc = feed(PARALLEL)
    assert acc.complete
    answer = acc.answer()
    assert answer.text == ""
    assert answer.finish_reason == "tool_calls"
    assert answer.tool_calls == (
        ToolCall(index=0, id="call_a", name="weather", arguments='{"city": "Oslo"}'),
        ToolCall(index=1, id="call_b", name="weather", arguments='{"city": "Rome"}'),
    )
    assert [c.arguments_json() for c in answer.tool_calls] == [{"city": "Oslo"}, {"city": "Rome"}]


def test_every_tool_call_piece_is_progress() -> None:
    """A chunk with only tool-call arguments moves the deadlines; a role-only chunk does not."""
    acc = StreamAccumulator()
    progress = [
        acc.feed(SSEEvent(data=raw.decode().removeprefix("data: ").rstrip("\n")))
        for raw in PARALLEL
    ]
    assert progress == [False, True, True, True, True, True, True, False]


@pytest.mark.parametrize(
    ("piece", "message"),
    [
        ("x", "stream event 1: choices[0].delta.tool_calls[0] must be an object, got string 'x'"),
        (
            {"index": "0"},
            "stream event 1: choices[0].delta.tool_calls[0].index must be an integer >= 0"
            " or null, got string '0'",
        ),
        (
            {"index": 0, "function": {"arguments": 7}},
            "stream event 1: choices[0].delta.tool_calls[0].function.arguments must be"
            " a string or null, got integer 7",
        ),
        (
            {"index": 0, "function": "f"},
            "stream event 1: choices[0].delta.tool_calls[0].function must be an object"
            " or null, got string 'f'",
        ),
    ],
)
def test_a_tool_call_piece_of_the_wrong_shape_is_a_protocol_error(
    piece: object, message: str
) -> None:
    """Each field of a tool-call piece is checked, and the error names it."""
    with pytest.raises(ProtocolError) as info:
        feed([delta({"tool_calls": [piece]})])
    assert info.value.message == message


def test_a_tool_call_that_never_got_a_name_is_a_protocol_error() -> None:
    """Arguments without a function name cannot be used: the answer is refused, not emptied."""
    acc = feed([delta({"tool_calls": [call(0, args="{}")]}), delta({}, finish="tool_calls")])
    with pytest.raises(ProtocolError, match="tool call 0 has no function name"):
        acc.answer()


async def test_a_stream_cut_mid_tool_call_is_truncated() -> None:
    """Half a tool call and no finish reason is `truncated`, never a short call."""
    async with streamed(PARALLEL[:4]) as client:
        with pytest.raises(Truncated) as info:
            await send_attempt(client, ENDPOINT, REQUEST, DEADLINES)
    assert info.value.partial
    assert "without a finish reason or [DONE] after 3 content events" in info.value.message


async def test_streamed_tool_calls_reach_the_attempt_result() -> None:
    """send_attempt keeps the assembled calls, and estimates usage from them when none came."""
    async with streamed(PARALLEL) as client:
        result = await send_attempt(client, ENDPOINT, REQUEST, DEADLINES)
    assert [c.name for c in result.tool_calls] == ["weather", "weather"]
    assert result.usage.estimated
    assert result.usage.completion_tokens == (len("weather" * 2 + '{"city": "Oslo"}' * 2) + 3) // 4


def test_whole_response_tool_calls_and_legacy_function_call() -> None:
    """A non-streamed message's tool_calls (no index: position) and a legacy function_call."""
    message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "[1]"}},
        ],
    }
    body = {"choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}]}
    whole = parse_whole(json.dumps(body).encode(), status_code=200)
    assert [(c.index, c.id, c.name) for c in whole.tool_calls] == [(0, "c1", "f"), (1, "c2", "g")]
    assert [c.arguments_valid for c in whole.tool_calls] == [True, False]
    legacy = {"role": "assistant", "function_call": {"name": "f", "arguments": '{"a": 1}'}}
    body = {"choices": [{"index": 0, "message": legacy, "finish_reason": "function_call"}]}
    (only,) = parse_whole(json.dumps(body).encode(), status_code=200).tool_calls
    assert only == ToolCall(index=0, id=None, name="f", arguments='{"a": 1}')


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ('{"city": "Os', "tool call 2 ('weather', id 'c9'): arguments are not JSON (Unterminated"),
        ("[1, 2]", "tool call 2 ('weather', id 'c9'): arguments must be a JSON object, got list"),
    ],
)
def test_arguments_json_refuses_loudly(arguments: str, message: str) -> None:
    """Arguments that are not a JSON object raise ToolArgumentsError naming the call."""
    tool = ToolCall(index=2, id="c9", name="weather", arguments=arguments)
    assert not tool.arguments_valid
    with pytest.raises(ToolArgumentsError) as info:
        tool.arguments_json()
    assert str(info.value).startswith(message)
    assert info.value.arguments == arguments
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("key", "other"), [("reasoning_content", None), ("reasoning", None), ("reasoning", "same")]
)
def test_reasoning_is_kept_and_is_progress(key: str, other: str | None) -> None:
    """reasoning_content (vLLM, DeepSeek) or reasoning (OpenRouter) is kept once, as progress."""
    first = {key: "Let me think."}
    if other is not None:  # a server sending both keys with the same thought
        first["reasoning_content"] = "Let me think."
    events = [
        delta({"role": "assistant"}),
        delta(first),
        delta({key: " Done."}),
        chunk("42"),
        chunk(finish="stop"),
    ]
    acc = StreamAccumulator()
    progress = [
        acc.feed(SSEEvent(data=e.decode().removeprefix("data: ").rstrip("\n"))) for e in events
    ]
    assert progress == [False, True, True, True, True]
    answer = acc.answer()
    assert (answer.text, answer.reasoning, answer.refusal) == ("42", "Let me think. Done.", None)


def test_refusal_and_logprobs_are_kept() -> None:
    """A refusal has its own field; logprobs.content entries are kept as sent, in order."""
    lp1 = {"token": "I", "logprob": -0.1, "bytes": [73], "top_logprobs": []}
    lp2 = {"token": " can't", "logprob": -0.2, "bytes": None, "top_logprobs": []}
    acc = feed(
        [
            delta({"refusal": "I"}, logprobs={"content": [lp1]}),
            delta({"refusal": " can't"}, logprobs={"content": [lp2], "refusal": None}),
            delta({}, finish="stop"),
        ]
    )
    answer = acc.answer()
    assert (answer.text, answer.refusal, answer.reasoning) == ("", "I can't", None)
    assert answer.logprobs == (lp1, lp2)
    with pytest.raises(ProtocolError, match=r"choices\[0\]\.logprobs\.content\[0\] must be an"):
        feed([delta({"content": "x"}, logprobs={"content": [1.5]})])
    nan = '{"choices": [{"index": 0, "delta": {"content": "x"}, "logprobs":'
    nan += ' {"content": [{"token": "x", "logprob": NaN}]}}]}'
    with pytest.raises(ProtocolError) as info:
        StreamAccumulator().feed(SSEEvent(data=nan))
    assert info.value.message == (
        "stream event 1: choices[0].logprobs.content[0] holds a number that is not finite"
    )


def test_output_lines_carry_only_the_parts_an_answer_had() -> None:
    """tool_calls (API shape + arguments_valid), reasoning and refusal appear only when present."""
    base = {
        "id": "t1",
        "text": "",
        "finish_reason": "tool_calls",
        "usage": Usage(prompt_tokens=3, completion_tokens=4),
        "attempts": 1,
        "shard": 0,
        "ttft_s": 0.5,
        "latency_s": 1.0,
    }
    calls = (
        ToolCall(index=0, id="c1", name="f", arguments='{"a": 1}'),
        ToolCall(index=1, id="c2", name="g", arguments='{"a": '),
    )
    result = Result(**base, tool_calls=calls, reasoning="hmm")  # type: ignore[arg-type]
    record = outcome_to_json(Outcome(id="t1", status=Status.OK, result=result, attempts=1))
    assert record["tool_calls"] == [
        {
            "id": "c1",
            "type": "function",
            "function": {"name": "f", "arguments": '{"a": 1}'},
            "arguments_valid": True,
        },
        {
            "id": "c2",
            "type": "function",
            "function": {"name": "g", "arguments": '{"a": '},
            "arguments_valid": False,
        },
    ]
    assert record["reasoning"] == "hmm"
    assert not {"refusal", "embeddings", "logprobs"} & record.keys()
    plain = outcome_to_json(
        Outcome(id="t1", status=Status.OK, result=Result(**base), attempts=1)  # type: ignore[arg-type]
    )
    assert not {"tool_calls", "reasoning", "refusal", "logprobs", "embeddings"} & plain.keys()


async def test_whole_response_with_reasoning_through_the_attempt(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A non-streamed answer keeps reasoning_content next to the text."""
    body = {
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "4", "reasoning_content": "2+2"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3},
    }

    def handler(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=body)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        result = await send_attempt(client, WHOLE, REQUEST, DEADLINES)
    assert (result.text, result.reasoning, result.finish_reason) == ("4", "2+2", "stop")


def test_the_report_counts_apis_and_answer_parts() -> None:
    """From attempt_end events alone: ok items per API, tool calls (and invalid arguments),
    reasoning and refusal items, vectors; a failed attempt counts nothing; JSON round-trips."""
    events: list[Any] = [
        RunStart(t=0.0, run_id="r", started_at=1_764_403_200.0, shard_count=1, config={})
    ]
    ends = [
        ("a", "chat", {"tool_calls": 2, "tool_arguments_invalid": 1}),
        ("b", "chat", {"reasoning": True, "refusal": True}),
        ("c", "embeddings", {"embeddings": 64}),
        ("d", "responses", {"reasoning": True, "tool_calls": 1}),
    ]
    for i, (item, api, parts) in enumerate(ends):
        t = float(i)
        events += [
            ItemAdmitted(t=t, item_id=item, shard=0),
            AttemptStart(t=t, item_id=item, shard=0, attempt=1),
            AttemptEnd(t=t, item_id=item, shard=0, attempt=1, outcome="failed", api=api),
            AttemptStart(t=t, item_id=item, shard=0, attempt=2),
            AttemptEnd(t=t, item_id=item, shard=0, attempt=2, outcome="ok", api=api, **parts),
            ItemEnd(t=t, item_id=item, shard=0, status="ok", attempts=2, latency_s=0.5),
        ]
    report = compute_report(events, events_sha256=None)
    assert report.items_by_api == {"chat": 2, "embeddings": 1, "responses": 1}
    assert report.answer_counts == {
        "tool_call_items": 2,
        "tool_calls": 3,
        "tool_arguments_invalid": 1,
        "reasoning_items": 2,
        "refusal_items": 1,
        "embeddings": 64,
    }
    assert RunReport.from_json(report.to_json()) == report
    assert "answers" in render_text(report)
