"""The JSONL file layer of ``shardline run``: lazy reader, id sets, output writer."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest

from shardline._exceptions import Cause, InputError, ItemCancelled, ServerError
from shardline._jsonl import IdSet, count_lines, read_input
from shardline._jsonl_output import OutputWriter, outcome_to_json, repair_torn_tail
from shardline._models import ChatRequest, CompletionRequest, Outcome, Result, Status, Usage

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def write_lines(path: Path, lines: list[object]) -> Path:
    with open(path, "w") as f:
        for line in lines:
            f.write(line if isinstance(line, str) else json.dumps(line))
            f.write("\n")
    return path


# -- IdSet ---------------------------------------------------------------------------------


def test_idset_add_reports_new_and_seen() -> None:
    """add() is True for a new id and False for one already present."""
    s = IdSet()
    assert s.add("a") is True
    assert s.add("a") is False
    assert "a" in s
    assert "b" not in s
    assert len(s) == 1


def test_idset_distinguishes_int_and_str() -> None:
    """The integer 7 and the string "7" are different ids."""
    s = IdSet()
    s.add(7)
    assert 7 in s
    assert "7" not in s
    assert s.add("7") is True


def test_idset_accepts_lone_surrogates() -> None:
    """An id with a lone surrogate (valid JSON: "\\ud800") is hashed, not a crash."""
    s = IdSet()
    assert s.add("a\ud800")
    assert "a\ud800" in s
    assert "a" not in s


def test_idset_grows_and_keeps_everything() -> None:
    """Growing past the initial capacity keeps every id and admits no false positives."""
    s = IdSet(capacity=4)
    for i in range(5000):
        assert s.add(f"id-{i}")
    assert len(s) == 5000
    assert all(f"id-{i}" in s for i in range(5000))
    assert not any(f"other-{i}" in s for i in range(5000))


def test_idset_rejects_non_id_membership() -> None:
    """Values that cannot be ids (None, bool, float) are never members."""
    s = IdSet()
    s.add(1)
    assert None not in s
    assert True not in s
    assert 1.0 not in s


# -- reader --------------------------------------------------------------------------------


def test_read_input_ids_line_numbers_and_kinds(tmp_path: Path) -> None:
    """String, numeric and missing ids (line number) are kept; chat and prompt lines both parse."""
    path = write_lines(
        tmp_path / "in.jsonl",
        [{"id": "a", **CHAT}, {"id": 42, "prompt": "p", "max_tokens": 3}, "", CHAT],
    )
    entries = list(read_input(path))
    assert [(e.line, e.item_id) for e in entries] == [(1, "a"), (2, 42), (4, 4)]
    assert isinstance(entries[0].request, ChatRequest)
    assert isinstance(entries[1].request, CompletionRequest)
    assert entries[1].request.params == {"max_tokens": 3}
    assert entries[2].request is not None
    assert entries[2].request.id == 4
    assert all(e.error is None for e in entries)


def test_read_input_invalid_lines_name_file_and_line(tmp_path: Path) -> None:
    """Invalid JSON and lines without messages/prompt become errors naming file and line."""
    path = write_lines(tmp_path / "in.jsonl", [CHAT, "{not json", {"id": "x"}, "[1, 2]"])
    entries = list(read_input(path))
    assert [e.line for e in entries] == [1, 2, 3, 4]
    assert entries[0].error is None
    bad = entries[1:]
    assert all(isinstance(e.error, InputError) for e in bad)
    assert all(e.request is None for e in bad)
    assert str(bad[0].error).startswith(f"{path}:2: invalid JSON")
    assert bad[0].item_id == 2
    assert (
        str(bad[1].error) == f"{path}:3: missing field 'messages' (chat) or 'prompt' (completion),"
        " or 'input' with an 'api'"
    )
    assert bad[1].item_id == "x"
    assert str(bad[2].error).startswith(f"{path}:4: expected a JSON object")


def test_read_input_duplicate_ids(tmp_path: Path) -> None:
    """A repeated id is an error on the later line; the first line is kept."""
    path = write_lines(tmp_path / "in.jsonl", [{"id": "a", **CHAT}, CHAT, {"id": "a", **CHAT}])
    entries = list(read_input(path))
    assert entries[0].error is None
    assert entries[1].error is None
    assert entries[2].error is not None
    assert str(entries[2].error) == f"{path}:3: duplicate id 'a' (ids must be unique in a file)"


def test_read_input_default_id_can_collide_with_explicit_id(tmp_path: Path) -> None:
    """A line-number id counts for duplicates: a later explicit id 1 clashes with line 1."""
    path = write_lines(tmp_path / "in.jsonl", [CHAT, {"id": 1, **CHAT}])
    entries = list(read_input(path))
    assert entries[1].error is not None
    assert "duplicate id 1" in str(entries[1].error)


def test_read_input_is_lazy(tmp_path: Path) -> None:
    """The reader parses only as far as it is asked: a bad tail is not touched early."""
    path = tmp_path / "in.jsonl"
    with open(path, "w") as f:
        for i in range(1000):
            f.write(json.dumps({"id": i, **CHAT}) + "\n")
    gen = read_input(path)
    first = next(gen)
    assert first.item_id == 0
    # Appending after the generator started is visible: it streams rather than slurps.
    with open(path, "a") as f:
        f.write(json.dumps({"id": "late", **CHAT}) + "\n")
    rest = list(gen)
    assert rest[-1].item_id == "late"
    assert len(rest) == 1000
    assert isinstance(gen, types.GeneratorType)


def test_read_input_memory_does_not_grow_with_the_file(tmp_path: Path) -> None:
    """Reading a 20 MB file holds about one line plus the id set, not the file."""
    import tracemalloc

    path = tmp_path / "big.jsonl"
    filler = "x" * 2600
    with open(path, "w") as f:
        for i in range(8_000):
            f.write(json.dumps({"id": f"item-{i}", "prompt": filler}) + "\n")
    assert path.stat().st_size > 20_000_000
    tracemalloc.start()
    try:
        count = sum(1 for _ in read_input(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 8_000
    # The IdSet for 8k ids is 2 x 16384 slots x 8 bytes (256 KiB); a line is about 2.6 kB.
    assert peak < 2_000_000


def test_read_input_skip_set(tmp_path: Path) -> None:
    """Ids in the skip set are passed over (and reported to on_skip) but still count as seen."""
    path = write_lines(
        tmp_path / "in.jsonl",
        [{"id": "a", **CHAT}, {"id": "b", **CHAT}, {"id": "a", **CHAT}],
    )
    skip = IdSet()
    skip.add("a")
    skipped: list[object] = []
    entries = list(read_input(path, skip=skip, on_skip=skipped.append))
    assert skipped == ["a"]
    assert [(e.item_id, e.error is None) for e in entries] == [("b", True), ("a", False)]


def test_read_input_missing_file(tmp_path: Path) -> None:
    """A missing file raises OSError when iteration starts."""
    with pytest.raises(FileNotFoundError):
        next(read_input(tmp_path / "nope.jsonl"))


def test_read_input_invalid_utf8(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 make an invalid-input line, not a crash."""
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"prompt": "\xff"}\n')
    (entry,) = read_input(path)
    assert entry.error is not None
    assert "invalid JSON" in str(entry.error)


