"""Rate-limit headers of several providers, and the pacer they feed (virtual time)."""

from __future__ import annotations

import random

import httpx
import pytest
import trio
import trio.testing

from shardline._exceptions import ConfigError
from shardline._flow_pacer import UNKNOWN_RESET_S, HeaderPacer
from shardline._ratelimit_headers import (
    Quota,
    RateLimitInfo,
    parse_duration,
    parse_ratelimit_headers,
)

WALL = 1_700_000_000.0  # 2023-11-14T22:13:20Z


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        ("6m0s", 360.0),
        ("1.5s", 1.5),
        ("20ms", 0.02),
        ("1h2m3.5s", 3723.5),
        ("2m59.56s", 179.56),
        ("7", 7.0),
        ("0.25", 0.25),
        ("0s", 0.0),
        ("150us", 0.00015),
    ],
)
def test_parse_duration_reads_go_durations_and_plain_seconds(raw: str, seconds: float) -> None:
    """OpenAI's and Groq's reset durations, and bare seconds."""
    assert parse_duration(raw) == pytest.approx(seconds)


@pytest.mark.parametrize("raw", ["", "s", "6x", "-1s", "1s2", "abc", "inf", "nan", "1e3", "5m 3s"])
def test_parse_duration_rejects_garbage(raw: str) -> None:
    """Anything that is not a duration is None, never an exception."""
    assert parse_duration(raw) is None


def test_openai_headers() -> None:
    """OpenAI's suffixed headers, resets as durations from now, names case-insensitive."""
    headers = httpx.Headers(
        {
            "X-RateLimit-Limit-Requests": "5000",
            "x-ratelimit-remaining-requests": "4999",
            "x-ratelimit-reset-requests": "12ms",
            "x-ratelimit-limit-tokens": "160000",
            "x-ratelimit-remaining-tokens": "159976",
            "x-ratelimit-reset-tokens": "6m0s",
        }
    )
    info = parse_ratelimit_headers(headers, 100.0)
    assert info == RateLimitInfo(
        requests=Quota(limit=5000, remaining=4999, reset_at=pytest.approx(100.012)),
        tokens=Quota(limit=160000, remaining=159976, reset_at=460.0),
    )


def test_plain_dict_names_are_case_insensitive() -> None:
    """A plain dict with capitalised names works as httpx.Headers does."""
    info = parse_ratelimit_headers({"X-RateLimit-Remaining-Requests": "3"}, 0.0)
    assert info is not None
    assert info.requests == Quota(remaining=3)


def test_openrouter_epoch_milliseconds() -> None:
    """OpenRouter's unsuffixed headers with the reset in epoch milliseconds."""
    headers = {
        "X-RateLimit-Limit": "20",
        "X-RateLimit-Remaining": "3",
        "X-RateLimit-Reset": str(int((WALL + 10) * 1000)),
    }
    info = parse_ratelimit_headers(headers, 50.0, wall_time=WALL)
    assert info == RateLimitInfo(requests=Quota(limit=20, remaining=3, reset_at=60.0))


def test_unsuffixed_epoch_seconds_and_relative_seconds() -> None:
    """A bare reset above 10^9 is epoch seconds; a small one is seconds from now."""
    absolute = parse_ratelimit_headers({"x-ratelimit-reset": str(WALL + 30)}, 0.0, wall_time=WALL)
    relative = parse_ratelimit_headers({"x-ratelimit-reset": "30"}, 0.0, wall_time=WALL)
    assert absolute is not None
    assert relative is not None
    assert absolute.requests == relative.requests == Quota(reset_at=30.0)


def test_anthropic_rfc3339() -> None:
    """Anthropic's headers with RFC 3339 resets."""
    headers = {
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "49",
        "anthropic-ratelimit-requests-reset": "2023-11-14T22:13:30Z",
        "anthropic-ratelimit-tokens-limit": "40000",
        "anthropic-ratelimit-tokens-remaining": "38000",
        "anthropic-ratelimit-tokens-reset": "2023-11-14T22:14:20+00:00",
    }
    info = parse_ratelimit_headers(headers, 5.0, wall_time=WALL)
    assert info == RateLimitInfo(
        requests=Quota(limit=50, remaining=49, reset_at=15.0),
        tokens=Quota(limit=40000, remaining=38000, reset_at=65.0),
    )


def test_together_token_headers() -> None:
    """Together's unsuffixed request headers plus x-tokenlimit-* for tokens."""
    headers = {
        "x-ratelimit-limit": "100",
        "x-ratelimit-remaining": "90",
        "x-ratelimit-reset": "2",
        "x-tokenlimit-limit": "1000000",
        "x-tokenlimit-remaining": "999000",
    }
    info = parse_ratelimit_headers(headers, 0.0)
    assert info == RateLimitInfo(
        requests=Quota(limit=100, remaining=90, reset_at=2.0),
        tokens=Quota(limit=1000000, remaining=999000),
    )


