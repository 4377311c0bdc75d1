"""Event records: JSONL schema, decoding errors, and the sinks that write them."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardline._events import (
    EVENT_TYPES,
    SCHEMA_VERSION,
    AttemptEnd,
    AttemptOutcome,
    AttemptStart,
    EndpointState,
    Event,
    EventDecodeError,
    EventFileReader,
    FirstToken,
    HedgeSent,
    HedgeWon,
    ItemAdmitted,
    ItemEnd,
    LimitChange,
    RetryScheduled,
    RunEnd,
    RunEndReason,
    RunStart,
    ShardCondition,
    ShardState,
    decode_event,
    encode_event,
    event_from_json,
    event_to_json,
)
from shardline._exceptions import Cause
from shardline._models import Status
from shardline._sinks import EventSink, JsonlEventSink, MemoryEventSink, TeeSink

# --- strategies -----------------------------------------------------------------------

finite = st.floats(allow_nan=False, allow_infinity=False)
times = st.floats(min_value=0, max_value=1e6, allow_nan=False)
item_ids = st.one_of(st.integers(min_value=-(2**63), max_value=2**63), st.text(max_size=12))
small = st.integers(min_value=0, max_value=10_000)
opt_str = st.none() | st.text(max_size=10)
# Enum fields accept members and their string values alike.
causes = st.sampled_from(Cause) | st.sampled_from([c.value for c in Cause])
opt_causes = st.none() | causes
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | finite | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)

events: st.SearchStrategy[Event] = st.one_of(
    st.builds(
        RunStart,
        t=times,
        run_id=st.text(max_size=10),
        started_at=finite,
        shard_count=small,
        config=st.dictionaries(st.text(max_size=6), json_values, max_size=4),
    ),
    st.builds(ItemAdmitted, t=times, item_id=item_ids, shard=small),
    st.builds(AttemptStart, t=times, item_id=item_ids, shard=small, attempt=small),
    st.builds(FirstToken, t=times, item_id=item_ids, shard=small, attempt=small, ttft_s=finite),
    st.builds(
        AttemptEnd,
        t=times,
        item_id=item_ids,
        shard=small,
        attempt=small,
        outcome=st.sampled_from(["ok", "failed", "cancelled"]) | st.sampled_from(AttemptOutcome),
        cause=opt_causes,
        status_code=st.none() | small,
        prompt_tokens=st.none() | small,
        completion_tokens=st.none() | small,
        usage_estimated=st.booleans(),
        ttft_s=st.none() | finite,
        duration_s=finite,
        retry_after_s=st.none() | finite,
        message=opt_str,
    ),
    st.builds(
        RetryScheduled,
        t=times,
        item_id=item_ids,
        shard=small,
        attempt=small,
        delay_s=finite,
        cause=causes,
    ),
    st.builds(
        HedgeSent,
        t=times,
        item_id=item_ids,
        shard=small,
        attempt=small,
        hedge_shard=small,
        after_s=finite,
    ),
    st.builds(
        HedgeWon,
        t=times,
        item_id=item_ids,
        shard=small,
        attempt=small,
        leg=st.sampled_from(["first", "hedge"]),
        ttft_s=finite,
    ),
    st.builds(
        ItemEnd,
        t=times,
        item_id=item_ids,
        shard=st.none() | small,
        status=st.sampled_from(["ok", "failed", "cancelled"]) | st.sampled_from(Status),
        attempts=small,
        latency_s=finite,
        cause=opt_causes,
        prompt_tokens=st.none() | small,
        completion_tokens=st.none() | small,
        ttft_s=st.none() | finite,
        usage_estimated=st.booleans(),
        message=opt_str,
    ),
    st.builds(
        LimitChange,
        t=times,
        endpoint=small,
        old=small,
        new=small,
        reason=st.text(max_size=12),
    ),
    st.builds(
        EndpointState,
        t=times,
        endpoint=small,
        old=st.sampled_from(["closed", "open", "half_open"]),
        new=st.sampled_from(["closed", "open", "half_open"]),
        reason=st.text(max_size=12),
    ),
    st.builds(
        ShardState,
        t=times,
        shard=small,
        state=st.sampled_from(["cooling", "resumed"]) | st.sampled_from(ShardCondition),
        cooldown_s=st.none() | finite,
    ),
    st.builds(
        RunEnd,
        t=times,
        reason=st.sampled_from(["completed", "cancelled", "error"]) | st.sampled_from(RunEndReason),
    ),
)


def _same(a: Event, b: Event) -> bool:
    """Equal, and every field of the same type (1 == 1.0 would hide an int/float mix-up)."""
    if a != b:
        return False
    return all(
        type(getattr(a, f.name)) is type(getattr(b, f.name))
        or isinstance(getattr(a, f.name), float)  # ints given for float fields widen
        for f in attrs.fields(type(a))
    )


# --- schema ---------------------------------------------------------------------------


def test_every_kind_is_registered() -> None:
    """EVENT_TYPES maps each record's kind to its class, and kinds are unique."""
    assert set(EVENT_TYPES) == {
        "run_start",
        "item_admitted",
        "attempt_start",
        "first_token",
        "attempt_end",
        "retry_scheduled",
        "hedge_sent",
        "hedge_won",
        "item_end",
        "shard_state",
        "limit_change",
        "endpoint_state",
        "run_end",
    }
    assert all(cls.kind == kind for kind, cls in EVENT_TYPES.items())


