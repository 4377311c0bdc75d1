"""Global requests-per-minute and tokens-per-minute limits on trio's clock.

A classic token bucket with capacity ``C`` and refill ``R`` per minute lets
``C + R`` through in some 60-second window, so a limit of "R per minute" only
holds on average. Providers enforce their limits over rolling windows, so
shardline keeps an exact sliding window instead: every charge is remembered
with its time and returns to the budget exactly ``window`` seconds later (a
token bucket whose tokens come back one window after they were spent). The
sum of charges in any window of that length never exceeds the limit, except
for a single charge larger than the limit itself, which is let through alone
once the window is empty rather than blocking forever.

Memory is one small record per charge still inside the window: at most the
limit's count of requests for RPM, and at most the number of requests sent in
one window for TPM.
"""

from __future__ import annotations

from collections import deque

import attrs
import trio

__all__ = ["Charge", "SlidingWindowLimiter"]

WINDOW_S = 60.0


@attrs.define(eq=False)
class Charge:
    """One charge held in a window; :meth:`SlidingWindowLimiter.reconcile` adjusts it."""

    time: float
    amount: float
    live: bool = True


@attrs.define(eq=False)
class SlidingWindowLimiter:
    """At most ``limit`` units in any ``window`` seconds, granted in FIFO order.

    Example::

        rpm = SlidingWindowLimiter(limit=600)
        await rpm.acquire(1)          # blocks while 600 requests went out in the last 60 s

    Args:
        limit: Units allowed per window (requests, or tokens).
        window: The window length in seconds (60 for per-minute limits).
    """

    limit: float
    window: float = WINDOW_S
    _charges: deque[Charge] = attrs.field(init=False, factory=deque)
    _used: float = attrs.field(init=False, default=0.0)
    _lock: trio.Lock = attrs.field(init=False, factory=trio.Lock)

    def __attrs_post_init__(self) -> None:
        if not self.limit > 0:
            raise ValueError(f"limit must be > 0, got {self.limit!r}")
        if not self.window > 0:
            raise ValueError(f"window must be > 0, got {self.window!r}")

    def __repr__(self) -> str:
        return (
            f"<SlidingWindowLimiter {self._used:g}/{self.limit:g} "
            f"per {self.window:g}s, {len(self._charges)} charges>"
        )

    @property
    def used(self) -> float:
        """Units charged inside the current window (after expiring old charges)."""
        self._expire(trio.current_time())
        return self._used

    def _expire(self, now: float) -> None:
        charges = self._charges
        while charges and charges[0].time + self.window <= now:
            expired = charges.popleft()
            expired.live = False
            self._used -= expired.amount
        if not charges:
            self._used = 0.0  # no float drift across long runs

    async def acquire(self, amount: float = 1.0) -> Charge:
        """Wait until ``amount`` fits in the window, charge it, and return the charge.

        Waiters are served first come, first served, so a large charge is not
        starved by a stream of small ones.
        """
        async with self._lock:
            while True:
                now = trio.current_time()
                self._expire(now)
                if self._used + amount <= self.limit or not self._charges:
                    charge = Charge(time=now, amount=amount)
                    self._charges.append(charge)
                    self._used += amount
                    return charge
                await trio.sleep_until(self._charges[0].time + self.window)

    def reconcile(self, charge: Charge, actual: float) -> None:
        """Replace a charge's estimate with the actual amount (for example usage reported
        by the server). The charge keeps its original time."""
        if charge.live:
            self._used += actual - charge.amount
        charge.amount = actual
