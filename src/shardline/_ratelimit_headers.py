"""Read the rate limits a server announces in its response headers.

Providers tell clients how much of their quota is left on every response, each
in its own dialect. :func:`parse_ratelimit_headers` reads them all into one
:class:`RateLimitInfo` whose reset times are on the caller's clock (trio's), so
a pacer can sleep until them:

==================  ==========================================  ============================
dialect             headers                                     reset
==================  ==========================================  ============================
OpenAI, Groq,       ``x-ratelimit-{limit,remaining,reset}-      a Go duration: ``6m0s``,
Azure OpenAI,       {requests,tokens}``                         ``1.5s``, ``20ms``,
Cerebras                                                        ``1h2m3.5s``; or seconds
OpenRouter,         ``x-ratelimit-{limit,remaining,reset}``     epoch milliseconds
Together            (requests); Together's tokens:              (OpenRouter), epoch seconds,
                    ``x-tokenlimit-{limit,remaining}``          or seconds from now
Anthropic           ``anthropic-ratelimit-{requests,tokens}-    RFC 3339 timestamp
                    {limit,remaining,reset}``
==================  ==========================================  ============================

Garbage never raises: a header that does not parse is ignored, as is a negative
count (Azure sends ``-1`` when it has no number). A bare number as a reset is
read by size: above 10^11 epoch milliseconds, above 10^9 epoch seconds, else
seconds from now.

What this is *not*: ``Retry-After`` (that is :func:`shardline._backoff.parse_retry_after`,
a wait after a refusal; these headers describe the quota on every answer).
"""

from __future__ import annotations

import datetime
import math
import re
import time
from collections.abc import Mapping

import attrs

__all__ = ["Quota", "RateLimitInfo", "parse_duration", "parse_ratelimit_headers"]

_GO_DURATION = re.compile(r"(?:(\d+(?:\.\d*)?|\.\d+)(h|ms|us|µs|μs|ns|m|s))")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "μs": 1e-6}
_UNIT_S["ns"] = 1e-9
#: Bare numbers above these are absolute epoch times, not durations.
_EPOCH_MS_ABOVE = 1e11
_EPOCH_S_ABOVE = 1e9
#: No quota resets further away than a day is believed (a garbled header).
_MAX_RESET_S = 86_400.0


@attrs.frozen(kw_only=True)
class Quota:
    """One announced limit (requests or tokens) as of one response."""

    limit: int | None = None
    remaining: int | None = None
    #: When ``remaining`` is back to ``limit``, on the clock passed as ``now``.
    reset_at: float | None = None

    @property
    def empty(self) -> bool:
        return self.limit is None and self.remaining is None and self.reset_at is None


@attrs.frozen(kw_only=True)
class RateLimitInfo:
    """The quotas one response announced; either may be ``None``."""

    requests: Quota | None = None
    tokens: Quota | None = None


def parse_duration(raw: str) -> float | None:
    """Seconds in a Go-style duration (``6m0s``, ``1.5s``, ``20ms``) or a plain number.

    Returns ``None`` for anything else (negative, empty, infinite, unknown units).

    >>> parse_duration("1h2m3.5s"), parse_duration("20ms"), parse_duration("7")
    (3723.5, 0.02, 7.0)
    """
    text = raw.strip()
    if not text:
        return None
    number = _plain_number(text)
    if number is not None:
        return number
    total = 0.0
    position = 0
    for match in _GO_DURATION.finditer(text):
        if match.start() != position:
            return None
        total += float(match.group(1)) * _UNIT_S[match.group(2)]
        position = match.end()
    if position != len(text) or not math.isfinite(total):
        return None
    return total


def _plain_number(text: str) -> float | None:
    if not text or not all(c.isdigit() or c == "." for c in text) or text.count(".") > 1:
        return None
    if text == ".":
        return None
    value = float(text)
    return value if math.isfinite(value) else None


def _count(raw: str | None) -> int | None:
    if raw is None:
        return None
    value = _plain_number(raw.strip())
    if value is None:
        return None  # garbage, or negative (Azure's -1 for "unknown")
    return int(value)


