"""Pace an endpoint's requests by the quota its server announces in its headers.

A provider that says ``x-ratelimit-remaining-requests: 3`` will refuse the
fourth request sent before the reset. Finding that out by collecting a 429 per
shard is how a rate limit turns into a retry storm; reading the header and
waiting is how it does not. :class:`HeaderPacer` is fed every response's
:class:`~shardline._ratelimit_headers.RateLimitInfo` and makes senders wait, before
they send, while the quota left (minus what was sent since the report, which
the server had not counted yet) is used up:

    remaining - sent_since_report <= 0   →   wait until the reset (+ jitter)

One pacer per endpoint, shared by its shards, like the adaptive limit.

Waiters are spread: each sleeps until the reset plus ``uniform(0, spread)``, so
the requests a reset frees do not all leave in the same millisecond; any new
report wakes them all to re-check at once (a report with room lets them go).
No sleep is longer than ``max_sleep``; a quota without a reset time is trusted
for :data:`UNKNOWN_RESET_S`. When a reset passes without a new report, the quota
is assumed refilled to its limit (or unknown, when no limit was announced), a
guess trusted for :data:`UNKNOWN_RESET_S` as well. A request larger than the
whole limit waits for a full window and then goes.

What it is *not*: a guarantee. Reports can arrive out of order and other clients
share the quota; a 429 can still happen, and the retry policy handles it. The
pacer makes them rare instead of being how the limit is found.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

import attrs
import trio

from ._ratelimit_headers import Quota, RateLimitInfo, parse_ratelimit_headers
from ._validate import number

__all__ = [
    "DEFAULT_PACER_MAX_SLEEP",
    "DEFAULT_PACER_SPREAD",
    "UNKNOWN_RESET_S",
    "HeaderPacer",
    "PacerStatistics",
]

#: Waiters freed by a reset leave spread over this many seconds.
DEFAULT_PACER_SPREAD = 1.0
#: The longest single sleep; a waiter re-checks after it (60 s, the longest
#: Retry-After honoured by default).
DEFAULT_PACER_MAX_SLEEP = 60.0
#: A report without a reset time counts for this long.
UNKNOWN_RESET_S = 1.0


@attrs.frozen(kw_only=True)
class PacerStatistics:
    """A snapshot of a :class:`HeaderPacer` (``None``: no known quota)."""

    requests_available: int | None
    tokens_available: int | None
    waiting: int
    #: How many :meth:`HeaderPacer.wait` calls had to sleep.
    paced: int


@attrs.define(eq=False)
class _Window:
    """One quota as last reported, and what we sent since."""

    limit: int | None
    remaining: int | None
    reset_at: float
    spent: int = 0

    def refresh(self, now: float) -> None:
        if now >= self.reset_at:
            # The window reset and no newer report came: assume it refilled, and
            # trust that guess as briefly as a report without a reset time.
            self.remaining = self.limit
            self.spent = 0
            self.reset_at = now + UNKNOWN_RESET_S

    def available(self) -> int | None:
        return None if self.remaining is None else self.remaining - self.spent

    def blocks(self, need: int) -> bool:
        available = self.available()
        if available is None:
            return False
        if self.limit is not None:
            need = min(need, self.limit)  # larger than the quota: wait for a full window
        return available < max(1, need)


def _window(quota: Quota | None, now: float, spent: int) -> _Window | None:
    if quota is None or quota.remaining is None:
        return None
    reset_at = quota.reset_at if quota.reset_at is not None else now + UNKNOWN_RESET_S
    return _Window(limit=quota.limit, remaining=quota.remaining, reset_at=reset_at, spent=spent)


@attrs.define(eq=False, kw_only=True)
class HeaderPacer:
    """Wait before sending while the announced quota is used up.

    Example (in a shard, around each attempt)::

        await pacer.wait(tokens=estimate_in + estimate_out)
        response = await send(...)
        pacer.observe_headers(response.headers)

    Args:
        spread: Seconds over which waiters freed by one reset are spread (>= 0).
        max_sleep: The longest single sleep before re-checking (> 0).
        rng: The source of the jitter (seed it for reproducible tests).
    """

    spread: float = attrs.field(default=DEFAULT_PACER_SPREAD, validator=number("spread", ge=0))
    max_sleep: float = attrs.field(
        default=DEFAULT_PACER_MAX_SLEEP, validator=number("max_sleep", gt=0)
    )
    rng: random.Random = attrs.field(factory=random.Random)
    _requests: _Window | None = attrs.field(init=False, default=None)
    # Requests sent (charged) whose answer has not been observed yet.
    _outstanding: int = attrs.field(init=False, default=0)
    _tokens: _Window | None = attrs.field(init=False, default=None)
    _changed: trio.Event = attrs.field(init=False, factory=trio.Event)
    _waiting: int = attrs.field(init=False, default=0)
    _paced: int = attrs.field(init=False, default=0)

    def __repr__(self) -> str:
        stats = self.statistics()
        return (
            f"<HeaderPacer requests {stats.requests_available}, tokens "
            f"{stats.tokens_available} available, {stats.waiting} waiting>"
        )

    def statistics(self) -> PacerStatistics:
        """What is left of each quota after what was sent since the last report."""
        now = trio.current_time()
        for window in (self._requests, self._tokens):
            if window is not None:
                window.refresh(now)
        return PacerStatistics(
            requests_available=None if self._requests is None else self._requests.available(),
            tokens_available=None if self._tokens is None else self._tokens.available(),
            waiting=self._waiting,
            paced=self._paced,
        )

    def observe(self, info: RateLimitInfo | None) -> None:
        """Take a response's announced quotas as the latest truth; ``None`` changes nothing."""
        if info is None:
            return
        now = trio.current_time()
        # This answer's request is now in the server's count; the others we sent
        # and that are still unanswered may not be: they stay counted as spent,
        # so a report about an older request cannot make room that is not there.
        self._outstanding = max(0, self._outstanding - 1)
        requests = _window(info.requests, now, self._outstanding)
        tokens = _window(info.tokens, now, 0)
        if requests is not None:
            self._requests = requests
        if tokens is not None:
            self._tokens = tokens
        if requests is not None or tokens is not None:
            self._changed.set()
            self._changed = trio.Event()

    def observe_headers(
        self, headers: Mapping[str, str], *, wall_time: float | None = None
    ) -> RateLimitInfo | None:
        """Parse ``headers`` (:func:`parse_ratelimit_headers`), observe and return the result."""
        info = parse_ratelimit_headers(headers, trio.current_time(), wall_time=wall_time)
        self.observe(info)
        return info

    def _blocked_until(self, now: float, tokens: int) -> float | None:
        """When the quotas blocking a request of ``tokens`` reset, or ``None`` if none blocks."""
        until: float | None = None
        for window, need in ((self._requests, 1), (self._tokens, tokens)):
            if window is None:
                continue
            window.refresh(now)
            if window.blocks(need):
                until = window.reset_at if until is None else max(until, window.reset_at)
        return until

    async def wait(self, *, tokens: int = 0) -> None:
        """Wait until one request of ``tokens`` tokens fits the quotas, then count it as sent.

        Always a checkpoint. Call it right before sending; the request counts
        against the quota until the next report.

        Cancellation: a task cancelled while waiting has counted nothing.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        now = trio.current_time()
        until = self._blocked_until(now, tokens)
        if until is None:
            self._charge(tokens)
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        self._waiting += 1
        self._paced += 1
        try:
            while until is not None:
                wake = min(until + self.rng.uniform(0.0, self.spread), now + self.max_sleep)
                changed = self._changed
                with trio.move_on_at(wake):
                    await changed.wait()
                now = trio.current_time()
                until = self._blocked_until(now, tokens)
        finally:
            self._waiting -= 1
        self._charge(tokens)

    def unanswered(self) -> None:
        """A request :meth:`wait` counted ended with no response to observe
        (connection refused, reset, cancelled): stop counting it as in flight."""
        self._outstanding = max(0, self._outstanding - 1)

    def _charge(self, tokens: int) -> None:
        self._outstanding += 1
        if self._requests is not None:
            self._requests.spent += 1
        if self._tokens is not None:
            self._tokens.spent += max(0, tokens)
