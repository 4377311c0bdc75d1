"""Hedged requests against a time-to-first-token tail, side by side, measured in one run.

Not a timed test: it prints a table and two ratios. Run it from the repository root::

    uv run python tests/benchmarks/bench_hedge.py              # about a minute
    uv run python tests/benchmarks/bench_hedge.py --items 4000

The server is ``shardline fake-server`` in its own process
(``shardline.testing.fake_server_process``) with
``LoadModel(slow_first_share=0.04, slow_first_delay=6.0)``: 4 % of first
attempts (drawn by a seeded hash of the item id, so the *same* items in every
run) wait 6 s more before their first token, then answer normally; a hedge
(``x-shardline-hedge: 1``) is never slow, as a request that reaches another
replica. Each client run gets a fresh server with the same seed, and runs
in this process: the same items through ``shardline`` with hedging off, then
with ``Hedging()`` (the defaults: after the learned p95 TTFT, budget 5 %).

``latency`` is each item's admission to its end (the queue is kept short,
``--queue-size``, so it is mostly the service time); ``ttft`` counts from the
item's first send. ``requests`` are chat-completion requests the server
received; ``extra`` is ``requests / items - 1``; ``abandoned`` are the requests
whose client closed the connection before their first token (the cancelled
losing legs: the server stopped working on them). Targets (issue 16): item
latency p99 at least 3x lower with hedging, at most 8 % extra requests.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import PROMPT, fmt, machine, pct, table

from shardline import (
    ChatRequest,
    Endpoint,
    Hedging,
    MemoryEventSink,
    Outcome,
    PipelineConfig,
    Status,
    open_pipeline,
)
from shardline.report import compute_report
from shardline.testing import LoadModel, TimingModel, fake_server_process

LOAD = LoadModel(slow_first_share=0.04, slow_first_delay=6.0)
TIMING = TimingModel(ttft=0.05, itl=0.002)


def run_once(base_url: str, args: argparse.Namespace, hedging: Hedging | None) -> dict[str, Any]:
    """One client run: the items through a pipeline; its latencies and report."""
    config = PipelineConfig(
        endpoint=Endpoint(base_url=base_url, model="m"),
        shard_count=args.shards,
        concurrency=args.concurrency,
        queue_size=args.queue_size,
        hedging=hedging,
        seed=1,
    )
    requests = [
        ChatRequest(
            id=f"q{i}",
            messages=[{"role": "user", "content": PROMPT}],
            params={"max_tokens": 24},
        )
        for i in range(args.items)
    ]
    outcomes: list[Outcome] = []
    sink = MemoryEventSink()

    async def main() -> float:
        start = trio.current_time()
        send, recv = trio.open_memory_channel[Outcome](64)
        async with open_pipeline(config, sink=sink) as pipeline:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pipeline.map, requests, send)
                async for outcome in recv:
                    outcomes.append(outcome)
        return trio.current_time() - start

    wall = trio.run(main)
    report = compute_report(sink.events, events_sha256=None)
    ok = [o for o in outcomes if o.status is Status.OK]
    return {
        "wall": wall,
        "ok": len(ok),
        "latency": [o.latency_s for o in ok],
        "ttft": [o.result.ttft_s for o in ok if o.result is not None and o.result.ttft_s],
        "report": report,
    }


def completions(stats: Any) -> int:
    """Chat-completion requests the server received."""
    return int(stats.requests_by_endpoint.get("chat.completions", 0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--queue-size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=7, help="the fake server's seed")
    args = parser.parse_args(argv)

    print(f"# bench_hedge: {args.items} items, {args.shards} shards x {args.concurrency}")
    print(f"# {machine()}")
    print(f"# server: {LOAD}, {TIMING}")
    runs: dict[str, dict[str, Any]] = {}
    for label, hedging in (("off", None), ("Hedging()", Hedging())):
        with fake_server_process(seed=args.seed, load=LOAD, timing=TIMING) as server:
            started = time.perf_counter()
            run = run_once(server.base_url, args, hedging)
            run["stats"] = server.statistics()
            run["elapsed"] = time.perf_counter() - started
        runs[label] = run

    rows = []
    for label, run in runs.items():
        stats, report = run["stats"], run["report"]
        lat, ttft = run["latency"], run["ttft"]
        rows.append(
            [
                label,
                f"{run['ok']}/{args.items}",
                fmt(pct(lat, 50)),
                fmt(pct(lat, 95)),
                fmt(pct(lat, 99)),
                fmt(max(lat) if lat else None),
                fmt(pct(ttft, 99)),
                str(completions(stats)),
                f"{(completions(stats) / args.items - 1) * 100:.1f} %",
                str(report.hedges),
                str(report.hedge_wins),
                str(stats.slow_first_tokens),
                str(stats.abandoned),
                fmt(run["wall"], ".1f"),
            ]
        )
    print()
    print(
        table(
            [
                "hedging",
                "ok",
                "latency p50",
                "p95",
                "p99",
                "max",
                "ttft p99",
                "requests",
                "extra",
                "hedges",
                "hedge wins",
                "slow firsts",
                "abandoned",
                "wall s",
            ],
            rows,
        )
    )
    off, on = runs["off"], runs["Hedging()"]
    p99_off, p99_on = pct(off["latency"], 99), pct(on["latency"], 99)
    extra = completions(on["stats"]) / args.items - 1
    ratio = p99_off / p99_on if p99_off and p99_on else float("nan")
    print()
    print(f"latency p99 without / with hedging: {ratio:.2f}x   (target >= 3x)")
    print(f"extra requests with hedging: {extra * 100:.1f} %   (target <= 8 %)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
