"""Run reports and live metrics, computed from events alone.

A run's proof is its events file: :func:`compute_report` folds a stream of
events into a :class:`RunReport`, and it is a pure function of the events, so
the report of a saved file equals the report computed live from the same
events. :class:`ReportBuilder` is the same computation as an event sink (feed
it during the run, :meth:`ReportBuilder.build` at the end);
:class:`LiveMetrics` is a cheaper sink with running counters for a progress
display.

Definitions (the metrics page of the docs explains them at length):

* **TPM buckets.** Tokens of successful items (``item_end`` with status
  ``ok``; ``prompt_tokens`` and ``completion_tokens`` as recorded on it) are
  attributed to the UTC minute the item completed,
  ``floor((run_start.started_at + t) / 60)``. The *proof minute* is the minute
  with the most tokens in total (the earliest on a tie); ``peak_*`` are that
  one minute's numbers, so ``peak_prompt_tpm_in + peak_completion_tpm_out ==
  peak_aggregate_tpm_total``.
* **TTFT** of an item: from sending its successful attempt to that attempt's
  first content event (``item_end.ttft_s``). **Latency**: from admission to the
  item's end (``item_end.latency_s``). Both over successful items only.
* **Percentiles** interpolate linearly between the two nearest ranks (the
  default of ``numpy.percentile`` and ``pandas.Series.quantile``).
* **Retries** count ``retry_scheduled`` events; ``retry_causes`` counts their
  causes. ``attempt_failures`` counts the causes of every failed attempt,
  retried or not. ``retry_rate`` is retries per item (the unit of the retry
  budget), ``success_rate`` succeeded per item; items are all items that
  ended (ok, failed or cancelled).
* **Backlog.** An item is *queued* from its ``item_admitted`` until its first
  ``attempt_start`` (or its ``item_end``, if it never started). A *backlog
  minute* is a whole UTC minute throughout which at least one item was queued:
  the queued count was above zero at the minute's start and no event inside
  the minute left it at zero. ``success_rate_under_backlog`` is the success
  rate of the items that ended in backlog minutes.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import attrs

from ._events import (
    AttemptEnd,
    AttemptStart,
    Event,
    FirstToken,
    ItemAdmitted,
    ItemEnd,
    RetryScheduled,
    RunEnd,
    RunStart,
    ShardState,
)
from ._exceptions import ShardlineError
from ._models import ItemId

__all__ = [
    "LiveMetrics",
    "LiveShard",
    "LiveSnapshot",
    "MinuteTokens",
    "Percentiles",
    "ReportBuilder",
    "ReportError",
    "RunReport",
    "ShardReport",
    "compute_report",
    "percentile",
    "render_text",
    "utc_minute",
]


class ReportError(ShardlineError, ValueError):
    """The events cannot make a report (no ``run_start``, or events before it)."""


# --- small helpers ----------------------------------------------------------------------


def utc_minute(started_at: float, t: float) -> int:
    """The UTC minute of run time ``t``, in minutes since the epoch.

    ``floor((started_at + t) / 60)``: the report and the live view both bucket with it.
    """
    return math.floor((started_at + t) / 60.0)


def minute_iso(minute: int) -> str:
    """``"YYYY-MM-DDTHH:MMZ"`` for a minute since the epoch."""
    return datetime.fromtimestamp(minute * 60, tz=UTC).strftime("%Y-%m-%dT%H:%MZ")


def _parse_minute_iso(text: str) -> int:
    dt = datetime.strptime(text, "%Y-%m-%dT%H:%MZ").replace(tzinfo=UTC)
    return int(dt.timestamp()) // 60


def percentile(sorted_values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) of already sorted values, linearly interpolated.

    The same definition as ``numpy.percentile(values, q)`` (method
    ``"linear"``): rank ``h = (n - 1) * q / 100``, then interpolate between
    the values at ``floor(h)`` and ``ceil(h)``. ``None`` for no values.

    Example::

        >>> percentile([1.0, 2.0, 3.0, 4.0], 50)
        2.5
    """
    n = len(sorted_values)
    if n == 0:
        return None
    h = (n - 1) * q / 100.0
    lo = math.floor(h)
    hi = min(lo + 1, n - 1)
    frac = h - lo
    a, b = sorted_values[lo], sorted_values[hi]
    if frac == 0.0 or a == b:
        return a
    return a + (b - a) * frac


