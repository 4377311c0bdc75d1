"""The pipeline: shards owned by one nursery, bounded admission, drain.

Data flows one way: admission (request check, ids, routing) → a shard's queue
→ attempts → outcome. The limits every shard shares (RPM, TPM, the retry
budget) are objects the pipeline builds into one :class:`RunState` record and
hands to each shard, which consults them before each attempt; no shard ever
calls back into the pipeline. Nothing outlives ``async with open_pipeline(...)``.
"""

from __future__ import annotations

import functools
import logging
import random
import time
import uuid
import weakref
import zlib
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager

import attrs
import httpx
import trio

from ._breaker import DEFAULT_BREAKER_MAX_COOLDOWN, BreakerState, CircuitBreaker
from ._config import Endpoint, PipelineConfig
from ._events import EndpointState, Event, ItemEnd, LimitChange, RunEnd, RunStart
from ._exceptions import ConfigError, ShardlineError
from ._flow import AdaptiveLimit, LimitStep
from ._flow_pacer import HeaderPacer
from ._http import make_client
from ._models import REQUEST_TYPES, ItemId, Outcome, Request, Result, Status
from ._ratelimit import SlidingWindowLimiter
from ._shard import Shard
from ._sinks import EventSink
from ._state import CLEANUP_GRACE_S, RunState, ShardStatistics, Upstream, WorkItem

__all__ = ["Pipeline", "PipelineStatistics", "open_pipeline"]


log = logging.getLogger("shardline")


class _NullSink:
    def emit(self, event: Event) -> None:
        pass

    def close(self) -> None:
        pass


@attrs.frozen(kw_only=True)
class PipelineStatistics:
    """A snapshot of a pipeline, from :meth:`Pipeline.statistics`.

    Attributes:
        admitted: Items accepted so far.
        queued: Items waiting in shard queues.
        in_flight: HTTP attempts under way.
        retrying: Items waiting between two attempts (backoff or retry budget).
        cooling_shards: Shards waiting out a Retry-After.
        done: Items that ended, however they ended.
        ok: Items that ended with a result.
        failed: Items that ended with an error.
        cancelled: Items that ended cancelled (drained or cancelled by their caller).
        internal_errors: Failed items whose cause is ``internal_error``: a
            defect in shardline hit them (each is logged, with its traceback in
            the events). Anything but 0 deserves a bug report.
        retries: Retries scheduled.
        budget_waiting: Retries waiting for the retry budget right now.
        limit: The endpoint's live in-flight limit, shared by its shards
            (``None`` without adaptive flow control).
        draining: True once the pipeline is being left.
        shards: One :class:`ShardStatistics` per shard.
    """

    admitted: int
    queued: int
    in_flight: int
    retrying: int
    cooling_shards: int
    done: int
    ok: int
    failed: int
    cancelled: int
    internal_errors: int
    retries: int
    budget_waiting: int
    limit: int | None
    draining: bool
    shards: tuple[ShardStatistics, ...]