def test_line_layout_is_stable() -> None:
    """A line is v, kind, then the fields in declaration order, compact, newline-terminated."""
    line = encode_event(ItemAdmitted(t=0.25, item_id="q1", shard=3))
    assert line == b'{"v":1,"kind":"item_admitted","t":0.25,"item_id":"q1","shard":3}\n'


def test_text_is_utf8_not_escaped() -> None:
    """Non-ASCII ids are written as UTF-8 bytes, not \\u escapes."""
    line = encode_event(ItemAdmitted(t=0.0, item_id="café-✓", shard=0))
    assert "café-✓".encode() in line
    assert decode_event(line) == ItemAdmitted(t=0.0, item_id="café-✓", shard=0)


def test_event_to_json_writes_every_field() -> None:
    """Optional fields are written as null, so each line names all its fields."""
    obj = event_to_json(
        RetryScheduled(t=1.0, item_id=7, shard=1, attempt=2, delay_s=0.5, cause="server_error")
    )
    assert list(obj) == ["v", "kind", "t", "item_id", "shard", "attempt", "delay_s", "cause"]
    obj = event_to_json(ShardState(t=1.0, shard=1, state="resumed"))
    assert obj["cooldown_s"] is None
    assert obj["v"] == SCHEMA_VERSION


@given(events)
def test_round_trip_is_exact(event: Event) -> None:
    """decode(encode(e)) == e with the same field types, for every kind."""
    back = decode_event(encode_event(event))
    assert _same(back, event)
    assert event_from_json(json.loads(json.dumps(event_to_json(event)))) == event


def test_int_and_str_ids_keep_their_type() -> None:
    """Item id 7 and item id "7" stay different after a round trip."""
    a = decode_event(encode_event(ItemAdmitted(t=0.0, item_id=7, shard=0)))
    b = decode_event(encode_event(ItemAdmitted(t=0.0, item_id="7", shard=0)))
    assert isinstance(a, ItemAdmitted)
    assert a.item_id == 7
    assert isinstance(b, ItemAdmitted)
    assert b.item_id == "7"


def test_ints_in_float_fields_widen_to_float() -> None:
    """A JSON integer in a float field decodes as a float."""
    event = decode_event(b'{"v":1,"kind":"run_end","t":3,"reason":"completed"}')
    assert isinstance(event, RunEnd)
    assert type(event.t) is float
    assert event.t == 3.0


def test_unknown_keys_are_ignored_and_defaults_apply() -> None:
    """Readers ignore keys they do not know and fill omitted optional fields."""
    line = '{"v":1,"kind":"shard_state","t":1.0,"shard":2,"state":"cooling","new_field":1}'
    assert decode_event(line) == ShardState(t=1.0, shard=2, state="cooling")


