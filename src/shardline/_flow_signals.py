"""What a finished attempt says about a server's load, and the record of a limit change.

The vocabulary shared by :class:`~shardline._flow.AdaptiveLimit` and whoever
reports to it (a shard) or logs its moves (the pipeline's events):
:func:`classify` maps an attempt's :class:`~shardline._exceptions.Cause` and
HTTP status to a :class:`Signal`, and :class:`LimitStep` is what the limit
returns (and passes to its ``on_change`` callback) when it moves.
"""

from __future__ import annotations

import enum

import attrs

from ._exceptions import Cause

__all__ = ["OVERLOAD_STATUS_CODES", "LimitStep", "Signal", "classify"]

#: Statuses that mean "too many": 429 Too Many Requests, 503 Service
#: Unavailable, 529 (Anthropic's "overloaded").
OVERLOAD_STATUS_CODES = frozenset({429, 503, 529})

_TIMEOUTS = frozenset(
    {Cause.CONNECT_TIMEOUT, Cause.TTFT_TIMEOUT, Cause.STALL_TIMEOUT, Cause.ATTEMPT_TIMEOUT}
)


class Signal(enum.StrEnum):
    """What one finished attempt says about the server's load."""

    SUCCESS = "success"
    OVERLOAD = "overload"
    IGNORE = "ignore"


def classify(cause: Cause | None, status_code: int | None, *, answering: bool) -> Signal:
    """The :class:`Signal` of an attempt that ended with ``cause`` (``None``: success).

    * success → ``SUCCESS``;
    * ``rate_limited``, a status in :data:`OVERLOAD_STATUS_CODES`,
      ``connection_lost`` → ``OVERLOAD``;
    * ``connect_timeout``, ``ttft_timeout``, ``stall_timeout``,
      ``attempt_timeout`` → ``OVERLOAD`` when ``answering`` (the server answered
      recently), else ``IGNORE``;
    * everything else (other 5xx, 4xx, connect errors, protocol errors,
      truncation, pool timeouts, cancellation) → ``IGNORE``: they say nothing
      about how many requests the server takes.
    """
    if cause is None:
        return Signal.SUCCESS
    if cause is Cause.RATE_LIMITED or cause is Cause.CONNECTION_LOST:
        return Signal.OVERLOAD
    if status_code in OVERLOAD_STATUS_CODES:
        return Signal.OVERLOAD
    if cause in _TIMEOUTS:
        return Signal.OVERLOAD if answering else Signal.IGNORE
    return Signal.IGNORE


@attrs.frozen(kw_only=True)
class LimitStep:
    """The live limit moved: emit it as an event (``t`` is trio's clock)."""

    t: float
    old: int
    new: int
    #: ``"increase"``, ``"probe"`` (a step above the last refused level),
    #: ``"latency"`` (TTFT braked it), or the :class:`Cause` value of the overload.
    reason: str
