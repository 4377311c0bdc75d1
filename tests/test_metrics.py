"""Run reports from events: definitions, bucketing, backlog, percentiles, round trips."""

from __future__ import annotations

import hashlib
import json
import statistics
from datetime import UTC, datetime
from pathlib import Path

import attrs
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from shardline._events import (
    AttemptEnd,
    AttemptStart,
    Event,
    EventFileReader,
    FirstToken,
    ItemAdmitted,
    ItemEnd,
    LimitChange,
    RetryScheduled,
    RunEnd,
    RunStart,
    ShardState,
)
from shardline._models import ItemId
from shardline._report import percentile, utc_minute
from shardline._sinks import JsonlEventSink, MemoryEventSink, TeeSink
from shardline.report import (
    LiveMetrics,
    Percentiles,
    ReportBuilder,
    ReportError,
    RunReport,
    compute_report,
    render_text,
)

#: 2025-11-29T08:00:00Z, a whole minute.
START = 1_764_403_200.0


class Run:
    """A tiny builder of plausible event streams: one method per thing a pipeline does."""

    def __init__(
        self, *, started_at: float = START, shards: int = 2, run_id: str = "r1", t: float = 0.0
    ) -> None:
        self.events: list[Event] = [
            RunStart(t=t, run_id=run_id, started_at=started_at, shard_count=shards, config={})
        ]
        self._admitted_at: dict[ItemId, float] = {}

    def admit(self, t: float, item: ItemId, shard: int = 0) -> Run:
        self._admitted_at[item] = t
        self.events.append(ItemAdmitted(t=t, item_id=item, shard=shard))
        return self

    def start(self, t: float, item: ItemId, shard: int = 0, attempt: int = 1) -> Run:
        self.events.append(AttemptStart(t=t, item_id=item, shard=shard, attempt=attempt))
        return self

    def fail(
        self,
        t: float,
        item: ItemId,
        cause: str,
        *,
        shard: int = 0,
        attempt: int = 1,
        retry: bool = True,
        final: bool = False,
    ) -> Run:
        """A failed attempt, followed by a retry_scheduled or (final=True) a failed item_end."""
        self.events.append(
            AttemptEnd(
                t=t, item_id=item, shard=shard, attempt=attempt, outcome="failed", cause=cause
            )
        )
        if final:
            self.events.append(
                ItemEnd(
                    t=t,
                    item_id=item,
                    shard=shard,
                    status="failed",
                    attempts=attempt,
                    latency_s=t - self._admitted_at.get(item, t),
                    cause=cause,
                )
            )
        elif retry:
            self.events.append(
                RetryScheduled(
                    t=t, item_id=item, shard=shard, attempt=attempt + 1, delay_s=0.5, cause=cause
                )
            )
        return self

    def ok(
        self,
        t: float,
        item: ItemId,
        *,
        shard: int = 0,
        attempt: int = 1,
        prompt: int = 10,
        completion: int = 5,
        ttft: float | None = 0.1,
        on_item: bool = True,
    ) -> Run:
        """First token, an ok attempt_end and an ok item_end (usage on it unless on_item=False)."""
        if ttft is not None:
            self.events.append(
                FirstToken(t=t, item_id=item, shard=shard, attempt=attempt, ttft_s=ttft)
            )
        self.events.append(
            AttemptEnd(
                t=t,
                item_id=item,
                shard=shard,
                attempt=attempt,
                outcome="ok",
                status_code=200,
                prompt_tokens=prompt,
                completion_tokens=completion,
                ttft_s=ttft,
                duration_s=0.5,
            )
        )
        self.events.append(
            ItemEnd(
                t=t,
                item_id=item,
                shard=shard,
                status="ok",
                attempts=attempt,
                latency_s=t - self._admitted_at.get(item, t),
                prompt_tokens=prompt if on_item else None,
                completion_tokens=completion if on_item else None,
                ttft_s=ttft if on_item else None,
            )
        )
        return self

    def cancel(self, t: float, item: ItemId, *, shard: int | None = 0, attempts: int = 0) -> Run:
        self.events.append(
            ItemEnd(
                t=t,
                item_id=item,
                shard=shard,
                status="cancelled",
                attempts=attempts,
                latency_s=t - self._admitted_at.get(item, t),
                cause="cancelled",
            )
        )
        return self

    def item(
        self, t: float, item: ItemId, *, shard: int = 0, dt: float = 1.0, **ok: int | float
    ) -> Run:
        """A whole successful item: admitted at t, started at once, ok at t + dt."""
        self.admit(t, item, shard).start(t, item, shard)
        return self.ok(t + dt, item, shard=shard, **ok)  # type: ignore[arg-type]

    def end(self, t: float, reason: str = "completed") -> Run:
        self.events.append(RunEnd(t=t, reason=reason))
        return self

    def report(self, sha: str | None = None) -> RunReport:
        return compute_report(self.events, events_sha256=sha)


