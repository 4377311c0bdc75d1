"""Hedged requests: a second leg for an attempt that is slow to its first token.

"The Tail at Scale" (Dean and Barroso) cuts a latency tail by sending a second
copy of a request that has been outstanding longer than the 95th-percentile
latency, and using whichever answers first. Here the latency is the time to
first token (TTFT): a cold replica or a long prefill queue makes a few
requests wait many times longer than the rest, and in a batch that tail keeps
the last minutes of a run waiting.

The pieces, each small:

* :class:`TtftWindow`: the recent TTFTs of one endpoint (a ring buffer), and
  their quantiles. ``Hedging(after="p95")`` hedges after its 95th percentile,
  once it holds ``min_samples``.
* :class:`HedgeBudget`: hedges earn ``budget`` of a token per request and
  spend one each (gRPC's retry throttling has the same shape), so hedges stay
  at most ``budget`` x requests over the whole run, and an idle stretch banks
  at most :data:`HEDGE_BURST` of them.
* :func:`hedge_targets`: where a hedge may go (the one function to change
  when "another shard" becomes "another endpoint").
* :func:`send_hedged`: runs the two legs of one attempt as a race::

      first leg ──── send ──────────────(no content yet)──────── ✗ cancelled
      watcher  ──── sleep(after) ── budget? overloaded? slot? ── hedge leg ── content ✓

  The first leg to produce content wins (``FirstToken``); the other is
  cancelled at once, and leaving its ``httpx`` stream closes its connection,
  so the server can abort it. Exactly one result comes back.

A hedge is not a retry: it does not spend the retry budget and schedules no
retry; if both legs fail before any content, the attempt fails with the first
leg's error and the retry policy decides, as for any attempt. A hedge leg waits
for its shard's in-flight slot and a permit of the endpoint's live limit like
any attempt (so every cap holds; in a busy batch a slot frees within about one
request's time), and none goes while the endpoint shows overload (limit cut
below its ceiling, retries waiting for the retry budget, a shard cooling down
after a 429).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from typing import Protocol

import attrs
import trio

from ._config import Hedging
from ._events import HedgeSent, HedgeWon
from ._exceptions import AttemptError
from ._flow import FlowPermit
from ._models import Outcome
from ._ratelimit import Charge
from ._send import Sending, send_one
from ._state import WorkItem

__all__ = [
    "HEDGE_BURST",
    "TTFT_WINDOW",
    "HedgeBudget",
    "HedgeShard",
    "Hedger",
    "TtftWindow",
    "hedge_targets",
    "send_hedged",
]

#: TTFTs remembered per endpoint: the estimate follows the last few minutes of
#: a busy run, and p95 of 256 samples rests on about 13 of them.
TTFT_WINDOW = 256
#: Hedges a quiet stretch can bank: the budget is a rate, not a reserve.
HEDGE_BURST = 10.0
#: Limit changes that are growth, not a cut: after them the endpoint is not overloaded.
_GROWTH = frozenset({"increase", "probe", "restore"})


class HedgeShard(Sending, Protocol):
    """What hedging needs of a shard (besides what :func:`send_one` needs)."""

    @property
    def load(self) -> int: ...

    @property
    def cooling(self) -> bool: ...

    async def take_slot(
        self, token: object, tokens: int
    ) -> tuple[FlowPermit | None, int | None]: ...

    def abandon(self, permit: FlowPermit | None, ticket: int | None) -> None: ...

    def release_slot(self, token: object) -> None: ...

    def settle_health(self, result: Outcome | AttemptError | None, probe: bool = False) -> None: ...


@attrs.define(eq=False)
class TtftWindow:
    """The last ``size`` TTFTs of one endpoint, and their quantiles (nearest rank).

    Example::

        >>> window = TtftWindow(size=4)
        >>> for ttft in (0.1, 0.2, 0.3, 9.0, 0.4):
        ...     window.observe(ttft)
        >>> window.count, window.quantile(0.5), window.quantile(0.95)
        (4, 0.3, 9.0)
    """

    size: int = TTFT_WINDOW
    _samples: deque[float] = attrs.field(init=False)
    _sorted: list[float] | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        self._samples = deque(maxlen=self.size)

    @property
    def count(self) -> int:
        """Samples held (at most ``size``)."""
        return len(self._samples)

    def observe(self, ttft_s: float) -> None:
        """Remember one TTFT (the oldest is forgotten once ``size`` are held)."""
        self._samples.append(ttft_s)
        self._sorted = None

    def quantile(self, q: float) -> float:
        """The nearest-rank ``q`` quantile of the samples held (at least one)."""
        if self._sorted is None:
            self._sorted = sorted(self._samples)
        ranked = self._sorted
        return ranked[min(len(ranked) - 1, max(0, math.ceil(q * len(ranked)) - 1))]


@attrs.define(eq=False)
class HedgeBudget:
    """At most ``ratio`` hedges per request: a token bucket filled by requests.

    Each request adds ``ratio`` of a token (up to ``burst``); a hedge spends a
    whole one. So at every moment ``hedges <= ratio * requests``, and a quiet
    stretch banks at most ``burst`` hedges for the next burst of slow requests.
    """

    ratio: float
    burst: float = HEDGE_BURST
    requests: int = 0
    hedges: int = 0
    _tokens: float = attrs.field(init=False, default=0.0)

    def record_request(self) -> None:
        """Count one request (an attempt that is not a hedge)."""
        self.requests += 1
        self._tokens = min(self.burst, self._tokens + self.ratio)

    @property
    def available(self) -> bool:
        """Whether a hedge may be sent now."""
        # The epsilon keeps 20 x 0.05 from falling short of 1 through float error.
        return self._tokens >= 1.0 - 1e-9

    def spend(self) -> None:
        """Count one hedge sent (only when :attr:`available`)."""
        self._tokens -= 1.0
        self.hedges += 1


def hedge_targets(origin: HedgeShard, shards: Sequence[HedgeShard]) -> list[HedgeShard]:
    """Where a hedge of an attempt on ``origin`` may go, best first.

    The other shards that are not cooling down and whose endpoint is healthy,
    those of another endpoint first, then least loaded; ``origin`` itself only
    when it is the only shard (a new connection still reaches a server behind a
    load balancer that may answer sooner).
    """
    others = [s for s in shards if s is not origin]
    if not others:
        others = [origin]
    return sorted(
        (s for s in others if not s.cooling and s.upstream.healthy()),
        key=lambda s: (s.upstream is origin.upstream, s.load, s.in_flight, s.index),
    )


def overloaded(shard: HedgeShard) -> bool:
    """Whether ``shard``'s endpoint shows overload, so that no hedge may go."""
    state = shard.state
    if shard.cooling or state.budget.waiting or not shard.upstream.healthy():
        return True
    flow = shard.upstream.flow
    if flow is None:
        return False
    # Cut below its ceiling, and not yet grown back past the level the server
    # refused (or cut by the latency signal, which holds it there).
    stats = flow.statistics()
    return stats.limit < stats.ceiling and (
        stats.refused_at is not None
        or (stats.last_reason is not None and stats.last_reason not in _GROWTH)
    )


