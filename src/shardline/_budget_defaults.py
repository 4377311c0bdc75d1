"""The retry budget's defaults, apart from the budget (a trio primitive) itself.

:class:`~shardline._budget.RetryBudget` and
:class:`~shardline._backoff.RetryPolicy` share these numbers, and the command
line shows them in ``--help``: keeping them here lets ``shardline --help``
import the retry policy without importing trio.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_BUDGET_MAX_WAIT",
    "DEFAULT_BUDGET_MIN_RETRIES",
    "DEFAULT_BUDGET_RATIO",
    "DEFAULT_BUDGET_WINDOW",
]

#: Retries may be at most this fraction of requests (Finagle and Envoy use 20 %,
#: and refuse the rest; shardline makes the rest wait, so the ratio must cover
#: what transient faults need: at a 30 % fault rate per attempt an item needs
#: 0.3 / 0.7 = 0.43 retries on average)...
DEFAULT_BUDGET_RATIO = 0.5
#: ...plus this floor per window, so a small run, or the tail of a large one
#: (when no new requests earn retries any more), can still retry: 100 per 10 s
#: window is Finagle's floor of 10 retries per second.
DEFAULT_BUDGET_MIN_RETRIES = 100
#: The retry budget counts the requests and retries of the last 10 seconds
#: (Finagle's ``ttl``): long enough to smooth bursts, short enough that retries
#: waiting at the end of a run wait seconds, not minutes.
DEFAULT_BUDGET_WINDOW = 10.0
#: Longest wait for the retry budget, in seconds; then the retry goes anyway.
DEFAULT_BUDGET_MAX_WAIT = 60.0