# --- fields ---------------------------------------------------------------------------


def test_report_fields_of_a_small_run() -> None:
    """Counts, rates, causes, totals and tails follow their definitions."""
    run = Run(shards=2)
    run.item(0.0, "a", shard=0, dt=1.0, prompt=100, completion=20, ttft=0.2)
    run.admit(0.0, "b", shard=1).start(0.0, "b", shard=1)
    run.fail(0.5, "b", "rate_limited", shard=1)
    run.start(1.0, "b", shard=1, attempt=2)
    run.ok(3.0, "b", shard=1, attempt=2, prompt=50, completion=10, ttft=0.4)
    run.admit(0.0, "c", shard=0).start(0.0, "c", shard=0)
    run.fail(1.0, "c", "server_error", shard=0)
    run.start(2.0, "c", shard=0, attempt=2)
    run.fail(2.5, "c", "stall_timeout", shard=0, attempt=2, final=True)
    run.admit(0.0, "d", shard=1).cancel(4.0, "d", shard=1)
    run.events.append(ShardState(t=0.5, shard=1, state="cooling", cooldown_s=1.5))
    run.end(5.0)
    r = run.report(sha="ab" * 32)

    assert (r.run_id, r.shard_count, r.events_sha256) == ("r1", 2, "ab" * 32)
    assert (r.items, r.succeeded, r.failed, r.cancelled, r.unfinished) == (4, 2, 1, 1, 0)
    assert r.success_rate == 0.5
    assert (r.attempts, r.retries) == (5, 2)
    assert r.retry_rate == 0.5
    assert r.retry_causes == {"rate_limited": 1, "server_error": 1}
    assert r.attempt_failures == {"rate_limited": 1, "server_error": 1, "stall_timeout": 1}
    assert r.failure_causes == {"stall_timeout": 1}
    assert (r.tokens_in_total, r.tokens_out_total) == (150, 30)
    assert r.ttft_s == Percentiles(p50=0.30000000000000004, p95=0.39, p99=0.398)
    assert r.latency_s.p50 == 2.0
    assert r.duration_s == 5.0
    assert r.end_reason == "completed"
    assert r.started_at_utc == "2025-11-29T08:00:00Z"
    by_shard = {s.shard: s for s in r.shards}
    assert (by_shard[0].items, by_shard[0].succeeded, by_shard[0].failed) == (2, 1, 1)
    assert (by_shard[1].items, by_shard[1].succeeded, by_shard[1].cancelled) == (2, 1, 1)
    assert (by_shard[0].attempts, by_shard[1].attempts) == (3, 2)
    assert (by_shard[1].cooldowns, by_shard[1].cooldown_s) == (1, 1.5)
    assert by_shard[1].tokens_out == 10


def test_design_field_names_come_first_in_json() -> None:
    """--json starts with exactly the DESIGN.md proof fields, in order."""
    keys = list(Run().item(0.0, 1).end(2.0).report().to_json())
    assert keys[:19] == [
        "run_id",
        "shard_count",
        "proof_minute_utc",
        "peak_aggregate_tpm_total",
        "peak_completion_tpm_out",
        "peak_prompt_tpm_in",
        "events_sha256",
        "items",
        "succeeded",
        "failed",
        "success_rate",
        "attempts",
        "retries",
        "retry_rate",
        "retry_causes",
        "ttft_s",
        "latency_s",
        "tokens_in_total",
        "tokens_out_total",
    ]


def test_empty_run_has_null_rates_and_no_proof_minute() -> None:
    """A run with no items reports zeros, null rates and null percentiles."""
    r = Run().end(1.0).report()
    assert (r.items, r.success_rate, r.retry_rate, r.proof_minute_utc) == (0, None, None, None)
    assert r.ttft_s == Percentiles()
    assert r.peak_aggregate_tpm_total == 0


def test_usage_and_ttft_fall_back_to_the_ok_attempt() -> None:
    """Without usage or TTFT on item_end, the ok attempt_end's values are used."""
    r = Run().item(0.0, 1, prompt=7, completion=3, ttft=0.25, on_item=False).end(2.0).report()
    assert (r.tokens_in_total, r.tokens_out_total, r.ttft_s.p50) == (7, 3, 0.25)
    assert r.usage_missing_items == 0


def test_missing_usage_is_counted_not_guessed() -> None:
    """An ok item with no token counts anywhere adds 0 tokens and is counted as missing."""
    run = Run().admit(0.0, 1).start(0.0, 1)
    run.events.append(ItemEnd(t=1.0, item_id=1, shard=0, status="ok", attempts=1, latency_s=1))
    r = run.report()
    assert (r.succeeded, r.tokens_in_total, r.usage_missing_items) == (1, 0, 1)
    assert r.ttft_s.p50 is None
    assert r.latency_s.p50 == 1


