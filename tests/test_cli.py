"""``shardline run`` and ``shardline demo`` in-process, via ``shardline._cli.main``.

The fake server runs in another process (`shardline.testing.fake_server_process`),
because ``main`` owns its own ``trio.run``.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import read_jsonl, write_input
from shardline._batch_io import OutputFirstSink, default_paths
from shardline._cli import main
from shardline._events import ItemAdmitted, ItemEnd, RunEnd
from shardline._sinks import MemoryEventSink
from shardline.testing import fake_server_process

SECRET = "sk-test-SECRET"

#: Fast, bounded deadlines and retries for runs against the local fake server.
FAST = [
    "--no-progress",
    "--shards",
    "2",
    "--concurrency",
    "8",
    "--ttft-timeout",
    "2",
    "--stall-timeout",
    "1",
    "--attempt-timeout",
    "10",
]


@pytest.fixture(scope="module")
def plain_server() -> Iterator[str]:
    """One fault-free fake server shared by the tests that need no faults."""
    with fake_server_process() as server:
        yield server.base_url


@pytest.fixture(autouse=True)
def _quick_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No stray endpoint settings from the developer's shell; short backoff."""
    for name in (
        "OPENAI_BASE_URL",
        "OPENAI_API_KEY",
        "OPENAI_MODEL",
        "OPENAI_API_VERSION",
        "SHARD_COUNT",
        "LLM_CONCURRENCY",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LLM_RETRY_BACKOFF_S", "0.01")


# -- usage and file errors: exit 2, nothing sent ---------------------------------------------


def test_output_first_sink_holds_item_end_until_written() -> None:
    """An item_end (and all after it) reaches the events only after the item's line is written."""
    memory = MemoryEventSink()
    gate = OutputFirstSink(memory)
    end_a = ItemEnd(t=1.0, item_id="a", shard=0, status="ok", attempts=1, latency_s=0.1)
    admitted_b = ItemAdmitted(t=1.1, item_id="b", shard=0)
    cancelled_c = ItemEnd(t=1.2, item_id="c", shard=0, status="cancelled", attempts=0, latency_s=0)
    gate.emit(ItemAdmitted(t=0.0, item_id="a", shard=0))
    gate.emit(end_a)
    gate.emit(admitted_b)
    gate.emit(cancelled_c)
    assert [e.t for e in memory.events] == [0.0]
    gate.written("a")
    assert memory.events[1:] == [end_a, admitted_b, cancelled_c]
    # Cancelled items are never written: their item_end passes straight through.
    gate.emit(ItemEnd(t=2.0, item_id="d", shard=0, status="cancelled", attempts=0, latency_s=0))
    assert len(memory.events) == 5
    # A failed run releases what is still held on close, in order.
    gate.emit(ItemEnd(t=3.0, item_id="e", shard=0, status="failed", attempts=1, latency_s=0))
    gate.emit(RunEnd(t=4.0, reason="error"))
    assert len(memory.events) == 5
    gate.close()
    assert [e.t for e in memory.events][-2:] == [3.0, 4.0]
    assert memory.closed


def test_default_paths() -> None:
    """Output and events default to INPUT.out.jsonl / INPUT.events.jsonl beside the input."""
    assert default_paths("data/p.jsonl") == (Path("data/p.out.jsonl"), Path("data/p.events.jsonl"))
    assert default_paths("p.txt") == (Path("p.txt.out.jsonl"), Path("p.txt.events.jsonl"))


def test_missing_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A missing input file exits 2 naming the file, and creates no output."""
    missing = tmp_path / "nope.jsonl"
    assert main(["run", str(missing), "--base-url", "http://127.0.0.1:9/v1"]) == 2
    err = capsys.readouterr().err
    assert f"cannot read input file {missing}: No such file or directory" in err
    assert "Traceback" not in err
    assert not (tmp_path / "nope.out.jsonl").exists()


def test_input_is_a_directory_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An unreadable input (a directory) exits 2 naming it."""
    assert main(["run", str(tmp_path), "--base-url", "http://127.0.0.1:9/v1"]) == 2
    assert f"cannot read input file {tmp_path}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shards", "0"], "invalid value for --shards (SHARD_COUNT): shard_count must be >= 1"),
        (["--concurrency", "0"], "--concurrency (LLM_CONCURRENCY): concurrency must be >= 1"),
        (["--ttft-timeout", "-1"], "--ttft-timeout: ttft must be > 0 seconds, got -1.0"),
        (["--stall-timeout", "0"], "--stall-timeout: stall must be > 0"),
        (["--attempt-timeout", "0"], "--attempt-timeout: attempt must be > 0"),
        (["--max-attempts", "0"], "--max-attempts: max_attempts must be >= 1"),
        (["--rpm", "-5"], "--rpm: rpm must be > 0"),
        (["--hedge-after", "0"], "--hedge-after: after must be > 0 seconds, got 0.0"),
        (["--hedge-budget", "2"], "--hedge-budget: budget must be <= 1, got 2.0"),
        (["--base-url", "ftp://x"], "--base-url (OPENAI_BASE_URL): base_url must start with"),
    ],
)
def test_invalid_option_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    """An invalid option value exits 2 with a message naming the option, before any I/O."""
    inp = write_input(tmp_path / "in.jsonl", 1)
    assert main(["run", str(inp), "--base-url", "http://127.0.0.1:9/v1", *args]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert not (tmp_path / "in.out.jsonl").exists()


def test_openai_without_key_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The default OpenAI endpoint without OPENAI_API_KEY is a usage error, before any I/O."""
    inp = write_input(tmp_path / "in.jsonl", 1)
    assert main(["run", str(inp)]) == 2
    assert "OPENAI_API_KEY is not set" in capsys.readouterr().err
    assert not (tmp_path / "in.out.jsonl").exists()


def test_invalid_environment_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad SHARD_COUNT in the environment exits 2 naming the variable."""
    monkeypatch.setenv("SHARD_COUNT", "many")
    inp = write_input(tmp_path / "in.jsonl", 1)
    assert main(["run", str(inp), "--base-url", "http://127.0.0.1:9/v1"]) == 2
    assert "environment variable SHARD_COUNT must be an integer, got 'many'" in (
        capsys.readouterr().err
    )


def test_unparsable_option_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A non-number where a number is expected is an argparse usage error (exit 2)."""
    inp = write_input(tmp_path / "in.jsonl", 1)
    with pytest.raises(SystemExit) as info:
        main(["run", str(inp), "--ttft-timeout", "soon"])
    assert info.value.code == 2
    assert "--ttft-timeout: expected a number of seconds or 'none', got 'soon'" in (
        capsys.readouterr().err
    )


def test_existing_output_needs_resume_or_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An existing non-empty output is not overwritten silently: exit 2, file untouched."""
    inp = write_input(tmp_path / "in.jsonl", 1)
    out = tmp_path / "in.out.jsonl"
    out.write_text('{"id": "q0", "status": "ok"}\n')
    assert main(["run", str(inp), "--base-url", "http://127.0.0.1:9/v1"]) == 2
    assert "pass --resume to continue it or --overwrite" in capsys.readouterr().err
    assert out.read_text() == '{"id": "q0", "status": "ok"}\n'


def test_output_in_missing_directory_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An output path whose directory does not exist exits 2 naming the file."""
    inp = write_input(tmp_path / "in.jsonl", 1)
    out = tmp_path / "no" / "out.jsonl"
    assert main(["run", str(inp), "--base-url", "http://127.0.0.1:9/v1", "-o", str(out)]) == 2
    assert f"cannot write output file {out}: directory {out.parent} does not exist" in (
        capsys.readouterr().err
    )


def test_bad_events_or_report_path_touches_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unwritable events or report path exits 2 before the output is truncated."""
    inp = write_input(tmp_path / "in.jsonl", 1)
    out = tmp_path / "in.out.jsonl"
    out.write_text('{"id": "q0", "status": "ok"}\n')
    base = ["run", str(inp), "--base-url", "http://127.0.0.1:9/v1", "--overwrite"]
    assert main([*base, "--events", str(tmp_path / "no" / "e.jsonl")]) == 2
    assert "cannot write events file" in capsys.readouterr().err
    assert main([*base, "--report-json", str(tmp_path)]) == 2
    assert f"cannot write report {tmp_path}: it is a directory" in capsys.readouterr().err
    assert main([*base, "--html", str(tmp_path)]) == 2
    assert f"cannot write HTML report {tmp_path}: it is a directory" in capsys.readouterr().err
    assert out.read_text() == '{"id": "q0", "status": "ok"}\n'


# -- runs against the fake server ------------------------------------------------------------


def test_run_with_faults_all_ok(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With faults on, every item ends ok exactly once; report printed and written; no secret."""
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    inp = write_input(tmp_path / "in.jsonl", 60)
    report = tmp_path / "report.json"
    faults = "rate_limit=0.05:retry_after=0.1,http_500=0.05,reset=0.05:after=1,truncate=0.05"
    with fake_server_process(faults=faults, seed=3) as server:
        status = main(
            ["run", str(inp), "--base-url", server.base_url, "--report-json", str(report), *FAST]
        )
    captured = capsys.readouterr()
    assert status == 0, captured.err
    records = read_jsonl(tmp_path / "in.out.jsonl")
    assert sorted(str(r["id"]) for r in records) == sorted(f"q{i}" for i in range(60))
    assert all(r["status"] == "ok" for r in records)
    first = records[0]
    for key in ("text", "usage", "attempts", "shard", "ttft_s", "latency_s"):
        assert key in first
    assert any(int(str(r["attempts"])) > 1 for r in records)
    data = json.loads(report.read_text())
    assert data["items"] == 60
    assert data["succeeded"] == 60
    assert data["retries"] > 0
    assert data["events_sha256"] is not None
    assert "60" in captured.out
    events = (tmp_path / "in.events.jsonl").read_text()
    for text in (
        captured.out,
        captured.err,
        events,
        report.read_text(),
        (tmp_path / "in.out.jsonl").read_text(),
    ):
        assert SECRET not in text


def test_bad_lines_fail_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], plain_server: str
) -> None:
    """Invalid JSON, no messages/prompt and duplicate ids become invalid_input lines; exit 1."""
    inp = write_input(
        tmp_path / "in.jsonl",
        5,
        extra=[
            "{broken",
            json.dumps({"id": "nothing"}),
            json.dumps({"id": "q1", "prompt": "again"}),
            json.dumps({"prompt": "no id, numeric id from the line number"}),
        ],
    )
    status = main(["run", str(inp), "--base-url", plain_server, *FAST])
    captured = capsys.readouterr()
    assert status == 1, captured.err
    records = read_jsonl(tmp_path / "in.out.jsonl")
    ok = {r["id"] for r in records if r["status"] == "ok"}
    assert ok == {"q0", "q1", "q2", "q3", "q4", 9}
    bad = {r["line"]: r for r in records if r["status"] == "failed"}
    assert sorted(bad) == [6, 7, 8]
    assert all(r["error"]["cause"] == "invalid_input" for r in bad.values())  # type: ignore[index]
    assert bad[6]["error"]["message"].startswith(f"{inp}:6: invalid JSON")  # type: ignore[index]
    assert bad[7]["error"]["message"] == (  # type: ignore[index]
        f"{inp}:7: missing field 'messages' (chat) or 'prompt' (completion),"
        " or 'input' with an 'api'"
    )
    assert bad[8]["error"]["message"] == (  # type: ignore[index]
        f"{inp}:8: duplicate id 'q1' (ids must be unique in a file)"
    )
    assert "Traceback" not in captured.err


def test_failed_items_exit_1_and_resume_retries_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], plain_server: str
) -> None:
    """An item that keeps failing is written failed (exit 1); --resume retries only it."""
    inp = write_input(tmp_path / "in.jsonl", 6)
    out = tmp_path / "in.out.jsonl"
    with fake_server_process(faults="http_500@item=q3") as server:
        status = main(
            ["run", str(inp), "--base-url", server.base_url, "--max-attempts", "2", *FAST]
        )
    assert status == 1
    records = read_jsonl(out)
    failed = [r for r in records if r["status"] == "failed"]
    assert [r["id"] for r in failed] == ["q3"]
    assert failed[0]["error"] == {  # type: ignore[comparison-overlap]
        "cause": "server_error",
        "message": failed[0]["error"]["message"],  # type: ignore[index]
    }
    assert failed[0]["attempts"] == 2
    ok_lines = [line for line in out.read_text().splitlines() if '"status":"ok"' in line]
    assert len(ok_lines) == 5
    capsys.readouterr()
    status = main(["run", str(inp), "--base-url", plain_server, "--resume", *FAST])
    assert status == 0, capsys.readouterr().err
    lines = out.read_text().splitlines()
    final = [json.loads(line) for line in lines]
    assert sorted(r["id"] for r in final) == [f"q{i}" for i in range(6)]
    assert all(r["status"] == "ok" for r in final)
    # Lines already ok were kept byte for byte, in front; q3 was the only one sent again.
    assert lines[:5] == ok_lines
    assert final[5]["id"] == "q3"


def test_resume_repairs_torn_line_and_skips_done(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], plain_server: str
) -> None:
    """--resume drops a torn last line, skips ids already ok, and sends only the rest."""
    inp = write_input(tmp_path / "in.jsonl", 20)
    out = tmp_path / "in.out.jsonl"
    done = [json.dumps({"id": f"q{i}", "status": "ok", "text": "kept"}) for i in range(8)]
    out.write_text("\n".join(done) + "\n" + '{"id": "q8", "status": "o')
    status = main(["run", str(inp), "--base-url", plain_server, "--resume", *FAST])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "8 items already ok are skipped" in captured.err
    lines = out.read_text().splitlines()
    assert lines[:8] == done
    ids = [json.loads(line)["id"] for line in lines]
    assert sorted(ids) == sorted(f"q{i}" for i in range(20))
    sent = {
        e["item_id"]
        for e in read_jsonl(tmp_path / "in.events.jsonl")
        if e["kind"] == "attempt_start"
    }
    assert sent == {f"q{i}" for i in range(8, 20)}


def test_resume_appends_events(tmp_path: Path, plain_server: str) -> None:
    """A resumed run appends a new run_start to the events file instead of replacing it."""
    inp = write_input(tmp_path / "in.jsonl", 4)
    assert main(["run", str(inp), "--base-url", plain_server, *FAST]) == 0
    assert main(["run", str(inp), "--base-url", plain_server, "--resume", *FAST]) == 0
    kinds = [e["kind"] for e in read_jsonl(tmp_path / "in.events.jsonl")]
    assert kinds.count("run_start") == 2
    assert kinds.count("attempt_start") == 4


def test_internal_error_is_one_line_and_a_file(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    plain_server: str,
) -> None:
    """A bug surfaces as exit 70 with one line naming a traceback file, not a traceback."""
    import shardline._batch as batch

    def broken(*_args: object) -> dict[str, object]:
        raise RuntimeError("boom")

    monkeypatch.setattr(batch, "outcome_to_json", broken)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    inp = write_input(tmp_path / "in.jsonl", 3)
    assert main(["run", str(inp), "--base-url", plain_server, *FAST]) == 70
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "internal error: RuntimeError: boom" in err
    (crash,) = tmp_path.glob("shardline-crash-*.txt")
    assert "RuntimeError: boom" in crash.read_text()


def test_demo_small(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo runs generated items through the in-process fake server and prints a report."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    out = tmp_path / "demo.out.jsonl"
    report = tmp_path / "demo.json"
    page = tmp_path / "demo.html"
    status = main(
        [
            "demo",
            "--items",
            "300",
            "--no-progress",
            "--output",
            str(out),
            "--report-json",
            str(report),
            "--html",
            str(page),
        ]
    )
    captured = capsys.readouterr()
    assert status == 0, captured.err
    html = page.read_text(encoding="utf-8")
    assert f"<td>{json.loads(report.read_text())['events_sha256']}</td>" in html
    assert html.count("<svg ") == 6 + 8  # six charts, one per shard
    records = read_jsonl(out)
    assert len(records) == 300
    assert len({r["id"] for r in records}) == 300
    data = json.loads(report.read_text())
    assert data["succeeded"] == 300
    assert data["shard_count"] == 8
    assert "fake server with faults" in captured.err


def test_demo_bad_option_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """A bad demo option exits 2 naming it."""
    assert main(["demo", "--items", "0"]) == 2
    assert "--items" in capsys.readouterr().err
    assert main(["demo", "--faults", "explode=2"]) == 2
    assert "invalid value for --faults" in capsys.readouterr().err


def test_check_command_ok(plain_server: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`shardline check` against a working server: exit 0, one line with the latency."""
    assert main(["check", "--base-url", plain_server, "--model", "m"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    assert out[0].startswith(f"shardline check: ok: {plain_server} (model m) answered in ")


def test_run_check_then_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], plain_server: str
) -> None:
    """`run --check` probes once, says so, then runs every item."""
    inp = write_input(tmp_path / "in.jsonl", 5)
    assert main(["run", str(inp), "--base-url", plain_server, "--check", *FAST]) == 0
    assert f"shardline run: check ok: {plain_server}" in capsys.readouterr().err
    assert len(read_jsonl(tmp_path / "in.out.jsonl")) == 5


def test_check_probes_every_endpoint_and_names_the_dead_one(
    plain_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Several --base-url: one line per endpoint, in order; one dead endpoint is exit 2."""
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    argv = ["check", "--base-url", plain_server, "--base-url", dead, "--model", "m"]
    assert main([*argv, "--connect-timeout", "2"]) == 2
    captured = capsys.readouterr()
    out = captured.out.strip().splitlines()
    assert len(out) == 1
    assert out[0].startswith(f"shardline check: ok: {plain_server} (model m) answered")
    err = captured.err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"shardline check: error: failed: {dead} (model m): connect_error")


def test_check_speaks_the_api_asked_for(
    plain_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--api embeddings (and the others) probe that API; the choices are the probes'."""
    from shardline._cli_run import _PROBE_APIS
    from shardline._endpoint_check import PROBES

    assert tuple(PROBES) == _PROBE_APIS
    for api in _PROBE_APIS:
        assert main(["check", "--base-url", plain_server, "--model", "m", "--api", api]) == 0
        out = capsys.readouterr().out
        suffix = "" if api == "chat" else f", {api}"
        assert out.startswith(f"shardline check: ok: {plain_server} (model m{suffix}) answered")


def test_run_check_probes_the_api_of_the_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], plain_server: str
) -> None:
    """An embeddings batch is checked with an embeddings request, not a chat one."""
    inp = tmp_path / "in.jsonl"
    lines = [json.dumps({"id": f"v{i}", "api": "embeddings", "input": f"t {i}"}) for i in range(3)]
    inp.write_text("\n".join(["not json", *lines]) + "\n")
    status = main(["run", str(inp), "--base-url", plain_server, "--check", *FAST])
    assert status == 1  # the bad first line fails alone
    assert f"shardline run: check ok: {plain_server} (no model set, embeddings)" in (
        capsys.readouterr().err
    )
    assert len(read_jsonl(tmp_path / "in.out.jsonl")) == 4


def test_cli_defaults_are_the_library_defaults(tmp_path: Path) -> None:
    """One default per setting: what the CLI builds without options is PipelineConfig()'s."""
    from shardline._cli import build_parser
    from shardline._cli_run import resolve_run_settings
    from shardline._config import DEFAULT_DRAIN_GRACE, PipelineConfig

    args = build_parser().parse_args(["run", str(tmp_path / "in.jsonl"), "--base-url", "http://x"])
    config = resolve_run_settings(args, {}).config
    assert config.drain_grace == DEFAULT_DRAIN_GRACE
    library = PipelineConfig()
    assert (config.shard_count, config.concurrency, config.queue_size, config.deadlines) == (
        library.shard_count,
        library.concurrency,
        library.queue_size,
        library.deadlines,
    )
    assert config.retry.max_attempts == library.retry.max_attempts
    assert config.routing == library.routing == "least_loaded"
    hashed = build_parser().parse_args(
        ["run", str(tmp_path / "in.jsonl"), "--base-url", "http://x", "--routing", "hash"]
    )
    assert resolve_run_settings(hashed, {}).config.routing == "hash"


def test_python_dash_m_runs_the_same_command() -> None:
    """``python -m shardline`` is the console script (for environments without it on PATH)."""
    import subprocess
    import sys

    from shardline import __version__

    done = subprocess.run(
        [sys.executable, "-m", "shardline", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"shardline {__version__}"
