"""Backoff, Retry-After parsing, retry policy and retry budget."""

from __future__ import annotations

import email.utils
import math
import random
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from shardline._backoff import (
    DEFAULT_RETRY_ON,
    Backoff,
    RetryPolicy,
    is_testing,
    no_delays,
    parse_retry_after,
    set_testing,
)
from shardline._budget import RetryBudget
from shardline._exceptions import (
    Cause,
    ClientError,
    ConfigError,
    RateLimited,
    ServerError,
    StallTimeout,
)

# Strategies ------------------------------------------------------------------

seconds = st.floats(min_value=0.0, max_value=120.0, allow_nan=False, allow_infinity=False)


@st.composite
def backoffs(draw: st.DrawFn) -> Backoff:
    initial = draw(st.floats(min_value=0.0, max_value=10.0))
    cap = draw(st.floats(min_value=initial, max_value=120.0))
    multiplier = draw(st.floats(min_value=1.0, max_value=10.0))
    jitter = draw(st.floats(min_value=0.0, max_value=5.0))
    return Backoff(initial=initial, max=cap, multiplier=multiplier, jitter=jitter)


attempts = st.integers(min_value=1, max_value=10_000)
rngs = st.randoms(use_true_random=False)


def run_virtual(fn: Callable[[], Awaitable[float]]) -> float:
    """Run ``fn`` in a fresh trio run on a MockClock that jumps over every sleep."""
    return trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


async def sleep_measured(delays: list[float]) -> float:
    """Sleep each delay in turn and return the elapsed time on trio's clock."""
    start = trio.current_time()
    for d in delays:
        await trio.sleep(d)
    return trio.current_time() - start


# Backoff properties ----------------------------------------------------------


@given(backoffs(), attempts, rngs)
def test_delay_is_never_negative_nor_above_cap_plus_jitter(
    backoff: Backoff, attempt: int, rng: random.Random
) -> None:
    """Every delay lies in [0, max + jitter], even for huge attempt numbers."""
    d = backoff.delay(attempt, rng)
    assert 0.0 <= d <= backoff.max + backoff.jitter
    assert backoff.base_delay(attempt) <= d <= backoff.max_delay(attempt)


@given(backoffs(), st.integers(min_value=1, max_value=2000))
def test_base_delay_is_non_decreasing(backoff: Backoff, attempt: int) -> None:
    """Before jitter, the delay never shrinks from one attempt to the next."""
    assert backoff.base_delay(attempt) <= backoff.base_delay(attempt + 1)


@given(backoffs(), st.integers(min_value=1, max_value=12), rngs)
def test_total_sleep_within_closed_form_bound(backoff: Backoff, n: int, rng: random.Random) -> None:
    """N backoff sleeps, measured on the mock clock, total between the two closed forms."""
    delays = [backoff.delay(k, rng) for k in range(1, n + 1)]
    slept = run_virtual(lambda: sleep_measured(delays))
    # sum of min(max, initial * m**(k-1)) for k = 1..N, written as a geometric series.
    geometric = 0.0
    for k in range(1, n + 1):
        term = backoff.initial * backoff.multiplier ** (k - 1)
        if term >= backoff.max:
            geometric += backoff.max * (n - k + 1)
            break
        geometric += term
    tolerance = 1e-6 * (1 + geometric)
    assert geometric - tolerance <= slept <= geometric + n * backoff.jitter + tolerance


@given(
    st.floats(min_value=0.0, max_value=1000.0),
    seconds,
    st.floats(min_value=0.0, max_value=5.0),
    st.integers(min_value=1, max_value=20),
    rngs,
)
def test_retry_after_honoured_up_to_cap(
    retry_after: float, cap: float, jitter: float, attempt: int, rng: random.Random
) -> None:
    """A Retry-After is waited for (capped), plus jitter in [0, retry_after_jitter]."""
    policy = RetryPolicy(retry_after_cap=cap, retry_after_jitter=jitter)
    error = RateLimited("slow down", status_code=429, retry_after=retry_after)
    d = policy.delay(error, attempt, rng)
    slept = run_virtual(lambda: sleep_measured([d]))
    honoured = min(retry_after, cap)
    assert honoured - 1e-9 <= slept <= honoured + jitter + 1e-9
    assert d <= policy.max_delay(attempt)


