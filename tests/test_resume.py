"""``--resume`` file handling: compaction of an existing output, torn lines, skip-lists."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from shardline._jsonl import read_input
from shardline._jsonl_output import OutputWriter, prepare_resume

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def ok(item_id: object) -> str:
    return json.dumps({"id": item_id, "status": "ok", "text": "t"})


def failed(item_id: object) -> str:
    return json.dumps(
        {"id": item_id, "status": "failed", "error": {"cause": "server_error", "message": "m"}}
    )


def test_prepare_resume_missing_file_is_empty(tmp_path: Path) -> None:
    """Resuming with no output file yet starts empty and creates nothing."""
    state = prepare_resume(tmp_path / "out.jsonl")
    assert len(state.done) == 0
    assert not (tmp_path / "out.jsonl").exists()


def test_prepare_resume_keeps_only_ok_lines(tmp_path: Path) -> None:
    """Ok lines are kept byte for byte; failed lines are dropped so they run again."""
    path = tmp_path / "out.jsonl"
    path.write_text("\n".join([ok("a"), failed("b"), ok(3), failed("c")]) + "\n")
    state = prepare_resume(path)
    assert "a" in state.done
    assert 3 in state.done
    assert "b" not in state.done
    assert (state.kept, state.dropped_failed, state.dropped_torn) == (2, 2, 0)
    assert path.read_text() == ok("a") + "\n" + ok(3) + "\n"


def test_prepare_resume_drops_torn_last_line(tmp_path: Path) -> None:
    """A partial last line (kill -9 mid-write) is dropped, and its id is not done."""
    path = tmp_path / "out.jsonl"
    path.write_text(ok("a") + "\n" + ok("b")[:10])
    state = prepare_resume(path)
    assert state.dropped_torn == 1
    assert "b" not in state.done
    assert path.read_text() == ok("a") + "\n"


def test_prepare_resume_drops_garbage_and_duplicate_ok(tmp_path: Path) -> None:
    """Unparsable lines and a second ok line for the same id are dropped."""
    path = tmp_path / "out.jsonl"
    path.write_text("\n".join([ok("a"), "garbage", ok("a"), "[]"]) + "\n")
    state = prepare_resume(path)
    assert (state.kept, state.dropped_duplicate, state.dropped_torn) == (1, 1, 2)
    assert path.read_text() == ok("a") + "\n"


def test_prepare_resume_leaves_no_temp_files(tmp_path: Path) -> None:
    """Compaction renames its temporary file into place: nothing else is left behind."""
    path = tmp_path / "out.jsonl"
    path.write_text(ok("a") + "\n")
    prepare_resume(path)
    assert sorted(os.listdir(tmp_path)) == ["out.jsonl"]


def test_prepare_resume_unreadable_raises(tmp_path: Path) -> None:
    """An output path that is a directory raises OSError (the CLI turns it into exit 2)."""
    (tmp_path / "out.jsonl").mkdir()
    with pytest.raises(OSError):
        prepare_resume(tmp_path / "out.jsonl")
    assert sorted(os.listdir(tmp_path)) == ["out.jsonl"]


def test_resume_cycle_ends_with_each_id_once(tmp_path: Path) -> None:
    """Torn file and failed lines, resumed: ok ids skipped, the rest rerun, each id once."""
    inp = tmp_path / "in.jsonl"
    inp.write_text("\n".join(json.dumps({"id": f"q{i}", **CHAT}) for i in range(6)) + "\n")
    out = tmp_path / "out.jsonl"
    # First run: q0, q1 ok, q2 failed, q3 torn mid-write by kill -9.
    out.write_text(ok("q0") + "\n" + ok("q1") + "\n" + failed("q2") + "\n" + ok("q3")[:7])
    state = prepare_resume(out)
    skipped: list[object] = []
    todo = [e.item_id for e in read_input(inp, skip=state.done, on_skip=skipped.append)]
    assert skipped == ["q0", "q1"]
    assert todo == ["q2", "q3", "q4", "q5"]
    with OutputWriter(out) as writer:
        for item_id in todo:
            writer.write({"id": item_id, "status": "ok", "text": "t"})
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert sorted(ids) == [f"q{i}" for i in range(6)]
    assert len(ids) == len(set(ids))