@attrs.define(eq=False, repr=False)
class Pipeline:
    """A running pipeline. Get one from :func:`open_pipeline`; do not construct it.

    Both ways of sending work can be used at the same time from any number of tasks:
    :meth:`complete` for one request, :meth:`map` (or :meth:`submit`) for many.
    """

    config: PipelineConfig
    run_id: str
    _state: RunState
    _shards: list[Shard] = attrs.field(init=False, factory=list)
    _next_id: int = attrs.field(init=False, default=0)
    _handed: weakref.WeakSet[trio.MemorySendChannel[Outcome]] = attrs.field(
        init=False, factory=weakref.WeakSet
    )

    def __repr__(self) -> str:
        in_flight = sum(s.in_flight for s in self._shards)
        queued = sum(s.queued for s in self._shards)
        state = ", draining" if self._state.draining else ""
        return (
            f"<Pipeline {self.run_id}: {len(self._shards)} shards, {in_flight} in flight, "
            f"{queued} queued, {sum(self._state.counts.values())} done{state}>"
        )

    def now(self) -> float:
        """Seconds since the run started, on trio's clock."""
        return self._state.now()

    # -- admission --------------------------------------------------------

    def _route(self, item_id: ItemId) -> Shard:
        # Shards of an endpoint whose circuit is open take no new work while
        # another endpoint is healthy.
        shards = [s for s in self._shards if s.upstream.healthy()] or self._shards
        if self.config.routing == "least_loaded":
            return min(shards, key=lambda s: (s.load, s.index))
        digest = zlib.crc32(str(item_id).encode("utf-8", "surrogatepass"))
        return shards[digest % len(shards)]

    @property
    def _auto_prefix(self) -> str:
        return f"{self.run_id}#"

    def _new_id(self) -> str:
        self._next_id += 1
        return f"{self._auto_prefix}{self._next_id}"

    async def submit(self, request: Request, outcomes: trio.MemorySendChannel[Outcome]) -> ItemId:
        """Admit one request; its :class:`Outcome` is later sent to ``outcomes``.

        Waits while the item's shard queue is full (backpressure). The pipeline
        takes ownership of ``outcomes`` and closes it after sending the one
        outcome, so pass a fresh clone each time (``send.clone()``) and close
        your own handle when you are done submitting: the receiver then sees
        the end of the stream exactly when every outcome has arrived. Passing
        the same handle twice is an error, not a lost outcome.

        Returns:
            The item id: the request's, or one the pipeline made up (a string
            starting with the run id and ``#``, which cannot collide with yours).

        Raises:
            TypeError: ``request`` is not a request (:data:`Request`).
            ValueError: ``outcomes`` was already given to the pipeline, or the
                request's id has the form of a generated one.
            trio.ClosedResourceError: the pipeline is draining and admits no new items.
        """
        return (await self._admit(request, outcomes, "submit")).id

    async def _admit(
        self, request: Request, outcomes: trio.MemorySendChannel[Outcome], caller: str
    ) -> WorkItem:
        if not isinstance(request, REQUEST_TYPES):
            raise TypeError(
                f"{caller}() takes a ChatRequest, CompletionRequest, EmbeddingRequest or"
                f" ResponsesRequest, got {type(request).__name__}: {request!r:.80}"
            )
        if outcomes in self._handed:
            raise ValueError(
                f"{caller}() was given an outcomes channel it already owns: the pipeline"
                " closes the channel it is given after sending one outcome, so pass a"
                " fresh clone each time (send.clone())"
            )
        item_id = request.id
        if isinstance(item_id, str) and item_id.startswith(self._auto_prefix):
            raise ValueError(
                f"item id {item_id!r} has the form of the ids this pipeline generates"
                f" ({self._auto_prefix}N); choose another"
            )
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._state.draining:
            outcomes.close()
            raise trio.ClosedResourceError("the pipeline is draining and admits no new items")
        self._handed.add(outcomes)
        if item_id is None:
            item_id = self._new_id()
        item = WorkItem(id=item_id, request=request, outcomes=outcomes, admitted_at=0.0)
        try:
            await self._route(item_id).put(item)
        except BaseException:
            outcomes.close()
            raise
        return item

    async def complete(self, request: Request) -> Result:
        """Send one request through admission, its shard and retries; return its result.

        Cancellation: cancelling the caller cancels the request, wherever it is
        (queued, in flight, or waiting for a retry); the caller's cancel scope is
        the overall budget across all attempts.

        Raises:
            TypeError: ``request`` is not a request (:data:`Request`).
            AttemptError: the subclass for the cause of the last attempt
                (for example :class:`StallTimeout`), with ``item_id``, ``shard``
                and ``attempt`` filled in, when the item failed.
            ItemCancelled: the pipeline drained before the item ended.
            InternalError: a defect in shardline hit this item (please report it).
        """
        send, recv = trio.open_memory_channel[Outcome](1)
        with recv:
            item = await self._admit(request, send, "complete")
            try:
                outcome = await recv.receive()
            except trio.Cancelled:
                item.scope.cancel()
                raise
        if outcome.result is not None:
            return outcome.result
        assert outcome.error is not None
        raise outcome.error

    async def map(
        self,
        requests: Iterable[Request] | AsyncIterable[Request],
        outcomes: trio.MemorySendChannel[Outcome],
    ) -> None:
        """Feed ``requests`` through the pipeline; send each outcome to ``outcomes``.

        Requests are consumed lazily, one at a time as the shard queues have
        room, so an input of any length runs in bounded memory. Each item's
        :class:`Outcome` is sent exactly once, in completion order. ``outcomes``
        is closed when the last one has been sent, which ends the receiver's
        ``async for``::

            send, recv = trio.open_memory_channel[shardline.Outcome](64)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pipeline.map, requests, send)
                async for outcome in recv:
                    ...

        Cancellation: cancelling ``map`` stops feeding; items already admitted
        still end (and their outcomes are still sent) while the pipeline runs.
        """
        async with outcomes:
            if isinstance(requests, AsyncIterable):
                async for request in requests:
                    await self._admit(request, outcomes.clone(), "map")
            else:
                for request in requests:
                    await self._admit(request, outcomes.clone(), "map")

    def reject(self, item_id: ItemId, error: ShardlineError) -> Outcome:
        """Record an item that never reaches the network (for example bad input).

        It gets its one terminal outcome (``failed``, with the error's cause),
        counted in events and in the report like any other item.
        """
        outcome = Outcome(id=item_id, status=Status.FAILED, error=error, attempts=0)
        state = self._state
        state.counts[Status.FAILED] += 1
        state.emit(
            ItemEnd(
                t=state.now(),
                item_id=item_id,
                shard=None,
                status=outcome.status.value,
                attempts=0,
                latency_s=0.0,
                cause=None if outcome.cause is None else outcome.cause.value,
                message=str(error),
            )
        )
        return outcome

    def statistics(self) -> PipelineStatistics:
        """A frozen snapshot of queues, in-flight work and outcomes, per shard and in total."""
        shards = tuple(s.statistics() for s in self._shards)
        state = self._state
        return PipelineStatistics(
            admitted=state.admitted,
            queued=sum(s.queued for s in shards),
            in_flight=sum(s.in_flight for s in shards),
            retrying=sum(s.retrying for s in shards),
            cooling_shards=sum(1 for s in shards if s.cooling),
            done=sum(state.counts.values()),
            ok=state.counts[Status.OK],
            failed=state.counts[Status.FAILED],
            cancelled=state.counts[Status.CANCELLED],
            internal_errors=state.internal_errors,
            retries=sum(s.retries for s in shards),
            budget_waiting=state.budget.waiting,
            limit=_total_limit(state),
            draining=state.draining,
            shards=shards,
        )

    def cancel(self) -> None:
        """Stop now, without waiting for the drain grace.

        Admission stops, queued items end as cancelled, and in-flight items are
        cancelled at once; each still gets its one outcome (``cancelled``). The
        ``async with`` block then exits as soon as the shards have recorded
        them. Use it for a second Ctrl-C, or when the caller's own deadline is
        up and a graceful drain would overrun it. Idempotent.
        """
        self._state.cancelled = True
        self._begin_drain()
        for shard in self._shards:
            shard.scope.cancel()

    def _begin_drain(self) -> None:
        if self._state.draining:
            return
        self._state.draining = True
        deadline = trio.current_time() + self.config.drain_grace
        for shard in self._shards:
            shard.close_queue()
            shard.scope.deadline = min(shard.scope.deadline, deadline)