def test_read_input_lone_surrogate_is_invalid(tmp_path: Path) -> None:
    """A lone surrogate escape cannot be sent or logged: the line is invalid input.

    An escaped surrogate pair (an emoji written as two escapes) is fine.
    """
    path = tmp_path / "in.jsonl"
    path.write_text(
        '{"id": "a\\ud800", "prompt": "x"}\n'
        '{"id": "b", "prompt": "\\udfff"}\n'
        '{"id": "c", "prompt": "\\ud83d\\ude00"}\n'
    )
    entries = list(read_input(path))
    assert [e.error is None for e in entries] == [False, False, True]
    assert str(entries[0].error) == (
        f"{path}:1: a \\uXXXX escape is a lone surrogate, which is not valid Unicode"
    )
    assert entries[2].request is not None
    assert entries[2].request.prompt_text() == "\U0001f600"


def test_count_lines_skips_blank_lines(tmp_path: Path) -> None:
    """count_lines counts non-blank lines, with or without a final newline."""
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"a":1}\n\n  \n{"b":2}\r\n{"c":3}')
    assert count_lines(path) == 3
    path.write_bytes(b"")
    assert count_lines(path) == 0


# -- output --------------------------------------------------------------------------------


def ok_outcome(item_id: str | int = "a") -> Outcome:
    result = Result(
        id=item_id,
        text="hello",
        finish_reason="stop",
        usage=Usage(prompt_tokens=3, completion_tokens=2),
        attempts=2,
        shard=1,
        ttft_s=0.1234567891,
        latency_s=0.5,
    )
    return Outcome(id=item_id, status=Status.OK, result=result, attempts=2, shard=1, latency_s=0.5)


def test_outcome_to_json_ok() -> None:
    """An ok outcome has text, usage, attempts, shard and timings."""
    assert outcome_to_json(ok_outcome()) == {
        "id": "a",
        "status": "ok",
        "text": "hello",
        "finish_reason": "stop",
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        "attempts": 2,
        "shard": 1,
        "ttft_s": 0.123457,
        "latency_s": 0.5,
    }


