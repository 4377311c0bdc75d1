"""One shard: its own queue, its own in-flight cap, its own connection pool.

A shard is deliberately boring: a bounded memory channel (its queue), a
:class:`trio.CapacityLimiter` (its in-flight cap) and one
:class:`httpx.AsyncClient` whose pool is sized to that cap. A shard that is
stuck, cooling down after a 429, or full blocks only its own items.

What a shard needs from the pipeline that owns it comes in one small record,
:class:`RunState`, which the pipeline builds and both sides share (as trio's
memory channels share one ``MemoryChannelState``): the settings, the event
sink, the run's clock, and the limits shared by every shard (RPM, TPM, retry
budget). A shard never sees the pipeline itself.

The life of an item on a shard::

    queue ──(an active slot)──▶ item task
        per attempt: cooldown → in-flight slot → RPM → TPM → send_attempt
        failed:      release the slot → backoff → retry budget → next attempt
        finally:     one Outcome, to its owner's channel

Items between attempts hold no in-flight slot, so a retry waiting for its
backoff or for the budget does not stop the shard's other items; the number
of items in progress on a shard is bounded all the same (``2 * capacity``).
"""

from __future__ import annotations

import logging
import math
import random
from typing import TYPE_CHECKING

import attrs
import httpx
import trio

from ._backoff import is_testing
from ._events import (
    ItemAdmitted,
    ItemEnd,
    RetryScheduled,
    ShardState,
)
from ._exceptions import AttemptError, ConnectError, InternalError, ItemCancelled, RateLimited
from ._flow import FlowPermit
from ._models import Outcome, Status, Usage, estimate_tokens
from ._send import defect, not_sent, send_one
from ._state import (
    CLEANUP_GRACE_S,
    DEFAULT_MAX_TOKENS,
    RunState,
    ShardStatistics,
    Upstream,
    WorkItem,
    deliver,
)

if TYPE_CHECKING:
    from ._hedge import Hedger

__all__ = ["Shard"]

log = logging.getLogger("shardline")

#: Items in progress on a shard (sending, or between attempts) per unit of its
#: in-flight cap: room for as many items waiting to retry as are sending.
ACTIVE_PER_SLOT = 2


