"""``shardline run`` as a user runs it: a separate process against the fake server in another.

These start real processes (bounded: every wait has a timeout) and are marked
``slow``; they still run in CI. ``kill -9`` and Ctrl-C are sent for real.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import read_jsonl, write_input
from shardline._batch import OUTCOME_BUFFER
from shardline.testing import FakeServerProcess, TimingModel, fake_server_process

pytestmark = pytest.mark.slow

#: A fake model slow enough that a run is still going when it is killed.
SLOW_MODEL = {"timing": TimingModel(ttft=0.05, itl=0.02, tokens_per_event=2)}
SHARDS, CONCURRENCY = 2, 8


def shardline(*args: str) -> list[str]:
    return [sys.executable, "-m", "shardline._cli", *args]


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SHARD_", "LLM_"))}
    out["LLM_RETRY_BACKOFF_S"] = "0.01"
    return out


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[FakeServerProcess]:
    """The fake server in a child process, with the test's options (``fake_server_process``)."""
    options: dict[str, Any] = getattr(request, "param", {})
    with fake_server_process(**options) as server:
        yield server


def read_events(path: Path) -> list[list[dict[str, object]]]:
    """The events file split into segments, one per run_start."""
    segments: list[list[dict[str, object]]] = []
    for line in path.read_text().splitlines():
        event = json.loads(line)
        if event["kind"] == "run_start":
            segments.append([])
        segments[-1].append(event)
    return segments