@given(st.integers(min_value=1, max_value=10), rngs)
def test_policy_total_sleep_within_max_total_delay(max_attempts: int, rng: random.Random) -> None:
    """Sleeping between every attempt of an item never exceeds max_total_delay()."""
    policy = RetryPolicy(max_attempts=max_attempts, retry_after_cap=5.0)
    errors = [ServerError("boom", status_code=500), RateLimited("429", retry_after=30.0)]
    delays = [policy.delay(rng.choice(errors), n, rng) for n in range(1, max_attempts)]
    slept = run_virtual(lambda: sleep_measured(delays))
    assert slept <= policy.max_total_delay() + 1e-9


async def test_default_schedule_under_autojump_clock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The default backoff sleeps 0.5, 1, 2, 4, 8, 8 s (+ up to 1 s each) in virtual time."""
    backoff = Backoff()
    rng = random.Random(7)
    for n, base in enumerate([0.5, 1, 2, 4, 8, 8], start=1):
        start = trio.current_time()
        await trio.sleep(backoff.delay(n, rng))
        assert base <= trio.current_time() - start <= base + 1.0


def test_constant_backoff_with_multiplier_one() -> None:
    """Multiplier 1 and no jitter gives the same delay every time."""
    backoff = Backoff(initial=2.0, max=2.0, multiplier=1.0, jitter=0.0)
    assert {backoff.delay(n, random.Random()) for n in range(1, 50)} == {2.0}


def test_base_delay_rejects_attempt_zero() -> None:
    """Attempts are 1-based."""
    with pytest.raises(ValueError, match=r"^attempt must be >= 1, got 0$"):
        Backoff().base_delay(0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"initial": -1.0}, "initial must be >= 0, got -1.0"),
        ({"max": -0.5}, "max must be >= 0, got -0.5"),
        ({"multiplier": 0.5}, "multiplier must be >= 1, got 0.5"),
        ({"jitter": -1}, "jitter must be >= 0, got -1"),
        ({"initial": math.inf}, "initial must be finite, got inf"),
        ({"initial": "1"}, "initial must be a number, got '1'"),
        ({"initial": 3.0, "max": 2.0}, "max must be >= initial (3.0), got 2.0"),
    ],
)
def test_backoff_validation_messages(kwargs: dict[str, object], message: str) -> None:
    """Invalid backoff options raise ConfigError naming the parameter and the bound."""
    with pytest.raises(ConfigError) as info:
        Backoff(**kwargs)  # type: ignore[arg-type]
    assert str(info.value) == message


def test_backoff_from_env_sets_initial() -> None:
    """LLM_RETRY_BACKOFF_S sets the initial delay; other fields keep their defaults."""
    backoff = Backoff.from_env({"LLM_RETRY_BACKOFF_S": "1.5"})
    assert backoff == Backoff(initial=1.5)


def test_backoff_from_env_raises_cap_to_initial() -> None:
    """An initial delay above the default cap raises the cap with it."""
    backoff = Backoff.from_env({"LLM_RETRY_BACKOFF_S": "20"})
    assert (backoff.initial, backoff.max) == (20.0, 20.0)


def test_backoff_from_env_empty_and_overrides() -> None:
    """Unset or blank means default; explicit overrides win over the environment."""
    assert Backoff.from_env({}) == Backoff()
    assert Backoff.from_env({"LLM_RETRY_BACKOFF_S": " "}) == Backoff()
    assert Backoff.from_env({"LLM_RETRY_BACKOFF_S": "2"}, initial=0.1).initial == 0.1


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("soon", "environment variable LLM_RETRY_BACKOFF_S must be a number, got 'soon'"),
        ("-1", "initial must be >= 0, got -1.0"),
    ],
)
def test_backoff_from_env_rejects_bad_values(raw: str, message: str) -> None:
    """A bad LLM_RETRY_BACKOFF_S is a ConfigError naming the variable or the parameter."""
    with pytest.raises(ConfigError) as info:
        Backoff.from_env({"LLM_RETRY_BACKOFF_S": raw})
    assert str(info.value) == message


# Retry-After parsing ----------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "250"}, 0.25),
        ({"Retry-After-Ms": "1500.5"}, 1.5005),
        ({"retry-after": "3"}, 3.0),
        ({"Retry-After": "0"}, 0.0),
        ({"retry-after": " 2.5 "}, 2.5),
        ({"retry-after-ms": "100", "retry-after": "9"}, 0.1),
        ({"retry-after-ms": "garbage", "retry-after": "9"}, 9.0),
        ({"retry-after-ms": "-5", "retry-after": "4"}, 4.0),
        ({"retry-after": "-1"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after": "1e999"}, None),
        ({"retry-after": "soon"}, None),
        ({"retry-after": ""}, None),
        ({}, None),
        ({"x-ratelimit-reset-requests": "1s"}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    """retry-after-ms wins over retry-after; garbage and negatives are ignored."""
    assert parse_retry_after(headers) == expected


def test_parse_retry_after_http_date() -> None:
    """An HTTP date is measured from the given wall-clock time."""
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 42, usegmt=True)
    assert parse_retry_after({"Retry-After": date}, now=now) == pytest.approx(42.0)


def test_parse_retry_after_past_date_is_ignored() -> None:
    """A date in the past (clock skew) gives no hint rather than a negative wait."""
    now = 1_700_000_000.0
    date = email.utils.formatdate(now - 10, usegmt=True)
    assert parse_retry_after({"Retry-After": date}, now=now) is None


def test_parse_retry_after_accepts_httpx_headers() -> None:
    """httpx.Headers (a case-insensitive multi-dict) works as input."""
    import httpx

    assert parse_retry_after(httpx.Headers({"Retry-After": "7"})) == 7.0


@given(st.dictionaries(st.sampled_from(["retry-after", "Retry-After-Ms", "x"]), st.text()))
def test_parse_retry_after_never_raises_nor_goes_negative(headers: dict[str, str]) -> None:
    """Arbitrary header text gives None or a finite non-negative number, never an error."""
    value = parse_retry_after(headers, now=1_700_000_000.0)
    assert value is None or (math.isfinite(value) and value >= 0)


# Retry policy -----------------------------------------------------------------


def test_default_retry_on_excludes_client_error() -> None:
    """client_error is not retried by default; server-side and transport causes are."""
    policy = RetryPolicy()
    assert not policy.should_retry(Cause.CLIENT_ERROR, 1)
    for cause in (Cause.RATE_LIMITED, Cause.SERVER_ERROR, Cause.STALL_TIMEOUT, Cause.TRUNCATED):
        assert policy.should_retry(cause, 1)
    assert Cause.INVALID_INPUT not in DEFAULT_RETRY_ON
    assert Cause.CANCELLED not in DEFAULT_RETRY_ON


def test_should_retry_stops_at_max_attempts() -> None:
    """Attempt max_attempts is the last one."""
    policy = RetryPolicy(max_attempts=3)
    assert [policy.should_retry(Cause.SERVER_ERROR, n) for n in (1, 2, 3, 4)] == [
        True,
        True,
        False,
        False,
    ]


def test_retry_on_is_explicit_and_accepts_strings() -> None:
    """retry_on lists exactly the retried causes; cause names are accepted."""
    policy = RetryPolicy(retry_on=frozenset({"rate_limited", Cause.CLIENT_ERROR}))
    assert policy.retry_on == {Cause.RATE_LIMITED, Cause.CLIENT_ERROR}
    assert policy.should_retry(Cause.CLIENT_ERROR, 1)
    assert not policy.should_retry(Cause.SERVER_ERROR, 1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_attempts": 0}, "max_attempts must be >= 1, got 0"),
        ({"max_attempts": 2.5}, "max_attempts must be an integer, got 2.5"),
        ({"retry_after_cap": -1.0}, "retry_after_cap must be >= 0, got -1.0"),
        ({"retry_after_jitter": -0.1}, "retry_after_jitter must be >= 0, got -0.1"),
        ({"budget_ratio": -0.2}, "budget_ratio must be >= 0, got -0.2"),
        ({"budget_min_retries": -1}, "budget_min_retries must be >= 0, got -1"),
        (
            {"retry_on": frozenset({Cause.CANCELLED})},
            "retry_on cannot contain item outcomes (cancelled)",
        ),
    ],
)
def test_policy_validation_messages(kwargs: dict[str, object], message: str) -> None:
    """Invalid policy options raise ConfigError naming the parameter and the bound."""
    with pytest.raises(ConfigError) as info:
        RetryPolicy(**kwargs)  # type: ignore[arg-type]
    assert str(info.value) == message


def test_retry_on_rejects_unknown_cause() -> None:
    """An unknown cause name is a ConfigError naming retry_on."""
    with pytest.raises(ConfigError, match=r"^retry_on must be a set of causes"):
        RetryPolicy(retry_on=frozenset({"teapot"}))


def test_policy_delay_without_retry_after_uses_backoff() -> None:
    """Without a Retry-After the policy's delay is the backoff's."""
    policy = RetryPolicy(backoff=Backoff(initial=1.0, max=4.0, jitter=0.0))
    error = StallTimeout("no progress")
    assert [policy.delay(error, n, random.Random()) for n in (1, 2, 3, 4)] == [1, 2, 4, 4]


def test_policy_from_env_reads_backoff() -> None:
    """RetryPolicy.from_env builds its backoff from LLM_RETRY_BACKOFF_S."""
    policy = RetryPolicy.from_env({"LLM_RETRY_BACKOFF_S": "0.25"}, max_attempts=2)
    assert policy.backoff.initial == 0.25
    assert policy.max_attempts == 2


def test_set_testing_zeroes_delays_but_not_decisions() -> None:
    """The testing switch makes every delay 0 and leaves retry decisions alone."""
    policy = RetryPolicy()
    error = RateLimited("429", retry_after=30.0)
    with no_delays():
        assert is_testing()
        assert policy.delay(error, 1, random.Random()) == 0.0
        assert policy.backoff.delay(3, random.Random()) == 0.0
        assert not policy.should_retry(Cause.CLIENT_ERROR, 1)
    assert not is_testing()
    assert policy.delay(error, 1, random.Random()) >= 30.0
    set_testing(True)
    try:
        assert Backoff().delay(1, random.Random()) == 0.0
    finally:
        set_testing(False)


# Retry budget -----------------------------------------------------------------


@given(
    st.floats(min_value=0.0, max_value=2.0),
    st.integers(min_value=0, max_value=20),
    st.lists(st.booleans(), max_size=300),
)
def test_budget_never_exceeds_ratio_of_requests_plus_floor(
    ratio: float, floor: int, ops: list[bool]
) -> None:
    """Under any interleaving, granted retries <= ratio * requests + min_retries."""
    budget = RetryBudget(ratio=ratio, min_retries=floor)
    for is_request in ops:
        if is_request:
            budget.record_request()
        else:
            budget.try_acquire_retry()
        assert budget.retries <= ratio * budget.requests + floor + 1e-6
    assert budget.retries <= ops.count(False)


def test_budget_says_no_when_spent_and_recovers_with_requests() -> None:
    """try_acquire_retry is False while the budget is spent, True once requests earn more."""
    budget = RetryBudget(ratio=0.5, min_retries=1)
    assert budget.try_acquire_retry()
    assert not budget.try_acquire_retry()
    budget.record_request()
    budget.record_request()
    assert budget.available == 1
    assert budget.try_acquire_retry()
    assert not budget.try_acquire_retry()
    assert budget.retries == 2


async def test_spent_budget_makes_retries_wait_not_fail(autojump_clock: object) -> None:
    """acquire_retry waits while the budget is spent and goes when a new request earns one."""
    import trio
    import trio.testing

    budget = RetryBudget(ratio=1.0, min_retries=0)
    granted: list[bool] = []

    async def retry() -> None:
        granted.append(await budget.acquire_retry())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(retry)
        await trio.testing.wait_all_tasks_blocked()
        assert budget.waiting == 1
        assert granted == []
        await trio.sleep(5)
        assert granted == []  # no window, no new request: still waiting
        budget.record_request()
    assert granted == [True]
    assert budget.waited == 1
    assert budget.overdrafts == 0


async def test_budget_waiters_go_in_order(autojump_clock: object) -> None:
    """Waiting retries are served first come, first served, one per earned retry."""
    import trio
    import trio.testing

    budget = RetryBudget(ratio=1.0, min_retries=0)
    order: list[int] = []

    async def retry(n: int) -> None:
        await budget.acquire_retry()
        order.append(n)

    async with trio.open_nursery() as nursery:
        for n in range(4):
            nursery.start_soon(retry, n)
            await trio.testing.wait_all_tasks_blocked()
        for expected in range(1, 5):
            budget.record_request()
            await trio.testing.wait_all_tasks_blocked()
            assert len(order) == expected
    assert order == [0, 1, 2, 3]


async def test_budget_overdraft_after_max_wait(autojump_clock: object) -> None:
    """A retry that waited max_wait goes anyway, counted as an overdraft."""
    import trio

    budget = RetryBudget(ratio=0.0, min_retries=0)
    start = trio.current_time()
    assert await budget.acquire_retry(max_wait=30.0) is False
    assert trio.current_time() - start == pytest.approx(30.0)
    assert budget.overdrafts == 1
    assert budget.retries == 1
    assert budget.waiting == 0


async def test_windowed_budget_frees_waiters_when_the_window_forgets(
    autojump_clock: object,
) -> None:
    """With a window, a spent budget frees a waiting retry once old retries leave the window."""
    import trio

    budget = RetryBudget(ratio=0.0, min_retries=1, window=60.0)
    assert await budget.acquire_retry()
    start = trio.current_time()
    assert await budget.acquire_retry()
    waited = trio.current_time() - start
    assert 59.0 <= waited <= 61.0


async def test_cancelled_budget_waiter_takes_nothing(autojump_clock: object) -> None:
    """A waiter cancelled at the head of the line leaves it taking nothing; the next is served."""
    import trio
    import trio.testing

    budget = RetryBudget(ratio=1.0, min_retries=0)
    got: list[str] = []
    first = trio.CancelScope()

    async def retry(name: str, scope: trio.CancelScope) -> None:
        with scope:
            await budget.acquire_retry()
            got.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(retry, "first", first)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(retry, "second", trio.CancelScope())
        await trio.testing.wait_all_tasks_blocked()
        first.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert budget.waiting == 1
        budget.record_request()
    assert got == ["second"]
    assert budget.retries == 1


def test_budget_repr_is_informative() -> None:
    """The repr shows used/allowed retries, the formula and refusals."""
    budget = RetryPolicy(budget_ratio=0.2, budget_min_retries=3, budget_window=None).new_budget()
    for _ in range(10):
        budget.record_request()
    budget.try_acquire_retry()
    assert repr(budget) == (
        "<RetryBudget 1/5 retries used (0.2 x 10 requests + 3), 0 waiting, 0 overdrafts>"
    )


async def test_windowed_budget_repr(autojump_clock: object) -> None:
    """A windowed budget's repr names its window."""
    budget = RetryBudget(ratio=0.2, min_retries=3, window=60)
    for _ in range(10):
        budget.record_request()
    assert repr(budget) == (
        "<RetryBudget 0/5 retries in the last 60s (0.2 x 10 requests + 3), 0 waiting, 0 overdrafts>"
    )


