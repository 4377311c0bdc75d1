"""The report's per-endpoint table, folded from the events of a run with several endpoints.

An item is one task on the shard that admitted it, but with several endpoints
its attempts go wherever an endpoint is healthy; so an endpoint is judged by the
attempts *sent* to it (``attempt_start`` / ``attempt_end`` / ``first_token`` of
its shards, mapped by ``run_start.config.shard_endpoints``) and by its circuit's
``endpoint_state`` changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from ._events import AttemptEnd, AttemptOutcome, AttemptStart, EndpointState, FirstToken
from ._report import EndpointReport, Percentiles
from ._sketch import QuantileSketch

__all__ = ["EndpointAccs"]


@attrs.define(eq=False)
class _EndpointAcc:
    base_url: str
    shards: list[int] = attrs.Factory(list)
    attempts: int = 0
    ok: int = 0
    failed: dict[str, int] = attrs.Factory(dict)
    ttft: QuantileSketch = attrs.Factory(QuantileSketch)
    opened: int = 0
    open_since: float | None = None
    open_s: float = 0.0


@attrs.define(eq=False)
class EndpointAccs:
    """Per-endpoint accumulators; empty (no table) for a run with one endpoint."""

    _by_shard: dict[int, _EndpointAcc] = attrs.Factory(dict)
    _accs: list[_EndpointAcc] = attrs.Factory(list)

    def run_start(self, config: Mapping[str, Any]) -> None:
        """Learn the endpoints and which shard talks to which (a new segment keeps them)."""
        endpoints = config.get("endpoints")
        owners = config.get("shard_endpoints")
        if self._accs or not isinstance(endpoints, list) or not isinstance(owners, list):
            return
        self._accs = [_EndpointAcc(base_url=str(e.get("base_url", ""))) for e in endpoints]
        for shard, owner in enumerate(owners):
            if isinstance(owner, int) and 0 <= owner < len(self._accs):
                self._by_shard[shard] = self._accs[owner]
                self._accs[owner].shards.append(shard)

    def attempt_start(self, event: AttemptStart) -> None:
        acc = self._by_shard.get(event.shard)
        if acc is not None:
            acc.attempts += 1

    def attempt_end(self, event: AttemptEnd) -> None:
        acc = self._by_shard.get(event.shard)
        if acc is None:
            return
        if event.outcome is AttemptOutcome.OK:
            acc.ok += 1
        elif event.outcome is AttemptOutcome.FAILED and event.cause is not None:
            cause = event.cause.value
            acc.failed[cause] = acc.failed.get(cause, 0) + 1

    def first_token(self, event: FirstToken) -> None:
        acc = self._by_shard.get(event.shard)
        if acc is not None:
            acc.ttft.add(event.ttft_s)

    def state(self, event: EndpointState) -> None:
        if not 0 <= event.endpoint < len(self._accs):
            return
        acc = self._accs[event.endpoint]
        if event.old == "closed" and event.new != "closed":
            acc.opened += 1
            acc.open_since = event.t
        elif event.new == "closed" and acc.open_since is not None:
            acc.open_s += event.t - acc.open_since
            acc.open_since = None

    def report(self, end_t: float) -> tuple[EndpointReport, ...]:
        rows = []
        for index, acc in enumerate(self._accs):
            still = 0.0 if acc.open_since is None else max(0.0, end_t - acc.open_since)
            sketch = acc.ttft
            rows.append(
                EndpointReport(
                    endpoint=index,
                    base_url=acc.base_url,
                    shards=tuple(acc.shards),
                    attempts=acc.attempts,
                    ok_attempts=acc.ok,
                    failed_attempts=dict(sorted(acc.failed.items())),
                    ttft_s=Percentiles(
                        p50=sketch.percentile(50),
                        p95=sketch.percentile(95),
                        p99=sketch.percentile(99),
                    ),
                    opened=acc.opened,
                    open_s=acc.open_s + still,
                )
            )
        return tuple(rows)
