"""Live metrics: running counters over a run's events, for a progress display.

This module owns :class:`LiveMetrics` (an O(1)-per-event sink) and the
immutable :class:`LiveSnapshot` / :class:`LiveShard` records it hands out. It
keeps no samples; for the full report use
:class:`~shardline._report_builder.ReportBuilder`. Minutes are bucketed with
the report's own :func:`~shardline._report.utc_minute`, so the live peak and
the report's proof minute agree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import attrs

from ._events import (
    AttemptEnd,
    AttemptStart,
    Event,
    ItemAdmitted,
    ItemEnd,
    RetryScheduled,
    RunStart,
    ShardCondition,
    ShardState,
)
from ._models import ItemId, Status
from ._report import minute_iso, utc_minute

__all__ = ["LiveMetrics", "LiveShard", "LiveSnapshot"]


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
        self._status = dict.fromkeys(Status, 0)
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
            cause = event.cause.value
            self._retry_causes[cause] = self._retry_causes.get(cause, 0) + 1
            self._shard(event.shard).retries += 1
        elif isinstance(event, ItemEnd):
            self._unqueue(event.item_id)
            self._status[event.status] += 1
            if event.shard is not None:
                self._shard(event.shard).done += 1
            if event.status is Status.OK:
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
            self._shard(event.shard).cooling = event.state is ShardCondition.COOLING

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
            ok=self._status[Status.OK],
            failed=self._status[Status.FAILED],
            cancelled=self._status[Status.CANCELLED],
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