def test_budget_validation_messages() -> None:
    """Budget options are validated with messages naming the parameter."""
    with pytest.raises(ConfigError, match=r"^ratio must be >= 0, got -1$"):
        RetryBudget(ratio=-1)
    with pytest.raises(ConfigError, match=r"^min_retries must be an integer, got 1.5$"):
        RetryBudget(min_retries=1.5)  # type: ignore[arg-type]


def test_client_error_carries_no_retry() -> None:
    """A ClientError's cause is outside the default retry set (sanity of the mapping)."""
    assert ClientError("bad", status_code=400).cause not in DEFAULT_RETRY_ON


async def test_windowed_budget_forgets_old_requests(autojump_clock: object) -> None:
    """With a window, retries earned by old requests expire: no banked storm."""
    import trio

    budget = RetryBudget(ratio=0.5, min_retries=1, window=60.0)
    for _ in range(100):
        budget.record_request()
    assert budget.available == 51
    await trio.sleep(61)
    # A minute later the 100 healthy requests no longer count: only the floor is left.
    assert budget.available == 1
    assert budget.try_acquire_retry()
    assert not budget.try_acquire_retry()
    assert budget.requests == 100
    assert budget.retries == 1


async def test_policy_budget_is_windowed_by_default(autojump_clock: object) -> None:
    """RetryPolicy.new_budget() counts over its budget_window (10 s by default)."""
    budget = RetryPolicy().new_budget()
    assert budget.window == 10.0
    assert RetryPolicy(budget_window=None).new_budget().window is None


def test_budget_window_validation() -> None:
    """A non-positive window is a ConfigError naming the parameter."""
    with pytest.raises(ConfigError, match=r"^budget_window must be > 0 seconds, got 0$"):
        RetryPolicy(budget_window=0)
    with pytest.raises(ConfigError, match=r"^window must be > 0 seconds, got -1$"):
        RetryBudget(window=-1)


@given(
    st.lists(st.floats(min_value=0.0, max_value=1e4), min_size=1, max_size=30),
    st.sampled_from([1.0, 10.0, 60.0, 0.3]),
)
def test_budget_window_never_expires_in_the_past(times: list[float], window: float) -> None:
    """After the budget looked at the time, its next change is strictly in the future.

    A waiter sleeps until that moment; one at or before now would make it spin
    without ever letting a virtual clock advance (a float-rounding bug once did).
    """
    now = 0.0
    budget = RetryBudget(ratio=0.0, min_retries=0, window=window, clock=lambda: now)
    for t in sorted(times):
        now = t
        budget.record_request()
        assert budget.available == 0
        assert budget._next_change() > now
        # The moment the oldest bucket expires, exactly: the edge float rounding hits.
        now = budget._next_change()
        assert budget.available == 0
        assert budget._next_change() > now
