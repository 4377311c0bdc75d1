"""A run pointed at the wrong place stops early; ``--check`` and ``shardline check`` probe first.

The watch itself is tested on synthetic events; whole runs go through
``run_batch`` with an ``httpx.MockTransport`` (401, 404, refused connections
on every request), or through ``shardline run`` against a closed port on
127.0.0.1. The probe is tested against the fake server.
"""

from __future__ import annotations

import io
import socket
from pathlib import Path

import httpx
import pytest

from helpers import mock_transports, read_jsonl, write_input
from shardline._batch import run_batch
from shardline._batch_io import BatchSettings
from shardline._cli import main
from shardline._config import Deadlines, Endpoint, PipelineConfig
from shardline._endpoint_check import (
    DeadEndpoint,
    FirstAttemptsWatch,
    check_endpoint,
    public_url,
)
from shardline._events import AttemptEnd, Event, ItemAdmitted
from shardline._exit import ExitStatus
from shardline._models import Outcome
from shardline._sinks import MemoryEventSink
from shardline.testing import FakeServer

SECRET = "sk-test-SECRET-fail-fast"


@pytest.fixture(autouse=True)
def _quick_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No stray endpoint settings from the developer's shell; short backoff."""
    for name in ("OPENAI_BASE_URL", "OPENAI_MODEL", "SHARD_COUNT", "LLM_CONCURRENCY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("LLM_RETRY_BACKOFF_S", "0.01")


@pytest.fixture
def closed_url() -> str:
    """The base URL of a port on 127.0.0.1 that nothing listens on (bound, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


# -- the watch, on synthetic events -----------------------------------------------------------


def admitted(item: str) -> ItemAdmitted:
    return ItemAdmitted(t=0.0, item_id=item, shard=0)


def ended(
    item: str,
    outcome: str = "failed",
    cause: str | None = "connect_error",
    status: int | None = None,
) -> AttemptEnd:
    return AttemptEnd(
        t=0.0,
        item_id=item,
        shard=0,
        attempt=1,
        outcome=outcome,
        cause=cause,
        status_code=status,
        message="could not connect: [Errno 111] Connection refused",
    )


def watch(window: int = 4) -> tuple[FirstAttemptsWatch, list[DeadEndpoint], MemoryEventSink]:
    verdicts: list[DeadEndpoint] = []
    sink = MemoryEventSink()
    w = FirstAttemptsWatch(
        sink, base_url="http://user:pw@127.0.0.1:9/v1", on_dead=verdicts.append, window=window
    )
    return w, verdicts, sink


def feed(w: FirstAttemptsWatch, events: list[Event]) -> None:
    for event in events:
        w.emit(event)


def test_watch_stops_after_window_of_same_connect_errors() -> None:
    """Four refused connections in a row (window 4): one verdict, naming the cause."""
    w, verdicts, sink = watch()
    events: list[Event] = [admitted(f"q{i}") for i in range(10)]
    events += [ended(f"q{i}") for i in range(6)]
    feed(w, events)
    assert len(sink.events) == len(events)  # every event passes through
    (verdict,) = verdicts
    assert verdict == DeadEndpoint(
        base_url="http://127.0.0.1:9/v1",
        cause="connect_error",
        status_code=None,
        attempts=4,
        detail="could not connect: [Errno 111] Connection refused",
    )
    assert verdict.describe().startswith(
        "the first 4 attempts all failed with connect_error (could not connect) at "
        "http://127.0.0.1:9/v1; nothing was sent successfully. Check --base-url"
    )


@pytest.mark.parametrize(
    "spoiler",
    [
        ended("q2", outcome="ok", cause=None, status=200),
        ended("q2", cause="server_error", status=500),
        ended("q2", cause="client_error", status=400),
        ended("q2", cause="client_error", status=401),
    ],
    ids=["one-ok", "a-5xx", "a-400", "another-cause"],
)
def test_watch_stays_silent_unless_every_end_fails_the_same_dead_way(spoiler: AttemptEnd) -> None:
    """One success, a transient or per-item failure, or a second cause: never a verdict."""
    w, verdicts, _ = watch()
    feed(w, [admitted(f"q{i}") for i in range(10)])
    feed(w, [ended("q0"), ended("q1"), spoiler])
    feed(w, [ended(f"q{i}") for i in range(3, 10)])
    w.input_done()
    assert verdicts == []
    assert w.decided


def test_watch_ignores_cancelled_attempts() -> None:
    """Attempts cancelled by a drain say nothing about the endpoint."""
    w, verdicts, _ = watch()
    feed(w, [admitted(f"q{i}") for i in range(4)])
    feed(w, [ended(f"q{i}", outcome="cancelled", cause="cancelled") for i in range(4)])
    assert verdicts == []
    assert not w.decided


def test_watch_decides_a_small_run_once_every_item_had_an_attempt() -> None:
    """Two items, both refused: decided when the input is done, not after `window` ends."""
    w, verdicts, _ = watch(window=8)
    feed(w, [admitted("a"), admitted("b"), ended("a"), ended("b")])
    assert verdicts == []  # more items may still come
    w.input_done()
    assert [v.attempts for v in verdicts] == [2]


def test_watch_rejects_an_empty_window() -> None:
    """A window of 0 attempts is a ValueError naming it."""
    with pytest.raises(ValueError, match=r"^window must be >= 1, got 0$"):
        FirstAttemptsWatch(MemoryEventSink(), base_url="x", on_dead=print, window=0)


def test_public_url_drops_credentials() -> None:
    """A user:password part of the base URL never reaches a message."""
    assert public_url("http://u:p@host:1/v1") == "http://host:1/v1"
    assert public_url("http://host:1/v1") == "http://host:1/v1"


# -- whole runs through run_batch, on a mock transport ----------------------------------------


def settings_for(tmp_path: Path, n: int, **config: object) -> BatchSettings:
    source = write_input(tmp_path / "in.jsonl", n, max_tokens=None)
    return BatchSettings(
        input=source,
        output=tmp_path / "in.out.jsonl",
        events=tmp_path / "in.events.jsonl",
        report_json=None,
        config=PipelineConfig(
            endpoint=Endpoint(base_url="http://mock.invalid/v1", model="m", api_key=SECRET),
            shard_count=4,
            concurrency=16,
            deadlines=Deadlines(connect=5.0, ttft=5.0, stall=5.0, attempt=10.0),
            **config,  # type: ignore[arg-type]
        ),
        progress=False,
    )


def refused(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("[Errno 111] Connection refused", request=request)


def unauthorized(_request: httpx.Request) -> httpx.Response:
    body = {"error": {"message": f"Incorrect API key provided: {SECRET}", "type": "auth"}}
    return httpx.Response(401, json=body)


def fine(_request: httpx.Request) -> httpx.Response:
    body = {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "fine"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }  # fmt: skip
    return httpx.Response(200, json=body)


def attempts_in(events: Path) -> int:
    return sum(1 for e in read_jsonl(events) if e["kind"] == "attempt_start")


def test_refused_everywhere_stops_at_once_and_writes_no_line(tmp_path: Path) -> None:
    """2,000 items, 64 in flight, nothing listening: exit 2 after a handful of attempts."""
    settings = settings_for(tmp_path, 2000)
    out, err = io.StringIO(), io.StringIO()
    status = run_batch(settings, stdout=out, stderr=err, transport=mock_transports(refused))
    assert status is ExitStatus.USAGE, err.getvalue()
    assert attempts_in(settings.events) < 100
    assert settings.output.read_text() == ""  # unfinished items are not failed lines
    last = err.getvalue().splitlines()[-1]
    assert last.startswith(
        "shardline run: stopped: the first 8 attempts all failed with connect_error "
        "(could not connect) at http://mock.invalid/v1; nothing was sent successfully."
    )
    assert SECRET not in out.getvalue() + err.getvalue()
    run_end = read_jsonl(settings.events)[-1]
    assert (run_end["kind"], run_end["reason"]) == ("run_end", "cancelled")


def test_401_stops_and_resume_runs_every_item_once(tmp_path: Path) -> None:
    """Every request 401: exit 2 naming the cause; a resume with a working key finishes all."""
    settings = settings_for(tmp_path, 300)
    err = io.StringIO()
    status = run_batch(
        settings, stdout=io.StringIO(), stderr=err, transport=mock_transports(unauthorized)
    )
    assert status is ExitStatus.USAGE
    assert "failed with client_error 401 (unauthorized) at http://mock.invalid/v1" in err.getvalue()
    assert "Check OPENAI_API_KEY." in err.getvalue()
    assert SECRET not in err.getvalue()
    lines = read_jsonl(settings.output)
    assert len(lines) < 100  # only the items whose (unretried) 401 ended them
    assert {line["status"] for line in lines} <= {"failed"}

    resumed = BatchSettings(
        input=settings.input,
        output=settings.output,
        events=settings.events,
        report_json=None,
        config=PipelineConfig(
            endpoint=Endpoint(base_url="http://mock.invalid/v1", model="m", api_key=SECRET),
            deadlines=settings.config.deadlines,
        ),
        resume=True,
        progress=False,
    )
    status = run_batch(resumed, stdout=io.StringIO(), stderr=err, transport=mock_transports(fine))
    assert status is ExitStatus.OK, err.getvalue()
    final = read_jsonl(settings.output)
    assert sorted(str(line["id"]) for line in final) == sorted(f"q{i}" for i in range(300))
    assert {line["status"] for line in final} == {"ok"}


def test_404_names_the_path_and_the_model(tmp_path: Path) -> None:
    """A wrong path (every request 404) stops with a hint at --base-url and --model."""
    settings = settings_for(tmp_path, 50)
    err = io.StringIO()

    def not_found(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"error": {"message": "unknown path"}})

    status = run_batch(
        settings, stdout=io.StringIO(), stderr=err, transport=mock_transports(not_found)
    )
    assert status is ExitStatus.USAGE
    assert "client_error 404 (not found)" in err.getvalue()
    assert "--model" in err.getvalue().splitlines()[-1]


def test_no_fail_fast_runs_every_item(tmp_path: Path) -> None:
    """With fail_fast=False a dead endpoint costs every item its attempts: exit 1."""
    settings = settings_for(tmp_path, 20)
    status = run_batch(
        settings,
        stdout=io.StringIO(),
        stderr=io.StringIO(),
        transport=mock_transports(unauthorized),
        fail_fast=False,
    )
    assert status is ExitStatus.FAILED_ITEMS
    assert len(read_jsonl(settings.output)) == 20


# -- the command line, against a closed port --------------------------------------------------


def test_run_against_a_closed_port_exits_2_quickly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], closed_url: str
) -> None:
    """`shardline run` with nothing listening: exit 2, 8 attempts, no output line."""
    inp = write_input(tmp_path / "in.jsonl", 500, max_tokens=None)
    # One request at a time: the stop then never lands on a connect in progress.
    args = ["run", str(inp), "--base-url", closed_url, "--model", "m", "--no-progress"]
    args += ["--shards", "1", "--concurrency", "1", "--max-attempts", "20"]
    assert main(args) == 2
    err = capsys.readouterr().err
    stopped = "stopped: the first 8 attempts all failed with connect_error (could not connect)"
    assert f"{stopped} at {closed_url}" in err
    assert SECRET not in err
    assert attempts_in(tmp_path / "in.events.jsonl") == 8
    assert (tmp_path / "in.out.jsonl").read_text() == ""


def test_run_at_full_concurrency_against_a_closed_port_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], closed_url: str
) -> None:
    """4 shards x 16 in flight, nothing listening: the run ends, exit 2, no output line."""
    inp = write_input(tmp_path / "in.jsonl", 2000, max_tokens=None)
    args = ["run", str(inp), "--base-url", closed_url, "--model", "m", "--no-progress"]
    status = main([*args, "--shards", "4", "--concurrency", "16"])
    err = capsys.readouterr().err
    assert "stopped: the first 8 attempts all failed with connect_error" in err
    assert (tmp_path / "in.out.jsonl").read_text() == ""
    assert attempts_in(tmp_path / "in.events.jsonl") < 200
    assert status == 2, err


def test_run_check_against_a_closed_port_touches_no_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], closed_url: str
) -> None:
    """`run --check` fails before anything is opened: exit 2, one line naming the cause."""
    inp = write_input(tmp_path / "in.jsonl", 3, max_tokens=None)
    assert main(["run", str(inp), "--base-url", closed_url, "--model", "m", "--check"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"shardline run: error: check failed: {closed_url} (model m): ")
    assert "connect_error (could not connect)" in err[0]
    assert not (tmp_path / "in.out.jsonl").exists()
    assert not (tmp_path / "in.events.jsonl").exists()


def test_check_command_against_a_closed_port(
    capsys: pytest.CaptureFixture[str], closed_url: str
) -> None:
    """`shardline check` names the endpoint and the cause, exit 2."""
    assert main(["check", "--base-url", closed_url]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(
        f"shardline check: error: failed: {closed_url} (no model set): connect_error"
    )


def test_resume_with_overwrite_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--resume --overwrite: exit 2 naming both options, nothing touched."""
    inp = write_input(tmp_path / "in.jsonl", 1, max_tokens=None)
    args = ["run", str(inp), "--base-url", "http://127.0.0.1:9/v1", "--resume", "--overwrite"]
    assert main(args) == 2
    assert "--resume and --overwrite cannot be used together" in capsys.readouterr().err
    assert not (tmp_path / "in.out.jsonl").exists()


def test_settings_refuse_resume_with_overwrite(tmp_path: Path) -> None:
    """The library's settings record refuses the pair too."""
    with pytest.raises(ValueError, match="resume and overwrite exclude each other"):
        BatchSettings(
            input=tmp_path / "in.jsonl",
            output=tmp_path / "o.jsonl",
            events=tmp_path / "e.jsonl",
            report_json=None,
            config=PipelineConfig(),
            resume=True,
            overwrite=True,
        )


# -- the probe, against the fake server ------------------------------------------------------


async def test_check_endpoint_ok_against_the_fake_server(fake_server: FakeServer) -> None:
    """One request, one attempt, ok with its latency."""
    config = PipelineConfig(endpoint=Endpoint(base_url=fake_server.base_url, model="m"))
    result = await check_endpoint(config)
    assert result.ok
    assert result.latency_s > 0
    assert result.describe().startswith(f"ok: {fake_server.base_url} (model m) answered in ")
    assert fake_server.statistics().requests == 1


@pytest.mark.fake_server(faults="http_500=1")
async def test_check_endpoint_reports_the_cause_without_retrying(fake_server: FakeServer) -> None:
    """A 500 is one failed attempt (no retry), reported with its cause."""
    config = PipelineConfig(endpoint=Endpoint(base_url=fake_server.base_url, model="m"))
    result = await check_endpoint(config)
    assert not result.ok
    assert (result.cause, result.status_code) == ("server_error", 500)
    assert result.describe().startswith(
        f"failed: {fake_server.base_url} (model m): server_error 500"
    )
    assert fake_server.statistics().requests == 1


def test_a_lost_outcome_ends_the_run_loudly_instead_of_hanging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A defect that drops one item's outcome: every other line is written, exit 70, no hang.

    Nothing cancels this run: the runner notices the idle pipeline within a
    second and stops waiting for the outcome that will never come.
    """
    import shardline._shard as shard_module

    deliver = shard_module.deliver

    async def drop_q3(channel: object, outcome: Outcome) -> None:
        if outcome.id != "q3":
            await deliver(channel, outcome)  # type: ignore[arg-type]
        # q3: neither sent nor closed, as when a defect ends an item's task early

    monkeypatch.setattr(shard_module, "deliver", drop_q3)
    settings = settings_for(tmp_path, 20)
    err = io.StringIO()
    status = run_batch(settings, stdout=io.StringIO(), stderr=err, transport=mock_transports(fine))
    assert status is ExitStatus.INTERNAL
    assert "internal error: 1 submitted items got no outcome" in err.getvalue()
    ids = sorted(str(line["id"]) for line in read_jsonl(settings.output))
    assert ids == sorted(f"q{i}" for i in range(20) if i != 3)


def test_a_defect_in_one_item_is_written_reported_and_exits_70(tmp_path: Path) -> None:
    """A bug hitting one item: every other item ends ok and is written; exit 70 at the end."""
    settings = settings_for(tmp_path, 120)

    def buggy(request: httpx.Request) -> httpx.Response:
        if request.headers["x-shardline-item-id"] == "q17":
            raise RuntimeError("a defect below the attempt")
        return fine(request)

    err = io.StringIO()
    status = run_batch(settings, stdout=io.StringIO(), stderr=err, transport=mock_transports(buggy))
    assert status is ExitStatus.INTERNAL, err.getvalue()
    lines = {str(line["id"]): line for line in read_jsonl(settings.output)}
    assert len(lines) == 120
    assert lines["q17"]["status"] == "failed"
    assert lines["q17"]["error"]["cause"] == "internal_error"  # type: ignore[index]
    assert sum(1 for line in lines.values() if line["status"] == "ok") == 119
    assert "a defect in shardline failed 1 items" in err.getvalue()
    ends = [e for e in read_jsonl(settings.events) if e["kind"] == "item_end"]
    (bad,) = [e for e in ends if e["item_id"] == "q17"]
    assert "RuntimeError: a defect below the attempt" in str(bad["message"])