def test_enum_fields_take_strings_and_decode_to_enums() -> None:
    """Enum fields convert their string values on construction and decode to the enum."""
    event = AttemptEnd(
        t=1.0, item_id=1, shard=0, attempt=1, outcome="failed", cause="stall_timeout"
    )
    assert event.outcome is AttemptOutcome.FAILED
    assert event.cause is Cause.STALL_TIMEOUT
    line = encode_event(event)
    assert b'"outcome":"failed","cause":"stall_timeout"' in line
    back = decode_event(line)
    assert isinstance(back, AttemptEnd)
    assert type(back.outcome) is AttemptOutcome
    assert type(back.cause) is Cause
    ended = decode_event(
        b'{"v":1,"kind":"item_end","t":2,"item_id":1,"shard":null,"status":"cancelled",'
        b'"attempts":0,"latency_s":0.5,"cause":"cancelled"}'
    )
    assert isinstance(ended, ItemEnd)
    assert (type(ended.status), ended.status) == (Status, Status.CANCELLED)
    state = decode_event(b'{"v":1,"kind":"shard_state","t":1,"shard":0,"state":"resumed"}')
    assert isinstance(state, ShardState)
    assert state.state is ShardCondition.RESUMED
    end = decode_event(b'{"v":1,"kind":"run_end","t":3,"reason":"error"}')
    assert isinstance(end, RunEnd)
    assert end.reason is RunEndReason.ERROR


def test_event_to_json_writes_enums_as_plain_strings() -> None:
    """event_to_json gives plain str values, not enum members, so the schema is unchanged."""
    obj = event_to_json(ShardState(t=1.0, shard=1, state=ShardCondition.COOLING))
    assert type(obj["state"]) is str
    assert obj["state"] == "cooling"
    obj = event_to_json(RunEnd(t=1.0, reason=RunEndReason.CANCELLED))
    assert type(obj["reason"]) is str
    assert obj == {"v": 1, "kind": "run_end", "t": 1.0, "reason": "cancelled"}


def test_unknown_enum_value_is_refused() -> None:
    """A value outside an enum raises ValueError when constructing an event."""
    with pytest.raises(ValueError, match="'finished' is not a valid RunEndReason"):
        RunEnd(t=1.0, reason="finished")


def test_nan_is_refused_when_encoding() -> None:
    """A NaN would not be valid JSON; encoding names the kind."""
    with pytest.raises(ValueError, match="cannot encode run_end event"):
        encode_event(RunEnd(t=float("nan"), reason="completed"))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"{", "ev.jsonl:4: invalid JSON: "),
        (b"[1]", "ev.jsonl:4: expected a JSON object, got array"),
        (b'{"kind":"run_end"}', "ev.jsonl:4: missing schema version 'v'"),
        (b'{"v":2,"kind":"run_end"}', "ev.jsonl:4: unsupported schema version 2"),
        (b'{"v":true,"kind":"run_end"}', "ev.jsonl:4: unsupported schema version True"),
        (b'{"v":1}', "ev.jsonl:4: missing event 'kind'"),
        (b'{"v":1,"kind":"attempt_begin"}', "ev.jsonl:4: unknown event kind 'attempt_begin'"),
        (b'{"v":1,"kind":"run_end","t":1}', "ev.jsonl:4: run_end event: missing field 'reason'"),
        (
            b'{"v":1,"kind":"run_end","t":"1","reason":"x"}',
            "ev.jsonl:4: run_end event: field 't' must be a number, got string",
        ),
        (
            b'{"v":1,"kind":"item_admitted","t":1,"item_id":true,"shard":0}',
            "ev.jsonl:4: item_admitted event: field 'item_id' must be a string or an integer, "
            "got boolean",
        ),
        (
            b'{"v":1,"kind":"item_admitted","t":1,"item_id":1,"shard":1.5}',
            "ev.jsonl:4: item_admitted event: field 'shard' must be an integer, got number",
        ),
        (
            b'{"v":1,"kind":"run_end","t":1,"reason":"finished"}',
            "ev.jsonl:4: run_end event: field 'reason' must be one of 'completed', "
            "'cancelled', 'error', got string",
        ),
        (
            b'{"v":1,"kind":"retry_scheduled","t":1,"item_id":1,"shard":0,"attempt":2,'
            b'"delay_s":1,"cause":null}',
            "ev.jsonl:4: retry_scheduled event: field 'cause' must be one of 'rate_limited', ",
        ),
        (b"\xff\xfe", "ev.jsonl:4: not UTF-8"),
    ],
)
def test_bad_lines_name_file_and_line(line: bytes, message: str) -> None:
    """Every kind of bad line raises EventDecodeError naming file, line and problem."""
    with pytest.raises(EventDecodeError) as info:
        decode_event(line, source="ev.jsonl", lineno=4)
    assert str(info.value).startswith(message)
    assert info.value.source == "ev.jsonl"
    assert info.value.line == 4
    assert isinstance(info.value, ValueError)


