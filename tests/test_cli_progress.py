"""The progress display of ``shardline run``: plain lines, the rich panel, ETA."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from shardline._batch import run_batch
from shardline._batch_io import BatchSettings
from shardline._config import Endpoint, FlowControl, PipelineConfig
from shardline._progress import (
    NullProgress,
    PlainProgress,
    ProgressSnapshot,
    RichProgress,
    format_duration,
    open_progress,
    plain_line,
    rich_panel,
)
from shardline._state import ShardStatistics
from shardline.testing import FakeTransport


def row(**fields: object) -> ShardStatistics:
    """A shard's statistics with what the display does not show filled in."""
    values: dict[str, object] = {"busy": 0, "retrying": 0}
    values.update(fields)
    return ShardStatistics(**values)  # type: ignore[arg-type]


def snap(**kw: object) -> ProgressSnapshot:
    values: dict[str, object] = {
        "elapsed_s": 10.0,
        "total": 1000,
        "done": 200,
        "ok": 190,
        "failed": 10,
        "in_flight": 32,
        "limit": 24,
        "ceiling": 32,
        "queued": 64,
        "tpm_now": 12000,
        "tpm_previous": 50000,
        "tpm_peak": 61000,
        "retries": {"rate_limited": 7, "server_error": 3},
        "shards": (
            row(shard=0, in_flight=16, queued=30, capacity=16, cooling=True, done=100, retries=6),
            row(shard=1, in_flight=16, queued=34, capacity=16, cooling=False, done=100, retries=4),
        ),
    }
    values.update(kw)
    return ProgressSnapshot(**values)  # type: ignore[arg-type]


def test_format_duration() -> None:
    """Durations read as s, m and h; unknown is '?'."""
    assert format_duration(None) == "?"
    assert format_duration(float("inf")) == "?"
    assert format_duration(4.4) == "4s"
    assert format_duration(75.2) == "1m15s"
    assert format_duration(3 * 3600 + 120) == "3h02m"


def test_rate_and_eta() -> None:
    """ETA is remaining items over this run's rate; skipped items count as done."""
    s = snap(skipped=300)
    assert s.rate == 20.0
    assert s.remaining == 500
    assert s.eta_s == 25.0
    assert snap(total=None).eta_s is None
    assert snap(done=0, ok=0, failed=0).eta_s is None


def test_plain_line_has_every_number() -> None:
    """The plain line shows done/total, ok, failed, in flight, queued, TPM, retries, ETA."""
    line = plain_line(snap(skipped=300))
    assert line.startswith("shardline: 500/1000 done (50%)")
    for part in (
        "ok 190",
        "failed 10",
        "in flight 32",
        "limit 24 of 32",
        "queued 64",
        "TPM 12,000 this minute, 50,000 last, peak 61,000",
        "retries 10",
        "ETA 25s",
        "300 skipped (resume)",
    ):
        assert part in line
    assert "draining" in plain_line(snap(draining=True))


def test_rich_panel_renders_shards_and_retries() -> None:
    """The live panel lists retries by cause and one row per shard with its state."""
    console = Console(record=True, width=120, file=io.StringIO())
    console.print(rich_panel(snap(draining=True)))
    text = console.export_text()
    assert "200/1000 done (20%)" in text
    assert "rate_limited 7, server_error 3" in text
    assert "cooling" in text
    assert "16/16" in text
    assert "peak 61,000" in text
    assert "in flight 32 (limit 24 of 32)" in text
    assert "Ctrl-C again" in text


def test_a_fixed_limit_is_shown_as_fixed() -> None:
    """Without adaptive flow control (no live limit) the display says the limit is fixed."""
    assert "in flight 32, limit fixed, queued 64" in plain_line(snap(limit=None))
    assert "limit 7," in plain_line(snap(limit=7, ceiling=None))


def test_rich_panel_folds_many_shards() -> None:
    """With more shards than fit, cooling and busiest shards are shown and the rest summed."""
    shards = tuple(
        row(shard=i, in_flight=i % 3, queued=0, capacity=4, cooling=i == 40, done=1, retries=0)
        for i in range(64)
    )
    console = Console(record=True, width=120, height=200, file=io.StringIO())
    console.print(rich_panel(snap(shards=shards)))
    text = console.export_text()
    lines = [line.split() for line in text.splitlines()]
    assert any(parts[:1] == ["40"] and parts[-1] == "cooling" for parts in lines)
    assert any(parts[:1] == ["+49"] for parts in lines)
    shard_rows = [p for p in lines if p and p[0].isdigit() and "/4" in " ".join(p)]
    assert len(shard_rows) == 15


