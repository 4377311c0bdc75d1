"""The report's quantile sketch: exact below its limit, within alpha after, mergeable, bounded."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardline._events import Event, ItemEnd, RunStart
from shardline._report import percentile
from shardline._sketch import MIN_MAGNITUDE, QuantileSketch
from shardline.report import compute_report

ALPHA = 0.01
PS = (0.0, 1.0, 25.0, 50.0, 90.0, 95.0, 99.0, 99.9, 100.0)

#: Seconds as a report sees them, from far below a microsecond to days, and zero.
durations = st.one_of(
    st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False),
    st.floats(min_value=1e-7, max_value=10.0).map(lambda v: round(v, 3)),
)
any_finite = st.floats(min_value=-1e12, max_value=1e12, allow_nan=False, allow_infinity=False)


def sketch_of(values: list[float], *, exact_limit: int = 0) -> QuantileSketch:
    s = QuantileSketch(relative_accuracy=ALPHA, exact_limit=exact_limit)
    s.extend(values)
    return s


def error_bound(values: list[float], p: float) -> float:
    """alpha * the interpolation of |v[lo]| and |v[hi]| (the module's rank convention), plus the
    magnitude below which values count as zero, plus float rounding at bucket borders."""
    s = sorted(values)
    h = (len(s) - 1) * p / 100.0
    lo = math.floor(h)
    hi = min(lo + 1, len(s) - 1)
    f = h - lo
    scale = (1 - f) * abs(s[lo]) + f * abs(s[hi])
    return ALPHA * scale * (1 + 1e-9) + MIN_MAGNITUDE * (1 + ALPHA)


@given(st.lists(any_finite, min_size=1, max_size=300))
def test_exact_below_the_limit(values: list[float]) -> None:
    """Up to exact_limit samples, every percentile is exactly the linear-interpolated one."""
    s = sketch_of(values, exact_limit=300)
    assert s.is_exact
    for p in PS:
        assert s.percentile(p) == percentile(sorted(values), p)


@given(st.lists(durations, min_size=1, max_size=400))
def test_within_the_relative_error_of_the_exact_percentile(values: list[float]) -> None:
    """In bucket mode a percentile of durations is within alpha of the exact one; p0, p100 exact."""
    s = sketch_of(values)
    assert not s.is_exact
    exact = sorted(values)
    for p in PS:
        got = s.percentile(p)
        want = percentile(exact, p)
        assert got is not None
        assert want is not None
        assert abs(got - want) <= ALPHA * want * (1 + 1e-9) + MIN_MAGNITUDE * (1 + ALPHA)
    assert s.percentile(0) == exact[0]
    assert s.percentile(100) == exact[-1]


@given(st.lists(any_finite, min_size=1, max_size=400))
def test_signed_values_within_the_stated_bound(values: list[float]) -> None:
    """With negative samples too, the error is within alpha of the interpolated magnitudes."""
    s = sketch_of(values)
    exact = sorted(values)
    for p in PS:
        got = s.percentile(p)
        want = percentile(exact, p)
        assert got is not None
        assert want is not None
        assert abs(got - want) <= error_bound(values, p)
        assert exact[0] <= got <= exact[-1]


@given(
    st.lists(any_finite, max_size=200),
    st.lists(any_finite, max_size=200),
    st.integers(min_value=0, max_value=250),
)
def test_merge_is_the_sketch_of_the_union(a: list[float], b: list[float], exact_limit: int) -> None:
    """Merging two sketches gives the sketch of the concatenated samples, in either order."""
    union = sketch_of(a + b, exact_limit=exact_limit)
    for first, second in ((a, b), (b, a)):
        merged = sketch_of(first, exact_limit=exact_limit)
        merged.merge(sketch_of(second, exact_limit=exact_limit))
        assert (merged.count, merged.is_exact, merged.size) == (
            union.count,
            union.is_exact,
            union.size,
        )
        assert [merged.percentile(p) for p in PS] == [union.percentile(p) for p in PS]


def test_copy_is_independent() -> None:
    """A copy answers the same and does not see samples added to the original after."""
    s = sketch_of([1.0, 2.0, 3.0], exact_limit=10)
    c = s.copy()
    s.add(100.0)
    assert (c.count, c.percentile(100), s.count, s.percentile(100)) == (3, 3.0, 4, 100.0)


def test_memory_is_bounded_by_the_range_not_the_count() -> None:
    """200,000 durations from 1 ms to 1 h hold at most ln(3.6e6)/ln gamma + 1 buckets."""
    gamma = (1 + ALPHA) / (1 - ALPHA)
    bound = math.ceil(math.log(3600 / 1e-3) / math.log(gamma)) + 1
    rng = random.Random(17)
    s = QuantileSketch(relative_accuracy=ALPHA)
    sizes = []
    for n in range(200_000):
        s.add(min(3600.0, max(1e-3, rng.lognormvariate(0.0, 3.0))))
        if n % 20_000 == 0:
            sizes.append(s.size)
    assert not s.is_exact
    assert s.size <= bound
    assert max(sizes) <= max(bound, s.exact_limit + 1)
    assert s.count == 200_000


@given(st.integers(min_value=0, max_value=5000))
def test_size_never_exceeds_the_exact_limit_in_exact_mode(n: int) -> None:
    """While exact, it holds at most exact_limit samples; past it, no samples at all."""
    s = QuantileSketch(exact_limit=1000)
    s.extend(float(i % 7) for i in range(n))
    assert s.is_exact == (n <= 1000)
    assert s.size <= 1000
    if not s.is_exact:
        assert s.size == 7  # seven distinct values, seven buckets (one for zero)


def test_empty_sketch_has_no_percentile() -> None:
    """No samples: None, as Percentiles has."""
    assert QuantileSketch().percentile(50) is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"relative_accuracy": 0.0}, "relative_accuracy must be > 0 and < 1, got 0.0"),
        ({"relative_accuracy": 1.0}, "relative_accuracy must be > 0 and < 1, got 1.0"),
        ({"exact_limit": -1}, "exact_limit must be >= 0, got -1"),
    ],
)
def test_bad_parameters_are_named(kwargs: dict[str, float], message: str) -> None:
    """Out-of-range parameters raise ValueError naming the parameter and the bound."""
    with pytest.raises(ValueError, match=f"^{message}$"):
        QuantileSketch(**kwargs)  # type: ignore[arg-type]


def test_bad_samples_and_queries_are_named() -> None:
    """Non-finite samples, out-of-range percentiles and mismatched merges are refused."""
    s = QuantileSketch()
    with pytest.raises(ValueError, match=r"^a sketch sample must be finite, got nan$"):
        s.add(math.nan)
    with pytest.raises(ValueError, match=r"^p must be >= 0 and <= 100, got 101$"):
        s.percentile(101)
    with pytest.raises(ValueError, match=r"^cannot merge sketches with different parameters"):
        s.merge(QuantileSketch(relative_accuracy=0.02))


def test_the_report_percentiles_stay_within_one_percent_past_the_limit() -> None:
    """A report of 5,000 items on 3 shards: run and shard percentiles within 1 % of exact."""
    rng = random.Random(3)
    events: list[Event] = [
        RunStart(t=0.0, run_id="r", started_at=1_764_403_200.0, shard_count=3, config={})
    ]
    latency: dict[int, list[float]] = {0: [], 1: [], 2: []}
    ttft: list[float] = []
    for i in range(5000):
        shard = i % 3
        lat, first = rng.uniform(0.2, 30.0), rng.uniform(0.01, 0.2)
        latency[shard].append(lat)
        ttft.append(first)
        events.append(
            ItemEnd(
                t=1.0 + i / 100,
                item_id=i,
                shard=shard,
                status="ok",
                attempts=1,
                latency_s=lat,
                ttft_s=first,
            )
        )
    report = compute_report(events, events_sha256=None)
    everything = sorted(v for vs in latency.values() for v in vs)
    run = report.latency_s
    for p, got in ((50, run.p50), (95, run.p95), (99, run.p99)):
        want = percentile(everything, p)
        assert got is not None
        assert want is not None
        assert got == pytest.approx(want, rel=ALPHA)
    assert report.ttft_s.p99 == pytest.approx(percentile(sorted(ttft), 99), rel=ALPHA)
    for row in report.shards:  # 1,666 or 1,667 items each: below the limit, exact
        assert row.latency_s.p95 == percentile(sorted(latency[row.shard]), 95)
