"""The pipeline: shards owned by one nursery, bounded admission, drain.

Data flows one way: admission (rate limits, routing) → a shard's queue → an
attempt → retry or outcome. Nothing outlives ``async with open_pipeline(...)``.
"""

from __future__ import annotations

import os
import random
import time
import uuid
import zlib
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Literal

import attrs
import httpx
import trio

from ._attempt import make_client
from ._backoff import RetryBudget, RetryPolicy
from ._config import Deadlines, Endpoint, at_least, env_int, positive_or_none
from ._events import Event, ItemAdmitted, ItemEnd, RunEnd, RunStart
from ._exceptions import ConfigError, ShardlineError
from ._models import ItemId, Outcome, Request, Result, Status
from ._ratelimit import Charge, SlidingWindowLimiter
from ._shard import CLEANUP_GRACE_S, Shard, ShardStatistics, WorkItem
from ._sinks import EventSink

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_DRAIN_GRACE",
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_QUEUE_SIZE",
    "DEFAULT_SHARD_COUNT",
    "Pipeline",
    "PipelineConfig",
    "PipelineStatistics",
    "open_pipeline",
]

DEFAULT_SHARD_COUNT = 1
DEFAULT_CONCURRENCY = 16
DEFAULT_QUEUE_SIZE = 64
DEFAULT_DRAIN_GRACE = 30.0
#: Completion tokens assumed for TPM admission when a request sets no max_tokens.
DEFAULT_MAX_TOKENS = 256


class _NullSink:
    def emit(self, event: Event) -> None:
        pass

    def close(self) -> None:
        pass


def _routing(_inst: object, _attr: object, value: str) -> None:
    if value not in ("hash", "least_loaded"):
        raise ConfigError(f"routing must be 'hash' or 'least_loaded', got {value!r}")