# --- sinks ----------------------------------------------------------------------------

SAMPLE: list[Event] = [
    RunStart(t=0.0, run_id="r", started_at=1_764_403_200.0, shard_count=2, config={}),
    ItemAdmitted(t=0.1, item_id=1, shard=0),
    AttemptStart(t=0.2, item_id=1, shard=0, attempt=1),
    AttemptEnd(t=0.9, item_id=1, shard=0, attempt=1, outcome="ok", duration_s=0.7),
    ItemEnd(t=0.9, item_id=1, shard=0, status="ok", attempts=1, latency_s=0.8),
    RunEnd(t=1.0, reason="completed"),
]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_sinks_satisfy_the_protocol() -> None:
    """The built-in sinks are EventSinks."""
    assert isinstance(MemoryEventSink(), EventSink)
    assert isinstance(TeeSink(), EventSink)


def test_jsonl_sink_digest_equals_file_sha256(tmp_path: Path) -> None:
    """hexdigest() is sha256sum of the file, and each line is flushed as written."""
    path = tmp_path / "ev.jsonl"
    sink = JsonlEventSink(path)
    sink.emit(SAMPLE[0])
    assert path.read_bytes() == encode_event(SAMPLE[0])  # flushed per line
    for e in SAMPLE[1:]:
        sink.emit(e)
    sink.close()
    assert sink.hexdigest() == sink.sha256 == _sha(path)
    assert sink.lines == len(SAMPLE)
    with EventFileReader(path) as reader:
        assert list(reader) == SAMPLE
        assert reader.hexdigest() == _sha(path)
        assert reader.complete


def test_jsonl_sink_append_hashes_existing_content(tmp_path: Path) -> None:
    """Appending (resume) hashes what was there first, so the digest still matches."""
    path = tmp_path / "ev.jsonl"
    with JsonlEventSink(path) as first:
        for e in SAMPLE[:3]:
            first.emit(e)
    with JsonlEventSink(path, append=True) as second:
        assert second.lines == 3
        for e in SAMPLE[3:]:
            second.emit(e)
    assert second.hexdigest() == _sha(path)
    assert second.lines == len(SAMPLE)


def test_jsonl_sink_append_cuts_a_torn_last_line(tmp_path: Path) -> None:
    """A partial line left by a crash is cut off before appending."""
    path = tmp_path / "ev.jsonl"
    path.write_bytes(encode_event(SAMPLE[0]) + b'{"v":1,"kind":"item_adm')
    with JsonlEventSink(path, append=True) as sink:
        assert sink.truncated_bytes == len(b'{"v":1,"kind":"item_adm')
        sink.emit(SAMPLE[1])
    assert path.read_bytes() == encode_event(SAMPLE[0]) + encode_event(SAMPLE[1])
    assert sink.hexdigest() == _sha(path)