def test_azure_minus_one_and_garbage_are_ignored() -> None:
    """Azure's -1 placeholders and unparsable values drop out; nothing raises."""
    headers = {
        "x-ratelimit-limit-tokens": "-1",
        "x-ratelimit-remaining-tokens": "-1",
        "x-ratelimit-reset-tokens": "0",
        "x-ratelimit-remaining-requests": "lots",
        "x-ratelimit-reset-requests": "soon",
        "anthropic-ratelimit-requests-reset": "not a date",
    }
    info = parse_ratelimit_headers(headers, 0.0)
    assert info == RateLimitInfo(tokens=Quota(reset_at=0.0))
    assert parse_ratelimit_headers({"x-ratelimit-reset": "9" * 400}, 0.0) is None
    assert parse_ratelimit_headers({}, 0.0) is None
    assert parse_ratelimit_headers({"content-type": "text/event-stream"}, 0.0) is None


def test_resets_too_far_away_are_not_believed() -> None:
    """A reset more than a day away is a garbled header, ignored."""
    info = parse_ratelimit_headers(
        {"x-ratelimit-remaining-requests": "1", "x-ratelimit-reset-requests": "100000s"}, 0.0
    )
    assert info == RateLimitInfo(requests=Quota(remaining=1))


# -- the pacer -----------------------------------------------------------------------


def test_pacer_validates_its_options() -> None:
    """Options are checked with messages naming them."""
    with pytest.raises(ConfigError, match=r"^spread must be >= 0, got -1$"):
        HeaderPacer(spread=-1)
    with pytest.raises(ConfigError, match=r"^max_sleep must be > 0, got 0$"):
        HeaderPacer(max_sleep=0)


async def test_pacer_without_reports_never_blocks(autojump_clock: trio.testing.MockClock) -> None:
    """No announced quota: wait() returns at once (after a checkpoint)."""
    pacer = HeaderPacer()
    start = trio.current_time()
    for _ in range(100):
        await pacer.wait(tokens=1000)
    assert trio.current_time() == start
    assert pacer.statistics().paced == 0


async def test_pacer_counts_what_was_sent_since_the_report(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With 3 remaining, three requests go at once and the fourth waits for the reset."""
    pacer = HeaderPacer(spread=0.5, rng=random.Random(1))
    start = trio.current_time()
    pacer.observe(RateLimitInfo(requests=Quota(limit=10, remaining=3, reset_at=start + 6.0)))
    for _ in range(3):
        await pacer.wait()
    assert trio.current_time() == start
    assert pacer.statistics().requests_available == 0
    await pacer.wait()
    waited = trio.current_time() - start
    assert 6.0 <= waited <= 6.5
    assert pacer.statistics().requests_available == 9  # refilled to the limit, one sent


async def test_pacer_spreads_waiters_freed_by_one_reset(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Waiters freed by a reset leave spread over the spread window, not in one instant."""
    pacer = HeaderPacer(spread=2.0, rng=random.Random(3))
    start = trio.current_time()
    pacer.observe(RateLimitInfo(requests=Quota(limit=50, remaining=0, reset_at=start + 10.0)))
    left: list[float] = []

    async def sender() -> None:
        await pacer.wait()
        left.append(trio.current_time() - start)

    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(sender)
        await trio.testing.wait_all_tasks_blocked()
        assert pacer.statistics().waiting == 20
    assert all(10.0 <= t <= 12.0 for t in left)
    assert len(set(left)) == 20
    assert max(left) - min(left) > 1.0


async def test_a_new_report_wakes_waiters(autojump_clock: trio.testing.MockClock) -> None:
    """A report with room frees waiters before the old reset."""
    pacer = HeaderPacer()
    start = trio.current_time()
    pacer.observe(RateLimitInfo(requests=Quota(remaining=0, reset_at=start + 30.0)))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pacer.wait)
        await trio.sleep(1.0)
        pacer.observe(RateLimitInfo(requests=Quota(remaining=5, reset_at=start + 30.0)))
    assert trio.current_time() - start == pytest.approx(1.0)


async def test_token_quota_blocks_a_large_request(autojump_clock: trio.testing.MockClock) -> None:
    """A request whose tokens do not fit waits; one above the limit waits for a full window."""
    pacer = HeaderPacer(spread=0.0)
    start = trio.current_time()
    pacer.observe(RateLimitInfo(tokens=Quota(limit=1000, remaining=300, reset_at=start + 5.0)))
    await pacer.wait(tokens=200)
    assert trio.current_time() == start
    await pacer.wait(tokens=200)  # 100 left: wait for the reset
    assert trio.current_time() - start == pytest.approx(5.0)
    # Larger than the whole limit: waits for a full (assumed) refill, then goes alone.
    await pacer.wait(tokens=5000)
    assert trio.current_time() - start == pytest.approx(5.0 + UNKNOWN_RESET_S)
    assert pacer.statistics().tokens_available == 1000 - 5000


