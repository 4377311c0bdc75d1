"""Retry policy: capped exponential backoff, Retry-After, and a retry budget.

Three independent pieces decide what happens after a failed attempt:

* :class:`Backoff` says *how long* to wait before attempt ``n + 1`` when the
  server gave no hint: capped exponential growth plus additive jitter.
* :func:`parse_retry_after` reads the hint when there is one
  (``retry-after-ms``, ``retry-after`` seconds, or an HTTP date).
* :class:`RetryPolicy` says *whether* to retry (explicit causes, a bounded
  number of attempts) and combines the two delays; :class:`RetryBudget` caps
  retries as a fraction of requests so a failing backend cannot turn a
  backlog into a retry storm.

None of these sleep: they compute numbers, and the pipeline sleeps with
``trio.sleep`` under its own cancel scopes. Tests can zero every delay with
:func:`set_testing` (the same switch stamina offers).
"""

from __future__ import annotations

import datetime
import email.utils
import math
import os
import random
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import attrs
import trio

from ._exceptions import AttemptError, Cause, ConfigError
from ._validate import integer, number

__all__ = [
    "DEFAULT_BACKOFF_INITIAL",
    "DEFAULT_BACKOFF_JITTER",
    "DEFAULT_BACKOFF_MAX",
    "DEFAULT_BACKOFF_MULTIPLIER",
    "DEFAULT_BUDGET_MAX_WAIT",
    "DEFAULT_BUDGET_MIN_RETRIES",
    "DEFAULT_BUDGET_RATIO",
    "DEFAULT_BUDGET_WINDOW",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_RETRY_AFTER_CAP",
    "DEFAULT_RETRY_AFTER_JITTER",
    "DEFAULT_RETRY_ON",
    "Backoff",
    "RetryBudget",
    "RetryPolicy",
    "is_testing",
    "no_delays",
    "parse_retry_after",
    "set_testing",
]

#: First delay, in seconds: openai-python's ``INITIAL_RETRY_DELAY`` (stamina uses 0.1 s,
#: which suits in-process calls but hits an overloaded LLM endpoint again too soon).
DEFAULT_BACKOFF_INITIAL = 0.5
#: Largest delay before jitter: openai-python's ``MAX_RETRY_DELAY`` (stamina: 5 s).
#: With multiplier 2 it is reached at the fifth retry (0.5, 1, 2, 4, 8).
DEFAULT_BACKOFF_MAX = 8.0
#: Growth per attempt: 2, as in openai-python and stamina.
DEFAULT_BACKOFF_MULTIPLIER = 2.0
#: Upper bound of the additive uniform jitter: stamina's ``wait_jitter``. A full
#: second spreads a synchronised burst of failures over a second even at the cap.
DEFAULT_BACKOFF_JITTER = 1.0
#: Attempts per item, the first one included (openai-python makes 3, stamina 10;
#: a batch run can afford more patience than an interactive call). With 8, an
#: item fails from transient faults only if all 8 attempts meet one: at a 30 %
#: fault rate per attempt, 0.3 ** 8 = 6.6e-5, under 1 item in 10,000.
DEFAULT_MAX_ATTEMPTS = 8
#: Largest Retry-After honoured, in seconds: rate limits reset per minute.
DEFAULT_RETRY_AFTER_CAP = 60.0
#: Positive jitter added to a Retry-After so clients told the same time do not
#: all come back in the same millisecond.
DEFAULT_RETRY_AFTER_JITTER = 1.0
#: Retries may be at most this fraction of requests (Finagle and Envoy use 20 %,
#: and refuse the rest; shardline makes the rest wait, so the ratio must cover
#: what transient faults need: at a 30 % fault rate per attempt an item needs
#: 0.3 / 0.7 = 0.43 retries on average)...
DEFAULT_BUDGET_RATIO = 0.5
#: ...plus this floor, so a small run can still retry (Finagle: 10 per second).
DEFAULT_BUDGET_MIN_RETRIES = 10
#: The retry budget counts the requests and retries of the last minute.
DEFAULT_BUDGET_WINDOW = 60.0
#: Longest wait for the retry budget, in seconds; then the retry goes anyway.
DEFAULT_BUDGET_MAX_WAIT = 60.0
#: A windowed budget keeps this many counting buckets per window.
WINDOW_BUCKETS = 60