def test_jsonl_sink_append_creates_a_missing_file(tmp_path: Path) -> None:
    """append=True on a missing file starts an empty one."""
    path = tmp_path / "new.jsonl"
    with JsonlEventSink(path, append=True) as sink:
        sink.emit(SAMPLE[0])
    assert sink.hexdigest() == _sha(path)


def test_jsonl_sink_fsyncs_on_interval_and_run_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fsync follows the events' run time, plus run_end and close."""
    synced: list[int] = []
    monkeypatch.setattr(os, "fsync", synced.append)
    sink = JsonlEventSink(tmp_path / "ev.jsonl", fsync_interval=0.5)
    for t in (0.0, 0.2, 0.4):
        sink.emit(ShardState(t=t, shard=0, state="cooling"))
    assert synced == []
    sink.emit(ShardState(t=0.5, shard=0, state="cooling"))
    assert len(synced) == 1
    sink.emit(RunEnd(t=0.6, reason="completed"))
    assert len(synced) == 2
    sink.close()
    assert len(synced) == 3
    sink.close()  # idempotent
    assert len(synced) == 3


def test_jsonl_sink_refuses_emit_after_close_and_bad_interval(tmp_path: Path) -> None:
    """emit() after close() and a negative fsync_interval raise ValueError."""
    sink = JsonlEventSink(tmp_path / "ev.jsonl")
    sink.close()
    assert sink.closed
    with pytest.raises(ValueError, match="closed JsonlEventSink"):
        sink.emit(SAMPLE[0])
    with pytest.raises(ValueError, match="fsync_interval must be >= 0 or None, got -1"):
        JsonlEventSink(tmp_path / "x.jsonl", fsync_interval=-1)
    assert "0 lines, closed" in repr(sink)


def test_reader_reports_file_and_line_of_a_bad_line(tmp_path: Path) -> None:
    """A bad line in a file raises with the file name and its 1-based line number."""
    path = tmp_path / "ev.jsonl"
    path.write_bytes(encode_event(SAMPLE[0]) + b"\n" + b'{"v":1,"kind":"nope"}\n')
    with EventFileReader(path) as reader, pytest.raises(EventDecodeError) as info:
        list(reader)
    assert str(info.value) == f"{path}:3: unknown event kind 'nope'"


def test_reader_iterates_once(tmp_path: Path) -> None:
    """A reader is a one-shot stream: a second iteration is an error, not an empty list."""
    path = tmp_path / "ev.jsonl"
    path.write_bytes(b"")
    with EventFileReader(path) as reader:
        assert list(reader) == []
        with pytest.raises(RuntimeError, match="only once"):
            list(reader)


def test_memory_sink_keeps_events_in_order() -> None:
    """MemoryEventSink stores events in emit order and refuses emit after close."""
    sink = MemoryEventSink()
    for e in SAMPLE:
        sink.emit(e)
    assert list(sink) == SAMPLE
    assert len(sink) == len(SAMPLE)
    sink.close()
    with pytest.raises(ValueError, match="closed MemoryEventSink"):
        sink.emit(SAMPLE[0])
    assert repr(sink) == f"<MemoryEventSink {len(SAMPLE)} events, closed>"


class _Exploding:
    def __init__(self) -> None:
        self.closed = False

    def emit(self, event: Event) -> None:
        raise OSError("disk full")

    def close(self) -> None:
        self.closed = True
        raise OSError("close failed")


def test_tee_sink_fans_out_and_closes_all() -> None:
    """TeeSink emits to each sink in order and closes every sink even if one fails."""
    a, b = MemoryEventSink(), MemoryEventSink()
    tee = TeeSink(a, b)
    tee.emit(SAMPLE[0])
    assert a.events == b.events == [SAMPLE[0]]
    bad = _Exploding()
    tee = TeeSink(bad, a)
    with pytest.raises(OSError, match="disk full"):
        tee.emit(SAMPLE[1])
    with pytest.raises(OSError, match="close failed"):
        tee.close()
    assert bad.closed
    assert a.closed
    assert repr(tee) == "<TeeSink of _Exploding, MemoryEventSink>"
