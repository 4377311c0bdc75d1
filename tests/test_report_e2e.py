"""The proof holds end to end: a run against the fake server, with faults, and its report.

Token totals equal the server's own count of tokens served on completed responses,
failed-attempt causes equal the faults it injected (by kind), and the digest matches
the file. Real sockets on 127.0.0.1, so real (short) time: faults are the fast kinds
plus one short stall.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from helpers import report_of
from shardline._backoff import Backoff, RetryPolicy
from shardline._config import Deadlines, Endpoint, PipelineConfig
from shardline._models import ChatRequest, Outcome
from shardline._pipeline import open_pipeline
from shardline._sinks import JsonlEventSink, TeeSink
from shardline.report import ReportBuilder
from shardline.testing import FakeServer, FaultPlan, expected_cause

ITEMS = 60


async def test_report_matches_the_server_and_the_faults(
    fake_server_factory: Callable[..., Awaitable[FakeServer]], tmp_path: Path
) -> None:
    """tokens == server tokens, failure causes == injected faults, digest == sha256sum."""
    plan = FaultPlan(
        items={
            ("3", 1): "rate_limit",
            ("4", 1): "http_500",
            ("4", 2): "http_503",
            ("5", 1): "truncate",
            ("6", 1): "reset",
            ("7", 1): "malformed",
            ("8", 1): "error_event",
            ("9", 1): "stall_mid",
            ("10", 1): "http_502",
            ("10", 2): "http_502",
            ("10", 3): "http_502",  # attempts run out: a failed item
        }
    )
    path = tmp_path / "events.jsonl"
    with trio.fail_after(30):
        server = await fake_server_factory(faults=plan)
        config = PipelineConfig(
            endpoint=Endpoint(base_url=server.base_url, model="m", api_key="sk-e2e"),
            shard_count=3,
            concurrency=4,
            queue_size=4,
            retry=RetryPolicy(
                max_attempts=3,
                backoff=Backoff(initial=0.01, max=0.05, multiplier=2.0, jitter=0.01),
                retry_after_jitter=0.0,
                retry_after_cap=0.05,
                budget_ratio=1.0,
            ),
            deadlines=Deadlines(connect=2.0, ttft=2.0, stall=0.3, attempt=10.0),
            drain_grace=5.0,
        )
        jsonl = JsonlEventSink(path)
        builder = ReportBuilder()
        sink = TeeSink(jsonl, builder)
        requests = [
            ChatRequest(
                messages=[{"role": "user", "content": f"question number {i}" * (i % 5 + 1)}],
                id=str(i),
                params={"max_tokens": 3 + i % 7},
            )
            for i in range(ITEMS)
        ]
        send, recv = trio.open_memory_channel[Outcome](ITEMS)
        async with open_pipeline(config, sink=sink) as pipeline, trio.open_nursery() as n:
            n.start_soon(pipeline.map, requests, send)
            outcomes = [o async for o in recv]
        sink.close()
        stats = server.statistics()

    live = builder.build(events_sha256=jsonl.hexdigest())
    assert len(outcomes) == ITEMS
    assert (live.items, live.succeeded, live.failed) == (ITEMS, ITEMS - 1, 1)
    # tokens: the report counts exactly what the server served on completed responses
    assert live.tokens_in_total == stats.prompt_tokens
    assert live.tokens_out_total == stats.completion_tokens
    assert live.succeeded == stats.completed
    # causes: every injected fault is one failed attempt with the expected cause
    injected = Counter[str]()
    for kind, count in stats.faults.items():
        injected[expected_cause(kind).value] += count
    assert live.attempt_failures == dict(injected)
    assert sum(live.retry_causes.values()) == live.retries == sum(injected.values()) - 1
    assert live.failure_causes == {"server_error": 1}
    # digest and file round trip
    assert live.events_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert report_of(path) == live
    assert b"sk-e2e" not in path.read_bytes()
