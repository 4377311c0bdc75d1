"""``shardline report``: text and JSON output, digest, and clean errors with exit 2."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from shardline._cli_report import register, run_report
from shardline._events import (
    AttemptEnd,
    AttemptStart,
    Event,
    ItemAdmitted,
    ItemEnd,
    RetryScheduled,
    RunEnd,
    RunStart,
    encode_event,
)
from shardline._sinks import JsonlEventSink
from shardline.report import RunReport, compute_report

START = 1_764_403_200.0

EVENTS: list[Event] = [
    RunStart(t=0.0, run_id="cli-run", started_at=START, shard_count=2, config={"x": 1}),
    ItemAdmitted(t=0.0, item_id="a", shard=0),
    AttemptStart(t=0.0, item_id="a", shard=0, attempt=1),
    AttemptEnd(t=0.4, item_id="a", shard=0, attempt=1, outcome="failed", cause="rate_limited"),
    RetryScheduled(t=0.4, item_id="a", shard=0, attempt=2, delay_s=0.2, cause="rate_limited"),
    AttemptStart(t=0.6, item_id="a", shard=0, attempt=2),
    AttemptEnd(
        t=1.5,
        item_id="a",
        shard=0,
        attempt=2,
        outcome="ok",
        prompt_tokens=12,
        completion_tokens=34,
        ttft_s=0.3,
    ),
    ItemEnd(
        t=1.5,
        item_id="a",
        shard=0,
        status="ok",
        attempts=2,
        latency_s=1.5,
        prompt_tokens=12,
        completion_tokens=34,
        ttft_s=0.3,
    ),
    RunEnd(t=2.0, reason="completed"),
]


@pytest.fixture
def events_file(tmp_path: Path) -> Path:
    path = tmp_path / "run.events.jsonl"
    with JsonlEventSink(path) as sink:
        for e in EVENTS:
            sink.emit(e)
    return path


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    parser = argparse.ArgumentParser(prog="shardline")
    register(parser.add_subparsers())
    args = parser.parse_args(["report", *argv])
    status = run_report(args.events, as_json=args.json, stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


def test_json_output_is_the_report_with_the_file_digest(events_file: Path) -> None:
    """--json prints RunReport.to_json() of the file, events_sha256 = sha256sum of the file."""
    status, out, err = _run(str(events_file), "--json")
    assert (status, err) == (0, "")
    obj = json.loads(out)
    digest = hashlib.sha256(events_file.read_bytes()).hexdigest()
    assert obj["events_sha256"] == digest
    live = compute_report(EVENTS, events_sha256=digest)
    assert RunReport.from_json(obj) == live
    assert (obj["retry_causes"], obj["tokens_out_total"]) == ({"rate_limited": 1}, 34)


def test_text_output_is_readable(events_file: Path) -> None:
    """Without --json the readable report is printed, with the digest and run id."""
    status, out, _ = _run(str(events_file))
    assert status == 0
    assert "cli-run" in out
    assert hashlib.sha256(events_file.read_bytes()).hexdigest() in out
    assert "rate_limited" in out


def test_missing_file_exits_2_with_a_message(tmp_path: Path) -> None:
    """A missing file is exit 2 and one line naming it."""
    missing = tmp_path / "nope.jsonl"
    status, out, err = _run(str(missing))
    assert (status, out) == (2, "")
    assert err == f"shardline report: cannot read {missing}: No such file or directory\n"


def test_bad_line_exits_2_naming_file_and_line(events_file: Path) -> None:
    """A malformed line is exit 2 with file:line and the problem, no traceback."""
    lines = events_file.read_bytes().splitlines(keepends=True)
    lines.insert(3, b'{"v":1,"kind":"attempt_start","t":1}\n')
    events_file.write_bytes(b"".join(lines))
    status, _, err = _run(str(events_file), "--json")
    assert status == 2
    assert err == (
        f"shardline report: {events_file}:4: attempt_start event: missing field 'item_id'\n"
    )


def test_truncated_last_line_is_reported(events_file: Path) -> None:
    """A torn last line (crash mid-write) is named, not silently dropped."""
    with events_file.open("ab") as f:
        f.write(b'{"v":1,"kind":"run_e')
    status, _, err = _run(str(events_file))
    assert status == 2
    assert err.startswith(f"shardline report: {events_file}:{len(EVENTS) + 1}: invalid JSON")


def test_events_before_run_start_and_empty_file(tmp_path: Path) -> None:
    """A file without run_start first, or with no events, is exit 2 with a message."""
    path = tmp_path / "e.jsonl"
    path.write_bytes(encode_event(ItemAdmitted(t=0.0, item_id=1, shard=0)))
    status, _, err = _run(str(path))
    assert status == 2
    assert err == (
        f"shardline report: {path}:1: the first event must be run_start, got item_admitted\n"
    )
    path.write_bytes(b"")
    status, _, err = _run(str(path))
    assert status == 2
    assert err.startswith(f"shardline report: {path}: no events")


def test_directory_exits_2(tmp_path: Path) -> None:
    """A directory instead of a file is exit 2, not a traceback."""
    status, _, err = _run(str(tmp_path))
    assert status == 2
    assert err.startswith(f"shardline report: cannot read {tmp_path}: ")


def test_console_script_entry(events_file: Path) -> None:
    """`python -m shardline._cli report --json` works end to end in a subprocess."""
    proc = subprocess.run(
        [sys.executable, "-m", "shardline._cli", "report", str(events_file), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["run_id"] == "cli-run"
    bad = subprocess.run(
        [sys.executable, "-m", "shardline._cli", "report", str(events_file) + ".missing"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr
