"""End to end: adaptive flow control finishes every item against overloaded servers.

Issue 14's "Tests and benchmarks", each case against the fake server in another
process (``fake_server_process``) and the library's ``open_pipeline``:

* a server that answers 429 without Retry-After beyond 24 in flight, at
  8 shards x 16 (a ceiling of 128): every item ok, 429s at most 10 % of attempts;
* llama.cpp's server (one request at a time, a new one cuts the stream in
  flight, no usage), 2 shards x 4: every item ok;
* an RPM-limited server that announces ``x-ratelimit-*``: every item ok, almost
  no 429s;
* a chaos mix with about 30 % transient faults per attempt: every item ok.

Bounded: a few hundred items with fast timing; each case is well under 60 s.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import attrs
import pytest
import trio

from shardline import events as ev
from shardline._config import Deadlines, Endpoint, FlowControl, PipelineConfig
from shardline._models import ChatRequest, Outcome
from shardline._pipeline import open_pipeline
from shardline._sinks import MemoryEventSink
from shardline.testing import LoadModel, TimingModel, fake_server_process

pytestmark = pytest.mark.slow

FAST = TimingModel(ttft=0.01, itl=0.001)
SERVED = TimingModel(ttft=0.05, itl=0.002)
"""About 0.1 s per 30-token answer: slow enough that the server, not this process's
CPU, is what limits throughput (with ``FAST`` the client's own event loop makes
TTFT rise first and the latency signal holds the limit under 24)."""
CHAOS = (
    "rate_limit=0.08,http_503=0.06,truncate=0.04:after=2,stall_mid=0.03:after=2,"
    "reset=0.04:after=2,malformed_shape=0.05"
)
"""About 30 % of attempts get a transient fault: 429 (no Retry-After), 503, a clean
end without a finish reason, a stream that goes silent, a reset, a chunk of the
wrong shape."""


@attrs.frozen
class Run:
    """What one pipeline run left behind: outcomes, events, limit samples."""

    outcomes: list[Outcome]
    events: list[ev.Event]
    limits: list[int]

    @property
    def statuses(self) -> Counter[str]:
        return Counter(o.status.value for o in self.outcomes)

    @property
    def attempts(self) -> int:
        return sum(1 for e in self.events if isinstance(e, ev.AttemptStart))

    def failures(self, cause: str) -> int:
        return sum(
            1
            for e in self.events
            if isinstance(e, ev.AttemptEnd) and e.cause is not None and e.cause.value == cause
        )


def _run(
    base_url: str,
    n: int,
    *,
    shard_count: int,
    concurrency: int,
    max_tokens: int = 16,
    deadlines: Deadlines | None = None,
    flow: FlowControl | None = None,
    time_limit: float = 50.0,
) -> Run:
    """Push ``n`` chat requests through a pipeline; fail if it takes over ``time_limit`` s."""
    config = PipelineConfig(
        endpoint=Endpoint(base_url=base_url, api_key="sk-test", model="m"),
        shard_count=shard_count,
        concurrency=concurrency,
        deadlines=deadlines or Deadlines(connect=5, ttft=5, stall=1, attempt=20),
        flow=flow or FlowControl(),
        drain_grace=2.0,  # a run cut by time_limit stops within seconds
        seed=3,
    )
    sink = MemoryEventSink()
    outcomes: list[Outcome] = []
    limits: list[int] = []

    async def main() -> None:
        requests = [
            ChatRequest(
                messages=[{"role": "user", "content": f"q {i}"}],
                id=f"q{i}",
                params={"max_tokens": max_tokens},
            )
            for i in range(n)
        ]
        send, recv = trio.open_memory_channel[Outcome](64)
        with trio.fail_after(time_limit):
            async with open_pipeline(config, sink=sink) as pipeline, trio.open_nursery() as nursery:
                nursery.start_soon(pipeline.map, requests, send)
                async for outcome in recv:
                    outcomes.append(outcome)
                    limit = pipeline.statistics().limit
                    if limit is not None:
                        limits.append(limit)

    trio.run(main)
    return Run(outcomes=outcomes, events=list(sink), limits=limits)


def _assert_every_item_ok(run: Run, n: int) -> None:
    failed = [(o.id, o.cause, o.attempts) for o in run.outcomes if not o.ok]
    assert run.statuses == {"ok": n}, failed[:10]
    assert len({o.id for o in run.outcomes}) == n


def _limit_changes(events: Sequence[ev.Event]) -> list[ev.LimitChange]:
    return [e for e in events if isinstance(e, ev.LimitChange)]


def test_a_server_of_capacity_24_at_a_ceiling_of_128_finishes_every_item_with_few_429s() -> None:
    """429 without Retry-After beyond 24 in flight, 8 x 16: all ok, 429s <= 10 % of attempts."""
    n = 600
    with fake_server_process(timing=SERVED, load=LoadModel(capacity=24), seed=1) as server:
        run = _run(server.base_url, n, shard_count=8, concurrency=16, max_tokens=30)
        stats = server.statistics()
    _assert_every_item_ok(run, n)
    refused = run.failures("rate_limited")
    assert refused == stats.capacity_refusals  # every refusal the server made was seen
    assert refused <= 0.10 * run.attempts, (refused, run.attempts)
    assert stats.max_generating <= 24
    # The limit found the server: it was lowered by 429s and ended near 24, not 128.
    changes = _limit_changes(run.events)
    assert any(c.reason == "rate_limited" for c in changes)
    assert 12 <= changes[-1].new <= 32, changes[-1]


def test_a_one_at_a_time_server_that_cuts_streams_finishes_every_item() -> None:
    """llama.cpp: one request at a time, a new one cuts the one in flight, no usage; 2 x 4."""
    n = 60
    with fake_server_process(
        timing=FAST, load=LoadModel(preempt=True), no_usage=True, seed=2
    ) as server:
        run = _run(server.base_url, n, shard_count=2, concurrency=4)
        stats = server.statistics()
    _assert_every_item_ok(run, n)
    assert all(o.result is not None and o.result.text for o in run.outcomes)
    # The limit is the endpoint's: it came down to one for both shards together.
    assert min(c.new for c in _limit_changes(run.events)) == 1
    assert run.failures("connection_lost") == stats.preempted
    assert stats.preempted <= 0.25 * run.attempts, (stats.preempted, run.attempts)


def test_an_rpm_limited_server_announcing_its_quota_is_paced_with_almost_no_429s() -> None:
    """120 RPM announced in x-ratelimit-* headers: 140 items all ok, 429s under 2 % of attempts."""
    n = 140  # the bucket holds 120 (a minute's worth); the last 20 take 10 s of its refill
    with fake_server_process(timing=FAST, load=LoadModel(rpm=120), seed=4) as server:
        run = _run(server.base_url, n, shard_count=4, concurrency=8, time_limit=25.0)
        stats = server.statistics()
    _assert_every_item_ok(run, n)
    assert stats.rate_limit_refusals == run.failures("rate_limited")
    assert run.failures("rate_limited") <= 0.02 * run.attempts, (
        run.failures("rate_limited"),
        run.attempts,
    )


def test_a_chaos_mix_of_30_percent_transient_faults_finishes_every_item() -> None:
    """429, 503, truncations, stalls, resets, malformed shapes on ~30 % of attempts: all ok."""
    n = 400
    with fake_server_process(timing=FAST, faults=CHAOS, seed=5) as server:
        run = _run(server.base_url, n, shard_count=4, concurrency=8)
        stats = server.statistics()
    _assert_every_item_ok(run, n)
    assert sum(stats.faults.values()) >= 0.2 * run.attempts  # the faults did happen
    causes = Counter(
        e.cause.value for e in run.events if isinstance(e, ev.AttemptEnd) and e.cause is not None
    )
    for cause in ("rate_limited", "server_error", "truncated", "stall_timeout", "protocol_error"):
        assert causes[cause] > 0, causes
