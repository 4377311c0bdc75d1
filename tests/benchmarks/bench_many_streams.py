"""Thousands of concurrent streams in one process: per-stream throughput and memory.

Not a timed test: it prints a table. Run it from the repository root::

    uv run python tests/benchmarks/bench_many_streams.py                 # 512 and 4,096 streams
    uv run python tests/benchmarks/bench_many_streams.py --streams 256,1024,4096

For each number of streams ``N`` (as ``N / 64`` shards x 64; ``--per-shard`` changes 64), shardline
(``open_pipeline``, JSONL events, adaptive flow control off so the in-flight
limit stays ``N``) sends ``2 N`` requests to one fake-server process that is
paced slowly enough not to be the limit: TTFT 0.5 s, then 0.5 s per token, 10
tokens (5 s per request, 2 events per second per stream; ``--ttft``, ``--itl``
and ``--rounds`` change it). With ``N`` streams
in flight an ideal client finishes ``N / 5`` requests per second; a collapse
(pool pathology, a scheduler that cannot keep up) shows as a lower share of
that, and as latency above the server's 5 s.

Measured: requests finished, their rate against the ideal, latency and TTFT
(p50 / p99), client and server CPU (cores), the client's CPU per SSE event, and
the client's peak RSS (``ru_maxrss`` of the finished child, so the sizes run in
increasing order); "RSS per stream" is the growth in peak RSS from the smallest
``N`` divided by the added streams.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import PROMPT, fake_servers, fmt, machine, pct, run_client, table, workload

TOKENS = 10
#: Events per request: role, 10 content events, finish, usage, [DONE].
EVENTS = TOKENS + 4
CONCURRENCY = 64


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--streams", default="512,4096", help="comma-separated N (multiples of --per-shard)"
    )
    ap.add_argument(
        "--routing",
        default="least_loaded",
        choices=["least_loaded", "hash"],
        help="item -> shard routing (least_loaded: every shard fills; see the docstring)",
    )
    ap.add_argument(
        "--client", default="shardline", help="a _clients.py kind (httpx-sharded: the floor)"
    )
    ap.add_argument(
        "--per-shard",
        type=int,
        default=CONCURRENCY,
        help=f"streams per shard, each shard one connection pool ({CONCURRENCY})",
    )
    ap.add_argument("--ttft", type=float, default=0.5, help="server TTFT, s (0.5)")
    ap.add_argument("--itl", type=float, default=0.5, help="server seconds per token (0.5)")
    ap.add_argument("--rounds", type=int, default=2, help="requests per stream (2)")
    args = ap.parse_args()
    ttft, itl = args.ttft, args.itl
    server_s = ttft + (TOKENS - 1) * itl  # the last token is due then
    sizes = sorted(int(x) for x in args.streams.split(","))
    print(f"# bench_many_streams: {machine()}")
    print(
        f"# one fake server: TTFT {ttft} s, {itl} s/token, {TOKENS} tokens; {args.client}, "
        f"N/{args.per_shard} shards x {args.per_shard}, adaptive flow control off, "
        f"routing {args.routing}, {args.rounds} N requests\n"
    )
    t0 = time.monotonic()
    rows = []
    base: tuple[int, float] | None = None
    with (
        tempfile.TemporaryDirectory(prefix="shardline-many-") as tmpdir,
        fake_servers(1, ttft=ttft, itl=itl) as servers,
    ):
        for n in sizes:
            requests = args.rounds * n
            params: dict[str, Any] = {
                "urls": [s.base_url for s in servers],
                "shards": max(1, n // args.per_shard),
                "concurrency": min(n, args.per_shard),
                "tokens": workload(requests, min_tokens=TOKENS, max_tokens=TOKENS),
                "prompt": PROMPT,
                "model": "shardline-fake",
                "events": f"{tmpdir}/events-{n}.jsonl",
                "no_report": True,
                "flow": {"adaptive": False},
                "routing": args.routing,
                "item_timing": True,  # latency from the first send, not from admission
                "deadlines": {"ttft": 60.0, "stall": 30.0, "attempt": 300.0},
            }
            run = run_client(args.client, params, cap_s=300, servers=servers)
            peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
            if not run.finished:
                rows.append([f"{n:,}", f"{run.ok:,}/{requests:,} (not finished)", *["-"] * 8])
                print(run.stderr_tail, file=sys.stderr)
                continue
            lats = [r["lat"] for r in run.records if r["ok"]]
            ttfts = [r["ttft"] for r in run.records if r["ok"] and r["ttft"] is not None]
            rate = run.ok / run.wall_s
            ideal = n / server_s
            cpu = run.summary["cpu_s"]
            if base is None:
                base = (n, peak_mib)
                per_stream = "-"
            else:
                per_stream = f"{(peak_mib - base[1]) * 1024 / (n - base[0]):.1f}"
            rows.append(
                [
                    f"{n:,}",
                    f"{run.ok:,}/{requests:,}",
                    f"{rate:,.0f} ({100 * rate / ideal:.0f} %)",
                    f"{fmt(pct(lats, 50))} / {fmt(pct(lats, 99))}",
                    f"{fmt(pct(ttfts, 50))} / {fmt(pct(ttfts, 99))}",
                    fmt(cpu / run.wall_s, ".2f"),
                    fmt(run.server_cpu_s / run.wall_s, ".2f"),
                    f"{cpu / (run.ok * EVENTS) * 1e6:.0f}",
                    f"{peak_mib:.0f}",
                    per_stream,
                ]
            )
            print(" | ".join(rows[-1]), file=sys.stderr)
    print(
        table(
            [
                "streams",
                "ok/requests",
                "req/s (of ideal)",
                "latency p50 / p99 s",
                "TTFT p50 / p99 s",
                "client CPU (cores)",
                "server CPU (cores)",
                "client µs/event",
                "client peak RSS MiB",
                "RSS per added stream KiB",
            ],
            rows,
        )
    )
    print(f"\n(server time per request {server_s} s; total {time.monotonic() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
