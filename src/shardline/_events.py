"""Event records: what a run writes down, and everything its report is computed from.

Every record is a frozen attrs class with a ``kind`` and ``t``, the seconds
since the run started on trio's clock. ``RunStarted.started_at`` anchors ``t``
to UTC wall time, so the report can bucket tokens by UTC minute. The JSONL
form of each record is ``{"v": SCHEMA_VERSION, "kind": ..., **fields}``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs

from ._models import ItemId

__all__ = [
    "SCHEMA_VERSION",
    "AttemptEnded",
    "AttemptStarted",
    "Event",
    "FirstToken",
    "ItemAdmitted",
    "ItemEnded",
    "RetryScheduled",
    "RunEnded",
    "RunStarted",
    "ShardStateChanged",
]

SCHEMA_VERSION = 1


@attrs.frozen(kw_only=True)
class RunStarted:
    """The run began. ``config`` is the pipeline config without secrets."""

    kind: ClassVar[str] = "run_start"
    t: float
    run_id: str
    started_at: float  # UTC epoch seconds at t == 0
    shard_count: int
    config: dict[str, Any]


@attrs.frozen(kw_only=True)
class ItemAdmitted:
    """An item passed admission and was put on its shard's queue."""

    kind: ClassVar[str] = "item_admitted"
    t: float
    item_id: ItemId
    shard: int


@attrs.frozen(kw_only=True)
class AttemptStarted:
    """An attempt left the shard's queue and is about to send."""

    kind: ClassVar[str] = "attempt_start"
    t: float
    item_id: ItemId
    shard: int
    attempt: int


@attrs.frozen(kw_only=True)
class FirstToken:
    """The first content event of an attempt arrived."""

    kind: ClassVar[str] = "first_token"
    t: float
    item_id: ItemId
    shard: int
    attempt: int
    ttft_s: float


@attrs.frozen(kw_only=True)
class AttemptEnded:
    """An attempt ended: ``outcome`` is ``ok``, ``failed`` or ``cancelled``."""

    kind: ClassVar[str] = "attempt_end"
    t: float
    item_id: ItemId
    shard: int
    attempt: int
    outcome: str
    cause: str | None = None
    status_code: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    usage_estimated: bool = False
    ttft_s: float | None = None
    duration_s: float = 0.0
    retry_after_s: float | None = None
    message: str | None = None


@attrs.frozen(kw_only=True)
class RetryScheduled:
    """A failed attempt will be retried after ``delay_s``; ``attempt`` is the next one."""

    kind: ClassVar[str] = "retry_scheduled"
    t: float
    item_id: ItemId
    shard: int
    attempt: int
    delay_s: float
    cause: str


@attrs.frozen(kw_only=True)
class ItemEnded:
    """An item reached its one terminal status: ``ok``, ``failed`` or ``cancelled``."""

    kind: ClassVar[str] = "item_end"
    t: float
    item_id: ItemId
    shard: int | None
    status: str
    attempts: int
    latency_s: float
    cause: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    ttft_s: float | None = None


@attrs.frozen(kw_only=True)
class ShardStateChanged:
    """A shard started cooling down after a 429 (``cooling``) or resumed (``resumed``)."""

    kind: ClassVar[str] = "shard_state"
    t: float
    shard: int
    state: str
    cooldown_s: float | None = None


@attrs.frozen(kw_only=True)
class RunEnded:
    """The run ended; ``reason`` is ``completed``, ``cancelled`` or ``error``."""

    kind: ClassVar[str] = "run_end"
    t: float
    reason: str


Event = (
    RunStarted
    | ItemAdmitted
    | AttemptStarted
    | FirstToken
    | AttemptEnded
    | RetryScheduled
    | ItemEnded
    | ShardStateChanged
    | RunEnded
)
