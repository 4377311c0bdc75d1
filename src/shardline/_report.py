"""What a run report is: its records, and the arithmetic they share.

This module owns the report's *shape* (:class:`RunReport`, :class:`ShardReport`,
:class:`Percentiles`, :class:`MinuteTokens`), their JSON form, and the small
definitions every view of a run must agree on: the UTC minute of a run time
(:func:`utc_minute`) and the percentile (:func:`percentile`). It computes
nothing from events: :mod:`shardline._report_builder` folds events into these
records, :mod:`shardline._report_text` renders them and :mod:`shardline._live`
keeps running counters with the same minute definition.

Definitions (the metrics page of the docs explains them at length):

* **TPM buckets.** Tokens of successful items (``item_end`` with status
  ``ok``; ``prompt_tokens`` and ``completion_tokens`` as recorded on it) are
  attributed to the UTC minute the item completed,
  ``floor((run_start.started_at + t) / 60)``. The *proof minute* is the minute
  with the most tokens in total (the earliest on a tie); ``peak_*`` are that
  one minute's numbers.
* **TTFT** of an item: from sending its successful attempt to that attempt's
  first content event (``item_end.ttft_s``); for a hedged attempt, from the
  send of its first leg, whichever leg won. **Latency**: from admission to the
  item's end (``item_end.latency_s``). Both over successful items only.
* **Percentiles** interpolate linearly between the two nearest ranks (the
  default of ``numpy.percentile`` and ``pandas.Series.quantile``). The report
  builder takes them from a :class:`~shardline._sketch.QuantileSketch`: exact
  up to 2,048 samples, within 1 % of these after.
* **Retries** count ``retry_scheduled`` events; ``retry_causes`` counts their
  causes. ``attempt_failures`` counts the causes of every failed attempt,
  retried or not. ``retry_rate`` is retries per item (the unit of the retry
  budget), ``success_rate`` succeeded per item; items are all items that
  ended (ok, failed or cancelled).
* **Hedges** count ``hedge_sent`` events, ``hedge_wins`` the ``hedge_won``
  events whose winner is the hedge; ``hedge_rate`` is the extra requests
  hedging sent, ``hedges / (attempts - hedges)`` (the share the budget bounds).
* **Live limit.** Per endpoint, from ``limit_change`` events: the limit holds
  each value from one change to the next; it starts at the first event's
  ``old`` (its initial value) at the segment's start and holds its last value
  to the segment's last event. ``median`` is time-weighted: the smallest value
  the limit was at or below for at least half of that time. ``decreases``
  counts the overload signals that lowered it, by reason.
* **Backlog.** An item is *queued* from its ``item_admitted`` until its first
  ``attempt_start`` (or its ``item_end``, if it never started). A *backlog
  minute* is a whole UTC minute throughout which at least one item was queued:
  the queued count was above zero at the minute's start and no event inside
  the minute left it at zero. ``success_rate_under_backlog`` is the success
  rate of the items that ended in backlog minutes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import attrs

from ._exceptions import ShardlineError

__all__ = [
    "EndpointReport",
    "LimitReport",
    "MinuteTokens",
    "Percentiles",
    "ReportError",
    "RunReport",
    "ShardReport",
    "minute_iso",
    "percentile",
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
class EndpointReport:
    """One endpoint of a run with several (``PipelineConfig.endpoints``), by the
    attempts sent to it; a run with one endpoint has no such rows.

    Attributes:
        endpoint: The endpoint's number.
        base_url: Its URL (no credentials are ever in it).
        shards: The shards that talk to it.
        attempts: Attempts sent to it (including those sent for other shards' items).
        ok_attempts: Those that ended with an answer.
        failed_attempts: Those that failed, by cause.
        ttft_s: Time to first token of its attempts (``first_token`` events).
        opened: Times its circuit opened.
        open_s: Seconds its circuit was not closed.
    """

    endpoint: int
    base_url: str
    shards: tuple[int, ...]
    attempts: int
    ok_attempts: int
    failed_attempts: dict[str, int]
    ttft_s: Percentiles
    opened: int
    open_s: float

    def to_json(self) -> dict[str, Any]:
        """The endpoint's figures as a JSON object."""
        out = {f.name: getattr(self, f.name) for f in attrs.fields(EndpointReport)}
        out["shards"] = list(self.shards)
        out["failed_attempts"] = dict(self.failed_attempts)
        out["ttft_s"] = self.ttft_s.to_json()
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> EndpointReport:
        """The inverse of :meth:`to_json`."""
        kwargs = {f.name: obj[f.name] for f in attrs.fields(EndpointReport)}
        kwargs["shards"] = tuple(kwargs["shards"])
        kwargs["failed_attempts"] = dict(kwargs["failed_attempts"])
        kwargs["ttft_s"] = Percentiles.from_json(kwargs["ttft_s"])
        return cls(**kwargs)


@attrs.frozen(kw_only=True)
class LimitReport:
    """One endpoint's live in-flight limit over the run, from its ``limit_change`` events.

    The limit holds each value from one change to the next: it starts at its
    initial value (the first event's ``old``) when the run starts and keeps its
    last value to the run's last event. An endpoint whose limit never changed
    (adaptive flow control off, or a run too short to move it) has no row.

    Attributes:
        endpoint: The endpoint's number.
        initial: The limit before its first change.
        final: The limit after its last change.
        min: The lowest value it held.
        median: The time-weighted median: the smallest value it was at or below
            for at least half of the run's time (the last value when no time passed).
        max: The highest value it held.
        changes: ``limit_change`` events.
        increases: Changes that raised it.
        decreases: Changes that lowered it, by reason (``rate_limited``,
            ``server_error``, ``connection_lost``, a timeout, ``latency``,
            ``measure``): the overload signals it acted on.
    """

    endpoint: int
    initial: int
    final: int
    min: int
    median: int
    max: int
    changes: int
    increases: int
    decreases: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        """The endpoint's limit figures as a JSON object."""
        out = {f.name: getattr(self, f.name) for f in attrs.fields(LimitReport)}
        out["decreases"] = dict(self.decreases)
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> LimitReport:
        """The inverse of :meth:`to_json`."""
        kwargs = {f.name: obj[f.name] for f in attrs.fields(LimitReport)}
        kwargs["decreases"] = dict(kwargs["decreases"])
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
        endpoints: With several endpoints, one :class:`EndpointReport` each.
        limits: Per endpoint, its live in-flight limit (:class:`LimitReport`);
            empty when no ``limit_change`` event was seen.
        items_by_api: Successful items per API (``chat``, ``completions``,
            ``embeddings``, ``responses``); empty for events without ``api``.
        answer_counts: What the successful answers held: ``tool_call_items``
            (items with at least one tool call), ``tool_calls``,
            ``tool_arguments_invalid`` (calls whose arguments are not a JSON
            object), ``reasoning_items``, ``refusal_items``, ``embeddings``
            (vectors); keys with a zero count are left out.
        hedges: Hedges sent (``hedge_sent`` events; they are counted in ``attempts``).
        hedge_wins: Hedged attempts the hedge won (its first content came first).
        hedge_rate: ``hedges / (attempts - hedges)``: the extra requests, as a share.
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
    limits: tuple[LimitReport, ...] = ()
    endpoints: tuple[EndpointReport, ...] = ()
    items_by_api: dict[str, int] = attrs.field(factory=dict)
    answer_counts: dict[str, int] = attrs.field(factory=dict)
    hedges: int = 0
    hedge_wins: int = 0
    hedge_rate: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON object, keys in field order (the ``--json`` output)."""
        out: dict[str, Any] = {}
        for f in attrs.fields(RunReport):
            value = getattr(self, f.name)
            if isinstance(value, Percentiles):
                value = value.to_json()
            elif f.name in ("shards", "tpm_by_minute", "limits", "endpoints"):
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
            elif f.name == "limits":
                value = tuple(LimitReport.from_json(v) for v in value)
            elif f.name == "endpoints":
                value = tuple(EndpointReport.from_json(v) for v in value)
            kwargs[f.name] = value
        return cls(**kwargs)