@contextmanager
def _unwrap_single() -> Iterator[None]:
    """Let a lone exception out of the nursery's group unwrapped.

    The shard tasks only end by returning, so an exception group leaving the
    pipeline's nursery holds the exception that left the ``async with`` body
    (or Ctrl-C). Callers should see that exception as they raised it.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


#: Hosts that never answer without an API key.
_KEYED_HOSTS = ("api.openai.com",)
_KEYED_SUFFIXES = (".openai.azure.com",)


def _check_key(endpoint: Endpoint) -> None:
    if endpoint.api_key:
        return
    host = (httpx.URL(endpoint.base_url).host or "").lower()
    if host in _KEYED_HOSTS or host.endswith(_KEYED_SUFFIXES):
        raise ConfigError(
            f"{endpoint.base_url} needs an API key and none is set"
            " (set OPENAI_API_KEY, or Endpoint(api_key=...))"
        )


@asynccontextmanager
async def open_pipeline(
    config: PipelineConfig | None = None,
    *,
    sink: EventSink | None = None,
    run_id: str | None = None,
    transport: Callable[[int], httpx.AsyncBaseTransport] | None = None,
) -> AsyncIterator[Pipeline]:
    """Open a pipeline: one nursery that owns one task per shard.

    Example::

        config = shardline.PipelineConfig(endpoint=shardline.Endpoint(base_url=url))
        async with shardline.open_pipeline(config) as pipeline:
            result = await pipeline.complete(shardline.ChatRequest(messages=[...]))

    Leaving the block drains: admission stops, queued items end as cancelled,
    in-flight items may finish within ``config.drain_grace`` seconds and are
    then cancelled. This happens however the block is left (normally, by an
    exception, by cancellation or Ctrl-C), and every admitted item gets exactly
    one outcome. Nothing outlives the block.

    Args:
        config: The :class:`PipelineConfig` (default: ``PipelineConfig.from_env()``).
        sink: Where events go (for example ``JsonlEventSink``); none by default.
        run_id: Names the run in its events and report (default: random).
        transport: ``transport(shard_index)`` returns the httpx transport of that
            shard's client, replacing the default connection pool (for example
            :class:`shardline.testing.FakeTransport` in tests on virtual time).

    Raises:
        ConfigError: before anything is sent, for an endpoint that cannot work
            (OpenAI's URL without an API key).
    """
    if config is None:
        config = PipelineConfig.from_env()
    if transport is None:
        for endpoint in config.all_endpoints():
            _check_key(endpoint)
    rng = random.Random(config.seed)
    out: EventSink = sink if sink is not None else _NullSink()
    state = RunState(
        upstreams=[Upstream(index=i, endpoint=e) for i, e in enumerate(config.all_endpoints())],
        deadlines=config.deadlines,
        retry=config.retry,
        emit=out.emit,
        budget=config.retry.new_budget(),
        rpm=None if config.rpm is None else SlidingWindowLimiter(limit=config.rpm),
        tpm=None if config.tpm is None else SlidingWindowLimiter(limit=config.tpm),
        t0=trio.current_time(),
    )
    shard_upstreams = config.shard_endpoints()
    _flow_control(config, state, shard_upstreams, rng)
    pipeline = Pipeline(config=config, run_id=run_id or uuid.uuid4().hex[:12], state=state)
    state.emit(
        RunStart(
            t=0.0,
            run_id=pipeline.run_id,
            started_at=time.time(),
            shard_count=config.shard_count,
            config=config.safe_dict(),
        )
    )
    clients: list[httpx.AsyncClient] = []
    reason = "completed"
    try:
        for index in range(config.shard_count):
            clients.append(
                make_client(
                    state.upstreams[shard_upstreams[index]].endpoint,
                    max_connections=config.concurrency,
                    deadlines=config.deadlines,
                )
                if transport is None
                else httpx.AsyncClient(transport=transport(index), timeout=None)
            )
        # Hedging sees every shard: the list fills as the shards start. Its module
        # is imported only by a run that hedges (start-up: see the performance page).
        hedger = None
        if config.hedging is not None:
            from ._hedge import Hedger

            hedger = Hedger(config.hedging, pipeline._shards)
        with _unwrap_single():
            async with trio.open_nursery() as nursery:
                for index, client in enumerate(clients):
                    shard = Shard(
                        index=index,
                        state=state,
                        upstream=state.upstreams[shard_upstreams[index]],
                        client=client,
                        capacity=config.concurrency,
                        queue_size=config.queue_size,
                        rng=random.Random(rng.getrandbits(64)),
                        peers=pipeline._shards,
                        hedger=hedger,
                    )
                    pipeline._shards.append(shard)
                    await nursery.start(shard.run)
                try:
                    yield pipeline
                finally:
                    pipeline._begin_drain()
    except BaseException as exc:
        reason = "cancelled" if _only_cancellation(exc) else "error"
        raise
    finally:
        with trio.CancelScope(shield=True) as cleanup:
            cleanup.deadline = trio.current_time() + CLEANUP_GRACE_S
            for client in clients:
                await client.aclose()
        state.emit(RunEnd(t=state.now(), reason=reason))


def _flow_control(
    config: PipelineConfig, state: RunState, shard_upstreams: list[int], rng: random.Random
) -> None:
    """Give each endpoint its adaptive limit, header pacer and (with several) breaker."""
    flow = config.flow
    several = len(state.upstreams) > 1
    for upstream in state.upstreams:
        index = upstream.index
        ceiling = shard_upstreams.count(index) * config.concurrency
        if flow.floor > ceiling:
            what = "shard_count * concurrency" if not several else f"endpoint {index}'s shards"
            raise ConfigError(f"flow.floor must be <= {what} ({ceiling}), got {flow.floor}")
        if flow.adaptive:
            initial = None if flow.initial is None else max(flow.floor, min(ceiling, flow.initial))
            upstream.flow = AdaptiveLimit(
                ceiling=ceiling,
                floor=flow.floor,
                initial=initial,
                on_change=functools.partial(_limit_changed, state, index),
            )
        if flow.pace_headers:
            upstream.pacer = HeaderPacer(rng=random.Random(rng.getrandbits(64)))
        if several:
            upstream.breaker = CircuitBreaker(
                threshold=flow.breaker_threshold,
                cooldown=flow.breaker_cooldown,
                max_cooldown=max(flow.breaker_cooldown, DEFAULT_BREAKER_MAX_COOLDOWN),
                on_change=functools.partial(_health_changed, state, index),
            )


def _limit_changed(state: RunState, endpoint: int, step: LimitStep) -> None:
    state.emit(
        LimitChange(
            t=state.now(), endpoint=endpoint, old=step.old, new=step.new, reason=step.reason
        )
    )


def _health_changed(
    state: RunState, endpoint: int, old: BreakerState, new: BreakerState, reason: str
) -> None:
    log.warning("endpoint %d: circuit %s -> %s (%s)", endpoint, old.value, new.value, reason)
    state.emit(
        EndpointState(t=state.now(), endpoint=endpoint, old=old.value, new=new.value, reason=reason)
    )


def _total_limit(state: RunState) -> int | None:
    limits = [u.flow.limit for u in state.upstreams if u.flow is not None]
    return sum(limits) if limits else None


def _only_cancellation(exc: BaseException) -> bool:
    """Whether ``exc`` is cancellation or Ctrl-C (alone, or a group of nothing else)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_cancellation(e) for e in exc.exceptions)
    return isinstance(exc, trio.Cancelled | KeyboardInterrupt)
