"""The series behind the HTML report: the report's figures, over time, in bounded memory."""

from __future__ import annotations

import math
from collections import Counter
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from report_sim import START, simulate
from shardline._events import (
    AttemptEnd,
    AttemptStart,
    Event,
    ItemAdmitted,
    ItemEnd,
    LimitChange,
    RetryScheduled,
    RunEnd,
    RunStart,
    ShardState,
)
from shardline._exceptions import ConfigError
from shardline._report import minute_iso
from shardline._report_series import BUCKET_WIDTHS, SeriesBuilder, compute_series
from shardline.report import compute_report


def _run_start(t: float = 0.0, started_at: float = START) -> RunStart:
    return RunStart(
        t=t, run_id="r", started_at=started_at, shard_count=1, config={"concurrency": 4}
    )


ONE_ITEM: list[Event] = [
    _run_start(),
    ItemAdmitted(t=0.5, item_id="a", shard=0),
    AttemptStart(t=1.5, item_id="a", shard=0, attempt=1),
    LimitChange(t=2.5, endpoint=0, old=4, new=2, reason="rate_limited"),
    ShardState(t=2.5, shard=0, state="cooling", cooldown_s=0.25),
    ShardState(t=2.75, shard=0, state="resumed"),
    AttemptEnd(
        t=3.0,
        item_id="a",
        shard=0,
        attempt=1,
        outcome="ok",
        prompt_tokens=10,
        completion_tokens=20,
        ttft_s=0.2,
    ),
    ItemEnd(t=3.0, item_id="a", shard=0, status="ok", attempts=1, latency_s=2.5),
    RunEnd(t=4.0, reason="completed"),
]


def test_gauges_are_time_weighted_means_per_bucket() -> None:
    """Queued, in flight, cooling and the limit: their mean over each one-second bucket."""
    series = compute_series(ONE_ITEM)
    assert series is not None
    assert (series.start, series.bucket_s, series.buckets) == (START, 1, 5)
    assert series.queued[0] == (0.5, 0.5, 0.0, 0.0, None)
    assert series.in_flight[0] == (0.0, 0.5, 1.0, 0.0, None)
    assert series.cooling[0] == (0.0, 0.0, 0.25, 0.0, None)
    # the initial limit holds from the run's start until the first change
    assert series.limit[0] == (4.0, 4.0, 3.0, 2.0, None)
    assert series.concurrency == 4


def test_tokens_and_histograms_use_the_reports_fallback() -> None:
    """Usage and TTFT missing on item_end come from the successful attempt, as in the report."""
    series = compute_series(ONE_ITEM)
    assert series is not None
    assert series.tokens_in == (0, 0, 0, 10, 0)
    assert series.tokens_out == (0, 0, 0, 20, 0)
    assert series.ttft.total == series.latency.total == 1
    (ttft_bin,) = [i for i, c in enumerate(series.ttft.counts) if c]
    assert series.ttft.edges[ttft_bin] <= 0.2 < series.ttft.edges[ttft_bin + 1]
    (latency_bin,) = [i for i, c in enumerate(series.latency.counts) if c]
    assert series.latency.edges[latency_bin] <= 2.5 < series.latency.edges[latency_bin + 1]


@pytest.mark.parametrize("max_buckets", [3, 12, 40, 240, 5000])
def test_buckets_add_up_to_the_reports_minutes(max_buckets: int) -> None:
    """At any resolution, buckets of one UTC minute sum to its tokens in the report."""
    events = simulate(seed=max_buckets, minutes=7.0)
    report = compute_report(events, events_sha256=None)
    series = compute_series(events, max_buckets=max_buckets)
    assert series is not None
    assert series.buckets <= max_buckets
    assert series.bucket_s in BUCKET_WIDTHS
    assert series.start % series.bucket_s == 0
    assert sum(series.tokens_in) == report.tokens_in_total
    assert sum(series.tokens_out) == report.tokens_out_total
    per_group_in: Counter[int] = Counter()
    per_group_out: Counter[int] = Counter()
    group = max(series.bucket_s, 60)
    for i in range(series.buckets):
        key = math.floor(series.bucket_start(i) / group)
        per_group_in[key] += series.tokens_in[i]
        per_group_out[key] += series.tokens_out[i]
    expected_in: Counter[int] = Counter()
    expected_out: Counter[int] = Counter()
    for m in report.tpm_by_minute:
        when = datetime.strptime(m.minute_utc, "%Y-%m-%dT%H:%MZ").replace(tzinfo=UTC)
        minute = round(when.timestamp() / 60)
        assert minute_iso(minute) == m.minute_utc
        expected_in[math.floor(minute * 60 / group)] += m.prompt_tokens
        expected_out[math.floor(minute * 60 / group)] += m.completion_tokens
    assert +per_group_in == +expected_in
    assert +per_group_out == +expected_out