def wait_for_lines(path: Path, n: int, proc: subprocess.Popen[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") >= n:
            return
        assert proc.poll() is None, "the run ended before it could be interrupted"
        time.sleep(0.02)
    raise AssertionError(f"{path} did not reach {n} lines in {timeout} s")


RUN_OPTS = [
    "--shards",
    str(SHARDS),
    "--concurrency",
    str(CONCURRENCY),
    "--ttft-timeout",
    "2",
    "--stall-timeout",
    "0.5",
    "--attempt-timeout",
    "10",
]


@pytest.mark.parametrize(
    "server",
    [{"faults": "rate_limit=0.05:retry_after=0.1,http_503=0.05,reset=0.03,drip=0.02"}],
    indirect=True,
)
def test_subprocess_run_with_faults(server: FakeServerProcess, tmp_path: Path) -> None:
    """A real process against a faulty server: exit 0, each id once, report, plain progress."""
    inp = write_input(tmp_path / "in.jsonl", 100, prefix="item-", max_tokens=12)
    proc = subprocess.run(
        shardline("run", str(inp), "--base-url", server.base_url, *RUN_OPTS),
        capture_output=True,
        text=True,
        timeout=60,
        env={**env(), "OPENAI_API_KEY": "sk-test-SECRET"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "shardline: 100/100 done (100%)" in proc.stderr  # final plain progress line
    records = read_jsonl(tmp_path / "in.out.jsonl")
    assert sorted(r["id"] for r in records) == sorted(f"item-{i}" for i in range(100))
    assert {r["status"] for r in records} == {"ok"}
    assert "sk-test-SECRET" not in proc.stdout + proc.stderr
    stats = server.statistics()
    assert stats.max_in_flight <= SHARDS * CONCURRENCY
    assert stats.requests_by_endpoint["chat.completions"] > 100  # faults were retried
    assert "sk-test-SECRET" not in (tmp_path / "in.events.jsonl").read_text()


def test_subprocess_missing_input(tmp_path: Path) -> None:
    """A missing input exits 2 with one line naming the file and no traceback."""
    proc = subprocess.run(
        shardline("run", str(tmp_path / "missing.jsonl"), "--base-url", "http://127.0.0.1:9/v1"),
        capture_output=True,
        text=True,
        timeout=30,
        env=env(),
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"shardline run: error: cannot read input file {tmp_path / 'missing.jsonl'}: "
        "No such file or directory"
    )


@pytest.mark.parametrize("server", [SLOW_MODEL], indirect=True)
def test_kill_9_then_resume_loses_and_duplicates_nothing(
    server: FakeServerProcess, tmp_path: Path
) -> None:
    """kill -9 mid-run, then --resume: each id exactly once, ok; only in-flight work resent."""
    n = 160
    inp = write_input(tmp_path / "in.jsonl", n, prefix="item-", max_tokens=12)
    out = tmp_path / "in.out.jsonl"
    events = tmp_path / "in.events.jsonl"
    proc = subprocess.Popen(
        shardline("run", str(inp), "--base-url", server.base_url, "--no-progress", *RUN_OPTS),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env(),
    )
    try:
        wait_for_lines(out, 40, proc, timeout=20)
    finally:
        proc.kill()  # SIGKILL: no cleanup at all
        proc.wait(timeout=10)
    written_before = {json.loads(x)["id"] for x in out.read_text().splitlines() if x.endswith("}")}
    assert 40 <= len(written_before) < n
    report = tmp_path / "report.json"
    resumed = subprocess.run(
        shardline(
            "run",
            str(inp),
            "--base-url",
            server.base_url,
            "--no-progress",
            "--resume",
            "--report-json",
            str(report),
            *RUN_OPTS,
        ),
        capture_output=True,
        text=True,
        timeout=60,
        env=env(),
    )
    assert resumed.returncode == 0, resumed.stderr
    # The report covers both segments: every item once, and its digest is the events
    # file's. An item_end is written only after the item's output line, so the only
    # possible gap is an item whose line was written in the microseconds before its
    # item_end when the kill came: it is then "unfinished" in the report, never counted
    # twice.
    data = json.loads(report.read_text())
    assert data["items"] == data["succeeded"]
    assert data["items"] + data["unfinished"] == n
    assert data["unfinished"] <= 1
    assert data["events_sha256"] == hashlib.sha256(events.read_bytes()).hexdigest()
    lines = out.read_text().splitlines()
    ids = [json.loads(line)["id"] for line in lines]
    assert len(ids) == n
    assert set(ids) == {f"item-{i}" for i in range(n)}
    assert all(json.loads(line)["status"] == "ok" for line in lines)
    first, second = read_events(events)
    started_first = {e["item_id"] for e in first if e["kind"] == "attempt_start"}
    sent_again = {e["item_id"] for e in second if e["kind"] == "attempt_start"} & started_first
    # Nothing already written is sent again; what is sent again is what was in flight
    # (or finished but still in the small outcome buffer) when the process died.
    assert not (sent_again & written_before)
    assert len(sent_again) <= SHARDS * CONCURRENCY + OUTCOME_BUFFER + 1
    # The server's own count agrees: every item once, plus what was in flight at the kill.
    # The two counts may differ by what was in flight: an attempt the killed process had
    # started but not sent never reached the server, and events emitted after an
    # item_end wait (OutputFirstSink) until that item's output line is written, so the
    # kill can drop the start of an attempt the server did receive.
    received = server.statistics().requests_by_endpoint["chat.completions"]
    in_flight = SHARDS * CONCURRENCY
    assert n <= received <= n + in_flight
    assert n <= data["attempts"] <= n + in_flight
    assert abs(received - data["attempts"]) <= in_flight
    assert "Traceback" not in resumed.stderr


@pytest.mark.parametrize("server", [SLOW_MODEL], indirect=True)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_drains_flushes_and_exits_130(
    server: FakeServerProcess, tmp_path: Path, signum: signal.Signals
) -> None:
    """SIGINT or SIGTERM mid-run: exit 130, no traceback, whole lines, report; resume finishes."""
    n = 160
    inp = write_input(tmp_path / "in.jsonl", n, prefix="item-", max_tokens=12)
    out = tmp_path / "in.out.jsonl"
    report = tmp_path / "report.json"
    proc = subprocess.Popen(
        shardline(
            "run",
            str(inp),
            "--base-url",
            server.base_url,
            "--report-json",
            str(report),
            "--drain-grace",
            "5",
            *RUN_OPTS,
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
    )
    try:
        wait_for_lines(out, 30, proc, timeout=20)
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "interrupted: draining" in stderr
    text = out.read_text()
    assert text.endswith("\n")
    records = [json.loads(line) for line in text.splitlines()]
    assert {r["status"] for r in records} == {"ok"}  # cancelled items are not written
    assert len(records) < n
    data = json.loads(report.read_text())
    assert data["end_reason"] == "cancelled"
    assert data["succeeded"] == len(records)
    assert str(len(records)) in stdout
    resumed = subprocess.run(
        shardline(
            "run", str(inp), "--base-url", server.base_url, "--no-progress", "--resume", *RUN_OPTS
        ),
        capture_output=True,
        text=True,
        timeout=60,
        env=env(),
    )
    assert resumed.returncode == 0, resumed.stderr
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert sorted(ids) == sorted(f"item-{i}" for i in range(n))
