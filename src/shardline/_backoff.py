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
import math
import os
import random
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import attrs

from ._budget_defaults import (
    DEFAULT_BUDGET_MAX_WAIT,
    DEFAULT_BUDGET_MIN_RETRIES,
    DEFAULT_BUDGET_RATIO,
    DEFAULT_BUDGET_WINDOW,
)
from ._exceptions import AttemptError, Cause, ConfigError
from ._validate import integer, number

if TYPE_CHECKING:  # the budget is a trio primitive; the policy imports it to make one
    from ._budget import RetryBudget

__all__ = [
    "DEFAULT_BACKOFF_INITIAL",
    "DEFAULT_BACKOFF_JITTER",
    "DEFAULT_BACKOFF_MAX",
    "DEFAULT_BACKOFF_MULTIPLIER",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_RETRY_AFTER_CAP",
    "DEFAULT_RETRY_AFTER_JITTER",
    "DEFAULT_RETRY_ON",
    "Backoff",
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
    # An HTTP date is rare; email.utils (socket, selectors, ...) is imported for it only.
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(raw.strip())
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
        from ._budget import RetryBudget  # a trio primitive: the policy alone needs no trio

        return RetryBudget(
            ratio=self.budget_ratio,
            min_retries=self.budget_min_retries,
            window=self.budget_window,
        )