def test_outcome_to_json_failed() -> None:
    """A failed outcome carries error.cause and error.message, and no text."""
    err = ServerError("HTTP 503 from server", status_code=503)
    outcome = Outcome(id=5, status=Status.FAILED, error=err, attempts=3, shard=0, latency_s=1.0)
    record = outcome_to_json(outcome, line=5)
    assert record["status"] == "failed"
    assert record["line"] == 5
    assert record["text"] is None
    assert record["attempts"] == 3
    assert record["error"] == {"cause": "server_error", "message": "HTTP 503 from server"}


def test_outcome_to_json_invalid_input_message_names_line() -> None:
    """An invalid-input outcome's message is the InputError text, file and line included."""
    err = InputError("invalid JSON: x", source="in.jsonl", line=9)
    outcome = Outcome(id=9, status=Status.FAILED, error=err)
    record = outcome_to_json(outcome)
    assert record["error"] == {"cause": "invalid_input", "message": "in.jsonl:9: invalid JSON: x"}


def test_outcome_to_json_cancelled_cause() -> None:
    """A cancelled outcome maps to cause cancelled (the CLI does not write these)."""
    outcome = Outcome(id="c", status=Status.CANCELLED, error=ItemCancelled())
    assert outcome_to_json(outcome)["error"]["cause"] == Cause.CANCELLED.value


def test_writer_flushes_every_line(tmp_path: Path) -> None:
    """Each written line is on disk (readable by another reader) before close."""
    path = tmp_path / "out.jsonl"
    writer = OutputWriter(path, fsync_interval=3600)
    writer.write({"id": "a", "status": "ok"})
    assert path.read_text() == '{"id":"a","status":"ok"}\n'
    writer.write({"id": "b", "text": "é"})
    assert path.read_text().splitlines()[1] == '{"id":"b","text":"é"}'
    writer.close()
    writer.close()
    assert writer.closed
    assert "2 lines written" in repr(writer)


def test_writer_survives_lone_surrogates(tmp_path: Path) -> None:
    """Text with a lone surrogate (from a "\\ud800" escape) is written as valid, escaped JSON."""
    path = tmp_path / "out.jsonl"
    with OutputWriter(path) as writer:
        writer.write({"id": "s", "text": "a\ud800b"})
    assert json.loads(path.read_text())["text"] == "a\ud800b"


def test_writer_fsyncs_at_intervals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """fsync runs when the interval has passed, on sync() and at close, not per line."""
    now = [0.0]
    synced: list[int] = []
    monkeypatch.setattr("shardline._jsonl_output.os.fsync", lambda fd: synced.append(fd))
    writer = OutputWriter(tmp_path / "out.jsonl", fsync_interval=1.0, clock=lambda: now[0])
    writer.write({"n": 1})
    writer.write({"n": 2})
    assert synced == []
    now[0] = 1.5
    writer.write({"n": 3})
    assert len(synced) == 1
    writer.sync()  # nothing new: no fsync
    assert len(synced) == 1
    writer.write({"n": 4})
    writer.close()
    assert len(synced) == 2


def test_writer_without_interval_fsyncs_only_on_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fsync_interval=None never fsyncs in write(); fsync_written() does, once per batch."""
    synced: list[int] = []
    monkeypatch.setattr("shardline._jsonl_output.os.fsync", lambda fd: synced.append(fd))
    writer = OutputWriter(tmp_path / "out.jsonl", fsync_interval=None)
    writer.write({"n": 1})
    writer.write({"n": 2})
    assert synced == []
    assert writer.dirty
    writer.fsync_written()
    writer.fsync_written()
    assert len(synced) == 1
    assert not writer.dirty
    writer.close()
    assert len(synced) == 1  # nothing new to sync at close


def test_writer_appends_or_truncates(tmp_path: Path) -> None:
    """By default the writer appends; truncate=True starts an empty file."""
    path = tmp_path / "out.jsonl"
    path.write_text('{"old":1}\n')
    with OutputWriter(path) as w:
        w.write({"new": 1})
    assert path.read_text() == '{"old":1}\n{"new":1}\n'
    with OutputWriter(path, truncate=True) as w:
        w.write({"new": 2})
    assert path.read_text() == '{"new":2}\n'


def test_repair_torn_tail(tmp_path: Path) -> None:
    """A partial last line is truncated away; a clean file is untouched."""
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"id":1}\n{"id":2}\n{"id":3,"te')
    assert repair_torn_tail(path) == len(b'{"id":3,"te')
    assert path.read_bytes() == b'{"id":1}\n{"id":2}\n'
    assert repair_torn_tail(path) == 0
    path.write_bytes(b'{"id":1')
    assert repair_torn_tail(path) == 7
    assert path.read_bytes() == b""
    assert repair_torn_tail(path) == 0
    assert repair_torn_tail(tmp_path / "missing.jsonl") == 0
