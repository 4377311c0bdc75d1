"""Folding a run's events into its :class:`~shardline._report.RunReport`.

This module owns the computation: :class:`ReportBuilder` consumes events one
at a time (it is an event sink, so it can run live) and :func:`compute_report`
folds a whole stream. Both are pure functions of the events, so the report of
a saved events file equals the report computed live from the same events. The
definitions they implement are in :mod:`shardline._report`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime

import attrs

from ._events import (
    AttemptEnd,
    AttemptOutcome,
    AttemptStart,
    EndpointState,
    Event,
    FirstToken,
    HedgeSent,
    HedgeWon,
    ItemAdmitted,
    ItemEnd,
    LimitChange,
    RetryScheduled,
    RunEnd,
    RunStart,
    ShardCondition,
    ShardState,
)
from ._exceptions import Cause
from ._models import ItemId, Status
from ._report import (
    LimitReport,
    MinuteTokens,
    Percentiles,
    ReportError,
    RunReport,
    ShardReport,
    minute_iso,
    utc_minute,
)
from ._report_endpoints import EndpointAccs
from ._sketch import QuantileSketch

__all__ = ["ReportBuilder", "compute_report"]


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def _count(counter: dict[str, int], key: str) -> None:
    counter[key] = counter.get(key, 0) + 1


def _cause_key(cause: Cause | None) -> str:
    """The report's key for a cause: its string value, ``"unknown"`` when missing."""
    return "unknown" if cause is None else cause.value


def _percentiles(sketch: QuantileSketch) -> Percentiles:
    """p50, p95 and p99 of a sketch: exact up to its exact limit, within 1 % after."""
    return Percentiles(
        p50=sketch.percentile(50), p95=sketch.percentile(95), p99=sketch.percentile(99)
    )


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
    # Bounded whatever the number of items (see shardline._sketch).
    ttft: QuantileSketch = attrs.Factory(QuantileSketch)
    latency: QuantileSketch = attrs.Factory(QuantileSketch)
    cooldowns: int = 0
    cooldown_s: float = 0.0


@attrs.define(eq=False)
class _LimitAcc:
    """One endpoint's limit: seconds spent at each value, and its changes."""

    initial: int
    value: int
    since: float  # segment time the current value began
    low: int
    high: int
    seconds: dict[int, float] = attrs.Factory(dict)
    changes: int = 0
    increases: int = 0
    decreases: dict[str, int] = attrs.Factory(dict)
    in_segment: bool = True  # seen in the current segment (it holds a value in it)

    def hold(self, value: int, until: float) -> None:
        """Count the time from ``since`` to ``until`` at ``value``."""
        if until > self.since:
            self.seconds[value] = self.seconds.get(value, 0.0) + (until - self.since)
            self.since = until

    def change(self, event: LimitChange) -> None:
        if not self.in_segment:  # a resumed run's pipeline starts over at its initial value
            self.in_segment = True
            self.since = 0.0
        self.hold(event.old, event.t)
        self.value = event.new
        self.low = min(self.low, event.old, event.new)
        self.high = max(self.high, event.old, event.new)
        self.changes += 1
        if event.new > event.old:
            self.increases += 1
        elif event.new < event.old:
            _count(self.decreases, event.reason)

    def report(self, endpoint: int, seg_end: float) -> LimitReport:
        """The figures so far, the current value held to ``seg_end`` (on a copy)."""
        seconds = dict(self.seconds)
        if self.in_segment and seg_end > self.since:
            seconds[self.value] = seconds.get(self.value, 0.0) + (seg_end - self.since)
        total = sum(seconds.values())
        median = self.value
        if total > 0:
            acc = 0.0
            for value in sorted(seconds):
                acc += seconds[value]
                if acc >= total / 2:
                    median = value
                    break
        return LimitReport(
            endpoint=endpoint,
            initial=self.initial,
            final=self.value,
            min=self.low,
            median=median,
            max=self.high,
            changes=self.changes,
            increases=self.increases,
            decreases=dict(sorted(self.decreases.items())),
        )


