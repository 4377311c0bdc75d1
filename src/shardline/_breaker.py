"""Health of one endpoint: a circuit breaker that knows what a stream's failure is.

A replica that refuses connections, answers 5xx, or whose streams stall or get
cut, is unhealthy even when it answers 200. :class:`CircuitBreaker` counts such
failures in a row::

    closed ──(threshold failures in a row)──▶ open
    open ──(cooldown passed)──▶ half-open: one probe attempt
    half-open ──probe ok──▶ closed        half-open ──probe failed──▶ open (cooldown x2)

Only the causes in :data:`HEALTH_CAUSES` count: a 429 is the endpoint's flow
control speaking (the adaptive limit and the pacer handle it), a 4xx is the
request's fault, a cancellation says nothing. Any success closes the count.

The breaker decides nothing about where an item goes: a shard sends new
attempts to an endpoint while :attr:`CircuitBreaker.closed`, and an open one
gets a single attempt, its probe, once :meth:`CircuitBreaker.claim_probe` allows.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable

import attrs
import trio

from ._config import (
    DEFAULT_BREAKER_COOLDOWN,
    DEFAULT_BREAKER_MAX_COOLDOWN,
    DEFAULT_BREAKER_THRESHOLD,
)
from ._exceptions import Cause
from ._validate import integer, number

__all__ = [
    "DEFAULT_BREAKER_COOLDOWN",
    "DEFAULT_BREAKER_MAX_COOLDOWN",
    "DEFAULT_BREAKER_THRESHOLD",
    "HEALTH_CAUSES",
    "BreakerState",
    "CircuitBreaker",
]

#: Causes that say the endpoint, not the request, is unwell.
HEALTH_CAUSES = frozenset(
    {
        Cause.CONNECT_ERROR,
        Cause.CONNECT_TIMEOUT,
        Cause.CONNECTION_LOST,
        Cause.SERVER_ERROR,
        Cause.TTFT_TIMEOUT,
        Cause.STALL_TIMEOUT,
        Cause.ATTEMPT_TIMEOUT,
        Cause.TRUNCATED,
    }
)


class BreakerState(enum.StrEnum):
    """Where an endpoint's circuit is."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@attrs.define(eq=False, kw_only=True)
class CircuitBreaker:
    """Closed, open or half-open, from the attempts sent to one endpoint.

    Args:
        threshold: Health failures in a row that open the circuit (>= 1).
        cooldown: Seconds before an open circuit lets one probe through (> 0).
        max_cooldown: The cooldown's cap as failed probes double it (>= cooldown).
        on_change: Called with ``(old, new, reason)`` on every change.
    """

    threshold: int = attrs.field(
        default=DEFAULT_BREAKER_THRESHOLD, validator=integer("threshold", ge=1)
    )
    cooldown: float = attrs.field(
        default=DEFAULT_BREAKER_COOLDOWN, validator=number("cooldown", gt=0)
    )
    max_cooldown: float = attrs.field(
        default=DEFAULT_BREAKER_MAX_COOLDOWN, validator=number("max_cooldown", gt=0)
    )
    on_change: Callable[[BreakerState, BreakerState, str], None] | None = None
    _state: BreakerState = attrs.field(init=False, default=BreakerState.CLOSED)
    _failures: int = attrs.field(init=False, default=0)
    _open_until: float = attrs.field(init=False, default=-math.inf)
    _current_cooldown: float = attrs.field(init=False, default=0.0)
    _probing: bool = attrs.field(init=False, default=False)
    _opened_at: float | None = attrs.field(init=False, default=None)
    #: Seconds spent not closed, over the closed-open cycles that ended.
    time_open: float = attrs.field(init=False, default=0.0)

    def __attrs_post_init__(self) -> None:
        if self.max_cooldown < self.cooldown:
            raise ValueError(
                f"max_cooldown must be >= cooldown ({self.cooldown}), got {self.max_cooldown}"
            )
        self._current_cooldown = self.cooldown

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self._state.value}, {self._failures} failures in a row>"

    @property
    def state(self) -> BreakerState:
        return self._state

    @property
    def closed(self) -> bool:
        return self._state is BreakerState.CLOSED

    @property
    def open_until(self) -> float:
        """When an open circuit lets its probe through (trio's clock)."""
        return self._open_until

    def open_for(self, now: float) -> float:
        """Seconds spent not closed so far, the current spell included."""
        current = 0.0 if self._opened_at is None else now - self._opened_at
        return self.time_open + current

    def claim_probe(self) -> bool:
        """Take the one probe of an open circuit whose cooldown has passed.

        Returns ``True`` when the caller's next attempt is the probe: it must
        then report it (:meth:`on_success`, :meth:`on_failure` or :meth:`on_ignore`).
        """
        if self._state is BreakerState.CLOSED or self._probing:
            return False
        if trio.current_time() < self._open_until:
            return False
        self._probing = True
        if self._state is BreakerState.OPEN:
            self._move(BreakerState.HALF_OPEN, "cooldown passed: one probe")
        return True

    def on_success(self, *, probe: bool = False) -> None:
        """An attempt sent here succeeded (or got an answer that is not a health failure)."""
        self._failures = 0
        if probe:
            self._probing = False
        if self._state is not BreakerState.CLOSED and (probe or not self._probing):
            self._current_cooldown = self.cooldown
            self._move(BreakerState.CLOSED, "an attempt succeeded")

    def on_failure(self, cause: Cause, *, probe: bool = False) -> None:
        """An attempt sent here failed with ``cause``."""
        if cause not in HEALTH_CAUSES:
            self.on_success(probe=probe)
            return
        self._failures += 1
        now = trio.current_time()
        if probe:
            self._probing = False
            self._current_cooldown = min(self.max_cooldown, self._current_cooldown * 2)
            self._open_until = now + self._current_cooldown
            self._move(BreakerState.OPEN, f"the probe failed ({cause.value})")
        elif self._state is BreakerState.CLOSED and self._failures >= self.threshold:
            self._open_until = now + self._current_cooldown
            self._move(BreakerState.OPEN, f"{self._failures} failures in a row ({cause.value})")

    def on_ignore(self, *, probe: bool = False) -> None:
        """An attempt sent here ended without saying anything (cancelled)."""
        if probe:
            self._probing = False

    def _move(self, new: BreakerState, reason: str) -> None:
        old = self._state
        if old is new:
            return
        now = trio.current_time()
        if old is BreakerState.CLOSED:
            self._opened_at = now
        elif new is BreakerState.CLOSED and self._opened_at is not None:
            self.time_open += now - self._opened_at
            self._opened_at = None
        self._state = new
        if self.on_change is not None:
            self.on_change(old, new, reason)
