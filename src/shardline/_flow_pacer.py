"""Pace an endpoint's requests by the quota its server announces in its headers.

A provider that says ``x-ratelimit-remaining-requests: 3`` will refuse the
fourth request sent before the quota refills. Finding that out by collecting a
429 per shard is how a rate limit turns into a retry storm; reading the header
and waiting is how it does not. :class:`HeaderPacer` is fed every response's
:class:`~shardline._ratelimit_headers.RateLimitInfo` and makes senders wait, before
they send, while the quota left (minus what was sent since the report, which
the server had not counted yet) is used up. One pacer per endpoint, shared by
its shards, like the adaptive limit.

Two ways a quota refills, and the headers do not say which:

* **a fixed window** (the whole quota comes back at the reset): nothing is
  available until ``reset``;
* **a token bucket** (OpenAI, Anthropic: "reset" is the time until the quota is
  *full* again, and it refills continuously): the quota grows at
  ``(limit - remaining) / reset`` per second from the report on.

Assuming a bucket where the server keeps a fixed window overruns the quota;
assuming a window where it keeps a bucket waits up to a whole reset for what
refills in a fraction of it (3x slower in our RPM benchmark). The pacer starts
with the safe reading, a fixed window, and switches a quota to the bucket
reading once the reports prove it: within a fixed window every report names
the same reset instant, while a bucket's reset moves later by ``1 / rate`` for
every request it takes. A reset that moves later by more than
:data:`RESET_DRIFT_S` before the earlier one has come is a bucket.

Waiters are spread: each sleeps until its wake time plus ``uniform(0, spread)``,
so the requests a reset frees do not all leave in the same millisecond; any new
report wakes them all to re-check at once (a report with room lets them go).
No sleep is longer than ``max_sleep``; a quota without a reset time is trusted
for :data:`UNKNOWN_RESET_S`. When a fixed window's reset passes without a new
report, the quota is assumed refilled to its limit (or unknown, when no limit
was announced), a guess trusted for :data:`UNKNOWN_RESET_S` as well. A request
larger than the whole limit waits for a full quota and then goes.

What it is *not*: a guarantee. Reports can arrive out of order and other clients
share the quota; a 429 can still happen, and the retry policy handles it. The
pacer makes them rare instead of being how the limit is found.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping

import attrs
import trio

from ._ratelimit_headers import Quota, RateLimitInfo, parse_ratelimit_headers
from ._validate import number

__all__ = [
    "DEFAULT_PACER_MAX_SLEEP",
    "DEFAULT_PACER_SPREAD",
    "RESET_DRIFT_S",
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
#: A reset instant that moves later by more than this (seconds) between reports
#: of one window shows a continuously refilled quota (a token bucket). Larger than
#: the jitter of network delay and of headers rounded to the millisecond.
RESET_DRIFT_S = 0.25


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
    """One quota as last reported, and what we sent since.

    ``rate`` is ``None`` for a fixed window, else the bucket's refill in units
    per second.
    """

    limit: int | None
    remaining: int | None
    reset_at: float
    reported_at: float
    rate: float | None = None
    #: What we sent that this report may not count: ticket -> amount.
    pending: dict[int, int] = attrs.field(factory=dict)
    spent: int = 0

    def charge(self, ticket: int, amount: int) -> None:
        self.pending[ticket] = amount
        self.spent += amount

    def settle(self, ticket: int) -> None:
        """A report older than this one answered ``ticket``: this one counts it."""
        self.spent -= self.pending.pop(ticket, 0)

    def refresh(self, now: float) -> None:
        if self.rate is None and now >= self.reset_at:
            # The window reset and no newer report came: assume it refilled, and
            # trust that guess as briefly as a report without a reset time.
            self.remaining = self.limit
            self.pending.clear()
            self.spent = 0
            self.reported_at = now
            self.reset_at = now + UNKNOWN_RESET_S

    def _level(self, now: float) -> float | None:
        """The quota the server holds for us at ``now``, by this report."""
        if self.remaining is None:
            return None
        if self.rate is None:
            return float(self.remaining)
        level = self.remaining + self.rate * max(0.0, now - self.reported_at)
        return level if self.limit is None else min(float(self.limit), level)

    def available(self, now: float) -> int | None:
        level = self._level(now)
        return None if level is None else math.floor(level) - self.spent

    def ready_at(self, need: int, now: float) -> float | None:
        """When a request of ``need`` fits, or ``None`` when it fits now."""
        level = self._level(now)
        if level is None:
            return None
        if self.limit is not None:
            need = min(need, self.limit)  # larger than the quota: wait for a full one
        need = max(1, need)
        if level - self.spent >= need:
            return None
        if self.rate is None or self.remaining is None:
            return self.reset_at
        ready = self.reported_at + (need + self.spent - self.remaining) / self.rate
        if ready <= now:
            # Full, and what we sent since the report still does not leave room:
            # only a report can tell; re-check as if the quota had no reset time.
            return now + UNKNOWN_RESET_S
        return ready


def _supersedes(new: _Window, current: _Window | None, now: float) -> bool:
    """Whether ``new``, a report answering one of our requests, replaces ``current``.

    Answers overtake each other, and the server's order is not ours: a report
    that shows more room than the one we hold may simply be older. The server's
    order shows in the reports themselves: within a fixed window ``remaining``
    only falls, and a bucket's reset only moves later (by ``1 / rate`` per
    request it takes). A report that is not older by those signs is taken, and
    so is one that shows no more room than ours.
    """
    if current is None:
        return True
    current.refresh(now)
    if new.reset_at > current.reset_at + RESET_DRIFT_S:
        return True  # a later window, or a bucket that took more since
    if new.rate is None:
        same_window = new.reset_at >= current.reset_at - RESET_DRIFT_S
        if (
            same_window
            and current.remaining is not None
            and new.remaining is not None
            and new.remaining <= current.remaining
        ):
            return True  # this window's count, as late as ours or later
    elif new.reset_at >= current.reset_at:
        return True  # the bucket as full later than ours: taken later
    held, offered = current.available(now), new.available(now)
    return held is None or offered is None or offered <= held


@attrs.define(eq=False)
class _RefillReading:
    """Learns, from successive reports of one quota, whether it refills continuously."""

    continuous: bool = False
    #: The reset instant the current window's first report named (fixed reading).
    anchor: float | None = None
    #: The last refill rate a report allowed to compute (units per second).
    rate: float | None = None

    def window(self, quota: Quota | None, now: float, pending: dict[int, int]) -> _Window | None:
        if quota is None or quota.remaining is None:
            return None
        reset_at = quota.reset_at if quota.reset_at is not None else now + UNKNOWN_RESET_S
        if quota.reset_at is not None:
            self._learn(quota.limit, quota.remaining, reset_at, now)
        return _Window(
            limit=quota.limit,
            remaining=quota.remaining,
            reset_at=reset_at,
            reported_at=now,
            rate=self.rate if self.continuous else None,
            pending=pending,
            spent=sum(pending.values()),
        )

    def _learn(self, limit: int | None, remaining: int, reset_at: float, now: float) -> None:
        if limit is not None and limit - remaining >= 2 and reset_at > now:
            # A server holding a fractional level writes it rounded down, so the
            # quota missing is between ``limit - remaining - 1`` and
            # ``limit - remaining``: take the lower bound (slower, never faster,
            # than the server) and keep the tightest one seen.
            rate = (limit - remaining - 1) / (reset_at - now)
            self.rate = rate if self.rate is None else max(self.rate, rate)
        if self.continuous:
            return
        if self.anchor is None or now >= self.anchor:
            self.anchor = reset_at  # a new window (or the first report)
        elif reset_at > self.anchor + RESET_DRIFT_S:
            # The earlier reset has not come and this one is later: the quota is
            # a bucket whose "reset" is when it is full again.
            self.continuous = self.rate is not None


@attrs.define(eq=False, kw_only=True)
class HeaderPacer:
    """Wait before sending while the announced quota is used up.

    Example (in a shard, around each attempt)::

        ticket = await pacer.wait(tokens=estimate_in + estimate_out)
        response = await send(...)
        pacer.observe_headers(response.headers, ticket=ticket)

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
    _requests_refill: _RefillReading = attrs.field(init=False, factory=_RefillReading)
    # Sends are numbered (their tickets): unanswered ticket -> its tokens.
    _sent: int = attrs.field(init=False, default=0)
    _unanswered: dict[int, int] = attrs.field(init=False, factory=dict)
    _tokens: _Window | None = attrs.field(init=False, default=None)
    _tokens_refill: _RefillReading = attrs.field(init=False, factory=_RefillReading)
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
            requests_available=None if self._requests is None else self._requests.available(now),
            tokens_available=None if self._tokens is None else self._tokens.available(now),
            waiting=self._waiting,
            paced=self._paced,
        )

    def observe(self, info: RateLimitInfo | None, *, ticket: int | None = None) -> None:
        """Take a response's announced quotas as the latest truth; ``None`` changes nothing.

        Args:
            info: The quotas the response announced.
                ticket: What :meth:`wait` returned for the request this response
                answers. The server counted that request; the others still in
                flight stay counted as spent (the server may not have seen
                them yet). Answers overtake each other: one that is older than
                the report we hold (by the signs :func:`_supersedes` reads)
                does not replace it, but tells that its request is counted
                there. ``None``: a report as of now, with nothing in flight.
        """
        if ticket is not None:
            self._unanswered.pop(ticket, None)
            for window in (self._requests, self._tokens):
                if window is not None:
                    window.settle(ticket)
        if info is None:
            return
        now = trio.current_time()
        in_flight = {} if ticket is None else self._unanswered
        requests = self._requests_refill.window(info.requests, now, dict.fromkeys(in_flight, 1))
        tokens = self._tokens_refill.window(info.tokens, now, dict(in_flight))
        # A report as of now (no ticket) is the truth; an answer may be stale.
        fresh = ticket is None
        changed = False
        if requests is not None and (fresh or _supersedes(requests, self._requests, now)):
            self._requests, changed = requests, True
        if tokens is not None and (fresh or _supersedes(tokens, self._tokens, now)):
            self._tokens, changed = tokens, True
        if changed:
            self._changed.set()
            self._changed = trio.Event()

    def observe_headers(
        self,
        headers: Mapping[str, str],
        *,
        ticket: int | None = None,
        wall_time: float | None = None,
    ) -> RateLimitInfo | None:
        """Parse ``headers`` (:func:`parse_ratelimit_headers`), observe and return the result."""
        info = parse_ratelimit_headers(headers, trio.current_time(), wall_time=wall_time)
        self.observe(info, ticket=ticket)
        return info

    def _blocked_until(self, now: float, tokens: int) -> float | None:
        """When the quotas blocking a request of ``tokens`` have room (``None``: none blocks)."""
        until: float | None = None
        for window, need in ((self._requests, 1), (self._tokens, tokens)):
            if window is None:
                continue
            window.refresh(now)
            ready = window.ready_at(need, now)
            if ready is not None:
                until = ready if until is None else max(until, ready)
        return until

    async def wait(self, *, tokens: int = 0) -> int:
        """Wait until one request of ``tokens`` tokens fits the quotas, then count it as sent.

        Always a checkpoint. Call it right before sending; the request counts
        against the quota until a report of a request sent after it.

        Returns:
            The send's ticket: give it to :meth:`observe` with the response's
            report, or to :meth:`unanswered` when there is none.

        Cancellation: a task cancelled while waiting has counted nothing.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        now = trio.current_time()
        until = self._blocked_until(now, tokens)
        if until is None:
            ticket = self._charge(tokens)
            await trio.lowlevel.cancel_shielded_checkpoint()
            return ticket
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
        return self._charge(tokens)

    def unanswered(self, ticket: int) -> None:
        """The send ``ticket`` ended with no response to observe (connection
        refused, reset, cancelled, or not sent after all).

        It stays counted against the report we hold (the server may have
        counted it), not against later ones.
        """
        self._unanswered.pop(ticket, None)

    def _charge(self, tokens: int) -> int:
        tokens = max(0, tokens)
        self._sent += 1
        ticket = self._sent
        self._unanswered[ticket] = tokens
        if self._requests is not None:
            self._requests.charge(ticket, 1)
        if self._tokens is not None:
            self._tokens.charge(ticket, tokens)
        return ticket