@attrs.frozen(kw_only=True)
class PipelineConfig:
    """Everything a pipeline needs to know, validated up front.

    Example::

        config = PipelineConfig(
            endpoint=Endpoint(base_url="http://127.0.0.1:8000/v1", model="m"),
            shard_count=8,
            concurrency=16,
        )

    Args:
        endpoint: Where requests go (:class:`Endpoint`).
        shard_count: Number of shards, each with its own queue, cap and pool.
        concurrency: Per-shard in-flight cap (and connection pool size).
        queue_size: Per-shard queue bound. Memory held by queued items is at
            most ``shard_count * queue_size`` requests.
        routing: ``"hash"`` (stable hash of the item id: the same id always
            lands on the same shard) or ``"least_loaded"``.
        rpm: Requests per minute over any 60 s window, all shards together
            (``None``: no limit). Retries count.
        tpm: Tokens per minute over any 60 s window (``None``: no limit). Each
            attempt is charged an estimate (prompt + max_tokens) and reconciled
            with the usage the server reports.
        retry: The :class:`RetryPolicy` (attempts, backoff, Retry-After, budget).
        deadlines: The per-attempt :class:`Deadlines`.
        drain_grace: Seconds in-flight work may take to finish when the
            pipeline is left, before it is cancelled.
        seed: Seeds the jitter of backoff delays, for reproducible runs.
    """

    endpoint: Endpoint = attrs.field(factory=Endpoint)
    shard_count: int = attrs.field(
        default=DEFAULT_SHARD_COUNT, validator=at_least("shard_count", 1)
    )
    concurrency: int = attrs.field(
        default=DEFAULT_CONCURRENCY, validator=at_least("concurrency", 1)
    )
    queue_size: int = attrs.field(default=DEFAULT_QUEUE_SIZE, validator=at_least("queue_size", 1))
    routing: Literal["hash", "least_loaded"] = attrs.field(default="hash", validator=_routing)
    rpm: float | None = attrs.field(default=None, validator=positive_or_none("rpm"))
    tpm: float | None = attrs.field(default=None, validator=positive_or_none("tpm"))
    retry: RetryPolicy = attrs.field(factory=RetryPolicy)
    deadlines: Deadlines = attrs.field(factory=Deadlines)
    drain_grace: float = attrs.field(
        default=DEFAULT_DRAIN_GRACE, validator=at_least("drain_grace", 0)
    )
    seed: int | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> PipelineConfig:
        """Build from the environment, then apply keyword overrides that are not ``None``.

        Reads ``SHARD_COUNT``, ``LLM_CONCURRENCY``, ``LLM_RETRY_BACKOFF_S`` and,
        for the endpoint, ``OPENAI_BASE_URL``, ``OPENAI_API_KEY``, ``OPENAI_MODEL``
        and ``OPENAI_API_VERSION``.

        Raises:
            ConfigError: naming the variable or option and the bound.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        if "endpoint" not in overrides or overrides["endpoint"] is None:
            values["endpoint"] = Endpoint.from_env(env)
        shards = env_int("SHARD_COUNT", env)
        if shards is not None:
            values["shard_count"] = shards
        concurrency = env_int("LLM_CONCURRENCY", env)
        if concurrency is not None:
            values["concurrency"] = concurrency
        if "retry" not in overrides or overrides["retry"] is None:
            values["retry"] = RetryPolicy.from_env(env)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def safe_dict(self) -> dict[str, Any]:
        """A JSON-able description without secrets (for the run-start event)."""
        out = attrs.asdict(
            self,
            recurse=True,
            filter=lambda a, _v: a.name not in ("endpoint",),
            value_serializer=lambda _i, _a, v: (
                sorted(str(x) for x in v) if isinstance(v, frozenset | set) else v
            ),
        )
        out["endpoint"] = self.endpoint.safe_dict()
        return out


@attrs.frozen(kw_only=True)
class PipelineStatistics:
    """A snapshot of a pipeline, from :meth:`Pipeline.statistics`.

    Attributes:
        admitted: Items accepted so far.
        queued: Items waiting in shard queues.
        in_flight: HTTP attempts under way.
        cooling_shards: Shards waiting out a Retry-After.
        done: Items that ended, however they ended.
        ok: Items that ended with a result.
        failed: Items that ended with an error.
        cancelled: Items that ended cancelled (drained or cancelled by their caller).
        retries: Retries scheduled.
        draining: True once the pipeline is being left.
        shards: One :class:`ShardStatistics` per shard.
    """

    admitted: int
    queued: int
    in_flight: int
    cooling_shards: int
    done: int
    ok: int
    failed: int
    cancelled: int
    retries: int
    draining: bool
    shards: tuple[ShardStatistics, ...]


@attrs.define(eq=False, repr=False)
class Pipeline:
    """A running pipeline. Get one from :func:`open_pipeline`; do not construct it.

    Both ways of sending work can be used at the same time from any number of tasks:
    :meth:`complete` for one request, :meth:`map` (or :meth:`submit`) for many.
    """

    config: PipelineConfig
    _sink: EventSink
    run_id: str
    _budget: RetryBudget
    _default_max_tokens: int = DEFAULT_MAX_TOKENS
    _shards: list[Shard] = attrs.field(init=False, factory=list)
    _draining: bool = attrs.field(init=False, default=False)
    _t0: float = attrs.field(init=False, default=0.0)
    _rpm: SlidingWindowLimiter | None = attrs.field(init=False, default=None)
    _tpm: SlidingWindowLimiter | None = attrs.field(init=False, default=None)
    _next_id: int = attrs.field(init=False, default=0)
    _admitted: int = attrs.field(init=False, default=0)
    _counts: dict[Status, int] = attrs.field(init=False, factory=lambda: dict.fromkeys(Status, 0))

    def __attrs_post_init__(self) -> None:
        if self.config.rpm is not None:
            self._rpm = SlidingWindowLimiter(limit=self.config.rpm)
        if self.config.tpm is not None:
            self._tpm = SlidingWindowLimiter(limit=self.config.tpm)

    def __repr__(self) -> str:
        in_flight = sum(s.in_flight for s in self._shards)
        queued = sum(s.queued for s in self._shards)
        state = ", draining" if self._draining else ""
        return (
            f"<Pipeline {self.run_id}: {len(self._shards)} shards, {in_flight} in flight, "
            f"{queued} queued, {sum(self._counts.values())} done{state}>"
        )

    # -- time and events (used by shards) ---------------------------------

    def now(self) -> float:
        """Seconds since the run started, on trio's clock."""
        return trio.current_time() - self._t0

    def _emit(self, event: Event) -> None:
        self._sink.emit(event)

    def _record_admission(self, item: WorkItem, shard: int) -> None:
        self._admitted += 1
        self._emit(ItemAdmitted(t=item.admitted_at, item_id=item.id, shard=shard))

    def _record_end(self, _item: WorkItem, outcome: Outcome) -> None:
        self._counts[outcome.status] += 1

    async def _wait_rate(self, requests: int) -> None:
        if self._rpm is not None:
            await self._rpm.acquire(requests)

    async def _charge_tokens(self, tokens: int) -> Charge | None:
        if self._tpm is None:
            return None
        return await self._tpm.acquire(tokens)

    def _reconcile_tokens(self, charge: Charge | None, actual: int) -> None:
        if charge is not None and self._tpm is not None:
            self._tpm.reconcile(charge, actual)

    # -- admission --------------------------------------------------------

    def _route(self, item_id: ItemId) -> Shard:
        if self.config.routing == "least_loaded":
            return min(self._shards, key=lambda s: (s.load, s.index))
        digest = zlib.crc32(str(item_id).encode("utf-8", "surrogatepass"))
        return self._shards[digest % len(self._shards)]

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    async def submit(self, request: Request, outcomes: trio.MemorySendChannel[Outcome]) -> ItemId:
        """Admit one request; its :class:`Outcome` is later sent to ``outcomes``.

        Waits while the item's shard queue is full (backpressure). The pipeline
        takes ownership of ``outcomes`` and closes it after sending the one
        outcome, so pass a clone (``send.clone()``) and close your own handle
        when you are done submitting: the receiver then sees the end of the
        stream exactly when every outcome has arrived.

        Returns:
            The item id (the request's, or a generated integer).

        Raises:
            trio.ClosedResourceError: the pipeline is draining and admits nothing new.
        """
        return (await self._admit(request, outcomes)).id

    async def _admit(self, request: Request, outcomes: trio.MemorySendChannel[Outcome]) -> WorkItem:
        if self._draining:
            outcomes.close()
            raise trio.ClosedResourceError("the pipeline is draining and admits no new items")
        item_id = request.id if request.id is not None else self._new_id()
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
            AttemptError: the subclass for the cause of the last attempt
                (for example :class:`StallTimeout`), with ``item_id``, ``shard``
                and ``attempt`` filled in, when the item failed.
            ItemCancelled: the pipeline drained before the item ended.
        """
        send, recv = trio.open_memory_channel[Outcome](1)
        with recv:
            item = await self._admit(request, send)
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
                    await self.submit(request, outcomes.clone())
            else:
                for request in requests:
                    await self.submit(request, outcomes.clone())

    def reject(self, item_id: ItemId, error: ShardlineError) -> Outcome:
        """Record an item that never reaches the network (for example bad input).

        It gets its one terminal outcome (``failed``, with the error's cause),
        counted in events and in the report like any other item.
        """
        outcome = Outcome(id=item_id, status=Status.FAILED, error=error, attempts=0)
        self._counts[Status.FAILED] += 1
        self._emit(
            ItemEnd(
                t=self.now(),
                item_id=item_id,
                shard=None,
                status=outcome.status.value,
                attempts=0,
                latency_s=0.0,
                cause=None if outcome.cause is None else outcome.cause.value,
            )
        )
        return outcome

    def statistics(self) -> PipelineStatistics:
        """A frozen snapshot of queues, in-flight work and outcomes, per shard and in total."""
        shards = tuple(s.statistics() for s in self._shards)
        return PipelineStatistics(
            admitted=self._admitted,
            queued=sum(s.queued for s in shards),
            in_flight=sum(s.in_flight for s in shards),
            cooling_shards=sum(1 for s in shards if s.cooling),
            done=sum(self._counts.values()),
            ok=self._counts[Status.OK],
            failed=self._counts[Status.FAILED],
            cancelled=self._counts[Status.CANCELLED],
            retries=sum(s.retries for s in shards),
            draining=self._draining,
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
        self._begin_drain()
        for shard in self._shards:
            shard.scope.cancel()

    def _begin_drain(self) -> None:
        if self._draining:
            return
        self._draining = True
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
    """
    if config is None:
        config = PipelineConfig.from_env()
    rng = random.Random(config.seed)
    pipeline = Pipeline(
        config=config,
        sink=sink if sink is not None else _NullSink(),
        run_id=run_id or uuid.uuid4().hex[:12],
        budget=config.retry.new_budget(),
    )
    pipeline._t0 = trio.current_time()
    pipeline._emit(
        RunStart(
            t=0.0,
            run_id=pipeline.run_id,
            started_at=time.time(),
            shard_count=config.shard_count,
            config=config.safe_dict(),
        )
    )
    clients = [
        make_client(config.endpoint, max_connections=config.concurrency, deadlines=config.deadlines)
        if transport is None
        else httpx.AsyncClient(transport=transport(index), timeout=None)
        for index in range(config.shard_count)
    ]
    reason = "completed"
    try:
        with _unwrap_single():
            async with trio.open_nursery() as nursery:
                for index, client in enumerate(clients):
                    shard = Shard(
                        index=index,
                        pipeline=pipeline,
                        client=client,
                        capacity=config.concurrency,
                        queue_size=config.queue_size,
                        rng=random.Random(rng.getrandbits(64)),
                    )
                    pipeline._shards.append(shard)
                    await nursery.start(shard.run)
                try:
                    yield pipeline
                except BaseException:
                    reason = "cancelled"
                    raise
                finally:
                    pipeline._begin_drain()
    except BaseException:
        reason = "cancelled" if reason == "cancelled" else "error"
        raise
    finally:
        with trio.CancelScope(shield=True) as cleanup:
            cleanup.deadline = trio.current_time() + CLEANUP_GRACE_S
            for client in clients:
                await client.aclose()
        pipeline._emit(RunEnd(t=pipeline.now(), reason=reason))