@attrs.define(eq=False)
class Hedger:
    """Hedging for one pipeline: its setting, TTFT windows per endpoint, its budget, its shards."""

    config: Hedging
    shards: Sequence[HedgeShard]
    budget: HedgeBudget = attrs.field(init=False)
    _windows: dict[int, TtftWindow] = attrs.field(init=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        self.budget = HedgeBudget(ratio=self.config.budget)

    def window(self, shard: Sending) -> TtftWindow:
        """The TTFT window of ``shard``'s endpoint."""
        key = shard.upstream.index
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = TtftWindow()
        return window

    def delay(self, shard: HedgeShard) -> float | None:
        """Seconds without content after which an attempt on ``shard`` is hedged
        (``None``: not yet, too few TTFTs seen)."""
        after = self.config.after
        if after != "p95":
            return after
        window = self.window(shard)
        if window.count < self.config.min_samples:
            return None
        return window.quantile(0.95)

    async def reserve(
        self, origin: HedgeShard, tokens: int
    ) -> tuple[HedgeShard, object, FlowPermit | None, int | None] | None:
        """Take a slot and a permit for a hedge of an attempt on ``origin`` and spend
        the budget, or return ``None`` if no hedge may go.

        The slot and permit are waited for as any attempt's are (in a busy batch a
        slot frees within about one request's time), so a hedge never takes more
        than the limits allow; the budget and overload are checked before and after.
        """
        if not self.budget.available or overloaded(origin):
            return None
        targets = [s for s in hedge_targets(origin, self.shards) if not overloaded(s)]
        if not targets:
            return None
        target = targets[0]
        token = object()
        permit, ticket = await target.take_slot(token, tokens)
        if not self.budget.available or overloaded(target):
            target.abandon(permit, ticket)
            target.release_slot(token)
            return None
        self.budget.spend()
        return target, token, permit, ticket


@attrs.define(eq=False)
class _Leg:
    """One leg of a hedged attempt; ``send_one`` calls :meth:`on_content`."""

    race: _Race
    hedge: bool
    shard: HedgeShard | None = None
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    started: float | None = None
    lost: bool = False
    result: Outcome | AttemptError | None = None

    def on_content(self, ttft_s: float) -> None:
        self.race.content(self, ttft_s)


@attrs.define(eq=False)
class _Race:
    hedger: Hedger
    item: WorkItem
    attempt: int
    origin: HedgeShard
    legs: list[_Leg] = attrs.field(factory=list)
    winner: _Leg | None = None

    def content(self, leg: _Leg, ttft_s: float) -> None:
        """``leg`` produced its first content: it wins unless another already did."""
        assert leg.shard is not None
        state = leg.shard.state
        self.hedger.window(leg.shard).observe(ttft_s)
        if self.winner is not None:
            return
        self.winner = leg
        hedged = False
        for other in self.legs:
            if other is leg:
                continue
            if other.started is not None:
                hedged = True
                if other.result is None:
                    other.lost = True
                    if not other.hedge and other.shard is not None:
                        # Its TTFT is at least this long: counting it keeps the
                        # window's tail where the server's is.
                        self.hedger.window(other.shard).observe(state.now() - other.started)
            other.scope.cancel()
        if hedged:
            first = self.legs[0]
            assert first.started is not None
            assert leg.started is not None
            state.emit(
                HedgeWon(
                    t=state.now(),
                    item_id=self.item.id,
                    shard=leg.shard.index,
                    attempt=self.attempt,
                    leg="hedge" if leg.hedge else "first",
                    ttft_s=ttft_s + leg.started - first.started,
                )
            )

    def ended(self, leg: _Leg) -> None:
        """``leg`` returned: a result without content still wins; an error before
        content ends the race only if no other leg is under way."""
        if self.winner is not None:
            return
        if isinstance(leg.result, Outcome):
            self.winner = leg
            for other in self.legs:
                if other is not leg:
                    other.lost = other.started is not None and other.result is None
                    other.scope.cancel()
        elif not leg.hedge:
            second = self.legs[1]
            if second.started is None:
                second.scope.cancel()  # no hedge after the first leg failed

    def result(self) -> Outcome | AttemptError:
        first = self.legs[0]
        # Without a winner, no leg produced content: the first leg's error, or
        # the hedge's when the first has none (the caller was cancelled).
        leg = self.winner if self.winner is not None else first
        if leg.result is None:
            leg = next(x for x in self.legs if x.result is not None)
        result = leg.result
        assert result is not None
        if isinstance(result, Outcome) and result.result is not None and leg is not first:
            assert leg.started is not None
            assert first.started is not None
            ttft = result.result.ttft_s
            if ttft is not None:
                # The item's TTFT counts from its first send.
                shifted = attrs.evolve(result.result, ttft_s=ttft + leg.started - first.started)
                result = attrs.evolve(result, result=shifted)
        return result


async def send_hedged(
    hedger: Hedger,
    shard: HedgeShard,
    item: WorkItem,
    attempt: int,
    charge: Charge | None,
    estimate_in: int,
    estimate: int,
    permit: FlowPermit | None,
    ticket: int | None,
) -> Outcome | AttemptError:
    """Send attempt ``attempt`` of ``item`` on ``shard`` (holding its slot,
    ``permit`` and the header pacer's ``ticket``), with a hedge leg if it has
    no content after the hedging delay.

    Returns the winning leg's outcome or error (see the module docstring).

    Cancellation: cancelling the caller cancels both legs; each settles its
    permit, charge and events as any cancelled attempt does.
    """
    race = _Race(hedger=hedger, item=item, attempt=attempt, origin=shard)
    first = _Leg(race=race, hedge=False, shard=shard)
    race.legs.append(first)
    delay = hedger.delay(shard)
    if delay is None:
        first.started = shard.state.now()
        hedger.budget.record_request()  # with no await before its attempt_start
        result = await send_one(
            shard, item, attempt, charge, estimate_in, permit, ticket, race=first
        )
        shard.settle_health(result)
        return result
    second = _Leg(race=race, hedge=True)
    race.legs.append(second)
    first.started = shard.state.now()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_first_leg, race, first, charge, estimate_in, permit, ticket)
            nursery.start_soon(_hedge_leg, race, second, delay, estimate_in, estimate)
    except BaseExceptionGroup as group:
        raise _one(group) from None
    return race.result()


