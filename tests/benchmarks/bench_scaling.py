"""Scaling: throughput as shards x concurrency grows, and where the client becomes the limit.

Not a timed test: it prints a table. Run it from the repository root::

    uv run python tests/benchmarks/bench_scaling.py --quick     # < 40 s
    uv run python tests/benchmarks/bench_scaling.py             # < 3 min

The fake server (own process) answers like a fast real model: TTFT 50 ms, then
2 ms per token, 100 to 200 completion tokens (about 0.35 s per request). With
``T`` requests in flight, a client that costs nothing would reach
``T / 0.35 s`` requests per second (the "ideal" column: the server's own time for
a mean request). As ``T`` grows the real rate falls below it: when the
client's CPU reaches what the machine gives it (about one core, less on a shared
box) while the server still has CPU to spare, the client is the limit.

Each point runs shardline (``open_pipeline``, JSONL events) and, with the same
pool layout, the raw httpx floor (``httpx-sharded``: one ``AsyncClient`` +
``CapacityLimiter`` per shard), in their own processes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import PROMPT, fake_servers, fmt, machine, run_client, table, workload

TIMING = {"ttft": 0.05, "itl": 0.002}
# The server's own time for a mean request (150 tokens): what one in-flight slot can do.
NOMINAL_S = TIMING["ttft"] + 150 * TIMING["itl"]
GRID_FULL = [(1, 8), (1, 32), (4, 16), (8, 16), (8, 32), (16, 32)]
GRID_QUICK = [(1, 8), (4, 16), (8, 32)]


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="4 points, shardline only (< 40 s)")
    ap.add_argument("--seconds", type=float, default=None, help="target seconds per point (4)")
    ap.add_argument("--clients", default=None, help="comma-separated (shardline,httpx-sharded)")
    args = ap.parse_args()
    grid = GRID_QUICK if args.quick else GRID_FULL
    kinds = (args.clients or ("shardline" if args.quick else "shardline,httpx-sharded")).split(",")
    seconds = args.seconds or (3.0 if args.quick else 4.0)
    print(f"# bench_scaling: {machine()}")
    print("# fake server: TTFT 50 ms, 2 ms/token, 100-200 completion tokens, one process\n")
    t0 = time.monotonic()
    rows = []
    with (
        tempfile.TemporaryDirectory(prefix="shardline-scale-") as tmpdir,
        fake_servers(1, **TIMING) as servers,
    ):
        for shards, conc in grid:
            total = shards * conc
            for kind in kinds:
                # Enough requests for ~`seconds` (at least 2 rounds of T).
                ideal = total / NOMINAL_S
                n = max(2 * total, int(min(ideal, 150) * seconds))
                params: dict[str, Any] = {
                    "urls": [s.base_url for s in servers],
                    "shards": shards,
                    "concurrency": conc,
                    "tokens": workload(n),
                    "prompt": PROMPT,
                    "model": "shardline-fake",
                    "events": f"{tmpdir}/events-{shards}x{conc}.jsonl",
                    "no_report": True,
                    "item_timing": True,  # shardline: latency from the first send, like the others
                }
                run = run_client(kind, params, cap_s=90, servers=servers)
                if not run.finished:
                    label = f"{shards} x {conc}"
                    rows.append([label, str(total), kind, "not finished", *["-"] * 7])
                    continue
                lats = [r["lat"] for r in run.records if r["ok"]]
                lat = statistics.median(lats)
                lat_mean = statistics.fmean(lats)
                # Little's law: the requests actually in flight on average.
                busy = run.ok / run.wall_s * lat_mean
                req_s = run.ok / run.wall_s
                rows.append(
                    [
                        f"{shards} x {conc}",
                        str(total),
                        kind,
                        fmt(req_s, ",.0f"),
                        fmt(run.completion_tokens / run.wall_s, ",.0f"),
                        fmt(ideal, ",.0f"),
                        f"{100 * req_s / ideal:.0f} %",
                        f"{lat:.2f} / {lat_mean:.2f}",
                        f"{busy:.0f}",
                        fmt(run.summary["cpu_s"] / run.wall_s, ".2f"),
                        fmt(run.server_cpu_s / run.wall_s, ".2f"),
                    ]
                )
                print(" | ".join(rows[-1]), file=sys.stderr)
    print(
        table(
            [
                "shards x conc.",
                "in flight",
                "client",
                "req/s",
                "completion tok/s",
                "ideal req/s",
                "of ideal",
                "latency p50 / mean s",
                "busy slots (rate x mean latency)",
                "client CPU (cores)",
                "server CPU (cores)",
            ],
            rows,
        )
    )
    print(f"\n(total {time.monotonic() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