#: Causes retried by default: every attempt failure except ``client_error``
#: (the request itself is wrong; sending it again cannot help). ``invalid_input``,
#: ``cancelled`` and ``internal_error`` are item outcomes, never retried.
DEFAULT_RETRY_ON: frozenset[Cause] = frozenset(Cause) - {
    Cause.CLIENT_ERROR,
    Cause.INVALID_INPUT,
    Cause.CANCELLED,
    Cause.INTERNAL_ERROR,
}

_NEVER_RETRIED = frozenset({Cause.INVALID_INPUT, Cause.CANCELLED, Cause.INTERNAL_ERROR})

_testing = False


def set_testing(enabled: bool) -> None:
    """Make every delay computed by this module zero (or restore real delays).

    The stamina-style switch for test suites that exercise retries and should
    not wait for them: ``Backoff.delay`` and ``RetryPolicy.delay`` return
    ``0.0`` while it is on. Retry *decisions* (causes, attempts, budget) are
    unchanged. Prefer the :func:`no_delays` context manager in tests.
    """
    global _testing
    _testing = bool(enabled)


def is_testing() -> bool:
    """Whether :func:`set_testing` has zeroed all delays."""
    return _testing


@contextmanager
def no_delays(enabled: bool = True) -> Iterator[None]:
    """Zero all retry delays inside the ``with`` block, then restore the previous state."""
    previous = _testing
    set_testing(enabled)
    try:
        yield
    finally:
        set_testing(previous)


