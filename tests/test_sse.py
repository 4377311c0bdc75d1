"""The incremental SSE decoder and the OpenAI stream accumulator."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import split_at
from shardline._exceptions import (
    ClientError,
    ConfigError,
    ProtocolError,
    RateLimited,
    ServerError,
)
from shardline._models import Usage
from shardline._openai import StreamAccumulator, error_from_payload, usage_from_json
from shardline._sse import DONE, SSEDecoder, SSEEvent


def decode_all(data: bytes, **kwargs: int) -> list[SSEEvent]:
    decoder = SSEDecoder(**kwargs)
    return decoder.feed(data) + decoder.end()


def decode_chunks(chunks: list[bytes], **kwargs: int) -> list[SSEEvent]:
    decoder = SSEDecoder(**kwargs)
    out: list[SSEEvent] = []
    for chunk in chunks:
        out.extend(decoder.feed(chunk))
    return out + decoder.end()


# Decoder: the format ------------------------------------------------------------


def test_decodes_data_events_and_skips_comments() -> None:
    """Comments (keep-alives) are counted and skipped; data events come out in order."""
    decoder = SSEDecoder()
    events = decoder.feed(b": keep-alive\n\ndata: one\n\n:ping\ndata: two\n\n")
    assert [e.data for e in events] == ["one", "two"]
    assert decoder.comments == 2
    assert decoder.events == 2


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_line_endings(eol: bytes) -> None:
    """LF, CRLF and lone CR all end lines."""
    stream = eol.join([b"data: a", b"data: b", b"", b"event: x", b"data: c", b"", b""])
    events = decode_all(stream)
    assert events == [SSEEvent("a\nb"), SSEEvent("c", "x")]


def test_crlf_split_across_chunks_is_one_line_end() -> None:
    """A CR at the end of one chunk and LF at the start of the next make one line end."""
    assert decode_chunks([b"data: a\r", b"\n\r", b"\ndata: b\r\n\r\n"]) == [
        SSEEvent("a"),
        SSEEvent("b"),
    ]


def test_fields_id_retry_event_and_unknown() -> None:
    """id persists across events, retry is per event, unknown fields are ignored."""
    stream = b"id: 7\nretry: 1500\nevent: delta\nfoo: bar\ndata: x\n\ndata: y\n\n"
    assert decode_all(stream) == [
        SSEEvent("x", "delta", "7", 1500),
        SSEEvent("y", "message", "7", None),
    ]


def test_field_forms() -> None:
    """A bare 'data' is an empty data line; the colon's space is optional and stripped once."""
    assert decode_all(b"data\ndata:x\ndata:  y\n\n") == [SSEEvent("\nx\n y")]


def test_event_without_data_is_not_dispatched() -> None:
    """An event with only an event name (no data) is dropped, as the standard says."""
    assert decode_all(b"event: ping\n\ndata: z\n\n") == [SSEEvent("z")]


def test_retry_must_be_digits_and_id_without_nul() -> None:
    """A non-numeric retry and an id containing NUL are ignored."""
    assert decode_all(b"retry: soon\nid: a\x00b\ndata: q\n\n") == [SSEEvent("q")]


def test_bom_is_stripped_even_when_split() -> None:
    """A UTF-8 BOM at the start of the stream is skipped, whatever the chunking."""
    bom = b"\xef\xbb\xbf"
    stream = bom + b"data: hi\n\n"
    for cut in range(len(stream) + 1):
        assert decode_chunks([stream[:cut], stream[cut:]]) == [SSEEvent("hi")]


def test_end_dispatches_complete_lines_and_drops_partial_line() -> None:
    """At EOF an event with complete lines is dispatched; an unfinished line is not."""
    decoder = SSEDecoder()
    assert decoder.feed(b"data: [DONE]\n") == []
    assert decoder.end() == [SSEEvent(DONE)]
    decoder = SSEDecoder()
    assert decoder.feed(b'data: {"a": 1}\n\ndata: {"trunc') == [SSEEvent('{"a": 1}')]
    assert decoder.pending_bytes == len(b'data: {"trunc')
    assert decoder.end() == []


def test_invalid_utf8_is_a_protocol_error() -> None:
    """Data that is not UTF-8 raises ProtocolError."""
    with pytest.raises(ProtocolError, match="not valid UTF-8"):
        decode_all(b"data: \xff\xfe\n\n")