@attrs.define(eq=False, repr=False)
class Shard:
    """A queue, an in-flight cap and a connection pool, run by one task."""

    index: int
    state: RunState
    upstream: Upstream
    client: httpx.AsyncClient
    capacity: int
    queue_size: int
    rng: random.Random
    #: Every shard of the run, this one included (shared with the pipeline):
    #: where an attempt goes when this shard's endpoint is unhealthy.
    peers: list[Shard] = attrs.field(factory=list)
    #: Hedging of slow first tokens, shared by the pipeline's shards (``None``: off).
    hedger: Hedger | None = None
    _send: trio.MemorySendChannel[WorkItem] = attrs.field(init=False)
    _recv: trio.MemoryReceiveChannel[WorkItem] = attrs.field(init=False)
    _slots: trio.Semaphore = attrs.field(init=False)
    _active: trio.CapacityLimiter = attrs.field(init=False)
    _limiter: trio.CapacityLimiter = attrs.field(init=False)
    _acquire_scope: trio.CancelScope | None = attrs.field(init=False, default=None)
    # Items taken from the queue, still waiting for the slot of their first attempt.
    _unsent: set[trio.CancelScope] = attrs.field(init=False, factory=set)
    _cooling_until: float = attrs.field(init=False, default=-math.inf)
    _cooling: bool = attrs.field(init=False, default=False)
    in_flight: int = attrs.field(init=False, default=0)
    busy: int = attrs.field(init=False, default=0)
    retrying: int = attrs.field(init=False, default=0)
    done: int = attrs.field(init=False, default=0)
    retries: int = attrs.field(init=False, default=0)
    scope: trio.CancelScope = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._send, self._recv = trio.open_memory_channel[WorkItem](self.queue_size)
        self._slots = trio.Semaphore(self.queue_size)
        self._active = trio.CapacityLimiter(ACTIVE_PER_SLOT * self.capacity)
        self._limiter = trio.CapacityLimiter(self.capacity)
        # Shielded: the pipeline, not the caller's cancellation, decides when a
        # shard stops, so leaving the pipeline can drain with a grace period.
        self.scope = trio.CancelScope(shield=True)

    def __repr__(self) -> str:
        cooling = ", cooling" if self._cooling else ""
        return (
            f"<Shard {self.index}: {self.in_flight}/{self.capacity} in flight, "
            f"{self.queued} queued, {self.retrying} waiting to retry{cooling}>"
        )

    @property
    def queued(self) -> int:
        """Items not sent yet: in the queue, or taken from it and waiting for a first slot."""
        return self.queue_size - self._slots.value + len(self._unsent)

    @property
    def load(self) -> int:
        """Queued plus busy items: what least-loaded routing compares."""
        return self.queue_size - self._slots.value + self.busy

    def statistics(self) -> ShardStatistics:
        return ShardStatistics(
            shard=self.index,
            queued=self.queued,
            in_flight=self.in_flight,
            busy=self.busy,
            retrying=self.retrying,
            capacity=self.capacity,
            cooling=self._cooling,
            done=self.done,
            retries=self.retries,
            endpoint=self.upstream.index,
            circuit="closed"
            if self.upstream.breaker is None
            else self.upstream.breaker.state.value,
        )

    # -- admission side ---------------------------------------------------

    async def put(self, item: WorkItem) -> None:
        """Wait for room in the queue, enqueue, record admission (never blocks after).

        The admission is recorded only once the item is in the queue: if the
        queue closed meanwhile (``Pipeline.cancel()``), the item was not admitted.
        """
        await self._slots.acquire()
        state = self.state
        item.admitted_at = state.now()
        try:
            self._send.send_nowait(item)
        except BaseException:
            self._slots.release()
            raise
        # Synchronous from here: the shard task cannot take the item before
        # its admission is recorded.
        state.admitted += 1
        state.emit(ItemAdmitted(t=item.admitted_at, item_id=item.id, shard=self.index))

    def close_queue(self) -> None:
        """Stop accepting items; items not sent yet end as cancelled."""
        self._send.close()
        if self._acquire_scope is not None:
            self._acquire_scope.cancel()
        for scope in self._unsent:
            scope.cancel()

    # -- the shard task ---------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run items from the queue, each in its own task.

        An active slot is taken *before* an item leaves the queue, so an item
        is always either queued or active, never in between; at most
        ``capacity`` of the active items send at once. Returns when the queue
        is closed and empty and every item has ended.
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
        while not self.state.draining:
            token = object()
            acquired = False
            with trio.CancelScope() as self._acquire_scope:
                await self._active.acquire_on_behalf_of(token)
                acquired = True
            self._acquire_scope = None
            if not acquired:
                return
            try:
                item = await self._recv.receive()
            except trio.EndOfChannel:
                self._active.release_on_behalf_of(token)
                return
            except BaseException:
                self._active.release_on_behalf_of(token)
                raise
            self._slots.release()
            if item.scope.cancel_called or self.state.draining:
                self._active.release_on_behalf_of(token)
                nursery.start_soon(self._end_unsent, item)
            else:
                # Busy from the moment it leaves the queue, not from when its task
                # first runs: least-loaded routing must not see it nowhere.
                self.busy += 1
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
        try:
            try:
                outcome = await self._attempts(item)
            except trio.Cancelled:
                # Pipeline.cancel(), or the drain grace ran out: the item still
                # gets its one outcome.
                with trio.CancelScope(shield=True) as cleanup:
                    cleanup.deadline = trio.current_time() + CLEANUP_GRACE_S
                    why = (
                        "cancelled in flight by Pipeline.cancel()"
                        if self.state.cancelled
                        else "cancelled in flight when the drain grace ran out"
                    )
                    error = ItemCancelled(why, item_id=item.id)
                    await self._finish(item, self._unfinished(item, error))
                raise
            except Exception as exc:
                # A defect in shardline: it costs this item only, and stays loud.
                outcome = self._unfinished(item, defect(self.state, self.index, item, exc))
            await self._finish(item, outcome)
        finally:
            self.busy -= 1
            self._active.release_on_behalf_of(token)

    async def _wait_cooldown(self) -> None:
        waited = False
        while trio.current_time() < self._cooling_until:
            waited = True
            await trio.sleep_until(self._cooling_until)
        if waited:
            # Spread the shard's waiters so they do not all resend at one instant.
            jitter = self.state.retry.retry_after_jitter
            if jitter > 0 and not is_testing():
                await trio.sleep(self.rng.uniform(0.0, jitter))
        if self._cooling:
            self._cooling = False
            self.state.emit(ShardState(t=self.state.now(), shard=self.index, state="resumed"))

    def _cool_for(self, seconds: float) -> None:
        until = trio.current_time() + seconds
        if until > self._cooling_until:
            self._cooling_until = until
            self._cooling = True
            self.state.emit(
                ShardState(
                    t=self.state.now(), shard=self.index, state="cooling", cooldown_s=seconds
                )
            )

    async def _acquire_slot(
        self, token: object, tokens: int
    ) -> tuple[FlowPermit | None, int | None]:
        """Wait out any cooldown and the endpoint's announced quota, then take an
        in-flight slot of this shard and a permit of the endpoint's live limit.

        Returns the permit (``None`` without adaptive flow control), which the
        caller must settle (``on_success`` / ``on_failure`` / ``on_ignore``), and
        the header pacer's ticket (``None`` without a pacer).
        """
        upstream = self.upstream
        while True:
            await self._wait_cooldown()
            pacer = upstream.pacer
            ticket = None if pacer is None else await pacer.wait(tokens=tokens)
            try:
                await self._limiter.acquire_on_behalf_of(token)
            except BaseException:
                self._unsend(ticket)
                raise
            try:
                permit = None if upstream.flow is None else await upstream.flow.acquire()
            except BaseException:
                self._limiter.release_on_behalf_of(token)
                self._unsend(ticket)
                raise
            if trio.current_time() >= self._cooling_until:
                return permit, ticket
            # A 429 cooled the shard while we waited: give all back and wait again.
            self.abandon(permit, ticket)
            self._limiter.release_on_behalf_of(token)

    # -- hedging (see _hedge.py) --------------------------------------------

    @property
    def cooling(self) -> bool:
        """Whether the shard is waiting out a server's Retry-After right now."""
        return trio.current_time() < self._cooling_until

    async def take_slot(self, token: object, tokens: int) -> tuple[FlowPermit | None, int | None]:
        """Take an in-flight slot and a permit of the live limit for a hedge, waiting
        as any attempt does (cooldown, announced quota, slot, permit).

        Returns the permit (``None`` without adaptive flow control) and the header
        pacer's ticket (``None`` without a pacer). Give the slot back with
        :meth:`release_slot`, after :meth:`abandon` if nothing was sent.
        """
        return await self._acquire_slot(token, tokens)

    def abandon(self, permit: FlowPermit | None, ticket: int | None) -> None:
        """Settle what :meth:`take_slot` took for a send that is not happening."""
        if permit is not None and self.upstream.flow is not None:
            self.upstream.flow.on_ignore(permit)
        self._unsend(ticket)

    def release_slot(self, token: object) -> None:
        """Give back a slot taken with :meth:`take_slot`."""
        self._limiter.release_on_behalf_of(token)

    def _unsend(self, ticket: int | None) -> None:
        """The header pacer counted a send that is not happening after all."""
        if self.upstream.pacer is not None and ticket is not None:
            self.upstream.pacer.unanswered(ticket)

    def _choose(self, avoid: Upstream | None) -> tuple[Shard, bool] | AttemptError:
        """Where the next attempt goes, and whether it is a probe.

        An open endpoint whose cooldown has passed gets this attempt as its one
        probe (``True``); else this shard while its endpoint is healthy (and not
        the one to avoid, when another is); else the least-loaded shard of a
        healthy endpoint. With none healthy and no probe free, an error that
        counts as a failed attempt: nothing is sent to an open endpoint but its
        probe.
        """
        upstream = self.upstream
        if upstream.breaker is None:
            return self, False
        # An open endpoint whose cooldown passed gets its probe first, so a
        # replica that recovered comes back even while others carry the load.
        for shard in (self, *self.peers):
            breaker = shard.upstream.breaker
            if breaker is not None and not breaker.closed and breaker.claim_probe():
                return shard, True
        healthy = [s for s in self.peers if s.upstream.healthy()]
        if upstream.healthy() and (
            upstream is not avoid or all(s.upstream is avoid for s in healthy)
        ):
            return self, False
        elsewhere = [s for s in healthy if s.upstream is not avoid] or healthy
        if elsewhere:
            return min(elsewhere, key=lambda s: (s.load, s.index)), False
        wake = min(
            s.upstream.breaker.open_until for s in self.peers if s.upstream.breaker is not None
        )
        return ConnectError(
            f"not sent: every endpoint's circuit is open (the next probe is due in "
            f"{max(0.0, wake - trio.current_time()):.1f} s)"
        )

    async def _send_attempt(
        self,
        item: WorkItem,
        attempt: int,
        token: object,
        permit: FlowPermit | None,
        ticket: int | None,
        probe: bool,
        estimate: int,
        estimate_in: int,
    ) -> Outcome | AttemptError:
        """Send one attempt through this shard, holding its slot (``token``) and
        ``permit``; give the slot back and tell the endpoint's health how it went."""
        state = self.state
        result: Outcome | AttemptError | None = None
        hedger = None if probe else self.hedger  # a probe is never hedged
        try:
            try:
                if state.rpm is not None:
                    await state.rpm.acquire(1)
                charge = None if state.tpm is None else await state.tpm.acquire(estimate)
            except BaseException:
                self.abandon(permit, ticket)
                raise
            if hedger is None:
                result = await send_one(self, item, attempt, charge, estimate_in, permit, ticket)
            else:
                # Loaded by the pipeline with its Hedger: a run that does not hedge never is.
                from ._hedge import send_hedged

                result = await send_hedged(
                    hedger, self, item, attempt, charge, estimate_in, estimate, permit, ticket
                )
        finally:
            self._limiter.release_on_behalf_of(token)
            if hedger is None:  # a hedged attempt's legs settle their own shards' health
                self.settle_health(result, probe)
        return result

    def settle_health(self, result: Outcome | AttemptError | None, probe: bool = False) -> None:
        """Tell this shard's endpoint breaker how an attempt ended (``None``: it said nothing).

        A hedged attempt's legs each tell their own shard's endpoint (see
        :func:`~shardline._hedge.send_hedged`): a hedge that failed on one
        endpoint counts against that one, and a race another endpoint won says
        nothing about this one's health.
        """
        breaker = self.upstream.breaker
        if breaker is None:
            return
        if result is None:
            breaker.on_ignore(probe=probe)
        elif isinstance(result, AttemptError):
            breaker.on_failure(result.cause, probe=probe)
        else:
            breaker.on_success(probe=probe)

    async def _attempts(self, item: WorkItem) -> Outcome:
        """The retry loop of one item. Returns its terminal outcome."""
        state = self.state
        policy = state.retry
        request = item.request
        estimate_in = estimate_tokens(request.prompt_text())
        estimate_out = request.max_tokens() or DEFAULT_MAX_TOKENS
        estimate = estimate_in + estimate_out
        attempt = 0
        last_error: AttemptError | None = None
        avoid: Upstream | None = None
        with item.scope:
            while True:
                attempt += 1
                choice = self._choose(avoid)
                cooled = self
                if isinstance(choice, AttemptError):
                    result: Outcome | AttemptError = not_sent(self, item, attempt, choice)
                else:
                    target, probe = choice
                    cooled = target
                    token = object()
                    permit: FlowPermit | None = None
                    ticket: int | None = None
                    if attempt == 1:
                        # Until it is sent, a drain ends the item as unsent, like a queued one.
                        acquired = False
                        with trio.CancelScope() as unsent:
                            self._unsent.add(unsent)
                            try:
                                if not state.draining:
                                    permit, ticket = await target._acquire_slot(token, estimate)
                                    acquired = True
                            finally:
                                self._unsent.discard(unsent)
                                if not acquired:
                                    target.settle_health(None, probe)
                        if not acquired:
                            return self._unfinished(
                                item,
                                ItemCancelled(
                                    "pipeline closed before the item was sent", item_id=item.id
                                ),
                            )
                    else:
                        try:
                            permit, ticket = await target._acquire_slot(token, estimate)
                        except BaseException:
                            target.settle_health(None, probe)
                            raise
                    if not probe and not target.upstream.healthy():
                        # Its circuit opened while we waited for the slot: choose again.
                        target.abandon(permit, ticket)
                        target.release_slot(token)
                        attempt -= 1
                        continue
                    if attempt == 1:
                        state.budget.record_request()
                    result = await target._send_attempt(
                        item, attempt, token, permit, ticket, probe, estimate, estimate_in
                    )
                    avoid = target.upstream
                if isinstance(result, Outcome):
                    return result
                last_error = result
                # The attempt failed: back off and retry, or give up. A 429 with
                # Retry-After cools the whole shard, so its other requests wait too.
                delay = policy.delay(last_error, attempt, self.rng)
                # A 429 that says when to come back is paced by the server: the
                # whole shard waits it out, and the retry does not spend the
                # budget, which guards the blind retries (5xx, timeouts, resets).
                paced = isinstance(last_error, RateLimited) and last_error.retry_after is not None
                if paced:
                    cooled._cool_for(delay)
                if not policy.should_retry(last_error.cause, attempt):
                    break
                self.retries += 1
                state.emit(
                    RetryScheduled(
                        t=state.now(),
                        item_id=item.id,
                        shard=self.index,
                        attempt=attempt + 1,
                        delay_s=delay,
                        cause=last_error.cause.value,
                    )
                )
                # Between attempts the item holds no in-flight slot.
                self.retrying += 1
                try:
                    await trio.sleep(delay)
                    if not paced:
                        # The budget paces blind retries; it never drops one.
                        await state.budget.acquire_retry(max_wait=policy.budget_max_wait)
                finally:
                    self.retrying -= 1

        if item.scope.cancelled_caught:
            return self._unfinished(
                item, ItemCancelled("cancelled while in flight", item_id=item.id)
            )
        assert last_error is not None
        return self._unfinished(item, last_error)

    def _unfinished(
        self, item: WorkItem, error: AttemptError | ItemCancelled | InternalError
    ) -> Outcome:
        """The outcome of an item that ends without a result: failed, or cancelled."""
        return Outcome(
            id=item.id,
            status=Status.CANCELLED if isinstance(error, ItemCancelled) else Status.FAILED,
            error=error,
            attempts=item.attempts,
            shard=self.index,
            latency_s=self.state.now() - item.admitted_at,
        )

    async def _finish(self, item: WorkItem, outcome: Outcome) -> None:
        """Record the item's one terminal outcome and hand it to its owner."""
        self.done += 1
        state = self.state
        state.counts[outcome.status] += 1
        usage: Usage | None = outcome.result.usage if outcome.result is not None else None
        error = outcome.error
        message: str | None = None
        if isinstance(error, InternalError):
            message = error.traceback
        elif error is not None:
            message = str(error)
        try:
            state.emit(
                ItemEnd(
                    t=state.now(),
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
                    message=message,
                )
            )
        finally:
            await deliver(item.outcomes, outcome)