@attrs.define(eq=False)
class _MinuteAcc:
    prompt: int = 0
    completion: int = 0
    ok_items: int = 0
    ended: int = 0


class ReportBuilder:
    """Folds events into a :class:`RunReport`, one event at a time; also an event sink.

    Feed it live (``TeeSink(jsonl, builder)``) or from a file, then call
    :meth:`build`. Memory: per shard, two quantile sketches (TTFT and
    latency: at most 2,048 samples each, then a bucket per 2 % of range,
    whatever the number of items), one small record per UTC minute, per endpoint the seconds
    spent at each value of its live limit (at most its ceiling of them), the ids of queued items,
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
        self._status = dict.fromkeys(Status, 0)
        self._attempts = 0
        self._retries = 0
        self._hedges = 0
        self._hedge_wins = 0
        self._retry_causes: dict[str, int] = {}
        self._attempt_failures: dict[str, int] = {}
        self._failure_causes: dict[str, int] = {}
        self._tokens_in = 0
        self._tokens_out = 0
        self._usage_estimated = 0
        self._usage_missing = 0
        self._by_api: dict[str, int] = {}
        self._answers: dict[str, int] = {}
        # Samples of successful items that ended on no shard; the run's
        # percentiles are these merged with every shard's.
        self._ttft = QuantileSketch()
        self._latency = QuantileSketch()
        self._shards: dict[int, _ShardAcc] = {}
        self._minutes: dict[int, _MinuteAcc] = {}
        self._limits: dict[int, _LimitAcc] = {}
        self._endpoints = EndpointAccs()
        # per-item state, bounded by queue and in-flight sizes
        self._queued: set[ItemId] = set()
        self._open: set[ItemId] = set()  # admitted, not ended
        self._ok_attempt: dict[ItemId, AttemptEnd] = {}
        # items whose last end was not ok: id -> (status, minute, shard, cause)
        self._not_ok: dict[ItemId, tuple[Status, int, int | None, Cause | None]] = {}
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
            self._endpoints.attempt_start(event)
            self._dequeue(event.item_id, t)
        elif isinstance(event, AttemptEnd):
            self._endpoints.attempt_end(event)
            if event.outcome is AttemptOutcome.FAILED:
                _count(self._attempt_failures, _cause_key(event.cause))
            elif event.outcome is AttemptOutcome.OK:
                self._ok_attempt[event.item_id] = event
        elif isinstance(event, HedgeSent):
            self._hedges += 1
        elif isinstance(event, HedgeWon):
            self._hedge_wins += event.leg == "hedge"
        elif isinstance(event, RetryScheduled):
            self._retries += 1
            self._shard(event.shard).retries += 1
            _count(self._retry_causes, event.cause.value)
        elif isinstance(event, ItemEnd):
            self._item_end(event)
        elif isinstance(event, ShardState):
            if event.state is ShardCondition.COOLING:
                acc = self._shard(event.shard)
                acc.cooldowns += 1
                acc.cooldown_s += event.cooldown_s or 0.0
        elif isinstance(event, LimitChange):
            self._limit_change(event)
        elif isinstance(event, RunEnd):
            self._end_reason = event.reason.value
        elif isinstance(event, FirstToken):
            self._endpoints.first_token(event)  # items' TTFT is from item_end / attempt_end
        elif isinstance(event, EndpointState):
            self._endpoints.state(event)

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
        self._endpoints.run_start(event.config)
        self._started_at = event.started_at
        self._seg_last_t = event.t
        self._end_reason = None

    def _limit_change(self, event: LimitChange) -> None:
        acc = self._limits.get(event.endpoint)
        if acc is None:
            acc = self._limits[event.endpoint] = _LimitAcc(
                initial=event.old, value=event.old, since=0.0, low=event.old, high=event.old
            )
        acc.change(event)

    def _end_segment(self) -> None:
        """Close the current segment: its queues are gone with its process."""
        for acc in self._limits.values():
            if acc.in_segment:
                acc.hold(acc.value, self._seg_last_t)
                acc.in_segment = False
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
        if status is not Status.OK:
            self._not_ok[item_id] = (status, minute, event.shard, event.cause)
            if status is Status.FAILED:
                _count(self._failure_causes, _cause_key(event.cause))
                if shard is not None:
                    shard.failed += 1
            elif shard is not None and status is Status.CANCELLED:
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
            self._count_answer(attempt)
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
        if shard is None:
            self._latency.add(event.latency_s)
            if ttft is not None:
                self._ttft.add(ttft)
        else:
            shard.succeeded += 1
            shard.tokens_in += prompt
            shard.tokens_out += completion
            shard.latency.add(event.latency_s)
            if ttft is not None:
                shard.ttft.add(ttft)

    def _count_answer(self, attempt: AttemptEnd) -> None:
        """Count the API of a successful item and what its answer held."""
        if attempt.api is not None:
            _count(self._by_api, attempt.api)
        answers = self._answers
        for key, value in (
            ("tool_call_items", attempt.tool_calls > 0),
            ("tool_calls", attempt.tool_calls),
            ("tool_arguments_invalid", attempt.tool_arguments_invalid),
            ("reasoning_items", attempt.reasoning),
            ("refusal_items", attempt.refusal),
            ("embeddings", attempt.embeddings),
        ):
            if value:
                answers[key] = answers.get(key, 0) + int(value)

    def _forget(self, previous: tuple[Status, int, int | None, Cause | None]) -> None:
        """Undo the counts of an earlier, superseded end of the same item (a resumed run)."""
        status, minute, shard_no, cause = previous
        self._status[status] -= 1
        self._minutes[minute].ended -= 1
        if status is Status.FAILED:
            key = _cause_key(cause)
            self._failure_causes[key] -= 1
            if not self._failure_causes[key]:
                del self._failure_causes[key]
        if shard_no is not None:
            acc = self._shards[shard_no]
            acc.items -= 1
            if status is Status.FAILED:
                acc.failed -= 1
            elif status is Status.CANCELLED:
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
        ok = self._status[Status.OK]
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
                ttft_s=_percentiles(a.ttft),
                latency_s=_percentiles(a.latency),
                cooldowns=a.cooldowns,
                cooldown_s=a.cooldown_s,
            )
            for no, a in sorted(self._shards.items())
        )
        ttft, latency = self._ttft.copy(), self._latency.copy()
        for a in self._shards.values():
            ttft.merge(a.ttft)
            latency.merge(a.latency)
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
            failed=self._status[Status.FAILED],
            success_rate=_ratio(ok, self._items),
            attempts=self._attempts,
            retries=self._retries,
            retry_rate=_ratio(self._retries, self._items),
            retry_causes=dict(sorted(self._retry_causes.items())),
            ttft_s=_percentiles(ttft),
            latency_s=_percentiles(latency),
            tokens_in_total=self._tokens_in,
            tokens_out_total=self._tokens_out,
            cancelled=self._status[Status.CANCELLED],
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
            limits=tuple(
                acc.report(no, self._seg_last_t) for no, acc in sorted(self._limits.items())
            ),
            endpoints=self._endpoints.report(self._seg_last_t),
            items_by_api=dict(sorted(self._by_api.items())),
            answer_counts=dict(self._answers),
            hedges=self._hedges,
            hedge_wins=self._hedge_wins,
            hedge_rate=_ratio(self._hedges, self._attempts - self._hedges),
        )


def compute_report(events: Iterable[Event], *, events_sha256: str | None) -> RunReport:
    """Compute the report of a run from its events, in the order they were emitted.

    A pure function of the events: the same events give the same report, so a
    saved events file reproduces the live run's report exactly. Events are
    consumed one at a time (an :class:`~shardline.events.EventFileReader`
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
