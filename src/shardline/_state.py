"""What a pipeline and its shards share, and the records that travel between them.

:class:`RunState` is the one small record the pipeline builds and hands to
each shard (as trio's memory channels share one ``MemoryChannelState``):
settings, the event sink, the run's clock and the limits every shard
consults. :class:`WorkItem` is an admitted item on its way through a shard;
:class:`ShardStatistics` is a shard's public snapshot; :func:`deliver` hands
an item's one outcome to its owner.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import trio

from ._backoff import RetryPolicy
from ._breaker import CircuitBreaker
from ._budget import RetryBudget
from ._config import Deadlines, Endpoint
from ._events import Event
from ._flow import AdaptiveLimit
from ._flow_pacer import HeaderPacer
from ._models import ItemId, Outcome, Request, Status
from ._ratelimit import SlidingWindowLimiter

__all__ = [
    "CLEANUP_GRACE_S",
    "DEFAULT_MAX_TOKENS",
    "RunState",
    "ShardStatistics",
    "Upstream",
    "WorkItem",
    "deliver",
]

#: How long cleanup after cancellation (recording and handing over a cancelled
#: item's outcome) may take, under a shielded scope.
CLEANUP_GRACE_S = 1.0
#: Completion tokens assumed for TPM admission when a request sets no max_tokens.
DEFAULT_MAX_TOKENS = 256


@attrs.define(eq=False)
class Upstream:
    """One endpoint as a run sees it: where it is, and what its shards share.

    Attributes:
        index: Its place in ``PipelineConfig.all_endpoints()`` (events name it so).
        endpoint: Where requests go.
        flow: The endpoint's adaptive in-flight limit, shared by its shards
            (``None``: fixed caps only).
        pacer: Waits before a send would overrun what the endpoint's
            ``x-ratelimit-*`` headers say remains (``None``: headers ignored).
        breaker: The endpoint's health (``None``: a run with one endpoint,
            which has nowhere else to go).
    """

    index: int
    endpoint: Endpoint
    flow: AdaptiveLimit | None = None
    pacer: HeaderPacer | None = None
    breaker: CircuitBreaker | None = None

    def healthy(self) -> bool:
        """Whether new attempts may go here without being its probe."""
        return self.breaker is None or self.breaker.closed


@attrs.define(eq=False)
class RunState:
    """What a pipeline and its shards share; built by the pipeline, handed to each shard.

    Attributes:
        upstreams: The endpoints, each with what its shards share.
        deadlines: Per-attempt deadlines.
        retry: The retry policy.
        emit: Writes one event to the run's sink.
        budget: The retry budget shared by every shard.
        rpm: The requests-per-minute limit shared by every shard, if any.
        tpm: The tokens-per-minute limit shared by every shard, if any.
        t0: trio's clock at the start of the run (event times count from it).
        draining: Set by the pipeline when it stops admitting.
        cancelled: Set by ``Pipeline.cancel()``: in-flight items are being cancelled now.
        admitted: Items admitted so far.
        counts: Items ended so far, by status.
        internal_errors: Items ended by a defect in shardline (cause ``internal_error``).
    """

    upstreams: list[Upstream]
    deadlines: Deadlines
    retry: RetryPolicy
    emit: Callable[[Event], None]
    budget: RetryBudget
    rpm: SlidingWindowLimiter | None = None
    tpm: SlidingWindowLimiter | None = None
    t0: float = 0.0
    draining: bool = False
    cancelled: bool = False
    admitted: int = 0
    counts: dict[Status, int] = attrs.field(factory=lambda: dict.fromkeys(Status, 0))
    internal_errors: int = 0

    def now(self) -> float:
        """Seconds since the run started, on trio's clock."""
        return trio.current_time() - self.t0


@attrs.frozen(kw_only=True)
class ShardStatistics:
    """A snapshot of one shard, from :meth:`Pipeline.statistics`.

    Attributes:
        shard: The shard's index.
        queued: Items not sent yet: in the shard's queue (at most ``queue_size``),
            or taken from it and waiting for their first in-flight slot (at
            most ``2 * capacity``).
        in_flight: HTTP attempts under way right now; never above ``capacity``.
        busy: Items taken from the queue and not yet ended: sending, waiting
            for an in-flight slot, or waiting between attempts (backoff, retry
            budget, cooldown); never above ``2 * capacity``.
        retrying: Items waiting between two attempts (backoff or retry budget).
        capacity: The shard's in-flight cap.
        cooling: True while the shard waits out a server's Retry-After.
        done: Items that reached a terminal outcome on this shard.
        retries: Retries scheduled on this shard.
        endpoint: The endpoint this shard talks to (its index in
            ``PipelineConfig.all_endpoints()``).
        circuit: Its endpoint's circuit: ``closed``, ``open`` or ``half_open``
            (always ``closed`` with one endpoint).
    """

    shard: int
    queued: int
    in_flight: int
    busy: int
    retrying: int
    capacity: int
    cooling: bool
    done: int
    retries: int
    endpoint: int = 0
    circuit: str = "closed"


@attrs.define(eq=False)
class WorkItem:
    """An admitted item travelling through a shard (internal)."""

    id: ItemId
    request: Request
    outcomes: trio.MemorySendChannel[Outcome]
    admitted_at: float
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    attempts: int = 0


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
