"""How the fake server behaves under load: capacity, queueing, rate limits, preemption.

It owns `LoadModel` (the public, frozen description of a server's load
behaviour) and its live state (`LoadGate`): the capacity limiter, the request
and token buckets of an RPM/TPM limit with their OpenAI-style ``x-ratelimit-*``
headers (`format_reset` writes durations such as ``6m0s``), the request a
one-at-a-time server is running, and the seeded draw of slow first tokens.
When a request is admitted is decided by `_routes`, which uses these pieces.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, Final, Literal

import attrs
import trio

__all__ = ["OVERLOAD_ANSWERS", "LoadGate", "LoadModel", "format_reset"]

OVERLOAD_ANSWERS: Final = ("429", "503", "queue")
"""What a server at capacity does with one more request: refuse it (``429`` or
``503``) or queue it."""

Overload = Literal["429", "503", "queue"]


def _optional_count(name: str) -> Any:
    def check(_inst: object, _attr: object, value: int | None) -> None:
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1 or None, got {value!r}")

    return check


def _optional_seconds(_inst: object, _attr: object, value: float | None) -> None:
    if value is not None and not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"retry_after must be a finite number >= 0 or None, got {value!r}")


def _overload(_inst: object, _attr: object, value: str) -> None:
    if value not in OVERLOAD_ANSWERS:
        raise ValueError(f"overload must be one of 429, 503, queue, got {value!r}")


def _share(_inst: object, _attr: object, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"slow_first_share must be between 0 and 1, got {value!r}")


def _delay(_inst: object, _attr: object, value: float) -> None:
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"slow_first_delay must be a finite number >= 0, got {value!r}")


@attrs.frozen(kw_only=True)
class LoadModel:
    """How a fake server behaves when many requests arrive: a value, like `TimingModel`.

    The default model has no limits at all. Each setting models a real server:

    - ``capacity=K`` with ``overload="429"`` or ``"503"``: an engine that refuses
      the request that would make ``K + 1`` completions in flight, with
      ``retry-after`` / ``retry-after-ms`` headers if ``retry_after`` is set.
    - ``capacity=K`` with ``overload="queue"``: a vLLM-like engine that never
      refuses; beyond ``K`` in flight a request waits its turn (first come, first
      served), so time to first token grows with the queue. The timing model's
      ``ttft`` counts from the moment a request leaves the queue.
    - ``rpm`` / ``tpm``: an OpenAI-style rate limit. Every completion response
      announces it in ``x-ratelimit-limit-requests``, ``x-ratelimit-remaining-requests``,
      ``x-ratelimit-reset-requests`` (and the ``-tokens`` three), resets written as
      durations (``6m0s``, ``1.5s``, ``20ms``); a request beyond the limit gets
      ``429`` with those headers and ``retry-after``. The limits refill continuously
      (a token bucket holding one minute's worth); a request is charged one request
      and its prompt plus ``max_tokens`` tokens when it is admitted.
    - ``preempt=True``: a llama.cpp-like server that runs one request at a time; a
      request that arrives while another is in flight cuts that one (its connection
      is closed mid-response, without a finish reason) and is served instead.
    - ``slow_first_share`` / ``slow_first_delay``: that share of *first attempts*
      (requests with ``x-shardline-attempt: 1``, hedges excepted; drawn by a seeded
      hash of the item id) waits ``slow_first_delay`` more seconds before its first token, then
      answers normally: the TTFT tail that hedged requests cut.

    Example::

        LoadModel(capacity=24)                                    # 429 beyond 24 in flight
        LoadModel(capacity=8, overload="queue")                   # vLLM: queue, TTFT grows
        LoadModel(rpm=600, tpm=90_000)                            # OpenAI-style limits
        LoadModel(preempt=True)                                   # llama.cpp server
        LoadModel(slow_first_share=0.04, slow_first_delay=6.0)    # a slow replica now and then

    It is not a fault: faults strike requests by plan; load depends on traffic.

    Args:
        capacity: Completion requests in flight at most; ``None`` for no limit.
        overload: ``"429"``, ``"503"`` or ``"queue"``: what happens beyond ``capacity``.
        retry_after: Seconds of ``retry-after`` on a capacity refusal; ``None`` sends none.
        rpm: Requests per minute; ``None`` for no limit.
        tpm: Tokens (prompt + ``max_tokens``) per minute; ``None`` for no limit.
        preempt: Run one request at a time, a new one cutting the one in flight.
        slow_first_share: Share of first attempts that are slow before their first token.
        slow_first_delay: Extra seconds before the first token of a slow first attempt.
    """

    capacity: int | None = attrs.field(default=None, validator=_optional_count("capacity"))
    overload: Overload = attrs.field(default="429", validator=_overload)
    retry_after: float | None = attrs.field(default=None, validator=_optional_seconds)
    rpm: int | None = attrs.field(default=None, validator=_optional_count("rpm"))
    tpm: int | None = attrs.field(default=None, validator=_optional_count("tpm"))
    preempt: bool = False
    slow_first_share: float = attrs.field(default=0.0, validator=_share)
    slow_first_delay: float = attrs.field(default=0.0, validator=_delay)

    def __attrs_post_init__(self) -> None:
        if self.preempt and self.capacity is not None:
            raise ValueError(
                f"preempt serves one request at a time; capacity must be None, got {self.capacity}"
            )


def format_reset(seconds: float) -> str:
    """A duration as OpenAI writes ``x-ratelimit-reset-*``: ``20ms``, ``1.5s``, ``6m0s``.

    Hours are written ``1h2m3s``. Rounded up to the millisecond, so a reset is never
    announced early.
    """
    ms = max(0, math.ceil(seconds * 1000 - 1e-6))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


class Bucket:
    """A token bucket holding one minute's worth of a per-minute limit, refilled continuously."""

    __slots__ = ("level", "limit", "stamp")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.level = float(limit)
        self.stamp: float | None = None

    def _refill(self, now: float) -> None:
        if self.stamp is not None:
            self.level = min(self.limit, self.level + (now - self.stamp) * self.limit / 60.0)
        self.stamp = now

    def wait_for(self, amount: int, now: float) -> float:
        """Seconds until ``amount`` is available (0 if it is now; inf if it never is)."""
        self._refill(now)
        if amount > self.limit:
            return math.inf
        return max(0.0, (amount - self.level) * 60.0 / self.limit)

    def headers(self, what: bytes) -> list[tuple[bytes, bytes]]:
        """The ``x-ratelimit-*-{what}`` headers as of the last `take`."""
        remaining = max(0, math.floor(self.level))
        reset = (self.limit - self.level) * 60.0 / self.limit
        return [
            (b"x-ratelimit-limit-" + what, b"%d" % self.limit),
            (b"x-ratelimit-remaining-" + what, b"%d" % remaining),
            (b"x-ratelimit-reset-" + what, format_reset(reset).encode()),
        ]


@attrs.define(eq=False)
class Running:
    """The request a one-at-a-time (``preempt``) server is running."""

    scope: trio.CancelScope
    cut: bool = False


class LoadGate:
    """The live load state of one server, built from its `LoadModel`."""

    __slots__ = ("limiter", "model", "requests", "running", "tokens")

    def __init__(self, model: LoadModel) -> None:
        self.model = model
        self.limiter = trio.CapacityLimiter(model.capacity) if model.capacity else None
        self.requests = Bucket(model.rpm) if model.rpm else None
        self.tokens = Bucket(model.tpm) if model.tpm else None
        self.running: Running | None = None

    def charge(self, tokens: int, now: float) -> tuple[float, str, list[tuple[bytes, bytes]]]:
        """Charge one request of ``tokens`` tokens to the rate limits, if it fits.

        Returns:
            The seconds to wait before it would fit (0: admitted and charged; inf: it
            never fits), which limit is short (``"requests"`` or ``"tokens"``), and
            the ``x-ratelimit-*`` headers to send.
        """
        charges = [("requests", self.requests, 1), ("tokens", self.tokens, tokens)]
        wait, short = 0.0, ""
        for what, bucket, amount in charges:
            if bucket is not None:
                need = bucket.wait_for(amount, now)
                if need > wait:
                    wait, short = need, what
        headers: list[tuple[bytes, bytes]] = []
        for what, bucket, amount in charges:
            if bucket is not None:
                if wait == 0.0:
                    bucket.level -= amount
                headers += bucket.headers(what.encode())
        return wait, short, headers

    def slow_first(self, *, seed: int, key: str) -> bool:
        """Whether the first attempt identified by ``key`` is a slow one (seeded draw)."""
        share = self.model.slow_first_share
        if share <= 0.0 or self.model.slow_first_delay <= 0.0:
            return False
        digest = hashlib.blake2b(f"{seed}\0slow\0{key}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2.0**64 < share