@attrs.frozen(kw_only=True)
class Backoff:
    """Capped exponential backoff with additive jitter, for failures without a Retry-After.

    The wait before attempt ``n + 1`` (after attempt ``n`` failed, ``n >= 1``) is::

        min(max, initial * multiplier ** (n - 1)) + uniform(0, jitter)

    so with the defaults: 0.5, 1, 2, 4, 8, 8, ... seconds, each plus up to 1 s.
    This is stamina's shape with one difference: the jitter is added *after*
    the cap, so clients that all reached the cap still spread out instead of
    all waiting exactly ``max``. A delay is therefore never above
    ``max + jitter`` and never negative.

    It is *not* a sleeper: :meth:`delay` returns seconds and the caller sleeps
    under its own cancel scope, so cancelling an item cancels its backoff too.

    Args:
        initial: Seconds before the first retry, without jitter (>= 0).
        max: Cap on the exponential part (>= ``initial``).
        multiplier: Growth factor per attempt (>= 1; 1 gives a constant delay).
        jitter: Upper bound of the uniform jitter added to each delay (>= 0).
    """

    initial: float = attrs.field(default=DEFAULT_BACKOFF_INITIAL, validator=number("initial", ge=0))
    max: float = attrs.field(default=DEFAULT_BACKOFF_MAX, validator=number("max", ge=0))
    multiplier: float = attrs.field(
        default=DEFAULT_BACKOFF_MULTIPLIER, validator=number("multiplier", ge=1)
    )
    jitter: float = attrs.field(default=DEFAULT_BACKOFF_JITTER, validator=number("jitter", ge=0))

    def __attrs_post_init__(self) -> None:
        if self.max < self.initial:
            raise ConfigError(f"max must be >= initial ({self.initial!r}), got {self.max!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Backoff:
        """Build from ``LLM_RETRY_BACKOFF_S``, the initial delay pipeline authors already set.

        When that initial delay is above the default cap, the cap is raised to
        it (a user asking for 10 s between tries means at least 10 s).
        Keyword overrides that are not ``None`` win over the environment.

        Raises:
            ConfigError: when the variable is not a number or out of bounds.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        raw = env.get("LLM_RETRY_BACKOFF_S")
        if raw is not None and raw.strip() != "":
            try:
                initial = float(raw)
            except ValueError:
                raise ConfigError(
                    f"environment variable LLM_RETRY_BACKOFF_S must be a number, got {raw!r}"
                ) from None
            values["initial"] = initial
            if math.isfinite(initial) and initial > DEFAULT_BACKOFF_MAX:
                values["max"] = initial
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def base_delay(self, attempt: int) -> float:
        """The delay after failed attempt ``attempt`` (1-based) before jitter: non-decreasing."""
        if attempt < 1:
            raise ValueError(f"attempt must be >= 1, got {attempt!r}")
        try:
            raw = self.initial * self.multiplier ** (attempt - 1)
        except OverflowError:
            raw = math.inf
        return min(self.max, raw)

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based): base delay plus jitter.

        Args:
            attempt: The number of the attempt that just failed, starting at 1.
            rng: The random source for the jitter (pass a seeded one for reproducibility).

        Returns:
            A delay in ``[base_delay(attempt), base_delay(attempt) + jitter]``,
            or ``0.0`` while :func:`set_testing` is on.
        """
        if _testing:
            return 0.0
        return self.base_delay(attempt) + rng.uniform(0.0, self.jitter)

    def max_delay(self, attempt: int) -> float:
        """The largest value :meth:`delay` can return for ``attempt``."""
        return self.base_delay(attempt) + self.jitter


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds the server asked us to wait, from response headers, or ``None``.

    Looks at, in order: ``retry-after-ms`` (milliseconds, as OpenAI and Azure
    send), ``retry-after`` as a number of seconds, then ``retry-after`` as an
    HTTP date. Garbage, negative, infinite and past values are ignored (the
    caller then falls back to its own backoff). Header names are
    case-insensitive; an ``httpx.Headers`` or a plain dict both work.

    Args:
        headers: The response headers.
        now: The current wall-clock time (UNIX seconds) for HTTP dates;
            ``time.time()`` when omitted. Wall time is right here: the date is
            the server's wall clock, unlike our deadlines, which use trio's clock.

    Example::

        >>> parse_retry_after({"Retry-After": "2"})
        2.0
        >>> parse_retry_after({"retry-after-ms": "250", "retry-after": "2"})
        0.25
    """
    lowered = {k.lower(): v for k, v in headers.items()}

    raw_ms = lowered.get("retry-after-ms")
    if raw_ms is not None:
        ms = _nonneg_float(raw_ms)
        if ms is not None:
            return ms / 1000.0

    raw = lowered.get("retry-after")
    if raw is None:
        return None
    seconds = _nonneg_float(raw)
    if seconds is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(raw.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000" dates: treat as UTC, as RFC 9110 says they are
        when = when.replace(tzinfo=datetime.UTC)
    current = time.time() if now is None else now
    try:
        delta = when.timestamp() - current
    except (OverflowError, ValueError, OSError):  # dates at the edges of the calendar
        return None
    if not math.isfinite(delta) or delta < 0:
        return None
    return delta


def _nonneg_float(raw: str) -> float | None:
    text = raw.strip()
    # float() accepts "nan", "inf", "1_000" and "0x..."-free forms; keep plain decimals only.
    if not text or not all(c.isdigit() or c in ".+-eE" for c in text):
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return value


def _causes(value: object) -> frozenset[Cause]:
    if isinstance(value, str | Cause):
        value = [value]
    try:
        return frozenset(Cause(v) for v in value)  # type: ignore[attr-defined]
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"retry_on must be a set of causes, got {value!r}: {exc}") from None


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """Whether and when to retry a failed attempt.

    A retry happens only when the failure's cause is in ``retry_on``, fewer
    than ``max_attempts`` attempts were made, and the :class:`RetryBudget`
    grants one. The wait is the server's Retry-After (capped at
    ``retry_after_cap``, plus ``uniform(0, retry_after_jitter)``) when it sent
    one, else :meth:`Backoff.delay`.

    What it is *not*: an overall deadline. The caller's cancel scope bounds an
    item across all its retries; :meth:`max_total_delay` gives the worst-case
    sleeping time to size it.

    Args:
        max_attempts: Attempts per item, the first included (>= 1; 1 = never retry).
        backoff: Delays when the server gave no Retry-After.
        retry_on: The causes that are retried. Default: everything but
            ``client_error`` (plus the item-level ``invalid_input``/``cancelled``,
            which can never be retried).
        retry_after_cap: The longest Retry-After honoured, in seconds (>= 0).
        retry_after_jitter: Upper bound of the positive jitter added to a
            Retry-After (>= 0).
        budget_ratio: Retries allowed per request, for :meth:`new_budget` (>= 0).
        budget_min_retries: Retries always allowed on top, for :meth:`new_budget` (>= 0).
        budget_window: Seconds over which the budget counts (``None``: the whole run).
        budget_max_wait: Longest a retry waits for the budget before it goes
            anyway (``None``: no limit; then a spent whole-run budget can hold
            a retry until the run is left).
    """

    max_attempts: int = attrs.field(
        default=DEFAULT_MAX_ATTEMPTS, validator=integer("max_attempts", ge=1)
    )
    backoff: Backoff = attrs.field(factory=Backoff)
    retry_on: frozenset[Cause] = attrs.field(default=DEFAULT_RETRY_ON, converter=_causes)
    retry_after_cap: float = attrs.field(
        default=DEFAULT_RETRY_AFTER_CAP, validator=number("retry_after_cap", ge=0)
    )
    retry_after_jitter: float = attrs.field(
        default=DEFAULT_RETRY_AFTER_JITTER, validator=number("retry_after_jitter", ge=0)
    )
    budget_ratio: float = attrs.field(
        default=DEFAULT_BUDGET_RATIO, validator=number("budget_ratio", ge=0)
    )
    budget_min_retries: int = attrs.field(
        default=DEFAULT_BUDGET_MIN_RETRIES, validator=integer("budget_min_retries", ge=0)
    )
    budget_window: float | None = attrs.field(
        default=DEFAULT_BUDGET_WINDOW,
        validator=number("budget_window", gt=0, unit="seconds", optional=True),
    )
    budget_max_wait: float | None = attrs.field(
        default=DEFAULT_BUDGET_MAX_WAIT,
        validator=number("budget_max_wait", ge=0, unit="seconds", optional=True),
    )

    @retry_on.validator
    def _check_retry_on(self, _attr: object, value: frozenset[Cause]) -> None:
        bad = value & _NEVER_RETRIED
        if bad:
            names = ", ".join(sorted(c.value for c in bad))
            raise ConfigError(f"retry_on cannot contain item outcomes ({names})")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> RetryPolicy:
        """Build with ``backoff=Backoff.from_env(environ)``; non-``None`` overrides win."""
        values: dict[str, Any] = {"backoff": Backoff.from_env(environ)}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def should_retry(self, cause: Cause, attempt: int) -> bool:
        """Whether attempt ``attempt`` (1-based) that failed with ``cause`` may be retried.

        This ignores the budget: the pipeline then waits for
        :meth:`RetryBudget.acquire_retry`, which paces the retry but never refuses it.
        """
        return cause in self.retry_on and attempt < self.max_attempts

    def delay(self, error: AttemptError, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before retrying after ``error`` ended attempt ``attempt`` (1-based).

        ``error.retry_after`` (from the response headers) wins when present,
        capped at ``retry_after_cap`` and with positive jitter added, so the
        result is never earlier than the server asked unless the cap applies.
        Otherwise :meth:`Backoff.delay`. ``0.0`` while :func:`set_testing` is on.
        """
        if _testing:
            return 0.0
        hinted = error.retry_after
        if hinted is not None and math.isfinite(hinted) and hinted >= 0:
            return min(hinted, self.retry_after_cap) + rng.uniform(0.0, self.retry_after_jitter)
        return self.backoff.delay(attempt, rng)

    def max_delay(self, attempt: int) -> float:
        """The largest value :meth:`delay` can return after attempt ``attempt``."""
        return max(self.backoff.max_delay(attempt), self.retry_after_cap + self.retry_after_jitter)

    def max_total_delay(self) -> float:
        """Worst-case seconds an item spends waiting between its ``max_attempts`` attempts.

        The closed form ``sum(max_delay(n) + budget_max_wait for n in 1 .. max_attempts - 1)``
        (a retry first waits out its delay, then the budget, at most
        ``budget_max_wait``): add ``max_attempts * Deadlines.attempt`` to bound
        an item end to end. Infinite when ``budget_max_wait`` is ``None``.
        """
        wait = math.inf if self.budget_max_wait is None else self.budget_max_wait
        return sum(self.max_delay(n) + wait for n in range(1, self.max_attempts))

    def new_budget(self) -> RetryBudget:
        """A fresh :class:`RetryBudget` with this policy's ratio and floor."""
        return RetryBudget(
            ratio=self.budget_ratio,
            min_retries=self.budget_min_retries,
            window=self.budget_window,
        )


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
        horizon = self.clock() - self.window
        buckets = self._buckets
        while buckets and buckets[0][0] <= horizon:
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
                if self._waiters[0] is waiter:
                    if self.available > 0:
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
