"""Adaptive concurrency: one live in-flight limit per endpoint, shared by its shards.

A server's capacity belongs to the server. Two shards that each keep a floor of
one request still send two at a time, and a server that takes one at a time
(llama.cpp's server cuts the stream in flight when another request arrives)
fails one of them every time. So the limit lives with the endpoint and every
shard of that endpoint draws a permit from it before it sends; each shard keeps
its own :class:`trio.CapacityLimiter` as its own ceiling.

:class:`AdaptiveLimit` owns that limit. It moves between ``floor`` and
``ceiling``:

* **down** on an overload signal (429, 503/529, a cut stream, a timeout while
  the server otherwise answers): ``max(floor, min(limit - 1, int(limit * 0.9)))``
  as Netflix concurrency-limits' ``AIMDLimit`` does, once per "epoch" (only a
  request sent under the current limit can lower it again); a refusal of an
  older request instead lowers the limit to the requests that survived it, so a
  burst of refusals finds the server's capacity in one round instead of
  collapsing to the floor or taking one round per step;
* **up** by one on a success while at least half the limit is in use, but above
  the level where the server last refused, one step costs ``limit * 2**strikes``
  successes, where ``strikes`` counts failed probes at that level (at most
  :data:`MAX_PROBE_STRIKES`). A server that always refuses the ``K+1``-th
  request is probed ever more rarely, the way CUBIC plateaus near its last
  loss; a server that grew is found again as probes succeed;
* **braked** by a latency signal (:mod:`shardline._flow_latency`) on servers
  that queue instead of refusing: TTFT above its no-load minimum caps the limit;
* **not fooled by background loss**: a request that was alone in flight from
  send to end measures the server's loss without load. Once
  :data:`NOISE_SAMPLES` such requests show a share of overload signals of at
  least :data:`NOISE_MIN` (a flaky gateway, a fault mix), overload must
  exceed that share by its own spread (at least :data:`NOISE_MARGIN`) at every
  level, single signals are no answer, and the limit starts over from slow
  start with its window of recent signals cleared: what lowered it was noise,
  and only overload beyond it lowers it again.

Nothing in flight is cancelled when the limit drops; new acquires wait.

What it is *not*: a rate limiter (``x-ratelimit-*`` headers pace requests in
:mod:`shardline._flow_pacer`), nor a circuit breaker (a server that answers
nothing leaves the limit alone: timeouts only count while it answers).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

import attrs
import trio

from ._exceptions import Cause, ConfigError
from ._flow_latency import LatencySignal, make_latency_signal
from ._flow_signals import OVERLOAD_STATUS_CODES as OVERLOAD_STATUS_CODES
from ._flow_signals import LimitStep as LimitStep
from ._flow_signals import Signal as Signal
from ._flow_signals import classify as classify
from ._validate import integer, number

__all__ = [
    "DEFAULT_ANSWER_WINDOW",
    "DEFAULT_BACKOFF_RATIO",
    "DEFAULT_INITIAL_LIMIT",
    "DEFAULT_LOSS_TOLERANCE",
    "DEFAULT_PROBE_INTERVAL",
    "MAX_PROBE_STRIKES",
    "NOISE_MIN",
    "OVERLOAD_STATUS_CODES",
    "AdaptiveLimit",
    "FlowPermit",
    "FlowStatistics",
    "LimitStep",
    "Signal",
    "classify",
]

#: Overload signals among the last LOSS_WINDOW load signals (successes and
#: overloads) below this share are noise (random 429s, resets and stalls happen
#: on healthy servers): they lower nothing. Above it, the limit falls as below.
DEFAULT_LOSS_TOLERANCE = 0.1
LOSS_WINDOW = 50
#: Below this limit every overload signal counts: with a few requests in flight,
#: one refusal is a large share of them, and noise is the smaller risk.
LOSS_TOLERANCE_FROM = 8
#: Multiplicative decrease per overload epoch (Netflix AIMDLimit's default).
DEFAULT_BACKOFF_RATIO = 0.9
#: The limit a new endpoint starts at (capped by the ceiling): a few requests
#: at once, growing by one per success, so a one-at-a-time server sees at most
#: this many cut streams before the limit has found it.
DEFAULT_INITIAL_LIMIT = 4
#: A timeout is an overload signal only when the server answered (any status,
#: or a first token) within this many seconds; otherwise the server is down,
#: which is the circuit breaker's business, not the limit's.
DEFAULT_ANSWER_WINDOW = 60.0
#: Seconds between measurements of the no-load TTFT: the limit is halved until
#: :data:`PROBE_SAMPLES` requests sent under the halved limit have their first
#: token (Envoy's adaptive concurrency filter measures every 60 s as well).
#: Skipped while the latency signal raised no objection since the last one.
DEFAULT_PROBE_INTERVAL = 60.0
PROBE_SAMPLES = 5
#: Slow start (+1 per success) ends once this many successive TTFTs all exceed
#: ``SLOW_START_EXIT`` times the no-load TTFT.
SLOW_START_SAMPLES = 4
SLOW_START_EXIT = 1.5
#: Failed probes at one level double the successes the next probe costs, up to
#: ``2**MAX_PROBE_STRIKES`` times the limit.
MAX_PROBE_STRIKES = 6
#: Background loss: the last NOISE_WINDOW load signals of requests alone in flight
#: (from send to end) measure it, once there are NOISE_SAMPLES of them; from a share
#: of NOISE_MIN it is the server's, not the load's, and overload must exceed it by
#: NOISE_MARGIN to count. A server that refuses beyond its capacity, or cuts a stream
#: when another arrives, loses nothing of a request that is alone.
NOISE_WINDOW = 50
NOISE_SAMPLES = 20
NOISE_MIN = 0.1
NOISE_MARGIN = 0.05


@attrs.frozen(kw_only=True)
class FlowStatistics:
    """A snapshot of an :class:`AdaptiveLimit`."""

    limit: int
    in_flight: int
    waiting: int
    floor: int
    ceiling: int
    #: The reason of the last change, ``None`` before the first one.
    last_reason: str | None
    #: The lowest level the server refused since it last accepted a probe above it.
    refused_at: int | None
    #: Failed probes at that level.
    strikes: int
    #: The server's background loss: the share of overload signals of requests
    #: alone in flight (0 until :data:`NOISE_SAMPLES` of them were seen).
    noise: float = 0.0


@attrs.define(eq=False)
class FlowPermit:
    """One slot of an :class:`AdaptiveLimit`; give it back with exactly one ``on_*`` call."""

    epoch: int
    acquired_at: float
    #: Granted while nothing else was in flight (a sample of background loss if
    #: nothing else is in flight when it ends either).
    alone: bool = False
    released: bool = False


@attrs.define(eq=False, kw_only=True)
class AdaptiveLimit:
    """A live in-flight limit for one endpoint, between ``floor`` and ``ceiling``.

    A :class:`trio.CapacityLimiter` whose size the server sets: every shard of
    the endpoint acquires a permit before it sends and reports how the attempt
    ended when it gives the permit back::

        permit = await flow.acquire()
        try:
            result = await send_attempt(...)
        except AttemptError as err:
            flow.on_failure(permit, err.cause, status_code=err.status_code)
            raise
        except BaseException:
            flow.on_ignore(permit)      # cancelled: says nothing about the server
            raise
        else:
            flow.on_success(permit, ttft_s=result.ttft_s)

    Waiters are served first in, first out. Lowering the limit cancels nothing:
    requests in flight finish, new ones wait until in-flight is below the limit.

    Args:
        ceiling: The most requests in flight (the endpoint's configured concurrency).
        floor: The fewest the limit goes down to (>= 1).
        initial: Where the limit starts (default ``min(ceiling, 4)``, at least ``floor``).
        backoff_ratio: Multiplicative decrease per overload epoch, in (0, 1).
        latency: A TTFT signal that caps the limit on queueing servers
            (default the chosen one; ``None`` to react to refusals only).
        answer_window: Seconds after an answer during which timeouts count as overload.
        probe_interval: Seconds between measurements of the no-load TTFT
            (``None``: never measure; the floor then only falls).
        on_change: Called with each :class:`LimitStep` (the ``on_*`` methods return it too).
        loss_tolerance: The share of overload signals among the last
            :data:`LOSS_WINDOW` load signals that is taken as noise, not as
            overload (in [0, 1); 0 reacts to every signal). Servers and networks
            drop a few percent of requests at random; a limit that fell by 10 % on
            each would sit far below what the server takes.
    """

    ceiling: int = attrs.field(validator=integer("ceiling", ge=1))
    floor: int = attrs.field(default=1, validator=integer("floor", ge=1))
    initial: int | None = attrs.field(default=None)
    backoff_ratio: float = attrs.field(
        default=DEFAULT_BACKOFF_RATIO, validator=number("backoff_ratio", gt=0, lt=1)
    )
    latency: LatencySignal | None = attrs.field(factory=make_latency_signal)
    answer_window: float = attrs.field(
        default=DEFAULT_ANSWER_WINDOW, validator=number("answer_window", gt=0, unit="seconds")
    )
    probe_interval: float | None = attrs.field(
        default=DEFAULT_PROBE_INTERVAL,
        validator=number("probe_interval", gt=0, unit="seconds", optional=True),
    )
    on_change: Callable[[LimitStep], None] | None = None
    loss_tolerance: float = attrs.field(
        default=DEFAULT_LOSS_TOLERANCE, validator=number("loss_tolerance", ge=0, lt=1)
    )
    _recent: deque[bool] = attrs.field(init=False, factory=lambda: deque(maxlen=LOSS_WINDOW))
    _alone: deque[bool] = attrs.field(init=False, factory=lambda: deque(maxlen=NOISE_WINDOW))
    _noise: float = attrs.field(init=False, default=0.0)
    _estimate: float = attrs.field(init=False, default=0.0)
    _in_flight: int = attrs.field(init=False, default=0)
    _epoch: int = attrs.field(init=False, default=0)
    _refused_at: int | None = attrs.field(init=False, default=None)
    _strikes: int = attrs.field(init=False, default=0)
    _credit: float = attrs.field(init=False, default=0.0)
    _slow_start: bool = attrs.field(init=False, default=True)
    _last_ttfts: deque[float] = attrs.field(
        init=False, factory=lambda: deque(maxlen=SLOW_START_SAMPLES)
    )
    # Measuring the no-load TTFT: when the next dip starts, and the dip under way.
    _next_probe: float | None = attrs.field(init=False, default=None)
    _probe_epoch: int | None = attrs.field(init=False, default=None)
    _probe_started: float = attrs.field(init=False, default=0.0)
    _probe_saved: float = attrs.field(init=False, default=0.0)
    _probe_samples: list[float] = attrs.field(init=False, factory=list)
    _objected: bool = attrs.field(init=False, default=False)
    _last_answer: float = attrs.field(init=False, default=-math.inf)
    _last_reason: str | None = attrs.field(init=False, default=None)
    _lot: trio.lowlevel.ParkingLot = attrs.field(init=False, factory=trio.lowlevel.ParkingLot)
    _granted: dict[trio.lowlevel.Task, FlowPermit] = attrs.field(init=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        if self.floor > self.ceiling:
            raise ConfigError(f"floor must be <= ceiling ({self.ceiling}), got {self.floor}")
        start = self.initial
        if start is None:
            start = max(self.floor, min(self.ceiling, DEFAULT_INITIAL_LIMIT))
        if isinstance(start, bool) or not isinstance(start, int):
            raise ConfigError(f"initial must be an integer, got {start!r}")
        if not self.floor <= start <= self.ceiling:
            raise ConfigError(
                f"initial must be between floor ({self.floor}) and ceiling "
                f"({self.ceiling}), got {start}"
            )
        self._estimate = float(start)

    def __repr__(self) -> str:
        return (
            f"<AdaptiveLimit {self._in_flight}/{self.limit} in flight "
            f"(floor {self.floor}, ceiling {self.ceiling}), {len(self._lot)} waiting>"
        )

    @property
    def limit(self) -> int:
        """The live limit: new permits are granted while in-flight is below it."""
        return max(self.floor, min(self.ceiling, math.floor(self._estimate + 1e-9)))

    @property
    def in_flight(self) -> int:
        """Permits currently held."""
        return self._in_flight

    def statistics(self) -> FlowStatistics:
        """A frozen snapshot: limit, in flight, waiting, bounds and the last change's reason."""
        return FlowStatistics(
            limit=self.limit,
            in_flight=self._in_flight,
            waiting=len(self._lot),
            floor=self.floor,
            ceiling=self.ceiling,
            last_reason=self._last_reason,
            refused_at=self._refused_at,
            strikes=self._strikes,
            noise=self._noise,
        )

    # -- acquiring -------------------------------------------------------------------

    def _grant(self) -> FlowPermit:
        alone = self._in_flight == 0
        self._in_flight += 1
        return FlowPermit(epoch=self._epoch, acquired_at=trio.current_time(), alone=alone)

    def acquire_nowait(self) -> FlowPermit:
        """Take a permit without blocking.

        Raises:
            trio.WouldBlock: when in-flight is at the limit or others are already
                waiting (no barging past the queue).
        """
        if self._in_flight < self.limit and not self._lot:
            return self._grant()
        raise trio.WouldBlock

    async def acquire(self) -> FlowPermit:
        """Wait until in-flight is below the limit, then take a permit.

        Always a checkpoint. Waiters are woken first in, first out, and the
        permit is handed over at the moment of waking, so a wake-up is never
        lost to a task that arrives in between.

        Cancellation: a task cancelled while waiting holds no permit.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            permit = self.acquire_nowait()
        except trio.WouldBlock:
            task = trio.lowlevel.current_task()
            # If we are cancelled while parked, the lot forgets us and no permit
            # was counted; once unparked, park() returns and the permit is ours.
            await self._lot.park()
            return self._granted.pop(task)
        await trio.lowlevel.cancel_shielded_checkpoint()
        return permit

    def _wake(self) -> None:
        available = self.limit - self._in_flight
        if available > 0 and self._lot:
            for task in self._lot.unpark(count=available):
                self._granted[task] = self._grant()

    # -- releasing -------------------------------------------------------------------

    def _release(self, permit: FlowPermit) -> int:
        """Return the in-flight count *including* this permit, and drop it."""
        if permit.released:
            raise RuntimeError("this FlowPermit was already released")
        permit.released = True
        held = self._in_flight
        self._in_flight -= 1
        return held

    def _set(self, estimate: float, reason: str) -> LimitStep | None:
        old = self.limit
        self._estimate = max(float(self.floor), min(float(self.ceiling), estimate))
        new = self.limit
        if new == old:
            return None
        self._last_reason = reason
        change = LimitStep(t=trio.current_time(), old=old, new=new, reason=reason)
        if self.on_change is not None:
            self.on_change(change)
        return change

    def on_success(self, permit: FlowPermit, *, ttft_s: float | None = None) -> LimitStep | None:
        """Give back ``permit`` after a successful attempt (``ttft_s``: its time to first token).

        Returns:
            The :class:`LimitStep` if the limit moved, else ``None``.
        """
        held = self._release(permit)
        now = trio.current_time()
        self._last_answer = now
        self._recent.append(False)
        self._sample(permit, held, loss=False)
        try:  # even if on_change raises, the freed slot goes to a waiter
            measuring, change = self._measure(permit, ttft_s, now)
            if not measuring:
                change = self._grow(permit, held, ttft_s)
        finally:
            self._wake()
        return change

    def on_overload(self, permit: FlowPermit, cause: Cause | str) -> LimitStep | None:
        """Give back ``permit`` after the server refused it or cut it (``cause`` names how).

        Returns:
            The :class:`LimitStep` if the limit moved, else ``None``.
        """
        held = self._release(permit)
        self._recent.append(True)
        if self._sample(permit, held, loss=True):
            self._wake()  # the limit started over: more may go now
            return None
        if not self._overloaded() and (
            self._noise >= NOISE_MIN
            or (
                permit.epoch == self._epoch
                and self.limit >= LOSS_TOLERANCE_FROM
                and not self._probing()
            )
        ):
            # Noise at a level the server has been taking: nothing to learn. On a
            # server with background loss, no single signal is an answer, at any level.
            self._wake()
            return None
        self._slow_start = False
        try:
            change = self._shrink(permit, held, str(cause))
        finally:
            self._wake()
        return change

    def _probing(self) -> bool:
        """Whether the limit stands at (or just under) a level the server refused:
        there, one refusal is an answer, not noise."""
        refused = self._refused_at
        return refused is not None and self.limit + 1 >= refused

    def _overloaded(self) -> bool:
        """Whether the recent overload signals are more than noise."""
        losses = sum(self._recent)
        tolerance = self.loss_tolerance
        noise = self._noise
        if noise >= NOISE_MIN:
            if len(self._recent) < NOISE_SAMPLES:
                return False  # too few signals since the limit started over
            # Three standard deviations of the background loss over the window, and
            # two of its estimate: their ups and downs are not overload.
            variance = noise * (1.0 - noise)
            spread = 3.0 * math.sqrt(variance / LOSS_WINDOW) + 2.0 * math.sqrt(
                variance / len(self._alone)
            )
            tolerance = max(tolerance, noise + max(NOISE_MARGIN, spread))
        if tolerance == 0:
            return losses > 0
        return losses >= max(2, math.ceil(tolerance * len(self._recent)))

    def _sample(self, permit: FlowPermit, held: int, *, loss: bool) -> bool:
        """Record a request that was alone from send to end as a sample of background
        loss. Returns whether the background loss was just found: the limit then
        starts over from slow start (what lowered it was the server's loss, not load).
        """
        if not (permit.alone and held == 1):
            return False
        alone = self._alone
        alone.append(loss)
        if len(alone) < NOISE_SAMPLES:
            return False
        was = self._noise
        self._noise = sum(alone) / len(alone)
        if was >= NOISE_MIN or self._noise < NOISE_MIN:
            return False
        self._refused_at = None
        self._strikes = 0
        self._credit = 0.0
        self._slow_start = True
        self._recent.clear()  # the losses that lowered it were misread
        return True

    def on_ignore(self, permit: FlowPermit) -> None:
        """Give back ``permit`` after an attempt that says nothing about load (or was cancelled)."""
        self._release(permit)
        self._wake()

    def on_failure(
        self, permit: FlowPermit, cause: Cause, *, status_code: int | None = None
    ) -> LimitStep | None:
        """Give back ``permit`` after a failed attempt, classified by :func:`classify`.

        An HTTP status (any, even an error) counts as the server answering.
        """
        now = trio.current_time()
        if status_code is not None:
            self._last_answer = now
        answering = now - self._last_answer <= self.answer_window
        signal = classify(cause, status_code, answering=answering)
        if signal == Signal.OVERLOAD:
            return self.on_overload(permit, cause)
        self.on_ignore(permit)
        return None

    # -- the algorithm ---------------------------------------------------------------

    def _measure(
        self, permit: FlowPermit, ttft_s: float | None, now: float
    ) -> tuple[bool, LimitStep | None]:
        """Run the periodic no-load TTFT measurement: (whether it took this sample, change)."""
        if self.latency is None or self.probe_interval is None or ttft_s is None:
            return False, None
        if self._probe_epoch is None:
            if self._next_probe is None:
                self._next_probe = now + self.probe_interval
            if now < self._next_probe:
                return False, None
            if not self._objected:
                # TTFT never rose above its floor: the floor cannot be stale in the
                # way that matters (too low), so spare the server's throughput.
                self._next_probe = now + self.probe_interval
                return False, None
            # Halve the limit for one round trip: what those requests see is no-load.
            self._probe_saved = self._estimate
            self._probe_started = now
            self._probe_samples.clear()
            self._epoch += 1
            self._probe_epoch = self._epoch
            return True, self._set(max(float(self.floor), self._estimate / 2), "measure")
        if permit.epoch >= self._probe_epoch:
            self._probe_samples.append(ttft_s)
        done = len(self._probe_samples) >= PROBE_SAMPLES
        if not done and now - self._probe_started < self.probe_interval:
            return True, None  # still measuring; successes neither grow nor brake meanwhile
        if done:
            self.latency.rebase(min(self._probe_samples))
        undisturbed = self._epoch == self._probe_epoch
        self._probe_epoch = None
        self._objected = False
        self._next_probe = now + self.probe_interval
        if undisturbed:  # no refusal meanwhile: go back to where we were
            return True, self._set(self._probe_saved, "restore")
        return True, None

    def _grow(self, permit: FlowPermit, held: int, ttft_s: float | None) -> LimitStep | None:
        cap: float | None = None
        if self.latency is not None and ttft_s is not None:
            cap = self.latency.propose(ttft_s, self._estimate, trio.current_time())
        if cap is not None:
            self._objected = True
            # The server queues. Brake once per epoch: samples of requests sent
            # before the last decrease still carry the queue that decrease removes.
            self._slow_start = False
            self._credit = 0.0
            if cap < self._estimate and permit.epoch == self._epoch:
                self._epoch += 1
                return self._set(cap, "latency")
            return None  # hold: no increase while TTFT is above its floor
        if self._slow_start and ttft_s is not None and self.latency is not None:
            # HyStart's idea: leave slow start at the first sign of a queue, before
            # the queue's own delay lets the doubling run far past the server.
            self._last_ttfts.append(ttft_s)
            base = self.latency.baseline
            if (
                base is not None
                and len(self._last_ttfts) == SLOW_START_SAMPLES
                and min(self._last_ttfts) > SLOW_START_EXIT * base
            ):
                self._slow_start = False
        limit = self.limit
        if held * 2 < limit or limit >= self.ceiling:
            return None  # not using what we have: success proves nothing about more
        refused = self._refused_at
        if refused is None or limit + 1 < refused:
            # Slow start until the first brake or refusal (+1 per success, doubling
            # per round trip), then +1 per `limit` successes (+1 per round trip).
            if not self._slow_start:
                self._credit += 1.0
                if self._credit < limit:
                    return None
                self._credit = 0.0
            reason = "increase"
        elif limit + 1 == refused:
            # One below the level the server refused last: probe it, ever more rarely.
            self._credit += 1.0
            if self._credit < limit * 2**self._strikes:
                return None
            self._credit = 0.0
            reason = "probe"
        else:
            # At or above the refused level and `limit` successes without a refusal:
            # the server takes it now. Forget the old level.
            self._credit += 1.0
            if self._credit < limit:
                return None
            self._credit = 0.0
            self._strikes = max(0, self._strikes - 1)
            self._refused_at = None
            reason = "increase"
        return self._set(self._estimate + 1.0, reason)

    def _shrink(self, permit: FlowPermit, held: int, reason: str) -> LimitStep | None:
        self._credit = 0.0
        limit = self.limit
        if permit.epoch == self._epoch:
            if self._refused_at is not None and limit + 1 >= self._refused_at:
                self._strikes = min(MAX_PROBE_STRIKES, self._strikes + 1)  # a failed probe
            else:
                self._strikes = 0  # refused below the known level: a new situation
            self._refused_at = held
            self._epoch += 1
            dropped = max(self.floor, min(limit - 1, int(limit * self.backoff_ratio)))
            return self._set(float(dropped), reason)
        # Sent under an older, higher limit. While we are still at the limit, the
        # server refusing `held` at once means what survives the burst is what it
        # takes; below the limit (a late timeout at the end of a run) it proves nothing.
        if held < limit:
            return None
        if self._refused_at is None or held < self._refused_at:
            self._refused_at = held
        return self._set(float(held - 1), reason) if held - 1 < limit else None
