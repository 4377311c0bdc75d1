"""The retry budget: retries as a bounded fraction of requests, paced rather than refused.

:class:`RetryBudget` is shared by every shard of a pipeline. It is a trio
primitive: :meth:`RetryBudget.acquire_retry` waits (FIFO) while the budget is
spent, so a failing backend cannot turn a backlog into a retry storm, and no
retryable item is turned into a failed one.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

import attrs
import trio

from ._budget_defaults import (
    DEFAULT_BUDGET_MIN_RETRIES,
    DEFAULT_BUDGET_RATIO,
)
from ._validate import integer, number

__all__ = ["RetryBudget"]

#: A windowed budget keeps this many counting buckets per window.
WINDOW_BUCKETS = 60


class _Waiter:
    """One retry waiting in the budget's line; its event is replaced after each wake-up."""

    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event = trio.Event()


@attrs.define(eq=False)
class RetryBudget:
    """Caps retries at ``ratio * requests`` + ``min_retries`` (Finagle's and Envoy's idea).

    Per-item attempt limits do not stop a storm: with 8 attempts each, a dead
    backend receives 8 times the traffic of a healthy one. A budget shared by the
    whole pipeline does: once retries reach ``ratio`` of requests (plus a floor
    so a small run can still retry), further retries *wait* (FIFO) until new
    requests earn more or the window forgets old retries. It paces retries; it
    never turns a retryable item into a failed one. Call :meth:`record_request`
    once per new item (its first attempt), and :meth:`acquire_retry` before
    each retry.

    The pipeline does not charge the budget for a retry after a 429 that
    carried a Retry-After: the server set that pace, and the whole shard cools
    down for it, so such retries cannot become a storm (they stay bounded by
    ``max_attempts``). The budget guards the blind retries: 5xx, timeouts,
    resets, truncations.

    With ``window=None`` the count is over the whole run: the invariant
    ``retries <= ratio * requests + min_retries`` always holds. With a
    ``window`` in seconds (what :meth:`RetryPolicy.new_budget` uses, 60 s by
    default) only the requests and retries of the last ``window`` seconds
    count, as in Finagle: an hour of healthy traffic does not bank retries
    that a failure storm at the end of the run could then spend all at once.
    Time comes from ``clock`` (trio's clock by default, so it must then be used
    inside ``trio.run``). Not thread-safe; trio tasks are fine.

    Example::

        >>> budget = RetryBudget(ratio=0.2, min_retries=1)
        >>> for _ in range(5):
        ...     budget.record_request()
        >>> [budget.try_acquire_retry() for _ in range(3)]
        [True, True, False]

    (The third retry would wait in :meth:`acquire_retry` until the budget has one.)
    """

    ratio: float = attrs.field(default=DEFAULT_BUDGET_RATIO, validator=number("ratio", ge=0))
    min_retries: int = attrs.field(
        default=DEFAULT_BUDGET_MIN_RETRIES, validator=integer("min_retries", ge=0)
    )
    window: float | None = attrs.field(
        default=None, validator=number("window", gt=0, unit="seconds", optional=True)
    )
    clock: Callable[[], float] = attrs.field(default=trio.current_time, repr=False)
    _requests: int = attrs.field(default=0, init=False)
    _retries: int = attrs.field(default=0, init=False)
    _waited: int = attrs.field(default=0, init=False)
    _overdrafts: int = attrs.field(default=0, init=False)
    _waiters: deque[_Waiter] = attrs.field(factory=deque, init=False)
    # Windowed counts: (bucket start, requests, retries), WINDOW_BUCKETS per window.
    _buckets: deque[list[float]] = attrs.field(factory=deque, init=False)

    @property
    def requests(self) -> int:
        """Requests recorded so far (the whole run)."""
        return self._requests

    @property
    def retries(self) -> int:
        """Retries granted so far (the whole run)."""
        return self._retries

    def _counts(self) -> tuple[float, float]:
        """Requests and retries that count now: in the window, or in the whole run."""
        if self.window is None:
            return float(self._requests), float(self._retries)
        now = self.clock()
        buckets = self._buckets
        # The same expression as _next_change(), so a bucket kept here always
        # expires strictly after now (no float rounding can make a waiter spin).
        while buckets and buckets[0][0] + self.window <= now:
            buckets.popleft()
        return sum(b[1] for b in buckets), sum(b[2] for b in buckets)

    def _bucket(self) -> list[float]:
        assert self.window is not None
        width = self.window / WINDOW_BUCKETS
        start = math.floor(self.clock() / width) * width
        if not self._buckets or self._buckets[-1][0] != start:
            self._buckets.append([start, 0.0, 0.0])
        return self._buckets[-1]

    @property
    def allowed(self) -> int:
        """Retries the budget allows at this moment (in the window, if there is one)."""
        requests, _ = self._counts()
        # The epsilon keeps 0.2 * 5 == 1 from flooring to 0 through float error.
        return math.floor(self.ratio * requests + 1e-9) + self.min_retries

    @property
    def available(self) -> int:
        """Retries that could be granted right now."""
        _, retries = self._counts()
        return max(0, self.allowed - int(retries))

    def record_request(self) -> None:
        """Count one new request (an item's first attempt), earning ``ratio`` of a retry."""
        self._requests += 1
        if self.window is not None:
            self._bucket()[1] += 1
        if self._waiters:
            self._waiters[0].event.set()

    def try_acquire_retry(self) -> bool:
        """Take one retry if the budget has one now: ``True`` if granted.

        A refusal is not counted anywhere: :meth:`acquire_retry` is what the
        pipeline uses, and it waits instead of refusing.
        """
        if self.available > 0:
            self._take()
            return True
        return False

    def _take(self) -> None:
        self._retries += 1
        if self.window is not None:
            self._bucket()[2] += 1

    def _next_change(self) -> float:
        """When the window next forgets something (the oldest bucket leaves it)."""
        if self.window is None or not self._buckets:
            return math.inf
        return self._buckets[0][0] + self.window

    async def acquire_retry(self, *, max_wait: float | None = None) -> bool:
        """Take one retry, waiting in line (FIFO) until the budget has one.

        The budget *paces* retries, it never drops them: a retry waits while
        the budget is spent, and goes when new requests earn more (or when the
        window forgets old retries). If it has waited ``max_wait`` seconds, it
        goes anyway, as an *overdraft*: that bounds an item's worst-case time,
        and the retry rate stays bounded because the number of items that can
        wait at once is (the pipeline bounds the items in progress per shard).

        Returns:
            ``True`` when the retry came out of the budget, ``False`` for an overdraft.

        Cancellation: a cancelled waiter leaves the line without taking anything.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if not self._waiters and self.available > 0:
            self._take()
            await trio.lowlevel.cancel_shielded_checkpoint()
            return True
        give_up = math.inf if max_wait is None else self.clock() + max_wait
        waiter = _Waiter()
        self._waiters.append(waiter)
        self._waited += 1
        try:
            while True:
                if self._waiters[0] is not waiter:
                    # Only the head of the line watches the clock; the others
                    # wait to be woken when it leaves.
                    await waiter.event.wait()
                    waiter.event = trio.Event()
                    continue
                if self.available > 0:  # (also forgets what left the window)
                    self._take()
                    return True
                if self.clock() >= give_up:
                    self._retries += 1
                    self._overdrafts += 1
                    return False
                with trio.move_on_at(min(self._next_change(), give_up)):
                    await waiter.event.wait()
                waiter.event = trio.Event()
        finally:
            self._waiters.remove(waiter)
            if self._waiters:
                self._waiters[0].event.set()

    @property
    def waiting(self) -> int:
        """Retries waiting for the budget right now."""
        return len(self._waiters)

    @property
    def waited(self) -> int:
        """Retries that had to wait for the budget (the whole run)."""
        return self._waited

    @property
    def overdrafts(self) -> int:
        """Retries that went ahead after waiting ``max_wait`` (the whole run)."""
        return self._overdrafts

    def __repr__(self) -> str:
        requests, retries = self._counts()
        span = "used" if self.window is None else f"in the last {self.window:g}s"
        return (
            f"<RetryBudget {int(retries)}/{self.allowed} retries {span} "
            f"({self.ratio:g} x {int(requests)} requests + {self.min_retries}), "
            f"{len(self._waiters)} waiting, {self._overdrafts} overdrafts>"
        )