def test_invalid_input_items_count_as_failed() -> None:
    """A rejected item (item_end without admission or shard) is a failed item."""
    run = Run()
    run.events.append(
        ItemEnd(
            t=0.0,
            item_id=9,
            shard=None,
            status="failed",
            attempts=0,
            latency_s=0.0,
            cause="invalid_input",
        )
    )
    r = run.report()
    assert (r.items, r.failed, r.failure_causes, r.shards) == (1, 1, {"invalid_input": 1}, ())


def test_unfinished_items_are_reported() -> None:
    """Admitted items without item_end (a killed run) are counted as unfinished."""
    r = Run().admit(0.0, 1).start(0.1, 1).report()
    assert (r.items, r.unfinished, r.end_reason) == (0, 1, None)


def test_report_needs_run_start_first() -> None:
    """No events, or events before run_start, raise ReportError."""
    with pytest.raises(ReportError, match="no events"):
        compute_report([], events_sha256=None)
    with pytest.raises(ReportError, match="first event must be run_start, got item_admitted"):
        compute_report([ItemAdmitted(t=0.0, item_id=1, shard=0)], events_sha256=None)


# --- TPM buckets ----------------------------------------------------------------------


def test_utc_minute_uses_started_at_plus_t() -> None:
    """The minute is floor((started_at + t) / 60)."""
    assert utc_minute(START, 59.999) == utc_minute(START, 0.0)
    assert utc_minute(START, 60.0) == utc_minute(START, 0.0) + 1
    assert utc_minute(START + 30.0, 29.9) == utc_minute(START, 0.0)
    assert utc_minute(START + 30.0, 30.0) == utc_minute(START, 0.0) + 1


def test_tokens_bucket_by_completion_minute_across_boundaries() -> None:
    """Items are attributed to the UTC minute they completed, and the busiest minute wins."""
    run = Run(started_at=START + 30.0)  # 08:00:30Z
    run.item(0.0, 1, dt=29.0, prompt=100, completion=1)  # ends 08:00:59 -> 08:00
    run.item(0.0, 2, dt=30.0, prompt=100, completion=2)  # ends 08:01:00 -> 08:01
    run.item(0.0, 3, dt=89.0, prompt=100, completion=3)  # ends 08:01:59 -> 08:01
    run.item(0.0, 4, dt=90.0, prompt=5, completion=4)  # ends 08:02:00 -> 08:02
    r = run.end(100.0).report()
    assert [(m.minute_utc, m.total_tokens, m.items) for m in r.tpm_by_minute] == [
        ("2025-11-29T08:00Z", 101, 1),
        ("2025-11-29T08:01Z", 205, 2),
        ("2025-11-29T08:02Z", 9, 1),
    ]
    assert r.proof_minute_utc == "2025-11-29T08:01Z"
    assert (r.peak_aggregate_tpm_total, r.peak_prompt_tpm_in, r.peak_completion_tpm_out) == (
        205,
        200,
        5,
    )


def test_failed_items_add_no_tokens() -> None:
    """Only successful items count toward TPM and token totals."""
    run = Run().admit(0.0, 1).start(0.0, 1)
    run.events.append(
        AttemptEnd(
            t=1.0,
            item_id=1,
            shard=0,
            attempt=1,
            outcome="failed",
            cause="truncated",
            prompt_tokens=50,
            completion_tokens=9,
        )
    )
    run.events.append(
        ItemEnd(
            t=1.0,
            item_id=1,
            shard=0,
            status="failed",
            attempts=1,
            latency_s=1.0,
            cause="truncated",
        )
    )
    r = run.report()
    assert (r.tokens_in_total, r.tokens_out_total, r.tpm_by_minute) == (0, 0, ())


def test_peak_tie_goes_to_the_earliest_minute() -> None:
    """Two minutes with equal totals: the proof minute is the first."""
    run = Run().item(0.0, 1, dt=10.0, prompt=5, completion=5)
    run.item(60.0, 2, dt=10.0, prompt=2, completion=8)
    assert run.report().proof_minute_utc == "2025-11-29T08:00Z"