async def _first_leg(
    race: _Race,
    leg: _Leg,
    charge: Charge | None,
    estimate_in: int,
    permit: FlowPermit | None,
    ticket: int | None,
) -> None:
    assert leg.shard is not None
    with leg.scope:
        # Counted here, with no await before the attempt_start it emits: the
        # budget's requests are exactly the first legs sent so far.
        race.hedger.budget.record_request()
        leg.result = await send_one(
            leg.shard, race.item, race.attempt, charge, estimate_in, permit, ticket, race=leg
        )
    _settle(leg)
    race.ended(leg)


def _settle(leg: _Leg) -> None:
    """Tell the leg's endpoint how it went; a leg cancelled because the other won
    said nothing about its endpoint's health."""
    assert leg.shard is not None
    leg.shard.settle_health(None if leg.lost else leg.result)


async def _hedge_leg(race: _Race, leg: _Leg, delay: float, estimate_in: int, estimate: int) -> None:
    origin = race.origin
    state = origin.state
    with leg.scope:
        await trio.sleep(delay)
        if race.winner is not None or race.legs[0].result is not None:
            return  # pragma: no cover - the first leg cancels this sleep
        reserved = await race.hedger.reserve(origin, estimate)
        if reserved is None:
            return
        target, token, permit, ticket = reserved
        try:
            tpm = target.state.tpm
            charge: Charge | None = None
            try:
                if target.state.rpm is not None:
                    await target.state.rpm.acquire(1)
                charge = None if tpm is None else await tpm.acquire(estimate)
            except BaseException:
                target.abandon(permit, ticket)
                if charge is not None and tpm is not None:
                    tpm.reconcile(charge, 0)
                raise
            state.emit(
                HedgeSent(
                    t=state.now(),
                    item_id=race.item.id,
                    shard=origin.index,
                    attempt=race.attempt,
                    hedge_shard=target.index,
                    after_s=delay,
                )
            )
            leg.shard = target
            leg.started = state.now()
            leg.result = await send_one(
                target, race.item, race.attempt, charge, estimate_in, permit, ticket, race=leg
            )
        finally:
            target.release_slot(token)
        _settle(leg)
    race.ended(leg)


def _one(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one exception to raise for the legs' group: a defect or an interrupt
    before a cancellation (which the caller's cancel scope then catches)."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    for exc in leaves:
        if not isinstance(exc, trio.Cancelled):
            return exc
    return leaves[0]
