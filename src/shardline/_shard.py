"""One shard: its own queue, its own in-flight cap, its own connection pool.

A shard is deliberately boring: a bounded memory channel (its queue), a
:class:`trio.CapacityLimiter` (its in-flight cap) and one
:class:`httpx.AsyncClient` whose pool is sized to that cap. A shard that is
stuck, cooling down after a 429, or full blocks only its own items.
"""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import attrs
import httpx
import trio

from ._attempt import AttemptResult, send_attempt
from ._backoff import is_testing
from ._events import (
    AttemptEnd,
    AttemptStart,
    FirstToken,
    ItemEnd,
    RetryScheduled,
    ShardState,
)
from ._exceptions import AttemptError, Cause, ItemCancelled, RateLimited
from ._models import ItemId, Outcome, Request, Result, Status, Usage, estimate_tokens

if TYPE_CHECKING:
    from ._pipeline import Pipeline

__all__ = ["Shard", "ShardStatistics"]

#: How long cleanup after cancellation (recording and handing over a cancelled
#: item's outcome) may take, under a shielded scope.
CLEANUP_GRACE_S = 1.0


@attrs.frozen(kw_only=True)
class ShardStatistics:
    """A snapshot of one shard, from :meth:`Pipeline.statistics`.

    Attributes:
        shard: The shard's index.
        queued: Items waiting in the shard's queue.
        in_flight: HTTP attempts under way right now.
        busy: Items holding one of the shard's slots (sending, waiting for a
            retry, or waiting out a cooldown); never above ``capacity``.
        capacity: The shard's in-flight cap.
        cooling: True while the shard waits out a server's Retry-After.
        done: Items that reached a terminal outcome on this shard.
        retries: Retries scheduled on this shard.
    """

    shard: int
    queued: int
    in_flight: int
    busy: int
    capacity: int
    cooling: bool
    done: int
    retries: int


@attrs.define(eq=False)
class WorkItem:
    """An admitted item travelling through a shard (internal)."""

    id: ItemId
    request: Request
    outcomes: trio.MemorySendChannel[Outcome]
    admitted_at: float
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    attempts: int = 0