def test_plain_progress_writes_lines() -> None:
    """PlainProgress prints one line per update, and the final snapshot on close."""
    buf = io.StringIO()
    display = PlainProgress(buf, interval=5.0)
    display.update(snap())
    display.close(snap(done=1000, ok=1000, failed=0))
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[1].startswith("shardline: 1000/1000 done (100%)")


def test_messages_reach_every_display() -> None:
    """Messages (Ctrl-C news) are shown by every display, even --no-progress."""
    for make in (lambda b: PlainProgress(b), lambda b: NullProgress(b)):
        buf = io.StringIO()
        make(buf).message("shardline: interrupted")
        assert buf.getvalue() == "shardline: interrupted\n"
    buf = io.StringIO()
    display = RichProgress(Console(file=buf, force_terminal=True, width=100))
    display.message("shardline: interrupted")
    display.close()
    assert "shardline: interrupted" in buf.getvalue()


def test_eta_hidden_while_draining() -> None:
    """After Ctrl-C the ETA is meaningless and shown as '-'."""
    assert "ETA -" in plain_line(snap(draining=True))


def test_open_progress_picks_display() -> None:
    """Disabled gives nothing; a non-terminal stream gets plain lines."""
    assert isinstance(open_progress(enabled=False), NullProgress)
    assert isinstance(open_progress(enabled=True, stream=io.StringIO()), PlainProgress)


def test_rich_progress_draws_in_place() -> None:
    """RichProgress draws the panel on its console and stops cleanly."""
    buf = io.StringIO()
    display = RichProgress(Console(file=buf, force_terminal=True, width=100))
    display.update(snap())
    display.close(snap(done=1000, ok=1000, failed=0))
    assert "1000/1000 done" in buf.getvalue()


def test_the_batch_runner_shows_the_live_limit(tmp_path: Path) -> None:
    """``run_batch``'s progress carries the endpoint's live limit and its ceiling."""
    inp = tmp_path / "in.jsonl"
    inp.write_text(
        "".join(f'{{"id": "q{i}", "messages": [{{"role": "user", "content": "hi"}}]}}\n'
        for i in range(20))
    )  # fmt: skip

    def settings(flow: FlowControl) -> BatchSettings:
        return BatchSettings(
            input=inp,
            output=tmp_path / f"out-{flow.adaptive}.jsonl",
            events=tmp_path / f"events-{flow.adaptive}.jsonl",
            report_json=None,
            config=PipelineConfig(
                endpoint=Endpoint(base_url="http://fake.invalid/v1", model="m"),
                shard_count=2,
                concurrency=4,
                flow=flow,
            ),
        )

    lines = {}
    for flow in (FlowControl(), FlowControl(adaptive=False)):
        err = io.StringIO()
        status = run_batch(
            settings(flow),
            stdout=io.StringIO(),
            stderr=err,
            transport=lambda _shard: FakeTransport(ttft=0.001, itl=0.001),
        )
        assert status == 0, err.getvalue()
        progress = [x for x in err.getvalue().splitlines() if x.startswith("shardline: ")]
        lines[flow.adaptive] = progress[-1]  # the final progress line
    assert lines[True].startswith("shardline: 20/20 done")
    limit = int(lines[True].split("limit ")[1].split(" of 8,")[0])
    assert 1 <= limit <= 8
    assert "in flight 0, limit fixed, queued 0" in lines[False]


def test_the_panel_shows_an_endpoint_whose_circuit_is_open() -> None:
    """With several endpoints, a shard whose endpoint is open or probing says so."""
    shards = (
        row(shard=0, in_flight=8, capacity=8, queued=3, done=50, retries=0, cooling=False),
        row(
            shard=1,
            in_flight=0,
            capacity=8,
            queued=0,
            done=9,
            retries=4,
            cooling=False,
            endpoint=1,
            circuit="open",
        ),
        row(
            shard=2,
            in_flight=1,
            capacity=8,
            queued=0,
            done=9,
            retries=0,
            cooling=False,
            endpoint=2,
            circuit="half_open",
        ),
    )
    console = Console(record=True, width=120, file=io.StringIO())
    console.print(rich_panel(snap(shards=shards)))
    text = console.export_text()
    assert "endpoint 1 open" in text
    assert "endpoint 2 half-open" in text