def test_multibyte_characters_split_across_chunks() -> None:
    """A UTF-8 character split between chunks decodes intact."""
    raw = "data: héllo ✓\n\n".encode()
    for cut in range(len(raw) + 1):
        assert decode_chunks([raw[:cut], raw[cut:]]) == [SSEEvent("héllo ✓")]


# Decoder: bounds ----------------------------------------------------------------


def test_endless_line_raises_with_bounded_buffer() -> None:
    """A line that never ends raises ProtocolError before buffering much past the bound."""
    decoder = SSEDecoder(max_line_bytes=1000)
    for _ in range(1000 // 64):
        assert decoder.feed(b"x" * 64) == []
        assert decoder.pending_bytes <= 1000
    with pytest.raises(ProtocolError, match=r"max_line_bytes \(1000\)"):
        decoder.feed(b"x" * 64)
    assert decoder.pending_bytes <= 1000 + 64


def test_endless_keepalive_colons_without_newline_raise() -> None:
    """Even comment bytes count toward the line bound when no line end comes."""
    decoder = SSEDecoder(max_line_bytes=10)
    with pytest.raises(ProtocolError):
        decoder.feed(b":" * 11)


@given(st.integers(min_value=1, max_value=300), st.lists(st.integers(0, 400), max_size=8))
def test_line_bound_is_exact_for_any_chunking(limit: int, cuts: list[int]) -> None:
    """A line of exactly max_line_bytes passes and one byte more fails, however chunked."""
    ok = b"data:" + b"a" * (limit - 5) if limit >= 5 else b"a" * limit
    too_long = ok + b"b"
    events = decode_chunks(split_at(ok + b"\n\n", cuts), max_line_bytes=limit)
    assert len(events) == (1 if limit >= 5 else 0)
    with pytest.raises(ProtocolError):
        decode_chunks(split_at(too_long + b"\n\n", cuts), max_line_bytes=limit)


def test_event_bound() -> None:
    """Many short data lines cannot make one event larger than max_event_bytes."""
    decoder = SSEDecoder(max_line_bytes=100, max_event_bytes=1000)
    line = b"data: " + b"y" * 50 + b"\n"
    for _ in range(1000 // 51):
        assert decoder.feed(line) == []
    with pytest.raises(ProtocolError, match=r"max_event_bytes \(1000\)"):
        decoder.feed(line)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_line_bytes": 0}, "max_line_bytes must be >= 1, got 0"),
        ({"max_event_bytes": -1}, "max_event_bytes must be >= 1, got -1"),
        ({"max_line_bytes": 1.5}, "max_line_bytes must be an integer, got 1.5"),
    ],
)
def test_decoder_validation_messages(kwargs: dict[str, object], message: str) -> None:
    """Bad bounds raise ConfigError naming the parameter and the bound."""
    with pytest.raises(ConfigError) as info:
        SSEDecoder(**kwargs)  # type: ignore[arg-type]
    assert str(info.value) == message


# Decoder: properties ------------------------------------------------------------

field_text = st.text(
    alphabet=st.characters(blacklist_characters="\r\n\x00", blacklist_categories=["Cs"]),
    max_size=30,
)
events_st = st.lists(
    st.tuples(
        st.lists(field_text, min_size=1, max_size=3),  # data lines
        st.one_of(st.none(), field_text.filter(lambda s: s != "" and not s.startswith(" "))),
        st.lists(field_text, max_size=2),  # comments before the event
    ),
    max_size=8,
)


def serialize(events: list[tuple[list[str], str | None, list[str]]], eol: bytes) -> bytes:
    out = b""
    for data_lines, name, comments in events:
        for c in comments:
            out += b":" + c.encode() + eol
        if name is not None:
            out += b"event: " + name.encode() + eol
        for line in data_lines:
            out += b"data: " + line.encode() + eol
        out += eol
    return out