@attrs.define(eq=False, repr=False)
class Shard:
    """A queue, an in-flight cap and a connection pool, run by one task."""

    index: int
    pipeline: Pipeline
    client: httpx.AsyncClient
    capacity: int
    queue_size: int
    rng: random.Random
    _send: trio.MemorySendChannel[WorkItem] = attrs.field(init=False)
    _recv: trio.MemoryReceiveChannel[WorkItem] = attrs.field(init=False)
    _slots: trio.Semaphore = attrs.field(init=False)
    _limiter: trio.CapacityLimiter = attrs.field(init=False)
    _acquire_scope: trio.CancelScope | None = attrs.field(init=False, default=None)
    _cooling_until: float = attrs.field(init=False, default=-math.inf)
    _cooling: bool = attrs.field(init=False, default=False)
    in_flight: int = attrs.field(init=False, default=0)
    busy: int = attrs.field(init=False, default=0)
    done: int = attrs.field(init=False, default=0)
    retries: int = attrs.field(init=False, default=0)
    scope: trio.CancelScope = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._send, self._recv = trio.open_memory_channel[WorkItem](self.queue_size)
        self._slots = trio.Semaphore(self.queue_size)
        self._limiter = trio.CapacityLimiter(self.capacity)
        # Shielded: the pipeline, not the caller's cancellation, decides when a
        # shard stops, so leaving the pipeline can drain with a grace period.
        self.scope = trio.CancelScope(shield=True)

    def __repr__(self) -> str:
        cooling = ", cooling" if self._cooling else ""
        return (
            f"<Shard {self.index}: {self.in_flight}/{self.capacity} in flight, "
            f"{self.queued} queued{cooling}>"
        )

    @property
    def queued(self) -> int:
        return self.queue_size - self._slots.value

    @property
    def load(self) -> int:
        """Queued plus busy items: what least-loaded routing compares."""
        return self.queued + self.busy

    def statistics(self) -> ShardStatistics:
        return ShardStatistics(
            shard=self.index,
            queued=self.queued,
            in_flight=self.in_flight,
            busy=self.busy,
            capacity=self.capacity,
            cooling=self._cooling,
            done=self.done,
            retries=self.retries,
        )

    # -- admission side ---------------------------------------------------

    async def put(self, item: WorkItem) -> None:
        """Wait for room in the queue, record admission, enqueue (never blocks after)."""
        await self._slots.acquire()
        try:
            item.admitted_at = self.pipeline.now()
            self.pipeline._record_admission(item, self.index)
            self._send.send_nowait(item)
        except BaseException:
            self._slots.release()
            raise

    def close_queue(self) -> None:
        """Stop accepting items; items still queued end as cancelled."""
        self._send.close()
        if self._acquire_scope is not None:
            self._acquire_scope.cancel()

    # -- the shard task ---------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run items from the queue, each in its own task, at most ``capacity`` at once.

        A slot is taken *before* an item leaves the queue, so an item is always
        either queued or holding a slot, never in between. Returns when the
        queue is closed and empty and every item has ended.
        """
        with self.scope:
            async with trio.open_nursery() as nursery:
                task_status.started()
                async with self._recv:
                    try:
                        await self._take_items(nursery)
                    finally:
                        # Draining (or cancelled by Pipeline.cancel()): what is still
                        # queued ends as cancelled, unsent. Synchronous on purpose, so
                        # it also runs when this shard's scope is cancelled.
                        self._end_queued(nursery)

    async def _take_items(self, nursery: trio.Nursery) -> None:
        while not self.pipeline._draining:
            token = object()
            acquired = False
            with trio.CancelScope() as self._acquire_scope:
                await self._limiter.acquire_on_behalf_of(token)
                acquired = True
            self._acquire_scope = None
            if not acquired:
                return
            try:
                item = await self._recv.receive()
            except trio.EndOfChannel:
                self._limiter.release_on_behalf_of(token)
                return
            except BaseException:
                self._limiter.release_on_behalf_of(token)
                raise
            self._slots.release()
            if item.scope.cancel_called or self.pipeline._draining:
                self._limiter.release_on_behalf_of(token)
                nursery.start_soon(self._end_unsent, item)
            else:
                nursery.start_soon(self._run_item, item, token)

    def _end_queued(self, nursery: trio.Nursery) -> None:
        while True:
            try:
                item = self._recv.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return
            self._slots.release()
            nursery.start_soon(self._end_unsent, item)

    async def _end_unsent(self, item: WorkItem) -> None:
        reason = (
            "cancelled by the caller before it was sent"
            if item.scope.cancel_called
            else "pipeline closed before the item was sent"
        )
        await self._finish(item, self._unfinished(item, ItemCancelled(reason, item_id=item.id)))

    async def _run_item(self, item: WorkItem, token: object) -> None:
        self.busy += 1
        try:
            try:
                outcome = await self._attempts(item)
            except trio.Cancelled:
                # The drain grace ran out: the item still gets its one outcome.
                with trio.CancelScope(shield=True) as cleanup:
                    cleanup.deadline = trio.current_time() + CLEANUP_GRACE_S
                    error = ItemCancelled(
                        "cancelled in flight when the drain grace ran out", item_id=item.id
                    )
                    await self._finish(item, self._unfinished(item, error))
                raise
            await self._finish(item, outcome)
        finally:
            self.busy -= 1
            self._limiter.release_on_behalf_of(token)

    async def _wait_cooldown(self) -> None:
        waited = False
        while trio.current_time() < self._cooling_until:
            waited = True
            await trio.sleep_until(self._cooling_until)
        if waited:
            # Spread the shard's waiters so they do not all resend at one instant.
            jitter = self.pipeline.config.retry.retry_after_jitter
            if jitter > 0 and not is_testing():
                await trio.sleep(self.rng.uniform(0.0, jitter))
        if self._cooling:
            self._cooling = False
            self.pipeline._emit(
                ShardState(t=self.pipeline.now(), shard=self.index, state="resumed")
            )

    def _cool_for(self, seconds: float) -> None:
        until = trio.current_time() + seconds
        if until > self._cooling_until:
            self._cooling_until = until
            self._cooling = True
            self.pipeline._emit(
                ShardState(
                    t=self.pipeline.now(), shard=self.index, state="cooling", cooldown_s=seconds
                )
            )

    async def _attempts(self, item: WorkItem) -> Outcome:
        """The retry loop of one item. Returns its terminal outcome."""
        pipeline = self.pipeline
        policy = pipeline.config.retry
        request = item.request
        estimate_in = estimate_tokens(request.prompt_text())
        estimate_out = request.max_tokens() or pipeline._default_max_tokens
        pipeline._budget.record_request()
        attempt = 0
        last_error: AttemptError | None = None
        with item.scope:
            while True:
                attempt += 1
                await self._wait_cooldown()
                await pipeline._wait_rate(1)
                tpm_charge = await pipeline._charge_tokens(estimate_in + estimate_out)
                started = pipeline.now()
                item.attempts = attempt
                pipeline._emit(
                    AttemptStart(t=started, item_id=item.id, shard=self.index, attempt=attempt)
                )

                def first_token(ttft_s: float, _attempt: int = attempt) -> None:
                    pipeline._emit(
                        FirstToken(
                            t=pipeline.now(),
                            item_id=item.id,
                            shard=self.index,
                            attempt=_attempt,
                            ttft_s=ttft_s,
                        )
                    )

                self.in_flight += 1
                try:
                    result: AttemptResult = await send_attempt(
                        self.client,
                        pipeline.config.endpoint,
                        request,
                        pipeline.config.deadlines,
                        headers={
                            "x-shardline-item-id": quote(str(item.id), safe=""),
                            "x-shardline-attempt": str(attempt),
                        },
                        on_first_token=first_token,
                    )
                except AttemptError as err:
                    # A server that answered 200 has processed the prompt; one that
                    # refused (429, 5xx) or never answered has not.
                    accepted = err.status_code is not None and err.status_code < 300
                    pipeline._reconcile_tokens(tpm_charge, estimate_in if accepted else 0)
                    last_error = err
                    err.item_id, err.shard, err.attempt = item.id, self.index, attempt
                    self._attempt_ended(
                        item,
                        attempt,
                        "failed",
                        cause=err.cause.value,
                        status_code=err.status_code,
                        duration_s=pipeline.now() - started,
                        retry_after_s=err.retry_after,
                        message=err.message,
                    )
                except trio.Cancelled:
                    pipeline._reconcile_tokens(tpm_charge, 0)
                    self._attempt_ended(
                        item,
                        attempt,
                        "cancelled",
                        cause=Cause.CANCELLED.value,
                        duration_s=pipeline.now() - started,
                    )
                    raise
                else:
                    pipeline._reconcile_tokens(tpm_charge, result.usage.total_tokens)
                    self._attempt_ended(
                        item,
                        attempt,
                        "ok",
                        status_code=result.status_code,
                        prompt_tokens=result.usage.prompt_tokens,
                        completion_tokens=result.usage.completion_tokens,
                        usage_estimated=result.usage.estimated,
                        ttft_s=result.ttft_s,
                        duration_s=result.duration_s,
                    )
                    return Outcome(
                        id=item.id,
                        status=Status.OK,
                        result=Result(
                            id=item.id,
                            text=result.text,
                            finish_reason=result.finish_reason,
                            usage=result.usage,
                            attempts=attempt,
                            shard=self.index,
                            ttft_s=result.ttft_s,
                            latency_s=pipeline.now() - item.admitted_at,
                        ),
                        attempts=attempt,
                        shard=self.index,
                        latency_s=pipeline.now() - item.admitted_at,
                    )
                finally:
                    self.in_flight -= 1

                # The attempt failed: back off and retry, or give up. A 429 with
                # Retry-After cools the whole shard, so its other requests wait too.
                delay = policy.delay(last_error, attempt, self.rng)
                # A 429 that says when to come back is paced by the server: the
                # whole shard waits it out, and the retry does not spend the
                # budget, which guards the blind retries (5xx, timeouts, resets).
                paced = isinstance(last_error, RateLimited) and last_error.retry_after is not None
                if paced:
                    self._cool_for(delay)
                if not (
                    policy.should_retry(last_error.cause, attempt)
                    and (paced or pipeline._budget.try_acquire_retry())
                ):
                    break
                self.retries += 1
                pipeline._emit(
                    RetryScheduled(
                        t=pipeline.now(),
                        item_id=item.id,
                        shard=self.index,
                        attempt=attempt + 1,
                        delay_s=delay,
                        cause=last_error.cause.value,
                    )
                )
                await trio.sleep(delay)

        if item.scope.cancelled_caught:
            return self._unfinished(
                item, ItemCancelled("cancelled while in flight", item_id=item.id)
            )
        assert last_error is not None
        return self._unfinished(item, last_error)

    def _unfinished(self, item: WorkItem, error: AttemptError | ItemCancelled) -> Outcome:
        """The outcome of an item that ends without a result: failed, or cancelled."""
        return Outcome(
            id=item.id,
            status=Status.CANCELLED if isinstance(error, ItemCancelled) else Status.FAILED,
            error=error,
            attempts=item.attempts,
            shard=self.index,
            latency_s=self.pipeline.now() - item.admitted_at,
        )

    def _attempt_ended(self, item: WorkItem, attempt: int, outcome: str, **fields: Any) -> None:
        self.pipeline._emit(
            AttemptEnd(
                t=self.pipeline.now(),
                item_id=item.id,
                shard=self.index,
                attempt=attempt,
                outcome=outcome,
                **fields,
            )
        )

    async def _finish(self, item: WorkItem, outcome: Outcome) -> None:
        """Record the item's one terminal outcome and hand it to its owner."""
        self.done += 1
        self.pipeline._record_end(item, outcome)
        usage: Usage | None = outcome.result.usage if outcome.result is not None else None
        self.pipeline._emit(
            ItemEnd(
                t=self.pipeline.now(),
                item_id=item.id,
                shard=self.index,
                status=outcome.status.value,
                attempts=outcome.attempts,
                latency_s=outcome.latency_s,
                cause=None if outcome.cause is None else outcome.cause.value,
                prompt_tokens=None if usage is None else usage.prompt_tokens,
                completion_tokens=None if usage is None else usage.completion_tokens,
                usage_estimated=False if usage is None else usage.estimated,
                ttft_s=None if outcome.result is None else outcome.result.ttft_s,
            )
        )
        await deliver(item.outcomes, outcome)


async def deliver(channel: trio.MemorySendChannel[Outcome], outcome: Outcome) -> None:
    """Send an outcome to its owner and close our handle; an owner who went away
    (closed their receive side) is not an error."""
    try:
        try:
            channel.send_nowait(outcome)
        except trio.WouldBlock:
            await channel.send(outcome)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        channel.close()