def _tpm_oracle(events: list[Event]) -> dict[str, tuple[int, int, int]]:
    """Tokens per UTC minute straight from a hand-built events list, without the report code.

    Walks the raw records: the minute of an ok ``item_end`` is the integer part of
    ``(started_at + t) / 60`` (times here are never negative), its tokens those
    written on it. Returns ``"YYYY-MM-DDTHH:MMZ"`` -> (prompt, completion, items).
    """
    start = events[0]
    assert isinstance(start, RunStart)
    minutes: dict[str, tuple[int, int, int]] = {}
    for e in events:
        if isinstance(e, ItemEnd) and e.status == "ok":
            stamp = datetime.fromtimestamp(int((start.started_at + e.t) // 60) * 60, tz=UTC)
            key = stamp.strftime("%Y-%m-%dT%H:%MZ")
            p, c, n = minutes.get(key, (0, 0, 0))
            minutes[key] = (p + (e.prompt_tokens or 0), c + (e.completion_tokens or 0), n + 1)
    return minutes


@given(
    items=st.lists(
        st.tuples(
            st.floats(min_value=0.0, max_value=600.0),
            # small counts make equal minutes (ties) likely, large ones make them rare
            st.integers(min_value=0, max_value=2) | st.integers(min_value=0, max_value=5_000),
            st.integers(min_value=0, max_value=2) | st.integers(min_value=0, max_value=5_000),
        ),
        min_size=1,
        max_size=30,
    ),
    offset=st.floats(min_value=0.0, max_value=59.999),
)
@example(items=[(0.0, 1, 2), (60.0, 2, 1)], offset=0.0)  # a tie: the earlier minute wins
def test_peak_minute_matches_an_independent_count(
    items: list[tuple[float, int, int]], offset: float
) -> None:
    """Proof minute, peak in/out/total and every bucket equal sums taken from the raw events."""
    run = Run(started_at=START + offset)
    for i, (end, prompt, completion) in enumerate(sorted(items)):
        run.admit(0.0, i).start(0.0, i).ok(end, i, prompt=prompt, completion=completion)
    r = run.report()
    oracle = _tpm_oracle(run.events)
    # The proof minute: the most tokens in total, the earliest on a tie.
    best = max(p + c for p, c, _ in oracle.values())
    proof = min(k for k, (p, c, _) in oracle.items() if p + c == best)
    assert r.proof_minute_utc == proof
    assert (r.peak_prompt_tpm_in, r.peak_completion_tpm_out) == oracle[proof][:2]
    assert r.peak_aggregate_tpm_total == best
    assert {
        m.minute_utc: (m.prompt_tokens, m.completion_tokens, m.items) for m in r.tpm_by_minute
    } == oracle
    assert (r.tokens_in_total, r.tokens_out_total) == (
        sum(prompt for _, prompt, _ in items),
        sum(completion for _, _, completion in items),
    )


def test_peak_minute_is_not_the_minute_of_the_most_completion_tokens() -> None:
    """A hand-counted case where the busiest minute in total is not the one with most output."""
    run = Run()  # 08:00:00Z
    run.item(0.0, 1, dt=10.0, prompt=900, completion=100)  # 08:00: 1000 tokens, 100 out
    run.item(60.0, 2, dt=5.0, prompt=10, completion=300)  # 08:01: 310 tokens, 300 out
    run.item(61.0, 3, dt=5.0, prompt=10, completion=300)  # 08:01: 620 tokens, 600 out
    r = run.end(120.0).report()
    assert r.proof_minute_utc == "2025-11-29T08:00Z"
    assert (r.peak_aggregate_tpm_total, r.peak_prompt_tpm_in, r.peak_completion_tpm_out) == (
        1000,
        900,
        100,
    )
    assert (r.tokens_in_total, r.tokens_out_total) == (920, 700)


# --- percentiles ----------------------------------------------------------------------


def test_percentile_matches_numpy_linear_examples() -> None:
    """Known numpy.percentile(method='linear') values."""
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 95) == pytest.approx(95.05)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None


@given(st.lists(st.floats(min_value=0, max_value=1e4), min_size=2, max_size=50))
def test_percentile_agrees_with_statistics_inclusive(values: list[float]) -> None:
    """p50/p95/p99 equal statistics.quantiles(method='inclusive'), and are ordered and bounded."""
    s = sorted(values)
    expected = statistics.quantiles(s, n=100, method="inclusive")
    for q in (50, 95, 99):
        got = percentile(s, q)
        assert got is not None
        assert got == pytest.approx(expected[q - 1], rel=1e-9, abs=1e-9)
        assert s[0] <= got <= s[-1]
    p = Percentiles.of(values)
    assert p.p50 is not None
    assert p.p95 is not None
    assert p.p99 is not None
    assert p.p50 <= p.p95 <= p.p99


# --- backlog --------------------------------------------------------------------------


def test_backlog_minutes_are_whole_minutes_with_a_queued_item() -> None:
    """Minutes 08:00 and 08:01 are backlogged; 08:02 is not (the queue empties at 08:02:30)."""
    run = Run()
    run.admit(0.0, "waiting")  # queued until its first attempt at t=150
    run.item(10.0, "x", dt=5.0)  # ends 08:00:15, in a backlog minute
    run.admit(70.0, "y").start(70.0, "y")
    run.fail(80.0, "y", "server_error", final=True)  # ends 08:01:20, backlog minute
    run.item(125.0, "z", dt=5.0)  # ends 08:02:10, not a backlog minute
    run.start(150.0, "waiting").ok(170.0, "waiting")
    r = run.end(200.0).report()
    assert r.backlog_minutes == 2
    assert r.backlog_items == 2
    assert r.success_rate_under_backlog == 0.5


def test_queue_touching_zero_breaks_the_minute() -> None:
    """If the queue is empty at any event inside a minute, that minute is not backlogged."""
    run = Run()
    run.admit(0.0, 1)
    run.start(70.0, 1)  # queue empties at 08:01:10 ...
    run.admit(70.0, 2)  # ... and refills at the same instant
    run.start(200.0, 2)
    run.ok(201.0, 1).ok(202.0, 2)
    r = run.report()
    # 08:00 full; 08:01 touched zero; 08:02 full; 08:03 ends at 200 s (08:03:20) -> partial
    assert r.backlog_minutes == 2


def test_backlog_starting_exactly_on_a_minute_counts_it() -> None:
    """Queued from 08:01:00 to 08:02:00 exactly makes 08:01 a backlog minute."""
    run = Run().admit(60.0, 1).start(120.0, 1).ok(121.0, 1)
    assert run.report().backlog_minutes == 1
    run = Run().admit(60.5, 1).start(120.0, 1).ok(121.0, 1)
    assert run.report().backlog_minutes == 0


def test_cancelled_while_queued_leaves_the_queue() -> None:
    """An item cancelled before its first attempt stops being queued at its item_end."""
    run = Run().admit(0.0, 1).cancel(30.0, 1).admit(61.0, 2).start(200.0, 2).ok(201.0, 2)
    r = run.report()
    assert r.backlog_minutes == 1  # only 08:02 ([61, 200) holds 08:02 whole)
    assert r.success_rate_under_backlog is None  # nothing ended in 08:02


def test_backlog_never_starts_before_the_queue_was_last_empty() -> None:
    """An admission stamped earlier than a preceding zero-touch cannot span that touch."""
    run = Run().admit(50.0, 1).start(70.0, 1)  # queue empty at 08:01:10
    run.admit(55.0, 2)  # emitted later, stamped 08:00:55
    run.start(200.0, 2).ok(201.0, 1).ok(202.0, 2)
    # 08:01 touched zero at 08:01:10 and must not count; 08:02 does.
    assert run.report().backlog_minutes == 1


def test_no_backlog_when_items_start_at_once() -> None:
    """Items that start as they are admitted never make a backlog."""
    run = Run()
    for i in range(10):
        run.item(i * 30.0, i, dt=20.0)
    r = run.report()
    assert (r.backlog_minutes, r.success_rate_under_backlog) == (0, None)


# --- resumed runs ---------------------------------------------------------------------


def test_resumed_run_counts_each_item_once_with_its_last_status() -> None:
    """An item cancelled in the first segment and ok in the resumed one counts once, as ok."""
    run = Run(started_at=START)
    run.item(0.0, "a", dt=1.0)
    run.admit(0.0, "b").cancel(2.0, "b").end(2.0, "cancelled")
    run.events.append(
        RunStart(t=0.0, run_id="r1", started_at=START + 600, shard_count=2, config={})
    )
    run.item(0.0, "b", dt=3.0, prompt=1, completion=1)
    r = run.end(4.0).report()
    assert (r.items, r.succeeded, r.cancelled) == (2, 2, 0)
    assert r.duration_s == 6.0
    assert r.end_reason == "completed"
    assert [m.minute_utc for m in r.tpm_by_minute] == ["2025-11-29T08:00Z", "2025-11-29T08:10Z"]
    assert r.shards[0].items == 2


def test_resumed_run_supersedes_a_failed_item() -> None:
    """A failed item re-run after resume counts once; its old failure cause is forgotten."""
    run = Run()
    run.admit(0.0, "x", shard=1).start(0.0, "x", shard=1)
    run.fail(1.0, "x", "server_error", shard=1, final=True).end(2.0)
    run.events.append(RunStart(t=0.0, run_id="r1", started_at=START + 60, shard_count=2, config={}))
    run.item(0.0, "x", shard=1)
    r = run.report()
    assert (r.items, r.succeeded, r.failed, r.failure_causes) == (1, 1, 0, {})
    assert r.attempt_failures == {"server_error": 1}  # the attempt did fail
    assert (r.shards[0].items, r.shards[0].failed, r.shards[0].succeeded) == (1, 0, 1)


def test_killed_run_keeps_its_open_backlog() -> None:
    """Events that stop with items still queued (a crash) still count the whole minutes."""
    run = Run().admit(0.0, 1).admit(1.0, 2).start(1.0, 2).ok(30.0, 2)
    run.events.append(ShardState(t=130.0, shard=0, state="cooling", cooldown_s=1.0))
    r = run.report()
    assert (r.backlog_minutes, r.backlog_items, r.success_rate_under_backlog) == (2, 1, 1.0)
    assert (r.unfinished, r.end_reason) == (1, None)


# --- round trips ----------------------------------------------------------------------

CAUSES = ["rate_limited", "server_error", "stall_timeout", "ttft_timeout", "connection_lost"]


@st.composite
def runs(draw: st.DrawFn) -> list[Event]:
    """Plausible interleaved runs: items with retries, failures, cancels, across minutes."""
    shards = draw(st.integers(1, 3))
    started_at = START + draw(st.floats(0, 59.999))
    per_item: list[list[Event]] = []
    n = draw(st.integers(0, 12))
    for i in range(n):
        item: ItemId = draw(st.one_of(st.just(i), st.just(f"id-{i}")))
        shard = draw(st.integers(0, shards - 1))
        t = draw(st.floats(0, 150))
        admitted = t
        evs: list[Event] = [ItemAdmitted(t=t, item_id=item, shard=shard)]
        t += draw(st.floats(0, 40))
        attempt = 1
        while True:
            evs.append(AttemptStart(t=t, item_id=item, shard=shard, attempt=attempt))
            t += draw(st.floats(0.001, 30))
            fate = draw(st.sampled_from(["ok", "ok", "retry", "fail", "cancel"]))
            if fate == "retry" and attempt < 3:
                cause = draw(st.sampled_from(CAUSES))
                evs.append(
                    AttemptEnd(
                        t=t, item_id=item, shard=shard, attempt=attempt, outcome="failed",
                        cause=cause, duration_s=1.0,
                    )
                )  # fmt: skip
                evs.append(
                    RetryScheduled(
                        t=t, item_id=item, shard=shard, attempt=attempt + 1, delay_s=0.5,
                        cause=cause,
                    )
                )  # fmt: skip
                t += 0.5
                attempt += 1
                continue
            if fate in ("ok", "retry"):
                ttft = draw(st.floats(0.001, 5))
                p, c = draw(st.integers(0, 5000)), draw(st.integers(0, 500))
                evs.append(FirstToken(t=t, item_id=item, shard=shard, attempt=attempt, ttft_s=ttft))
                evs.append(
                    AttemptEnd(
                        t=t, item_id=item, shard=shard, attempt=attempt, outcome="ok",
                        prompt_tokens=p, completion_tokens=c, ttft_s=ttft, duration_s=1.0,
                    )
                )  # fmt: skip
                evs.append(
                    ItemEnd(
                        t=t, item_id=item, shard=shard, status="ok", attempts=attempt,
                        latency_s=t - admitted, prompt_tokens=p, completion_tokens=c, ttft_s=ttft,
                    )
                )  # fmt: skip
            elif fate == "fail":
                cause = draw(st.sampled_from(CAUSES))
                evs.append(
                    AttemptEnd(
                        t=t, item_id=item, shard=shard, attempt=attempt, outcome="failed",
                        cause=cause,
                    )
                )  # fmt: skip
                evs.append(
                    ItemEnd(
                        t=t, item_id=item, shard=shard, status="failed", attempts=attempt,
                        latency_s=t - admitted, cause=cause,
                    )
                )  # fmt: skip
            else:
                evs.append(
                    AttemptEnd(t=t, item_id=item, shard=shard, attempt=attempt, outcome="cancelled")
                )
                evs.append(
                    ItemEnd(
                        t=t, item_id=item, shard=shard, status="cancelled", attempts=attempt,
                        latency_s=t - admitted, cause="cancelled",
                    )
                )  # fmt: skip
            break
        per_item.append(evs)
    # The endpoint's live limit: a chain of changes, each starting where the last ended.
    limit = draw(st.integers(1, 8))
    changes: list[Event] = []
    for t in sorted(draw(st.lists(st.floats(0, 200), max_size=6))):
        new = draw(st.integers(1, 16))
        reason = "increase" if new > limit else draw(st.sampled_from(["rate_limited", "latency"]))
        changes.append(LimitChange(t=t, endpoint=0, old=limit, new=new, reason=reason))
        limit = new
    per_item.append(changes)
    # interleave by time, keeping each item's own order
    tagged = [(e.t, i, j, e) for i, evs in enumerate(per_item) for j, e in enumerate(evs)]
    tagged.sort(key=lambda x: (x[0], x[1], x[2]))
    body = [e for *_, e in tagged]
    end = max((e.t for e in body), default=0.0) + 1.0
    head: Event = RunStart(
        t=0.0, run_id="run-☃", started_at=started_at, shard_count=shards, config={"model": "m"}
    )
    return [head, *body, RunEnd(t=end, reason="completed")]


@given(runs())
def test_file_round_trip_gives_the_identical_report(events: list[Event]) -> None:
    """Live report == report of the saved file, digest == sha256 of the file, JSON exact."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.jsonl"
        memory = MemoryEventSink()
        builder = ReportBuilder()
        jsonl = JsonlEventSink(path, fsync_interval=None)
        sink = TeeSink(jsonl, memory, builder)
        for e in events:
            sink.emit(e)
        sink.close()
        live = builder.build(events_sha256=jsonl.hexdigest())
        file_digest = hashlib.sha256(path.read_bytes()).hexdigest()
        with EventFileReader(path) as reader:
            from_file = compute_report(reader, events_sha256=None)
            from_file = attrs.evolve(from_file, events_sha256=reader.hexdigest())
    assert live.events_sha256 == file_digest
    assert from_file == live
    assert compute_report(memory.events, events_sha256=file_digest) == live
    text = json.dumps(live.to_json())
    assert RunReport.from_json(json.loads(text)) == live
    assert json.dumps(RunReport.from_json(json.loads(text)).to_json()) == text


@given(runs())
def test_live_metrics_agree_with_the_report(events: list[Event]) -> None:
    """LiveMetrics' totals at the end equal the report's, and queues drain to zero."""
    live = LiveMetrics()
    for e in events:
        live.emit(e)
    snap = live.snapshot()
    r = compute_report(events, events_sha256=None)
    assert (snap.done, snap.ok, snap.failed, snap.cancelled) == (
        r.items,
        r.succeeded,
        r.failed,
        r.cancelled,
    )
    assert (snap.attempts, snap.retries, dict(snap.retries_by_cause)) == (
        r.attempts,
        r.retries,
        r.retry_causes,
    )
    assert (snap.tokens_in_total, snap.tokens_out_total) == (r.tokens_in_total, r.tokens_out_total)
    assert snap.peak_tpm_total == r.peak_aggregate_tpm_total
    assert (snap.queued, snap.in_flight) == (0, 0)
    assert all(s.queued == 0 and s.in_flight == 0 for s in snap.shards)


# --- live view ------------------------------------------------------------------------


def test_live_metrics_tracks_queues_in_flight_and_tpm() -> None:
    """Per-shard queued/in-flight, cooling, and current/previous/peak minute TPM."""
    live = LiveMetrics()
    run = Run(shards=2)
    run.admit(0.0, 1, shard=0).admit(0.0, 2, shard=0).admit(0.0, 3, shard=1)
    run.start(1.0, 1, shard=0)
    run.events.append(ShardState(t=1.0, shard=1, state="cooling", cooldown_s=2.0))
    for e in run.events:
        live.emit(e)
    snap = live.snapshot()
    assert (snap.admitted, snap.queued, snap.in_flight) == (3, 2, 1)
    assert [(s.shard, s.queued, s.in_flight, s.cooling) for s in snap.shards] == [
        (0, 1, 1, False),
        (1, 1, 0, True),
    ]
    more = Run()
    more._admitted_at = {1: 0.0}
    more.ok(30.0, 1, prompt=100, completion=10)  # 08:00
    more.start(61.0, 2).fail(62.0, 2, "rate_limited").start(63.0, 2, attempt=2)
    more.ok(65.0, 2, attempt=2, prompt=10, completion=1)  # 08:01
    more.events.append(ShardState(t=66.0, shard=1, state="resumed"))
    for e in more.events[1:]:
        live.emit(e)
    snap = live.snapshot()
    assert snap.minute_utc == "2025-11-29T08:01Z"
    assert (snap.tpm_in_current, snap.tpm_out_current, snap.tpm_total_current) == (10, 1, 11)
    assert snap.tpm_total_previous == 110
    assert (snap.peak_minute_utc, snap.peak_tpm_total) == ("2025-11-29T08:00Z", 110)
    assert dict(snap.retries_by_cause) == {"rate_limited": 1}
    assert snap.shards[1].cooling is False
    later = live.snapshot(now_utc=START + 60 * 2 + 5)  # 08:02:05, nothing completed yet
    assert (later.minute_utc, later.tpm_total_current, later.tpm_total_previous) == (
        "2025-11-29T08:02Z",
        0,
        11,
    )
    assert live.snapshot(now_utc=START + 60 * 5).tpm_total_previous == 0
    assert repr(live) == "<LiveMetrics 2/3 done, 0 in flight, 1 queued>"


def test_report_builder_repr_and_build_is_repeatable() -> None:
    """build() does not consume the builder; its repr shows progress."""
    builder = ReportBuilder()
    for e in Run().item(0.0, 1).events:
        builder.emit(e)
    assert builder.build() == builder.build()
    assert repr(builder) == "<ReportBuilder run 'r1': 1 items ended, 1 attempts, 0 retries>"


# --- rendering ------------------------------------------------------------------------


def test_render_text_shows_the_proof_block() -> None:
    """The readable report names every proof field and shows causes and shards."""
    run = Run().item(0.0, 1, prompt=1234, completion=56)
    run.admit(0.0, 2).start(0.0, 2).fail(1.0, 2, "rate_limited")
    run.start(2.0, 2, attempt=2).ok(3.0, 2, attempt=2)
    text = render_text(run.end(4.0).report(sha="f" * 64))
    for name in (
        "run_id",
        "shard_count",
        "proof_minute_utc",
        "peak_aggregate_tpm_total",
        "peak_completion_tpm_out",
        "peak_prompt_tpm_in",
        "events_sha256",
        "ttft_s",
        "latency_s",
        "rate_limited",
        "2025-11-29T08:00Z",
        "f" * 64,
        "1,244",
    ):
        assert name in text, name


# --- the live limit -------------------------------------------------------------------


def _limit(run: Run, t: float, old: int, new: int, reason: str, endpoint: int = 0) -> None:
    run.events.append(LimitChange(t=t, endpoint=endpoint, old=old, new=new, reason=reason))


def test_limit_report_gives_min_time_weighted_median_max_and_the_signals_that_lowered_it() -> None:
    """4 for 1 s, 32 for 1 s, 24 for 8 s: min 4, median 24 (time-weighted), max 32."""
    run = Run().item(0.0, "a", dt=10.0)
    _limit(run, 1.0, 4, 32, "increase")
    _limit(run, 2.0, 32, 28, "rate_limited")
    _limit(run, 2.0, 28, 24, "rate_limited")
    _limit(run, 2.0, 24, 24, "measure")  # no move: a change that is neither up nor down
    r = run.end(10.0).report()
    (lim,) = r.limits
    assert (lim.endpoint, lim.initial, lim.final) == (0, 4, 24)
    assert (lim.min, lim.median, lim.max) == (4, 24, 32)
    assert (lim.changes, lim.increases, lim.decreases) == (4, 1, {"rate_limited": 2})
    # The mean would be (4 + 32 + 8 * 24) / 10 = 22.8; the median is a value the limit held.
    assert r.to_json()["limits"] == [
        {
            "endpoint": 0,
            "initial": 4,
            "final": 24,
            "min": 4,
            "median": 24,
            "max": 32,
            "changes": 4,
            "increases": 1,
            "decreases": {"rate_limited": 2},
        }
    ]


def test_limit_median_weighs_time_not_changes() -> None:
    """Ten quick steps up and down around 2 do not outweigh 60 s at 1."""
    run = Run().item(0.0, "a", dt=70.0)
    _limit(run, 0.0, 4, 1, "connection_lost")
    old = 1
    for k in range(10):
        new = 2 if old == 1 else 1
        _limit(run, 60.0 + k, old, new, "probe" if new == 2 else "connection_lost")
        old = new
    (lim,) = run.end(70.0).report().limits
    assert (lim.min, lim.median, lim.max) == (1, 1, 4)
    assert lim.decreases == {"connection_lost": 6}


def test_limit_report_per_endpoint_and_across_a_resumed_run() -> None:
    """Each endpoint has its own row; a resumed segment starts over at its first old value."""
    run = Run().item(0.0, "a", dt=10.0)
    _limit(run, 0.0, 4, 8, "increase", endpoint=1)
    _limit(run, 5.0, 4, 2, "server_error", endpoint=0)
    run.end(10.0)
    run.events.append(RunStart(t=0.0, run_id="r1", started_at=START + 30, shard_count=2, config={}))
    _limit(run, 10.0, 4, 3, "rate_limited", endpoint=0)  # 4 for 10 s, then 3 for 30 s
    run.item(0.0, "b", dt=40.0).end(40.0)
    zero, one = run.report().limits
    # endpoint 0: 4 for 5 s, 2 for 5 s, then 4 for 10 s, 3 for 30 s: 2:5, 3:30, 4:15 s
    assert (zero.endpoint, zero.min, zero.median, zero.max, zero.final) == (0, 2, 3, 4, 3)
    assert zero.decreases == {"rate_limited": 1, "server_error": 1}
    # endpoint 1 had no event in the second segment: only its first segment counts.
    assert (one.endpoint, one.initial, one.min, one.median, one.max) == (1, 4, 4, 8, 8)


def test_a_run_without_limit_changes_has_no_limit_rows_and_the_text_says_so() -> None:
    """No limit_change events: ``limits`` is empty, and the text report tells why it may be."""
    r = Run().item(0.0, "a").end(2.0).report()
    assert r.limits == ()
    assert r.to_json()["limits"] == []
    assert "no limit_change events" in render_text(r)


def test_render_text_shows_the_live_limit_per_endpoint() -> None:
    """The text report has a row per endpoint with min / median / max and the signals."""
    run = Run().item(0.0, "a", dt=10.0)
    _limit(run, 1.0, 4, 30, "increase")
    _limit(run, 2.0, 30, 24, "rate_limited")
    _limit(run, 3.0, 24, 21, "latency")
    text = render_text(run.end(10.0).report(), width=120)
    assert "live in-flight limit, per endpoint" in text
    row = next(line for line in text.splitlines() if "rate_limited 1" in line)
    assert row.split()[:7] == ["0", "4", "4", "21", "30", "21", "3"]
    assert "latency 1" in row
