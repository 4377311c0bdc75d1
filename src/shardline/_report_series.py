"""A run's figures over time, from its events: what the HTML report draws.

:class:`SeriesBuilder` is an event sink, like
:class:`~shardline._report_builder.ReportBuilder`, and folds the same events
into :class:`RunSeries`: fixed-width time buckets of tokens, retries by cause,
in-flight and queued per shard, cooldowns and the live limit per endpoint, and
log-spaced histograms of TTFT and latency. It is a pure function of the
events, so a saved file gives the same series as the live run.

Memory is bounded, whatever the run's length: there are at most
``max_buckets`` buckets per series. Buckets start one second wide; when the
run outgrows them they are merged into wider ones (1, 5, 15, 30 s, 1, 5, 15,
30 min, 1, 3, 6, 12 h, 1 day, then doubling), each a whole multiple of the
last and aligned to the UTC clock, so a 60-second bucket is exactly a UTC
minute of the report's TPM. Per-item state (queued items, the successful
attempt of an item not yet ended) is bounded by the queue and in-flight sizes.

Definitions shared with the report (:mod:`shardline._report`):

* Tokens of a successful item count in the bucket its ``item_end`` falls in,
  with the same fallback to its successful attempt's usage as the report, so
  the buckets of one UTC minute add up to that minute's ``tpm_by_minute``.
* An item is queued from ``item_admitted`` to its first ``attempt_start`` (or
  its ``item_end``); an attempt is in flight from ``attempt_start`` to
  ``attempt_end``; a shard is cooling from ``shard_state`` ``cooling`` to
  ``resumed``; an endpoint's limit holds its initial value (the first
  ``limit_change``'s ``old``) from the segment's start, then each new value.
* Gauges are time-weighted means over the part of a bucket the run covered;
  ``None`` where it covered none (before the start, between resumed runs).
* Time is UTC wall time, ``run_start.started_at + t``: a resumed run's pause
  is a gap.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import attrs

from ._events import (
    AttemptEnd,
    AttemptOutcome,
    AttemptStart,
    Event,
    ItemAdmitted,
    ItemEnd,
    LimitChange,
    RetryScheduled,
    RunStart,
    ShardCondition,
    ShardState,
)
from ._models import ItemId, Status
from ._validate import integer

__all__ = [
    "BUCKET_WIDTHS",
    "DEFAULT_MAX_BUCKETS",
    "Histogram",
    "RunSeries",
    "SeriesBuilder",
    "compute_series",
]

#: The most buckets a series keeps (a pixel column or two each in the HTML report).
DEFAULT_MAX_BUCKETS = 240

#: Bucket widths in seconds, each a whole multiple of the one before; past the
#: last, widths double.
BUCKET_WIDTHS = (1, 5, 15, 30, 60, 300, 900, 1800, 3600, 10800, 21600, 43200, 86400)

# Histogram bins: ten per decade from 1 ms to 10,000 s (values outside go to the end bins).
_DECADE_BINS = 10
_LOW_EXP = -3
_HIGH_EXP = 4
_EDGES = tuple(
    10.0 ** (k / _DECADE_BINS) for k in range(_LOW_EXP * _DECADE_BINS, _HIGH_EXP * _DECADE_BINS + 1)
)


def _next_width(width: int) -> int:
    for w in BUCKET_WIDTHS:
        if w > width:
            return w
    return width * 2


@attrs.frozen(kw_only=True)
class Histogram:
    """Counts of seconds in log-spaced bins: ``counts[i]`` is ``edges[i] <= s < edges[i+1]``.

    Values below the first edge count in the first bin, values at or above
    the last edge in the last bin.
    """

    edges: tuple[float, ...]
    counts: tuple[int, ...]

    @property
    def total(self) -> int:
        """All the values counted."""
        return sum(self.counts)


def _bin(value: float) -> int:
    if value <= _EDGES[0]:
        return 0
    k = math.floor(math.log10(value) * _DECADE_BINS) - _LOW_EXP * _DECADE_BINS
    return min(max(k, 0), len(_EDGES) - 2)


@attrs.frozen(kw_only=True)
class RunSeries:
    """A run's figures in time buckets (see the module docs for the definitions).

    Attributes:
        start: UTC epoch seconds at the start of bucket 0 (a multiple of ``bucket_s``).
        bucket_s: The width of every bucket, seconds.
        run_start: UTC epoch seconds of the first ``run_start``.
        run_end: UTC epoch seconds of the last event.
        tokens_in: Prompt tokens of the items that succeeded in each bucket.
        tokens_out: Completion tokens of the items that succeeded in each bucket.
        retries: Cause → retries scheduled in each bucket.
        in_flight: Shard → mean attempts in flight in each bucket.
        queued: Shard → mean items queued in each bucket.
        cooling: Shard → the share of each bucket it spent cooling down (0 to 1).
        limit: Endpoint → mean live in-flight limit in each bucket (``None`` before
            its first ``limit_change``).
        concurrency: Each shard's in-flight ceiling, from ``run_start.config``.
        ttft: TTFT of successful items.
        latency: Latency of successful items.
    """

    start: float
    bucket_s: int
    run_start: float
    run_end: float
    tokens_in: tuple[int, ...]
    tokens_out: tuple[int, ...]
    retries: dict[str, tuple[int, ...]]
    in_flight: dict[int, tuple[float | None, ...]]
    queued: dict[int, tuple[float | None, ...]]
    cooling: dict[int, tuple[float | None, ...]]
    limit: dict[int, tuple[float | None, ...]]
    concurrency: int | None
    ttft: Histogram
    latency: Histogram

    @property
    def buckets(self) -> int:
        """The number of buckets of every series."""
        return len(self.tokens_in)

    def bucket_start(self, i: int) -> float:
        """UTC epoch seconds at the start of bucket ``i``."""
        return self.start + i * self.bucket_s


class _Gauge:
    """A value held over time, integrated into the builder's buckets."""

    __slots__ = ("area", "covered", "since", "value")

    def __init__(self, area: list[float], covered: list[float]) -> None:
        self.area = area
        self.covered = covered
        self.value = 0.0
        self.since: float | None = None  # None: not running (outside a segment)