async def test_unknown_reset_is_trusted_briefly(autojump_clock: trio.testing.MockClock) -> None:
    """A report without a reset blocks for UNKNOWN_RESET_S at most, then the quota is unknown."""
    pacer = HeaderPacer(spread=0.0)
    start = trio.current_time()
    pacer.observe(RateLimitInfo(requests=Quota(remaining=0)))
    await pacer.wait()
    assert trio.current_time() - start == pytest.approx(UNKNOWN_RESET_S)
    assert pacer.statistics().requests_available is None


async def test_sleeps_are_bounded_by_max_sleep(autojump_clock: trio.testing.MockClock) -> None:
    """A far reset is re-checked every max_sleep seconds; the caller's scope bounds the whole."""
    pacer = HeaderPacer(max_sleep=5.0, spread=0.0)
    start = trio.current_time()
    pacer.observe(RateLimitInfo(requests=Quota(limit=1, remaining=0, reset_at=start + 12.0)))
    await pacer.wait()
    assert trio.current_time() - start == pytest.approx(12.0)


async def test_cancelled_waiter_counts_nothing(autojump_clock: trio.testing.MockClock) -> None:
    """A wait cancelled before the quota frees leaves the quota and the waiter count untouched."""
    pacer = HeaderPacer()
    start = trio.current_time()
    pacer.observe(RateLimitInfo(requests=Quota(limit=2, remaining=0, reset_at=start + 30.0)))
    with trio.move_on_after(3.0) as scope:
        await pacer.wait()
    assert scope.cancelled_caught
    stats = pacer.statistics()
    assert (stats.requests_available, stats.waiting) == (0, 0)


async def test_observe_headers_parses_and_feeds(autojump_clock: trio.testing.MockClock) -> None:
    """observe_headers is parse_ratelimit_headers plus observe."""
    pacer = HeaderPacer()
    info = pacer.observe_headers(
        httpx.Headers({"x-ratelimit-remaining-requests": "2", "x-ratelimit-reset-requests": "1s"})
    )
    assert info is not None
    assert pacer.statistics().requests_available == 2
    assert "2" in repr(pacer)


async def test_a_report_about_an_older_request_does_not_free_what_is_in_flight(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Requests still in flight stay counted, whatever order the answers arrive in; an
    older answer does not replace a newer report; a send that got no answer stays
    counted against the report we hold."""
    pacer = HeaderPacer()
    reset_at = trio.current_time() + 60.0

    def report(remaining: int) -> RateLimitInfo:
        return RateLimitInfo(requests=Quota(limit=10, remaining=remaining, reset_at=reset_at))

    pacer.observe(report(5))
    first, second, third = [await pacer.wait() for _ in range(3)]
    assert (first, second, third) == (1, 2, 3)
    assert pacer.statistics().requests_available == 2
    # The server took them in order (4, 3, 2 left); the second's answer comes first.
    pacer.observe(report(3), ticket=second)  # the first and third may not be counted
    assert pacer.statistics().requests_available == 1
    # Older (more remaining): not taken, but it shows the first is counted in the report
    # we hold, so only the third is still in question.
    pacer.observe(report(4), ticket=first)
    assert pacer.statistics().requests_available == 2
    pacer.observe(report(2), ticket=third)  # the newest: nothing in question
    assert pacer.statistics().requests_available == 2
    fourth = await pacer.wait()
    pacer.unanswered(fourth)  # refused a connection: it stays counted until a report
    assert pacer.statistics().requests_available == 1


async def test_a_quota_whose_reset_moves_later_is_read_as_a_refilling_bucket(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """OpenAI's reset is "until full": the reset instant moves later with each request.
    Once it has, an empty quota frees a request after 1/rate, not after the reset."""
    pacer = HeaderPacer(spread=0.0)
    start = trio.current_time()

    def report(remaining: int, reset_in: float) -> RateLimitInfo:
        now = trio.current_time()
        return RateLimitInfo(requests=Quota(limit=60, remaining=remaining, reset_at=now + reset_in))

    # 60 a minute, refilling 1 a second: 5 left, full in 55 s (at start + 55).
    pacer.observe(report(5, 55.0))
    await trio.sleep(0.1)
    # One more taken: 4.1 left, full in 55.9 s, at start + 56: a second later than
    # the first report said, long before that reset came. A bucket.
    pacer.observe(report(4, 55.9))
    await trio.sleep(0.1)
    pacer.observe(report(0, 60.0))  # emptied by others
    before = trio.current_time()
    await pacer.wait()
    # The bucket frees one in about a second (conservatively 59/60 a second): not 60 s.
    assert 1.0 <= trio.current_time() - before < 1.05
    assert trio.current_time() - start < 2.0


async def test_a_fixed_window_is_not_mistaken_for_a_bucket(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Reports of one window name the same reset: an empty quota waits for it."""
    pacer = HeaderPacer(spread=0.0)
    start = trio.current_time()
    reset_at = start + 30.0
    for remaining in (3, 2, 1, 0):
        quota = Quota(limit=5, remaining=remaining, reset_at=reset_at)
        pacer.observe(RateLimitInfo(requests=quota))
        await trio.sleep(0.1)
    await pacer.wait()
    assert trio.current_time() == reset_at