@given(events_st, st.sampled_from([b"\n", b"\r\n", b"\r"]), st.lists(st.integers(0, 5000)))
def test_any_chunking_gives_the_same_events(
    events: list[tuple[list[str], str | None, list[str]]], eol: bytes, cuts: list[int]
) -> None:
    """Splitting the byte stream anywhere gives the events it encodes, unchanged."""
    stream = serialize(events, eol)
    expected = [SSEEvent("\n".join(lines), name or "message") for lines, name, _ in events]
    assert decode_all(stream) == expected
    assert decode_chunks(split_at(stream, cuts)) == expected
    assert decode_chunks([bytes([b]) for b in stream]) == expected


@given(st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=6))
def test_arbitrary_bytes_decode_or_raise_protocol_error_consistently(
    stream: bytes, cuts: list[int]
) -> None:
    """Any byte soup either decodes to the same events however chunked, or raises ProtocolError."""
    try:
        whole: list[SSEEvent] | None = decode_all(stream, max_line_bytes=64)
    except ProtocolError:
        whole = None
    try:
        chunked: list[SSEEvent] | None = decode_chunks(split_at(stream, cuts), max_line_bytes=64)
    except ProtocolError:
        chunked = None
    assert whole == chunked


# Stream accumulator ------------------------------------------------------------


def chat_chunk(
    content: str | None = None, *, role: str | None = None, finish: str | None = None
) -> SSEEvent:
    delta: dict[str, str] = {}
    if role:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return SSEEvent(json.dumps({"object": "chat.completion.chunk", "choices": [choice]}))


def test_progress_is_only_content_or_finish() -> None:
    """Role-only chunks, empty deltas, usage chunks and [DONE] are not progress."""
    acc = StreamAccumulator()
    assert acc.feed(chat_chunk(role="assistant")) is False
    assert acc.feed(chat_chunk("")) is False
    assert acc.feed(SSEEvent(json.dumps({"choices": [{"index": 0, "delta": {}}]}))) is False
    assert acc.feed(chat_chunk("Hel")) is True
    assert acc.feed(chat_chunk("lo")) is True
    assert acc.feed(chat_chunk(finish="stop")) is True
    usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    assert acc.feed(SSEEvent(json.dumps({"choices": [], "usage": usage}))) is False
    assert not acc.done
    assert acc.feed(SSEEvent(DONE)) is False
    assert (acc.text, acc.finish_reason, acc.done) == ("Hello", "stop", True)
    assert acc.usage == Usage(prompt_tokens=5, completion_tokens=2)
    assert acc.progress_events == 3
    assert acc.complete


def test_incomplete_stream_is_not_complete() -> None:
    """Content without a finish reason or [DONE] is not complete."""
    acc = StreamAccumulator()
    acc.feed(chat_chunk("partial"))
    assert not acc.complete


def test_legacy_completion_chunks() -> None:
    """Legacy /completions chunks carry text in choices[].text."""
    acc = StreamAccumulator()
    assert acc.feed(SSEEvent('{"choices":[{"index":0,"text":"ab","finish_reason":null}]}'))
    assert acc.feed(SSEEvent('{"choices":[{"index":0,"text":"","finish_reason":"length"}]}'))
    assert (acc.text, acc.finish_reason) == ("ab", "length")


@pytest.mark.parametrize(
    "delta",
    [
        {"reasoning_content": "thinking"},
        {"tool_calls": [{"index": 0, "function": {"arguments": "{"}}]},
        {"refusal": "no"},
    ],
)
def test_other_output_is_progress_but_not_text(delta: dict[str, object]) -> None:
    """Reasoning, tool-call and refusal deltas are progress, and do not enter the text."""
    acc = StreamAccumulator()
    assert acc.feed(SSEEvent(json.dumps({"choices": [{"index": 0, "delta": delta}]})))
    assert acc.text == ""


def test_only_choice_zero_makes_the_text() -> None:
    """With n > 1, the text is choice 0's; other choices still count as progress."""
    acc = StreamAccumulator()
    assert acc.feed(SSEEvent('{"choices":[{"index":1,"delta":{"content":"B"}}]}'))
    acc.feed(SSEEvent('{"choices":[{"index":0,"delta":{"content":"A"}}]}'))
    assert acc.text == "A"