class SeriesBuilder:
    """Folds events into a :class:`RunSeries` (an event sink; O(1) amortised per event).

    Feed it the same events as a :class:`~shardline.report.ReportBuilder`, for
    example both in one pass over a file::

        report_builder, series_builder = ReportBuilder(), SeriesBuilder()
        with EventFileReader("events.jsonl") as reader:
            for event in reader:
                report_builder.emit(event)
                series_builder.emit(event)

    Args:
        max_buckets: The most buckets per series (at least 2).

    Raises:
        ConfigError: if ``max_buckets`` is not an integer >= 2.
    """

    def __init__(self, *, max_buckets: int = DEFAULT_MAX_BUCKETS) -> None:
        integer("max_buckets", ge=2)(None, None, max_buckets)
        self._max = max_buckets
        self._width = BUCKET_WIDTHS[0]
        self._origin: float | None = None
        self._n = 0
        self._arrays: list[list[float]] = []
        self._anchor = 0.0  # started_at of the current segment
        self._run_start: float | None = None
        self._last = 0.0
        self._concurrency: int | None = None
        self._tokens_in = self._array()
        self._tokens_out = self._array()
        self._retries: dict[str, list[float]] = {}
        self._in_flight: dict[int, _Gauge] = {}
        self._queued: dict[int, _Gauge] = {}
        self._cooling: dict[int, _Gauge] = {}
        self._limit: dict[int, _Gauge] = {}
        self._ttft = [0] * (len(_EDGES) - 1)
        self._latency = [0] * (len(_EDGES) - 1)
        self._queued_items: dict[ItemId, int] = {}
        self._ok_attempt: dict[ItemId, AttemptEnd] = {}

    def __repr__(self) -> str:
        return f"<SeriesBuilder {self._n} buckets of {self._width} s>"

    # -- buckets

    def _array(self) -> list[float]:
        array = [0.0] * self._n
        self._arrays.append(array)
        return array

    def _gauge(self, gauges: dict[int, _Gauge], key: int) -> _Gauge:
        gauge = gauges.get(key)
        if gauge is None:
            gauge = gauges[key] = _Gauge(self._array(), self._array())
        return gauge

    def _index(self, wall: float) -> int:
        """The bucket of UTC time ``wall``, made to exist (coarsening if needed)."""
        if self._origin is None:
            self._origin = math.floor(wall / self._width) * self._width
        i = math.floor((wall - self._origin) / self._width)
        while i >= self._max:
            self._coarsen()
            i = math.floor((wall - self._origin) / self._width)
        i = max(i, 0)
        if i >= self._n:
            grow = i + 1 - self._n
            for array in self._arrays:
                array.extend([0.0] * grow)
            self._n = i + 1
        return i

    def _coarsen(self) -> None:
        assert self._origin is not None
        width = _next_width(self._width)
        factor = width // self._width
        origin = math.floor(self._origin / width) * width
        offset = round((self._origin - origin) / self._width)
        n = (offset + self._n + factor - 1) // factor
        for array in self._arrays:
            merged = [0.0] * n
            for i, value in enumerate(array):
                merged[(offset + i) // factor] += value
            array[:] = merged
        self._width, self._origin, self._n = width, origin, n

    def _advance(self, gauge: _Gauge, wall: float) -> None:
        """Add the gauge's value over ``[since, wall]`` to its buckets."""
        since = gauge.since
        if since is None or wall <= since:
            return
        self._spread(gauge, wall, self._index(wall))
        gauge.since = wall

    def _set(self, gauge: _Gauge, wall: float, value: float) -> None:
        self._advance(gauge, wall)
        if gauge.since is None:
            gauge.since = wall
        gauge.value = value

    def _add(self, gauges: dict[int, _Gauge], key: int, wall: float, delta: float) -> None:
        gauge = self._gauge(gauges, key)
        self._set(gauge, wall, max(gauge.value + delta, 0.0))

    # -- sink protocol

    def emit(self, event: Event) -> None:
        """Fold one event in."""
        if isinstance(event, RunStart):
            self._start(event)
            return
        if self._run_start is None:
            return  # the report builder says why a file without run_start is no run
        wall = self._anchor + event.t
        self._last = max(self._last, wall)
        if isinstance(event, ItemAdmitted):
            self._queued_items[event.item_id] = event.shard
            self._add(self._queued, event.shard, wall, 1)
        elif isinstance(event, AttemptStart):
            self._unqueue(event.item_id, wall)
            self._add(self._in_flight, event.shard, wall, 1)
        elif isinstance(event, AttemptEnd):
            self._add(self._in_flight, event.shard, wall, -1)
            if event.outcome is AttemptOutcome.OK:
                self._ok_attempt[event.item_id] = event
        elif isinstance(event, RetryScheduled):
            counts = self._retries.get(event.cause.value)
            if counts is None:
                counts = self._retries[event.cause.value] = self._array()
            counts[self._index(wall)] += 1
        elif isinstance(event, ItemEnd):
            self._item_end(event, wall)
        elif isinstance(event, ShardState):
            cooling = 1.0 if event.state is ShardCondition.COOLING else 0.0
            self._set(self._gauge(self._cooling, event.shard), wall, cooling)
        elif isinstance(event, LimitChange):
            gauge = self._gauge(self._limit, event.endpoint)
            if gauge.since is None:  # its initial value held since the segment started
                gauge.since, gauge.value = self._anchor, float(event.old)
            self._set(gauge, wall, float(event.new))
        else:
            self._index(wall)  # first_token, run_end: the run lasted this long

    def close(self) -> None:
        """Nothing to release; present for the sink protocol."""

    def _start(self, event: RunStart) -> None:
        if self._run_start is None:
            self._run_start = event.started_at
        else:
            self._end_segment()
        self._anchor = event.started_at
        self._last = max(self._last, event.started_at + event.t)
        concurrency = event.config.get("concurrency")
        if type(concurrency) is int:
            self._concurrency = concurrency
        wall = event.started_at + event.t
        self._index(wall)
        for shard in range(event.shard_count):
            for gauges in (self._in_flight, self._queued, self._cooling):
                self._set(self._gauge(gauges, shard), wall, 0.0)

    def _end_segment(self) -> None:
        """The previous process is gone, and its queues and connections with it."""
        for gauges in (self._in_flight, self._queued, self._cooling, self._limit):
            for gauge in gauges.values():
                self._advance(gauge, self._last)
                gauge.since, gauge.value = None, 0.0
        self._queued_items.clear()
        self._ok_attempt.clear()

    def _unqueue(self, item_id: ItemId, wall: float) -> None:
        shard = self._queued_items.pop(item_id, None)
        if shard is not None:
            self._add(self._queued, shard, wall, -1)

    def _item_end(self, event: ItemEnd, wall: float) -> None:
        self._unqueue(event.item_id, wall)
        attempt = self._ok_attempt.pop(event.item_id, None)
        i = self._index(wall)
        if event.status is not Status.OK:
            return
        prompt, completion, ttft = event.prompt_tokens, event.completion_tokens, event.ttft_s
        if attempt is not None:  # the report's fallback, see ReportBuilder._item_end
            prompt = attempt.prompt_tokens if prompt is None else prompt
            completion = attempt.completion_tokens if completion is None else completion
            ttft = attempt.ttft_s if ttft is None else ttft
        self._tokens_in[i] += prompt or 0
        self._tokens_out[i] += completion or 0
        self._latency[_bin(event.latency_s)] += 1
        if ttft is not None:
            self._ttft[_bin(ttft)] += 1

    # -- result

    def build(self) -> RunSeries | None:
        """The series of every event so far (``None`` before a ``run_start``).

        Does not change the builder: gauges are closed at the last event on copies.
        """
        if self._run_start is None or self._origin is None:
            return None
        last = self._index(self._last)

        def means(gauges: dict[int, _Gauge]) -> dict[int, tuple[float | None, ...]]:
            out: dict[int, tuple[float | None, ...]] = {}
            for key in sorted(gauges):
                gauge = gauges[key]
                area, covered = list(gauge.area), list(gauge.covered)
                if gauge.since is not None and self._last > gauge.since:
                    copy = _Gauge(area, covered)
                    copy.since, copy.value = gauge.since, gauge.value
                    self._spread(copy, self._last, last)
                out[key] = tuple(
                    a / c if c > 0 else None for a, c in zip(area, covered, strict=True)
                )
            return out

        return RunSeries(
            start=self._origin,
            bucket_s=self._width,
            run_start=self._run_start,
            run_end=self._last,
            tokens_in=tuple(int(v) for v in self._tokens_in),
            tokens_out=tuple(int(v) for v in self._tokens_out),
            retries={
                cause: tuple(int(v) for v in counts)
                for cause, counts in sorted(self._retries.items())
            },
            in_flight=means(self._in_flight),
            queued=means(self._queued),
            cooling=means(self._cooling),
            limit=means(self._limit),
            concurrency=self._concurrency,
            ttft=Histogram(edges=_EDGES, counts=tuple(self._ttft)),
            latency=Histogram(edges=_EDGES, counts=tuple(self._latency)),
        )

    def _spread(self, gauge: _Gauge, wall: float, last: int) -> None:
        """Add the gauge's value over ``[since, wall]`` to buckets up to ``last`` (existing)."""
        assert self._origin is not None
        assert gauge.since is not None
        since = gauge.since
        i = max(math.floor((since - self._origin) / self._width), 0)
        while i <= last:
            lo = self._origin + i * self._width
            overlap = min(lo + self._width, wall) - max(lo, since)
            if overlap > 0:
                gauge.area[i] += gauge.value * overlap
                gauge.covered[i] += overlap
            i += 1


def compute_series(
    events: Iterable[Event], *, max_buckets: int = DEFAULT_MAX_BUCKETS
) -> RunSeries | None:
    """The :class:`RunSeries` of a run's events (``None`` if there is no ``run_start``)."""
    builder = SeriesBuilder(max_buckets=max_buckets)
    for event in events:
        builder.emit(event)
    return builder.build()
