"""A real run: the pipeline against `shardline fake-server` in another process, with faults.

The server's own counters prove the caps (maximum in flight never above shards x
concurrency), connection reuse (a handful of connections for hundreds of
requests), and the report's token totals.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from helpers import report_of
from shardline import (
    Backoff,
    ChatRequest,
    Deadlines,
    Endpoint,
    JsonlEventSink,
    Outcome,
    PipelineConfig,
    RetryPolicy,
    open_pipeline,
)
from shardline.testing import FakeServerProcess, TimingModel, fake_server_process

SHARDS, CONCURRENCY, ITEMS = 3, 4, 300
FAULTS = "rate_limit=0.03:retry_after=0.2,http_503=0.03,reset=0.02,truncate=0.02,stall_mid=0.02"


@pytest.fixture
def server() -> Iterator[FakeServerProcess]:
    """`shardline fake-server` in a child process, with a fault mix and fast timing."""
    with fake_server_process(
        faults=FAULTS, seed=7, timing=TimingModel(ttft=0.01, itl=0.001)
    ) as server:
        yield server


@pytest.mark.slow
async def test_caps_and_reuse_show_in_the_server_counters(
    server: FakeServerProcess, tmp_path: Path
) -> None:
    """Max in flight <= shards x concurrency, connections reused, report tokens == served."""
    config = PipelineConfig(
        endpoint=Endpoint(base_url=server.base_url, model="m", api_key="sk-e2e"),
        shard_count=SHARDS,
        concurrency=CONCURRENCY,
        queue_size=8,
        retry=RetryPolicy(
            max_attempts=6,
            backoff=Backoff(initial=0.01, max=0.1, multiplier=2.0, jitter=0.01),
            retry_after_jitter=0.05,
            budget_ratio=1.0,
        ),
        deadlines=Deadlines(connect=2.0, ttft=2.0, stall=0.5, attempt=10.0),
    )
    events = tmp_path / "events.jsonl"
    requests = [
        ChatRequest(
            messages=[{"role": "user", "content": f"item {i} " * (1 + i % 9)}],
            id=i,
            params={"max_tokens": 5 + i % 11},
        )
        for i in range(ITEMS)
    ]
    send, recv = trio.open_memory_channel[Outcome](16)
    with trio.fail_after(60), JsonlEventSink(events) as sink:
        async with open_pipeline(config, sink=sink) as pipeline, trio.open_nursery() as nursery:
            nursery.start_soon(pipeline.map, requests, send)
            outcomes = [o async for o in recv]
    assert len(outcomes) == ITEMS
    assert all(o.ok for o in outcomes), [o for o in outcomes if not o.ok][:3]

    stats = await trio.to_thread.run_sync(server.statistics)
    assert stats.max_in_flight <= SHARDS * CONCURRENCY
    assert stats.faults_total > 0
    # Reuse: connections are only replaced after a fault that kills one (resets,
    # stalls and truncations cost their connection), never opened per request.
    assert stats.connections_accepted <= SHARDS * CONCURRENCY + stats.faults_total
    assert stats.connections_accepted < stats.requests / 3

    report = report_of(events)
    assert report.succeeded == ITEMS
    assert report.tokens_out_total == stats.completion_tokens
    assert report.tokens_in_total == stats.prompt_tokens
    assert sum(report.attempt_failures.values()) == stats.faults_total