# --- report records ---------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Percentiles:
    """p50 / p95 / p99 of a set of seconds; ``None`` when there were no samples."""

    p50: float | None = None
    p95: float | None = None
    p99: float | None = None

    @classmethod
    def of(cls, values: Iterable[float]) -> Percentiles:
        """The p50, p95 and p99 of ``values`` (linear interpolation)."""
        s = sorted(values)
        return cls(p50=percentile(s, 50), p95=percentile(s, 95), p99=percentile(s, 99))

    def to_json(self) -> dict[str, float | None]:
        """``{"p50": …, "p95": …, "p99": …}``."""
        return {"p50": self.p50, "p95": self.p95, "p99": self.p99}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Percentiles:
        """The inverse of :meth:`to_json`."""
        return cls(p50=obj["p50"], p95=obj["p95"], p99=obj["p99"])


@attrs.frozen(kw_only=True)
class MinuteTokens:
    """Tokens of the items that completed successfully in one UTC minute."""

    minute_utc: str
    prompt_tokens: int
    completion_tokens: int
    items: int

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens of the minute."""
        return self.prompt_tokens + self.completion_tokens

    def to_json(self) -> dict[str, Any]:
        """The minute as a JSON object."""
        return {
            "minute_utc": self.minute_utc,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "items": self.items,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> MinuteTokens:
        """The inverse of :meth:`to_json`."""
        return cls(
            minute_utc=obj["minute_utc"],
            prompt_tokens=obj["prompt_tokens"],
            completion_tokens=obj["completion_tokens"],
            items=obj["items"],
        )


@attrs.frozen(kw_only=True)
class ShardReport:
    """One shard's share of the run (items are counted on the shard that ended them)."""

    shard: int
    items: int
    succeeded: int
    failed: int
    cancelled: int
    attempts: int
    retries: int
    tokens_in: int
    tokens_out: int
    ttft_s: Percentiles
    latency_s: Percentiles
    cooldowns: int
    cooldown_s: float

    def to_json(self) -> dict[str, Any]:
        """The shard's figures as a JSON object."""
        out: dict[str, Any] = {}
        for f in attrs.fields(ShardReport):
            value = getattr(self, f.name)
            out[f.name] = value.to_json() if isinstance(value, Percentiles) else value
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ShardReport:
        """The inverse of :meth:`to_json`."""
        kwargs = {f.name: obj[f.name] for f in attrs.fields(ShardReport)}
        kwargs["ttft_s"] = Percentiles.from_json(obj["ttft_s"])
        kwargs["latency_s"] = Percentiles.from_json(obj["latency_s"])
        return cls(**kwargs)