def _reset(raw: str | None, now: float, wall: float, *, absolute_ok: bool) -> float | None:
    """A reset header as a time on the ``now`` clock, or ``None``."""
    if raw is None:
        return None
    text = raw.strip()
    number = _plain_number(text)
    delta: float | None
    if number is not None and absolute_ok and number > _EPOCH_MS_ABOVE:
        delta = number / 1000.0 - wall
    elif number is not None and absolute_ok and number > _EPOCH_S_ABOVE:
        delta = number - wall
    elif number is not None:
        delta = number
    else:
        delta = parse_duration(text)
        if delta is None:
            delta = _rfc3339(text, wall)
    if delta is None or not math.isfinite(delta) or delta > _MAX_RESET_S:
        return None
    return now + max(0.0, delta)


def _rfc3339(text: str, wall: float) -> float | None:
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    try:
        return when.timestamp() - wall
    except (OverflowError, OSError, ValueError):
        return None


def _quota(
    headers: Mapping[str, str],
    names: tuple[str, str, str | None],
    now: float,
    wall: float,
    *,
    absolute_ok: bool,
) -> Quota | None:
    limit_name, remaining_name, reset_name = names
    quota = Quota(
        limit=_count(_get(headers, limit_name)),
        remaining=_count(_get(headers, remaining_name)),
        reset_at=None
        if reset_name is None
        else _reset(_get(headers, reset_name), now, wall, absolute_ok=absolute_ok),
    )
    return None if quota.empty else quota


def _get(headers: Mapping[str, str], name: str) -> str | None:
    return headers.get(name)


def _lowered(headers: Mapping[str, str]) -> dict[str, str]:
    """Header names folded to lower case; entries that are not strings are dropped."""
    try:
        return {
            key.lower(): value
            for key, value in headers.items()
            if isinstance(key, str) and isinstance(value, str)
        }
    except Exception:  # a strange mapping must not break a response
        return {}


def parse_ratelimit_headers(
    headers: Mapping[str, str], now: float, *, wall_time: float | None = None
) -> RateLimitInfo | None:
    """The quotas announced in ``headers``, or ``None`` when there are none.

    Args:
        headers: Response headers (``httpx.Headers`` or any mapping; names are
            matched case-insensitively).
        now: The current time on the clock the resets should use
            (``trio.current_time()``).
        wall_time: The current Unix time, to convert absolute resets (epoch
            values, RFC 3339); default ``time.time()``.

    Returns:
        A :class:`RateLimitInfo` with the first dialect found per quota
        (OpenAI's suffixed form, then Anthropic's, then the unsuffixed form),
        or ``None``. Never raises on header content.
    """
    wall = time.time() if wall_time is None else wall_time
    headers = _lowered(headers)
    requests = (
        _quota(
            headers,
            (
                "x-ratelimit-limit-requests",
                "x-ratelimit-remaining-requests",
                "x-ratelimit-reset-requests",
            ),
            now,
            wall,
            absolute_ok=False,
        )
        or _quota(
            headers,
            (
                "anthropic-ratelimit-requests-limit",
                "anthropic-ratelimit-requests-remaining",
                "anthropic-ratelimit-requests-reset",
            ),
            now,
            wall,
            absolute_ok=True,
        )
        or _quota(
            headers,
            ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"),
            now,
            wall,
            absolute_ok=True,
        )
    )
    tokens = (
        _quota(
            headers,
            (
                "x-ratelimit-limit-tokens",
                "x-ratelimit-remaining-tokens",
                "x-ratelimit-reset-tokens",
            ),
            now,
            wall,
            absolute_ok=False,
        )
        or _quota(
            headers,
            (
                "anthropic-ratelimit-tokens-limit",
                "anthropic-ratelimit-tokens-remaining",
                "anthropic-ratelimit-tokens-reset",
            ),
            now,
            wall,
            absolute_ok=True,
        )
        or _quota(
            headers,
            ("x-tokenlimit-limit", "x-tokenlimit-remaining", None),
            now,
            wall,
            absolute_ok=True,
        )
    )
    if requests is None and tokens is None:
        return None
    return RateLimitInfo(requests=requests, tokens=tokens)