def test_retries_and_samples_match_the_report() -> None:
    """Retries per cause and the histograms' counts equal the report's."""
    events = simulate(seed=5)
    report = compute_report(events, events_sha256=None)
    series = compute_series(events)
    assert series is not None
    assert {cause: sum(v) for cause, v in series.retries.items()} == report.retry_causes
    assert series.ttft.total == series.latency.total == report.succeeded
    assert list(series.in_flight) == list(range(report.shard_count))


def test_coarsening_keeps_the_means() -> None:
    """A coarse bucket's mean is the mean of the fine buckets it merges (where fully run)."""
    events = simulate(seed=2, minutes=4.0)
    fine = compute_series(events, max_buckets=1000)
    coarse = compute_series(events, max_buckets=20)
    assert fine is not None
    assert coarse is not None
    assert (fine.bucket_s, coarse.bucket_s) == (1, 15)
    ratio = coarse.bucket_s // fine.bucket_s
    offset = round((fine.start - coarse.start) / fine.bucket_s)
    checked = 0
    for j in range(coarse.buckets):
        members = [j * ratio + k - offset for k in range(ratio)]
        if min(members) < 0 or max(members) >= fine.buckets:
            continue
        values = [fine.in_flight[1][i] for i in members]
        if any(v is None for v in values) or coarse.in_flight[1][j] is None:
            continue
        assert coarse.in_flight[1][j] == pytest.approx(sum(v for v in values if v) / ratio)
        checked += 1
    assert checked >= 10


def test_a_resumed_run_leaves_a_gap() -> None:
    """Between two segments nothing was running: gauges are None there, tokens zero."""
    later = START + 130.0
    events: list[Event] = [
        *ONE_ITEM,
        _run_start(started_at=later),
        ItemAdmitted(t=0.0, item_id="b", shard=0),
        AttemptStart(t=0.0, item_id="b", shard=0, attempt=1),
        AttemptEnd(t=1.0, item_id="b", shard=0, attempt=1, outcome="failed", cause="truncated"),
        RetryScheduled(t=1.0, item_id="b", shard=0, attempt=2, delay_s=0.1, cause="truncated"),
        RunEnd(t=2.0, reason="cancelled"),
    ]
    series = compute_series(events)
    assert series is not None
    assert series.bucket_s == 1
    assert series.buckets == 133
    gap = range(5, 130)
    assert all(series.in_flight[0][i] is None for i in gap)
    assert all(series.limit[0][i] is None for i in gap)
    assert series.in_flight[0][130] == 1.0
    assert series.retries == {"truncated": (0,) * 131 + (1, 0)}
    # the limit does not carry over: it is unknown until its next change
    assert series.limit[0][130] is None


def test_bounds_and_no_run() -> None:
    """max_buckets is checked like a config value; events without run_start give no series."""
    with pytest.raises(ConfigError, match=r"^max_buckets must be >= 2, got 1$"):
        SeriesBuilder(max_buckets=1)
    builder = SeriesBuilder()
    builder.emit(ItemAdmitted(t=0.0, item_id="a", shard=0))
    assert builder.build() is None
    assert repr(SeriesBuilder()) == "<SeriesBuilder 0 buckets of 1 s>"


@settings(deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    minutes=st.floats(0.05, 600.0),
    max_buckets=st.integers(2, 300),
)
def test_any_run_at_any_resolution(seed: int, minutes: float, max_buckets: int) -> None:
    """Bounded buckets, non-negative gauges, and the report's totals, for any run."""
    events = simulate(seed=seed, items=60, minutes=minutes, shards=3)
    report = compute_report(events, events_sha256=None)
    series = compute_series(events, max_buckets=max_buckets)
    assert series is not None
    assert series.buckets <= max_buckets
    assert sum(series.tokens_in) == report.tokens_in_total
    assert sum(series.tokens_out) == report.tokens_out_total
    assert {c: sum(v) for c, v in series.retries.items()} == report.retry_causes
    for gauges in (series.in_flight, series.queued, series.cooling, series.limit):
        for values in gauges.values():
            assert len(values) == series.buckets
            assert all(v is None or v >= 0 for v in values)
    assert all(v is None or v <= 1 for values in series.cooling.values() for v in values)
    (limit,) = report.limits
    assert all(v is None or limit.min - 1e-9 <= v <= limit.max + 1e-9 for v in series.limit[0])