@pytest.mark.parametrize(
    ("data", "event", "error_type"),
    [
        ('{"error": {"message": "overloaded", "type": "server_error"}}', "message", ServerError),
        ('{"error": {"message": "slow", "code": 429}}', "message", RateLimited),
        ('{"error": {"message": "slow", "code": "rate_limit_exceeded"}}', "message", RateLimited),
        ('{"error": {"message": "too long", "code": 400}}', "message", ClientError),
        ('{"object": "error", "message": "bad", "code": 500}', "message", ServerError),
        ('{"message": "boom"}', "error", ServerError),
        ('{"error": "plain text"}', "message", ProtocolError),  # `error` must be an object
        ("upstream overloaded", "error", ServerError),
    ],
)
def test_in_band_errors_are_typed(data: str, event: str, error_type: type[Exception]) -> None:
    """An in-band error object or `event: error` raises the error its code names."""
    acc = StreamAccumulator()
    acc.feed(chat_chunk("some"))
    with pytest.raises(error_type) as info:
        acc.feed(SSEEvent(data, event))
    assert info.type is error_type
    assert getattr(info.value, "partial", None) is True


@pytest.mark.parametrize("data", ["{not json", "[1, 2]", '"text"', ""])
def test_malformed_chunks_are_protocol_errors(data: str) -> None:
    """Data that is not a JSON object raises ProtocolError (chained to the JSON error)."""
    with pytest.raises(ProtocolError):
        StreamAccumulator().feed(SSEEvent(data))


def test_error_from_payload_message_is_bounded() -> None:
    """A huge server error message is shortened."""
    err = error_from_payload({"error": {"message": "x" * 10_000}})
    assert len(str(err)) < 600


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({"prompt_tokens": 3, "completion_tokens": 4}, Usage(prompt_tokens=3, completion_tokens=4)),
        ({"prompt_tokens": 3, "total_tokens": 3}, Usage(prompt_tokens=3, completion_tokens=0)),
        ({"completion_tokens": 4}, None),
        (None, None),
    ],
)
def test_usage_from_json(obj: object, expected: Usage | None) -> None:
    """Well-formed usage objects become Usage; one without prompt tokens is no usage."""
    assert usage_from_json(obj) == expected


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({"prompt_tokens": -1, "completion_tokens": 4}, "usage.prompt_tokens must be an integer"),
        ({"prompt_tokens": "3"}, "usage.prompt_tokens must be an integer >= 0 or null, got string"),
        ({"prompt_tokens": 3, "completion_tokens": True}, "usage.completion_tokens must be"),
        ([1, 2], "usage must be an object or null, got array"),
    ],
)
def test_malformed_usage_is_a_protocol_error(obj: object, message: str) -> None:
    """A usage object with counts of the wrong type is a ProtocolError naming the field."""
    with pytest.raises(ProtocolError, match=message):
        usage_from_json(obj)


def test_null_error_field_is_not_an_error() -> None:
    """Some servers send "error": null in normal chunks; that is not an in-band error."""
    acc = StreamAccumulator()
    event = SSEEvent('{"error": null, "choices": [{"index": 0, "delta": {"content": "a"}}]}')
    assert acc.feed(event)
    assert acc.text == "a"


# The decoder's and the accumulator's fast paths agree with the general ones --------


@given(events_st, st.sampled_from([b"\n", b"\r\n"]), st.booleans())
def test_one_chunk_per_event_gives_the_same_events(
    events: list[tuple[list[str], str | None, list[str]]], eol: bytes, bom: bool
) -> None:
    """A read holding exactly one event (a paced stream's hot path) decodes as any split does."""
    chunks = [serialize([event], eol) for event in events]
    if bom and chunks:
        chunks[0] = b"\xef\xbb\xbf" + chunks[0]
    expected = decode_all(b"".join(chunks))
    assert decode_chunks(chunks) == expected
    # ...and after fields that the next event must carry (id, retry) or drop (event).
    prefix = [b"id: 7\nretry: 30\n", b"event: ping\n"]
    assert decode_chunks(prefix + chunks) == decode_all(b"".join(prefix + chunks))


@pytest.mark.parametrize(
    ("event", "kwargs"),
    [
        (b"data: " + b"x" * 60 + b"\n\n", {"max_line_bytes": 50}),
        (b"data: " + b"x" * 60 + b"\n\n", {"max_event_bytes": 50}),
        (b"data: \xff\xfe\n\n", {}),
    ],
)
def test_one_event_chunk_fails_as_the_general_path_does(
    event: bytes, kwargs: dict[str, int]
) -> None:
    """Bounds and UTF-8 are enforced on the fast path with the general path's messages."""
    with pytest.raises(ProtocolError) as fast:
        SSEDecoder(**kwargs).feed(event)
    with pytest.raises(ProtocolError) as general:
        decode_chunks([event[:-1], event[-1:]], **kwargs)
    assert str(fast.value) == str(general.value)


