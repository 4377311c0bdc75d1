"""Latency signals for adaptive concurrency: is the server queueing our requests?

A server that refuses work it cannot take (429, 503, a cut stream) tells the
client so; :class:`~shardline._flow.AdaptiveLimit` lowers its limit on those
refusals. A server that *queues* instead (vLLM, SGLang and TGI with their
default settings) never refuses: it answers later. The only sign of overload
is time to first token (TTFT) rising above what it is when the server is not
loaded. This module owns that sign:

* :class:`NoLoadMin` keeps the no-load TTFT: the fastest sample since the
  last measurement taken with the load cut (see its docstring for why not a
  rolling window).
* :class:`VegasSignal` and :class:`GradientSignal` turn a TTFT sample into a
  cap on the next limit, in the manner of Netflix concurrency-limits'
  ``VegasLimit`` (estimated queue length against thresholds) and
  ``Gradient2Limit`` (limit times the ratio of no-load to current latency, plus
  a small allowed queue), both measured against that floor.

Signals only ever *brake*: ``propose`` returns ``None`` (no objection) or a
cap. The additive increase belongs to the limit. ``docs/explanation/flow-control.md``
compares the two on simulated servers; :data:`DEFAULT_LATENCY_SIGNAL` names the
one the measurement chose.

What this is *not*: a timeout. A TTFT deadline still ends an attempt that gets
no first token; these signals only shape how many attempts are in flight.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from typing import Literal, Protocol

import attrs

from ._exceptions import ConfigError
from ._validate import number

__all__ = [
    "DEFAULT_LATENCY_SIGNAL",
    "GradientSignal",
    "LatencySignal",
    "LittleSignal",
    "NoLoadMin",
    "VegasSignal",
    "make_latency_signal",
]

#: Weight of a new sample in the smoothed TTFT both signals compare (an EWMA):
#: one long prompt (slow prefill) then moves the average by a fifth, not all of it.
DEFAULT_SAMPLE_WEIGHT = 0.2
#: Fewest and most recent samples whose minimum is the current TTFT.
MIN_RECENT = 4
MAX_RECENT = 64
#: Which signal :class:`~shardline._flow.AdaptiveLimit` uses by default; chosen
#: by measurement (``tests/benchmarks/sim_flow.py``, docs/explanation/flow-control.md).
DEFAULT_LATENCY_SIGNAL: Literal["gradient", "little", "vegas"] = "gradient"


class LatencySignal(Protocol):
    """What :class:`~shardline._flow.AdaptiveLimit` asks of a latency signal."""

    def propose(self, ttft_s: float, limit: float, now: float) -> float | None:
        """Feed one TTFT sample; return a cap on the next limit, or ``None`` for no objection."""
        ...

    @property
    def baseline(self) -> float | None:
        """The no-load TTFT in seconds, once there is a sample."""
        ...

    def rebase(self, ttft_s: float) -> None:
        """Install a no-load TTFT measured while the load was cut."""
        ...


@attrs.define(eq=False)
class NoLoadMin:
    """The fastest TTFT seen since the last :meth:`rebase`: the no-load floor.

    A minimum over all time would stick to one lucky sample forever and miss a
    server that got slower for good; a minimum over a rolling window drifts up
    under a standing queue (every sample waits), so the queue it should expose
    becomes the new normal -- TCP Vegas's known weakness. So the floor only
    falls on its own; it is raised only by a measurement taken while the load
    was cut (:class:`~shardline._flow.AdaptiveLimit` halves its limit for one
    round trip every ``probe_interval`` seconds, as Envoy's adaptive
    concurrency filter and BBR's ProbeRTT do), which :meth:`rebase` installs.

    Example::

        base = NoLoadMin()
        base.add(0.40)
        base.add(0.25)
        base.value            # 0.25
        base.rebase(0.30)     # measured with the load halved
        base.value            # 0.30
    """

    _value: float = attrs.field(init=False, default=math.inf)

    def add(self, sample: float) -> None:
        """Record one sample."""
        self._value = min(self._value, sample)

    def rebase(self, sample: float) -> None:
        """Replace the floor with a fresh no-load measurement."""
        self._value = sample

    @property
    def value(self) -> float | None:
        """The floor, or ``None`` before the first sample."""
        return None if math.isinf(self._value) else self._value


@attrs.define(eq=False)
class _Smoothed:
    """Shared state of both signals: the no-load minimum and the current TTFT.

    ``current="recent_min"`` (the default) takes the current TTFT as the
    smallest of the last ``limit`` samples (about one round trip; between
    :data:`MIN_RECENT` and :data:`MAX_RECENT`): a standing queue delays every
    request, the fastest included, while a long prompt only delays itself
    (CoDel's reasoning about sojourn times). ``current="ewma"`` averages
    instead (weight ``sample_weight``), as Netflix's limits do.
    """

    current: Literal["recent_min", "ewma"] = "recent_min"
    sample_weight: float = attrs.field(
        default=DEFAULT_SAMPLE_WEIGHT, validator=number("sample_weight", gt=0, le=1)
    )
    _min: NoLoadMin = attrs.field(init=False, factory=NoLoadMin)
    _avg: float | None = attrs.field(init=False, default=None)
    _recent: deque[float] = attrs.field(init=False, factory=lambda: deque(maxlen=MAX_RECENT))
    _times: deque[float] = attrs.field(init=False, factory=lambda: deque(maxlen=MAX_RECENT))

    @property
    def baseline(self) -> float | None:
        """The no-load TTFT in seconds, once there is a sample."""
        return self._min.value

    def rebase(self, ttft_s: float) -> None:
        """Install a no-load TTFT measured while the load was cut."""
        if math.isfinite(ttft_s) and ttft_s > 0:
            self._min.rebase(ttft_s)
            self._recent.clear()
            self._times.clear()
            self._avg = None

    def rate(self, count: int) -> float | None:
        """Successes per second over the last ``count`` samples, if they span any time."""
        count = min(count, len(self._times))
        if count < 2:
            return None
        span = self._times[-1] - self._times[-count]
        return (count - 1) / span if span > 0 else None

    def _feed(self, ttft_s: float, limit: float, now: float) -> tuple[float, float] | None:
        """Record a sample; return (baseline, current) or ``None`` for an unusable sample."""
        if not (math.isfinite(ttft_s) and ttft_s > 0):
            return None
        self._min.add(ttft_s)
        self._times.append(now)
        base = self._min.value
        assert base is not None
        if self.current == "ewma":
            if self._avg is None:
                self._avg = ttft_s
            else:
                self._avg += self.sample_weight * (ttft_s - self._avg)
            return base, self._avg
        self._recent.append(ttft_s)
        if len(self._recent) < MIN_RECENT:
            return None  # not yet enough evidence
        count = max(MIN_RECENT, min(MAX_RECENT, round(limit)))
        return base, min(itertools.islice(reversed(self._recent), count))


@attrs.define(eq=False)
class VegasSignal(_Smoothed):
    """TCP Vegas on TTFT: estimate how many of ``limit`` requests wait in the server's queue.

    With a no-load TTFT ``b`` and a smoothed TTFT ``t``, about
    ``queue = limit * (1 - b / t)`` requests are waiting. Below ``alpha`` the
    signal has no objection; above ``beta`` it caps the limit at
    ``limit - max(1, log10(limit))``; in between it holds the limit. The
    thresholds grow with ``log10(limit)`` as in Netflix's ``VegasLimit``
    (3 and 6 times it, but at least 1 and 2).

    It assumes TTFT is mostly queueing when it rises, which holds for a server
    whose prefill is short against its decode time.
    """

    alpha_factor: float = 3.0
    beta_factor: float = 6.0

    def propose(self, ttft_s: float, limit: float, now: float) -> float | None:
        """Feed one TTFT sample; return a cap on the next limit, or ``None``."""
        fed = self._feed(ttft_s, limit, now)
        if fed is None:
            return None
        base, avg = fed
        scale = math.log10(max(limit, 1.0))
        alpha = max(1.0, self.alpha_factor * scale)
        beta = max(2.0, self.beta_factor * scale)
        queue = limit * (1.0 - base / avg)
        if queue <= alpha:
            return None
        if queue >= beta:
            return limit - max(1.0, scale)
        return limit


@attrs.define(eq=False)
class LittleSignal(_Smoothed):
    """Vegas with the queue measured by Little's law: ``queue = (t - b) * completions/s``.

    Vegas's ``limit * (1 - b / t)`` is right when ``t`` is a whole request's
    latency. TTFT is only its first part: one queued request behind a slot that
    frees every 0.1 s doubles a 0.1 s TTFT, and Vegas then reads half the limit as
    queued. Here the extra wait ``t - b`` times the rate at which our requests
    complete (the server's service rate while it queues) counts the requests
    ahead of a new one. Below ``alpha`` (``max(1, 3 * log10(limit))``) no
    objection; above ``beta`` (twice that) the cap is ``limit - queue + alpha``,
    which drains the standing queue in one step; in between, hold.
    """

    alpha_factor: float = 3.0

    def propose(self, ttft_s: float, limit: float, now: float) -> float | None:
        """Feed one TTFT sample; return a cap on the next limit, or ``None``."""
        fed = self._feed(ttft_s, limit, now)
        if fed is None:
            return None
        base, current = fed
        rate = self.rate(max(MIN_RECENT, min(MAX_RECENT, round(limit))))
        if rate is None:
            return None
        alpha = max(1.0, self.alpha_factor * math.log10(max(limit, 1.0)))
        queue = (current - base) * rate
        if queue <= alpha:
            return None
        if queue >= 2 * alpha:
            return max(1.0, limit - queue + alpha)
        return limit


@attrs.define(eq=False)
class GradientSignal(_Smoothed):
    """Gradient2 on TTFT: scale the limit by how far TTFT sits above its no-load value.

    ``gradient = clamp(tolerance * b / t, 0.5, 1)`` for no-load TTFT ``b`` and
    smoothed TTFT ``t``: 1 while TTFT is within ``tolerance`` times its floor,
    down to 0.5 (at most halve per sample before smoothing). The proposal is
    ``limit * gradient + sqrt(limit)`` (a queue of ``sqrt(limit)`` is allowed so
    the server is never idle), moved towards by ``smoothing`` per sample.
    Netflix's ``Gradient2Limit`` compares against a long average instead of the
    minimum; a long average absorbs sustained queueing and lets the limit creep
    up, which the comparison in the docs shows.
    """

    tolerance: float = 1.5
    smoothing: float = 0.2

    def propose(self, ttft_s: float, limit: float, now: float) -> float | None:
        """Feed one TTFT sample; return a cap on the next limit, or ``None``."""
        fed = self._feed(ttft_s, limit, now)
        if fed is None:
            return None
        base, avg = fed
        gradient = max(0.5, min(1.0, self.tolerance * base / avg))
        if gradient >= 1.0:
            return None
        target = limit * gradient + math.sqrt(limit)
        return (1.0 - self.smoothing) * limit + self.smoothing * target


def make_latency_signal(
    kind: Literal["gradient", "little", "vegas"] | None = DEFAULT_LATENCY_SIGNAL,
    *,
    current: Literal["recent_min", "ewma"] = "recent_min",
) -> LatencySignal | None:
    """Build the signal named ``kind`` (``None``: no latency signal, refusals only).

    Raises:
        ConfigError: for an unknown ``kind``.
    """
    if kind is None:
        return None
    if kind == "gradient":
        return GradientSignal(current=current)
    if kind == "little":
        return LittleSignal(current=current)
    if kind == "vegas":
        return VegasSignal(current=current)
    raise ConfigError(f"latency signal must be 'gradient', 'vegas' or None, got {kind!r}")