@attrs.frozen(kw_only=True)
class RunReport:
    """The proof of a run, computed from its events by :func:`compute_report`.

    The first nineteen fields are the proof block (their names are fixed by
    the design); the rest break it down. Rates are ``None`` when their
    denominator is zero, percentiles ``None`` without samples, and
    ``proof_minute_utc`` ``None`` when no item succeeded.

    Attributes:
        run_id: From ``run_start``.
        shard_count: From ``run_start``.
        proof_minute_utc: The UTC minute with the most tokens, ``"YYYY-MM-DDTHH:MMZ"``.
        peak_aggregate_tpm_total: Prompt plus completion tokens in that minute.
        peak_completion_tpm_out: Completion tokens in that minute.
        peak_prompt_tpm_in: Prompt tokens in that minute.
        events_sha256: sha256 of the events file, when the report was made from one.
        items: Items that ended (ok, failed or cancelled).
        succeeded: Items that ended ok.
        failed: Items that ended failed (including ``invalid_input``).
        success_rate: ``succeeded / items``.
        attempts: Attempts started (``attempt_start`` events).
        retries: Retries scheduled (``retry_scheduled`` events).
        retry_rate: ``retries / items``.
        retry_causes: Cause of each scheduled retry → count.
        ttft_s: Time to first token of successful items, seconds.
        latency_s: Admission to end of successful items, seconds.
        tokens_in_total: Prompt tokens of successful items.
        tokens_out_total: Completion tokens of successful items.
        cancelled: Items that ended cancelled.
        unfinished: Items admitted that never ended (the run was killed).
        success_rate_under_backlog: Success rate of items that ended in backlog minutes.
        backlog_minutes: Number of backlog minutes.
        backlog_items: Items that ended in backlog minutes.
        attempt_failures: Cause of every failed attempt → count.
        failure_causes: Cause of every failed item → count.
        usage_estimated_items: Successful items whose usage was estimated, not sent.
        usage_missing_items: Successful items with no token counts at all.
        started_at_utc: UTC start of the (first) run, ISO 8601 with seconds.
        duration_s: Run time, seconds (summed over resumed segments).
        end_reason: ``run_end.reason`` of the last segment, ``None`` if it has none.
        shards: Per-shard breakdown, by shard number.
        tpm_by_minute: Every minute that had a successful item, in order.
    """

    run_id: str
    shard_count: int
    proof_minute_utc: str | None
    peak_aggregate_tpm_total: int
    peak_completion_tpm_out: int
    peak_prompt_tpm_in: int
    events_sha256: str | None
    items: int
    succeeded: int
    failed: int
    success_rate: float | None
    attempts: int
    retries: int
    retry_rate: float | None
    retry_causes: dict[str, int]
    ttft_s: Percentiles
    latency_s: Percentiles
    tokens_in_total: int
    tokens_out_total: int
    cancelled: int = 0
    unfinished: int = 0
    success_rate_under_backlog: float | None = None
    backlog_minutes: int = 0
    backlog_items: int = 0
    attempt_failures: dict[str, int] = attrs.field(factory=dict)
    failure_causes: dict[str, int] = attrs.field(factory=dict)
    usage_estimated_items: int = 0
    usage_missing_items: int = 0
    started_at_utc: str | None = None
    duration_s: float = 0.0
    end_reason: str | None = None
    shards: tuple[ShardReport, ...] = ()
    tpm_by_minute: tuple[MinuteTokens, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON object, keys in field order (the ``--json`` output)."""
        out: dict[str, Any] = {}
        for f in attrs.fields(RunReport):
            value = getattr(self, f.name)
            if isinstance(value, Percentiles):
                value = value.to_json()
            elif f.name in ("shards", "tpm_by_minute"):
                value = [v.to_json() for v in value]
            elif isinstance(value, dict):
                value = dict(value)
            out[f.name] = value
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> RunReport:
        """The inverse of :meth:`to_json` (``from_json(r.to_json()) == r``)."""
        kwargs: dict[str, Any] = {}
        for f in attrs.fields(RunReport):
            if f.name not in obj:
                continue
            value = obj[f.name]
            if f.name in ("ttft_s", "latency_s"):
                value = Percentiles.from_json(value)
            elif f.name == "shards":
                value = tuple(ShardReport.from_json(v) for v in value)
            elif f.name == "tpm_by_minute":
                value = tuple(MinuteTokens.from_json(v) for v in value)
            kwargs[f.name] = value
        return cls(**kwargs)


# --- the computation --------------------------------------------------------------------


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def _count(counter: dict[str, int], key: str) -> None:
    counter[key] = counter.get(key, 0) + 1


def _samples() -> array[float]:
    return array("d")


@attrs.define(eq=False)
class _ShardAcc:
    items: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    attempts: int = 0
    retries: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    # Samples as C doubles: 8 bytes each, not a pointer plus a float object.
    ttft: array[float] = attrs.Factory(_samples)
    latency: array[float] = attrs.Factory(_samples)
    cooldowns: int = 0
    cooldown_s: float = 0.0


@attrs.define(eq=False)
class _MinuteAcc:
    prompt: int = 0
    completion: int = 0
    ok_items: int = 0
    ended: int = 0


class ReportBuilder:
    """Folds events into a :class:`RunReport`, one event at a time; also an event sink.

    Feed it live (``TeeSink(jsonl, builder)``) or from a file, then call
    :meth:`build`. Memory: one float per successful item (for the
    percentiles), one small record per UTC minute, the ids of queued items,
    and the ids of items that ended failed or cancelled (so that a resumed
    run, which re-runs them, counts each item once, with its last status).

    Raises:
        ReportError: from :meth:`emit` if the first event is not ``run_start``,
            and from :meth:`build` if there were no events.
    """

    def __init__(self) -> None:
        self._run_id: str | None = None
        self._shard_count = 0
        self._started_at = 0.0  # anchor of the current segment
        self._first_started_at: float | None = None
        self._seg_last_t = 0.0
        self._duration = 0.0
        self._end_reason: str | None = None
        # counters
        self._items = 0
        self._status = {"ok": 0, "failed": 0, "cancelled": 0}
        self._attempts = 0
        self._retries = 0
        self._retry_causes: dict[str, int] = {}
        self._attempt_failures: dict[str, int] = {}
        self._failure_causes: dict[str, int] = {}
        self._tokens_in = 0
        self._tokens_out = 0
        self._usage_estimated = 0
        self._usage_missing = 0
        # Percentile samples as C doubles (8 bytes each): a million items cost
        # 16 MB here, where lists of floats would cost about 64 MB.
        self._ttft = _samples()
        self._latency = _samples()
        self._shards: dict[int, _ShardAcc] = {}
        self._minutes: dict[int, _MinuteAcc] = {}
        # per-item state, bounded by queue and in-flight sizes
        self._queued: set[ItemId] = set()
        self._open: set[ItemId] = set()  # admitted, not ended
        self._ok_attempt: dict[ItemId, AttemptEnd] = {}
        # items whose last end was not ok: id -> (status, minute, shard, cause)
        self._not_ok: dict[ItemId, tuple[str, int, int | None, str | None]] = {}
        # backlog
        self._backlog_since: float | None = None
        self._last_empty_at = -math.inf
        self._backlog_minutes: set[int] = set()

    # -- sink protocol

    def emit(self, event: Event) -> None:
        """Fold one event in (cheap: O(1) amortised)."""
        if isinstance(event, RunStart):
            self._run_start(event)
            return
        if self._run_id is None:
            raise ReportError(f"the first event must be run_start, got {event.kind}")
        t = event.t
        if t > self._seg_last_t:
            self._seg_last_t = t
        if isinstance(event, ItemAdmitted):
            self._open.add(event.item_id)
            if not self._queued:
                # never before the last time the queue was empty (events out of time order)
                self._backlog_since = max(self._started_at + t, self._last_empty_at)
            self._queued.add(event.item_id)
        elif isinstance(event, AttemptStart):
            self._attempts += 1
            self._shard(event.shard).attempts += 1
            self._dequeue(event.item_id, t)
        elif isinstance(event, AttemptEnd):
            if event.outcome == "failed":
                _count(self._attempt_failures, event.cause or "unknown")
            elif event.outcome == "ok":
                self._ok_attempt[event.item_id] = event
        elif isinstance(event, RetryScheduled):
            self._retries += 1
            self._shard(event.shard).retries += 1
            _count(self._retry_causes, event.cause)
        elif isinstance(event, ItemEnd):
            self._item_end(event)
        elif isinstance(event, ShardState):
            if event.state == "cooling":
                acc = self._shard(event.shard)
                acc.cooldowns += 1
                acc.cooldown_s += event.cooldown_s or 0.0
        elif isinstance(event, RunEnd):
            self._end_reason = event.reason
        elif isinstance(event, FirstToken):
            pass  # TTFT is taken from item_end / attempt_end

    def close(self) -> None:
        """Nothing to release; present for the sink protocol."""

    def __repr__(self) -> str:
        return (
            f"<ReportBuilder run {self._run_id!r}: {self._items} items ended, "
            f"{self._attempts} attempts, {self._retries} retries>"
        )

    # -- folding

    def _shard(self, shard: int) -> _ShardAcc:
        acc = self._shards.get(shard)
        if acc is None:
            acc = self._shards[shard] = _ShardAcc()
        return acc

    def _run_start(self, event: RunStart) -> None:
        if self._run_id is not None:
            self._end_segment()
        else:
            self._run_id = event.run_id
            self._first_started_at = event.started_at
        self._shard_count = max(self._shard_count, event.shard_count)
        self._started_at = event.started_at
        self._seg_last_t = event.t
        self._end_reason = None

    def _end_segment(self) -> None:
        """Close the current segment: its queues are gone with its process."""
        end = self._started_at + self._seg_last_t
        if self._queued:
            self._close_backlog(end)
            self._queued.clear()
        self._duration += self._seg_last_t
        self._ok_attempt.clear()

    def _dequeue(self, item_id: ItemId, t: float) -> None:
        queued = self._queued
        if item_id in queued:
            queued.discard(item_id)
            if not queued:
                self._close_backlog(self._started_at + t)

    def _close_backlog(self, end: float) -> None:
        since = self._backlog_since
        self._backlog_since = None
        self._last_empty_at = max(self._last_empty_at, end)
        if since is None:
            return
        first = math.ceil(since / 60.0)
        last = math.floor(end / 60.0) - 1  # the minute must end by `end`
        if last >= first:
            self._backlog_minutes.update(range(first, last + 1))

    def _item_end(self, event: ItemEnd) -> None:
        item_id = event.item_id
        self._dequeue(item_id, event.t)
        self._open.discard(item_id)
        minute = utc_minute(self._started_at, event.t)
        previous = self._not_ok.pop(item_id, None)
        if previous is not None:
            self._forget(previous)
        else:
            self._items += 1
        status = event.status
        self._status[status] = self._status.get(status, 0) + 1
        m = self._minutes.get(minute)
        if m is None:
            m = self._minutes[minute] = _MinuteAcc()
        m.ended += 1
        shard = self._shard(event.shard) if event.shard is not None else None
        if shard is not None:
            shard.items += 1
        attempt = self._ok_attempt.pop(item_id, None)
        if status != "ok":
            self._not_ok[item_id] = (status, minute, event.shard, event.cause)
            if status == "failed":
                _count(self._failure_causes, event.cause or "unknown")
                if shard is not None:
                    shard.failed += 1
            elif shard is not None and status == "cancelled":
                shard.cancelled += 1
            return
        # a success
        prompt = event.prompt_tokens
        completion = event.completion_tokens
        ttft = event.ttft_s
        estimated = event.usage_estimated
        if attempt is not None:
            if prompt is None:
                prompt = attempt.prompt_tokens
            if completion is None:
                completion = attempt.completion_tokens
            if ttft is None:
                ttft = attempt.ttft_s
            estimated = estimated or attempt.usage_estimated
        if prompt is None and completion is None:
            self._usage_missing += 1
        prompt = prompt or 0
        completion = completion or 0
        if estimated:
            self._usage_estimated += 1
        self._tokens_in += prompt
        self._tokens_out += completion
        m.prompt += prompt
        m.completion += completion
        m.ok_items += 1
        self._latency.append(event.latency_s)
        if ttft is not None:
            self._ttft.append(ttft)
        if shard is not None:
            shard.succeeded += 1
            shard.tokens_in += prompt
            shard.tokens_out += completion
            shard.latency.append(event.latency_s)
            if ttft is not None:
                shard.ttft.append(ttft)

    def _forget(self, previous: tuple[str, int, int | None, str | None]) -> None:
        """Undo the counts of an earlier, superseded end of the same item (a resumed run)."""
        status, minute, shard_no, cause = previous
        self._status[status] -= 1
        self._minutes[minute].ended -= 1
        if status == "failed":
            key = cause or "unknown"
            self._failure_causes[key] -= 1
            if not self._failure_causes[key]:
                del self._failure_causes[key]
        if shard_no is not None:
            acc = self._shards[shard_no]
            acc.items -= 1
            if status == "failed":
                acc.failed -= 1
            elif status == "cancelled":
                acc.cancelled -= 1

    # -- result

    def build(self, *, events_sha256: str | None = None) -> RunReport:
        """The report of every event so far. Does not change the builder.

        Args:
            events_sha256: The digest of the events file, to put in the proof block.

        Raises:
            ReportError: if no ``run_start`` was seen.
        """
        if self._run_id is None:
            raise ReportError("no events: an events file starts with a run_start event")
        # Close the open segment on a copy of the backlog state.
        backlog = set(self._backlog_minutes)
        if self._queued and self._backlog_since is not None:
            end = self._started_at + self._seg_last_t
            first = math.ceil(self._backlog_since / 60.0)
            last = math.floor(end / 60.0) - 1
            if last >= first:
                backlog.update(range(first, last + 1))
        proof_minute: int | None = None
        best = -1
        tpm: list[MinuteTokens] = []
        for minute in sorted(self._minutes):
            acc = self._minutes[minute]
            if acc.ok_items == 0:
                continue
            total = acc.prompt + acc.completion
            if total > best:
                best, proof_minute = total, minute
            tpm.append(
                MinuteTokens(
                    minute_utc=minute_iso(minute),
                    prompt_tokens=acc.prompt,
                    completion_tokens=acc.completion,
                    items=acc.ok_items,
                )
            )
        peak = self._minutes[proof_minute] if proof_minute is not None else _MinuteAcc()
        backlog_ok = backlog_ended = 0
        for minute in backlog:
            in_minute = self._minutes.get(minute)
            if in_minute is not None:
                backlog_ok += in_minute.ok_items
                backlog_ended += in_minute.ended
        ok = self._status.get("ok", 0)
        shards = tuple(
            ShardReport(
                shard=no,
                items=a.items,
                succeeded=a.succeeded,
                failed=a.failed,
                cancelled=a.cancelled,
                attempts=a.attempts,
                retries=a.retries,
                tokens_in=a.tokens_in,
                tokens_out=a.tokens_out,
                ttft_s=Percentiles.of(a.ttft),
                latency_s=Percentiles.of(a.latency),
                cooldowns=a.cooldowns,
                cooldown_s=a.cooldown_s,
            )
            for no, a in sorted(self._shards.items())
        )
        started = self._first_started_at
        return RunReport(
            run_id=self._run_id,
            shard_count=self._shard_count,
            proof_minute_utc=minute_iso(proof_minute) if proof_minute is not None else None,
            peak_aggregate_tpm_total=peak.prompt + peak.completion,
            peak_completion_tpm_out=peak.completion,
            peak_prompt_tpm_in=peak.prompt,
            events_sha256=events_sha256,
            items=self._items,
            succeeded=ok,
            failed=self._status.get("failed", 0),
            success_rate=_ratio(ok, self._items),
            attempts=self._attempts,
            retries=self._retries,
            retry_rate=_ratio(self._retries, self._items),
            retry_causes=dict(sorted(self._retry_causes.items())),
            ttft_s=Percentiles.of(self._ttft),
            latency_s=Percentiles.of(self._latency),
            tokens_in_total=self._tokens_in,
            tokens_out_total=self._tokens_out,
            cancelled=self._status.get("cancelled", 0),
            unfinished=len(self._open),
            success_rate_under_backlog=_ratio(backlog_ok, backlog_ended),
            backlog_minutes=len(backlog),
            backlog_items=backlog_ended,
            attempt_failures=dict(sorted(self._attempt_failures.items())),
            failure_causes=dict(sorted(self._failure_causes.items())),
            usage_estimated_items=self._usage_estimated,
            usage_missing_items=self._usage_missing,
            started_at_utc=(
                datetime.fromtimestamp(started, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                if started is not None
                else None
            ),
            duration_s=self._duration + self._seg_last_t,
            end_reason=self._end_reason,
            shards=shards,
            tpm_by_minute=tuple(tpm),
        )


def compute_report(events: Iterable[Event], *, events_sha256: str | None) -> RunReport:
    """Compute the report of a run from its events, in the order they were emitted.

    A pure function of the events: the same events give the same report, so a
    saved events file reproduces the live run's report exactly. Events are
    consumed one at a time (an :class:`~shardline._events.EventFileReader`
    streams a file without loading it).

    Example::

        with EventFileReader("events.jsonl") as reader:
            report = compute_report(reader, events_sha256=None)
            report = attrs.evolve(report, events_sha256=reader.hexdigest())

    Args:
        events: The run's events; the first must be ``run_start``.
        events_sha256: The digest to record in the report (``None`` when the
            events did not come from a file).

    Raises:
        ReportError: if there are no events or the first is not ``run_start``.
    """
    builder = ReportBuilder()
    for event in events:
        builder.emit(event)
    return builder.build(events_sha256=events_sha256)


# --- rendering --------------------------------------------------------------------------


def _fmt_s(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1.0:
        return f"{value * 1000:.0f} ms"
    return f"{value:.2f} s"


def _fmt_rate(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f} %"


def _fmt_duration(seconds: float) -> str:
    minutes, secs = divmod(seconds, 60.0)
    hours, minutes = divmod(int(minutes), 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02.0f}s"
    if minutes:
        return f"{minutes}m{secs:04.1f}s"
    return f"{secs:.1f}s"


def render_text(report: RunReport, *, width: int = 100) -> str:
    """A readable, plain-text report (rich tables, no colour), for terminals and logs.

    The proof block comes first, with the exact field names, so it can be
    pasted into a write-up; then items and retries, latency tails, and the
    per-shard breakdown.
    """
    import io

    from rich import box
    from rich.console import Console
    from rich.table import Table

    buf = io.StringIO()
    console = Console(file=buf, width=width, color_system=None, highlight=False, soft_wrap=False)

    proof = Table(title="proof", title_justify="left", show_header=False, box=None, pad_edge=False)
    proof.add_column(style="bold", no_wrap=True)
    proof.add_column(no_wrap=True)
    rows: list[tuple[str, str]] = [
        ("run_id", report.run_id),
        ("shard_count", str(report.shard_count)),
        ("proof_minute_utc", report.proof_minute_utc or "-"),
        ("peak_aggregate_tpm_total", f"{report.peak_aggregate_tpm_total:,}"),
        ("peak_completion_tpm_out", f"{report.peak_completion_tpm_out:,}"),
        ("peak_prompt_tpm_in", f"{report.peak_prompt_tpm_in:,}"),
        ("events_sha256", report.events_sha256 or "- (not from a file)"),
    ]
    for name, value in rows:
        proof.add_row(name, value)
    console.print(proof)
    console.print()

    summary = Table(
        title="items", title_justify="left", show_header=False, box=None, pad_edge=False
    )
    summary.add_column(style="bold", no_wrap=True)
    summary.add_column(no_wrap=True)
    summary.add_row("items", f"{report.items:,}")
    summary.add_row("succeeded", f"{report.succeeded:,}  ({_fmt_rate(report.success_rate)})")
    summary.add_row("failed", f"{report.failed:,}")
    summary.add_row("cancelled", f"{report.cancelled:,}")
    if report.unfinished:
        summary.add_row("unfinished", f"{report.unfinished:,}  (admitted, never ended)")
    if report.backlog_minutes:
        backlog = (
            f"{_fmt_rate(report.success_rate_under_backlog)} of {report.backlog_items:,} items "
            f"in {report.backlog_minutes} backlog minute(s)"
        )
    else:
        backlog = "- (no whole minute with a non-empty queue)"
    summary.add_row("under backlog", backlog)
    summary.add_row("attempts", f"{report.attempts:,}")
    summary.add_row("retries", f"{report.retries:,}  ({report.retry_rate or 0:.3f} per item)")
    summary.add_row("tokens_in_total", f"{report.tokens_in_total:,}")
    summary.add_row("tokens_out_total", f"{report.tokens_out_total:,}")
    if report.usage_estimated_items or report.usage_missing_items:
        summary.add_row(
            "usage",
            f"{report.usage_estimated_items:,} estimated, {report.usage_missing_items:,} missing",
        )
    summary.add_row("duration", _fmt_duration(report.duration_s))
    summary.add_row("started", report.started_at_utc or "-")
    summary.add_row("end", report.end_reason or "no run_end (incomplete)")
    console.print(summary)
    console.print()

    tails = Table(title="latency (successful items)", title_justify="left", box=box.SIMPLE)
    tails.add_column("")
    for q in ("p50", "p95", "p99"):
        tails.add_column(q, justify="right")
    for name, p in (("ttft_s", report.ttft_s), ("latency_s", report.latency_s)):
        tails.add_row(name, _fmt_s(p.p50), _fmt_s(p.p95), _fmt_s(p.p99))
    console.print(tails)

    causes = sorted(
        set(report.retry_causes) | set(report.attempt_failures) | set(report.failure_causes)
    )
    if causes:
        table = Table(title="causes", title_justify="left", box=box.SIMPLE)
        table.add_column("cause")
        table.add_column("failed attempts", justify="right")
        table.add_column("retries", justify="right")
        table.add_column("failed items", justify="right")
        for cause in causes:
            table.add_row(
                cause,
                str(report.attempt_failures.get(cause, 0)),
                str(report.retry_causes.get(cause, 0)),
                str(report.failure_causes.get(cause, 0)),
            )
        console.print(table)

    if report.shards:
        table = Table(title="shards", title_justify="left", box=box.SIMPLE)
        for name in ("shard", "items", "ok", "failed", "attempts", "retries", "tokens out"):
            table.add_column(name, justify="right")
        table.add_column("ttft p95", justify="right")
        table.add_column("cooldowns", justify="right")
        for s in report.shards:
            table.add_row(
                str(s.shard),
                f"{s.items:,}",
                f"{s.succeeded:,}",
                f"{s.failed:,}",
                f"{s.attempts:,}",
                f"{s.retries:,}",
                f"{s.tokens_out:,}",
                _fmt_s(s.ttft_s.p95),
                str(s.cooldowns),
            )
        console.print(table)
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines()) + "\n"


# --- live view --------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class LiveShard:
    """One shard in a :class:`LiveSnapshot`."""

    shard: int
    queued: int
    in_flight: int
    cooling: bool
    done: int
    retries: int


@attrs.frozen(kw_only=True)
class LiveSnapshot:
    """The live numbers at one moment, for a progress display. Immutable.

    ``tpm_*_current`` are the tokens of the current UTC minute so far (the
    minute of the latest event); ``tpm_total_previous`` is the last complete
    minute; ``peak_*`` is the best minute so far by the report's definition.
    """

    t: float
    run_id: str | None
    shard_count: int
    admitted: int
    done: int
    ok: int
    failed: int
    cancelled: int
    queued: int
    in_flight: int
    attempts: int
    retries: int
    retries_by_cause: Mapping[str, int]
    tokens_in_total: int
    tokens_out_total: int
    minute_utc: str | None
    tpm_in_current: int
    tpm_out_current: int
    tpm_total_current: int
    tpm_total_previous: int
    peak_minute_utc: str | None
    peak_tpm_total: int
    shards: tuple[LiveShard, ...]


@attrs.define(eq=False)
class _LiveShardAcc:
    queued: int = 0
    in_flight: int = 0
    cooling: bool = False
    done: int = 0
    retries: int = 0


class LiveMetrics:
    """Running counters for a progress display; an event sink that costs O(1) per event.

    Unlike :class:`ReportBuilder` it keeps no samples: only counters, the
    current and peak minute of tokens, and the set of queued item ids (bounded
    by the queues). Read it with :meth:`snapshot`::

        live = LiveMetrics()
        sink = TeeSink(JsonlEventSink(path), live)
        ...
        snap = live.snapshot()
        print(f"{snap.done}/{snap.admitted} done, {snap.tpm_total_current:,} TPM")
    """

    def __init__(self) -> None:
        self._run_id: str | None = None
        self._shard_count = 0
        self._started_at = 0.0
        self._t = 0.0
        self._admitted = 0
        self._status = {"ok": 0, "failed": 0, "cancelled": 0}
        self._attempts = 0
        self._retries = 0
        self._retry_causes: dict[str, int] = {}
        self._tokens_in = 0
        self._tokens_out = 0
        self._queued: dict[ItemId, int] = {}
        self._in_flight = 0
        self._shards: dict[int, _LiveShardAcc] = {}
        self._minute: int | None = None
        self._cur_in = 0
        self._cur_out = 0
        self._prev_total = 0
        self._peak_minute: int | None = None
        self._peak_total = 0

    def _shard(self, shard: int) -> _LiveShardAcc:
        acc = self._shards.get(shard)
        if acc is None:
            acc = self._shards[shard] = _LiveShardAcc()
        return acc

    def _roll(self, minute: int) -> None:
        if self._minute is None:
            self._minute = minute
        elif minute > self._minute:
            self._prev_total = self._cur_in + self._cur_out if minute == self._minute + 1 else 0
            self._minute = minute
            self._cur_in = self._cur_out = 0

    def emit(self, event: Event) -> None:
        """Update the counters with one event."""
        self._t = event.t
        if isinstance(event, RunStart):
            self._run_id = event.run_id
            self._shard_count = event.shard_count
            self._started_at = event.started_at
            self._queued.clear()
            self._in_flight = 0
            for acc in self._shards.values():
                acc.queued = acc.in_flight = 0
                acc.cooling = False
            return
        self._roll(utc_minute(self._started_at, event.t))
        if isinstance(event, ItemAdmitted):
            self._admitted += 1
            self._queued[event.item_id] = event.shard
            self._shard(event.shard).queued += 1
        elif isinstance(event, AttemptStart):
            self._attempts += 1
            self._unqueue(event.item_id)
            self._in_flight += 1
            self._shard(event.shard).in_flight += 1
        elif isinstance(event, AttemptEnd):
            self._in_flight -= 1
            self._shard(event.shard).in_flight -= 1
        elif isinstance(event, RetryScheduled):
            self._retries += 1
            self._retry_causes[event.cause] = self._retry_causes.get(event.cause, 0) + 1
            self._shard(event.shard).retries += 1
        elif isinstance(event, ItemEnd):
            self._unqueue(event.item_id)
            self._status[event.status] = self._status.get(event.status, 0) + 1
            if event.shard is not None:
                self._shard(event.shard).done += 1
            if event.status == "ok":
                p = event.prompt_tokens or 0
                c = event.completion_tokens or 0
                self._tokens_in += p
                self._tokens_out += c
                self._cur_in += p
                self._cur_out += c
                total = self._cur_in + self._cur_out
                if total > self._peak_total:
                    self._peak_total = total
                    self._peak_minute = self._minute
        elif isinstance(event, ShardState):
            self._shard(event.shard).cooling = event.state == "cooling"

    def _unqueue(self, item_id: ItemId) -> None:
        shard = self._queued.pop(item_id, None)
        if shard is not None:
            self._shard(shard).queued -= 1

    def close(self) -> None:
        """Nothing to release; present for the sink protocol."""

    def __repr__(self) -> str:
        done = sum(self._status.values())
        return (
            f"<LiveMetrics {done}/{self._admitted} done, {self._in_flight} in flight, "
            f"{len(self._queued)} queued>"
        )

    def snapshot(self, *, now_utc: float | None = None) -> LiveSnapshot:
        """The numbers now, as an immutable record.

        Args:
            now_utc: Wall-clock UTC seconds to judge the current minute by
                (default: the minute of the latest event). Pass
                ``time.time()`` for a display that should drop to zero when a
                minute passes without completions.
        """
        cur_in, cur_out, prev = self._cur_in, self._cur_out, self._prev_total
        minute = self._minute
        if now_utc is not None and minute is not None:
            now_minute = math.floor(now_utc / 60.0)
            if now_minute > minute:
                prev = cur_in + cur_out if now_minute == minute + 1 else 0
                cur_in = cur_out = 0
                minute = now_minute
        done = sum(self._status.values())
        return LiveSnapshot(
            t=self._t,
            run_id=self._run_id,
            shard_count=self._shard_count,
            admitted=self._admitted,
            done=done,
            ok=self._status.get("ok", 0),
            failed=self._status.get("failed", 0),
            cancelled=self._status.get("cancelled", 0),
            queued=len(self._queued),
            in_flight=self._in_flight,
            attempts=self._attempts,
            retries=self._retries,
            retries_by_cause=dict(sorted(self._retry_causes.items())),
            tokens_in_total=self._tokens_in,
            tokens_out_total=self._tokens_out,
            minute_utc=minute_iso(minute) if minute is not None else None,
            tpm_in_current=cur_in,
            tpm_out_current=cur_out,
            tpm_total_current=cur_in + cur_out,
            tpm_total_previous=prev,
            peak_minute_utc=minute_iso(self._peak_minute)
            if self._peak_minute is not None
            else None,
            peak_tpm_total=self._peak_total,
            shards=tuple(
                LiveShard(
                    shard=no,
                    queued=a.queued,
                    in_flight=a.in_flight,
                    cooling=a.cooling,
                    done=a.done,
                    retries=a.retries,
                )
                for no, a in sorted(self._shards.items())
            ),
        )