class _CheckedOnly(StreamAccumulator):
    """The accumulator without its fast path: every chunk takes the checked one."""

    __slots__ = ()

    def _plain(self, chunk: dict[str, object]) -> bool | None:
        return None


_odd = st.one_of(
    st.none(), st.booleans(), st.integers(-1, 2), st.text(max_size=2), st.just([]), st.just({})
)


@st.composite
def _chunk_st(draw: st.DrawFn) -> dict[str, object]:
    """A usual chunk (the fast path's shape), often with one thing changed."""
    delta: dict[str, object] = {}
    if draw(st.booleans()):
        delta["role"] = "assistant"
    if draw(st.booleans()):
        delta["content"] = draw(st.one_of(st.none(), st.text(max_size=3)))
    choice: dict[str, object] = {"index": 0, "delta": delta}
    if draw(st.booleans()):
        choice["finish_reason"] = draw(st.sampled_from([None, "stop", "length", ""]))
    chunk: dict[str, object] = {"object": "chat.completion.chunk", "choices": [choice]}
    change = draw(
        st.sampled_from(
            [
                None,
                "usage",
                "error",
                "object",
                "choices",
                "two choices",
                "index",
                "no index",
                "delta",
                "no delta",
                "delta key",
                "content",
                "finish_reason",
                "logprobs",
            ]
        )
    )
    if change == "usage":
        chunk["usage"] = draw(st.one_of(st.none(), st.just({"prompt_tokens": 3}), _odd))
    elif change == "error":
        chunk["error"] = draw(st.one_of(st.none(), st.just({"message": "boom"}), _odd))
    elif change == "object":
        chunk["object"] = draw(st.sampled_from(["error", "chat.completion"]))
    elif change == "choices":
        chunk["choices"] = draw(_odd)
    elif change == "two choices":
        chunk["choices"] = [choice, {**choice, "index": draw(st.sampled_from([0, 1]))}]
    elif change == "index":
        choice["index"] = draw(st.one_of(st.sampled_from([False, 0.0, "0", 1, -1]), _odd))
    elif change == "no index":
        del choice["index"]
    elif change == "delta":
        choice["delta"] = draw(_odd)
    elif change == "no delta":
        del choice["delta"]
        choice["text"] = draw(st.text(max_size=2))
    elif change == "delta key":
        delta[draw(st.sampled_from(["refusal", "reasoning_content", "tool_calls"]))] = draw(
            st.one_of(st.text(max_size=2), _odd)
        )
    elif change == "content":
        delta["content"] = draw(_odd)
    elif change == "finish_reason":
        choice["finish_reason"] = draw(_odd)
    elif change == "logprobs":
        choice["logprobs"] = draw(st.one_of(st.none(), st.just({"content": []}), _odd))
    return chunk


def _feed_all(acc: StreamAccumulator, chunks: list[dict[str, object]]) -> list[object]:
    seen: list[object] = []
    for chunk in chunks:
        try:
            seen.append(acc.feed(SSEEvent(json.dumps(chunk))))
        except Exception as exc:
            seen.append((type(exc).__name__, str(exc)))
            break
    seen.append((acc.text, acc.finish_reason, acc.usage, acc.progress_events, acc.position))
    try:
        answer = acc.answer()
        seen.append({name: getattr(answer, name) for name in answer.__slots__})
    except Exception as exc:
        seen.append((type(exc).__name__, str(exc)))
    return seen


@settings(max_examples=300)  # about 0.3 s; the odd cases are one change in fourteen
@given(st.lists(_chunk_st(), max_size=6))
def test_the_fast_path_accounts_for_a_chunk_as_the_checked_path_does(
    chunks: list[dict[str, object]],
) -> None:
    """Progress, text, finish reason, usage and every error (type and message) agree."""
    assert _feed_all(StreamAccumulator(), chunks) == _feed_all(_CheckedOnly(), chunks)
