"""Tails under faults, side by side: shardline vs the semaphore pattern (openai defaults).

Not a timed test: it prints a table per fault scenario. Run it from the repository root::

    uv run python tests/benchmarks/bench_faults.py --quick     # < 40 s: the hangs scenario
    uv run python tests/benchmarks/bench_faults.py             # < 3 min: three scenarios

Each scenario starts a fake server in its own process with a seeded fault mix,
then runs each client against it, in its own process, with a hard wall-clock
cap (``--cap``, 45 s; quick 15 s). A client still running at the cap is killed
and reported as "not finished after N s" with what it had finished by then.

* ``shardline``: ``open_pipeline`` with ``Deadlines(connect=5, ttft=10, stall=5)``
  and the default ``RetryPolicy`` (5 attempts, capped jittered backoff, Retry-After
  honoured per shard, retry budget 20 %).
* ``semaphore``: asyncio + ``openai.AsyncOpenAI`` with its DEFAULT timeouts
  (connect 5 s, read 600 s) and retries (2) + one ``asyncio.Semaphore`` per
  shard + our doubling backoff capped at 30 s (5 attempts).

Both send the same requests (100 to 200 completion tokens, TTFT 50 ms, 2 ms per
token). Faults are drawn by the server from a seeded hash per HTTP request, so
both clients see the same fault rates (shardline's retries draw again because
their attempt number changes; the openai client's requests carry no item
headers and draw by sequence number).

Columns: wall time to finish (or "not finished after N s"); items ok / failed /
unfinished; silent truncations (the pattern returned a stream cut short as a
success); item-level time to first token p50/p95/p99 from the item's first send
to the first token of the stream that succeeded (retries and backoff included;
an item that never got a token of a successful stream, because it failed or was
still unfinished at the cap, counts as "never").
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import PROMPT, ClientRun, fake_servers, machine, run_client, table, workload

TIMING = {"ttft": 0.05, "itl": 0.002}
SCENARIOS = {
    "hangs": "stall_mid=0.01:after=3,stall_headers=0.005,drip=0.01:after=2",
    "429-storm": "rate_limit=0.3:retry_after=2,http_503=0.05",
    "resets-truncations": "reset=0.03:after=5,truncate=0.03:after=5",
    "mixed": (
        "stall_mid=0.005:after=3,drip=0.005:after=2,rate_limit=0.1:retry_after=1,"
        "reset=0.01:after=5,truncate=0.01:after=5"
    ),
}
SHARDLINE_DEADLINES = {"connect": 5.0, "ttft": 10.0, "stall": 5.0}


def quantile_or_inf(values: list[float | None], n: int, q: float) -> float:
    """Nearest-rank percentile over ``n`` items; missing values count as +inf."""
    vals = sorted(v for v in values if v is not None)
    vals += [float("inf")] * (n - len(vals))
    if not vals:
        return float("inf")
    k = max(0, min(n - 1, int(q / 100 * n + 0.5) - 1))
    return vals[k]


def row(kind: str, run: ClientRun, n: int) -> list[str]:
    recs = run.records
    ok = [r for r in recs if r["ok"] and r["cause"] != "silently_truncated"]
    silent = sum(1 for r in recs if r["ok"] and r["cause"] == "silently_truncated")
    failed = sum(1 for r in recs if not r["ok"])
    unfinished = n - len(recs)
    ttfts = [r["ttft"] for r in ok]
    cap = run.cap_s

    def q(p: float) -> str:
        v = quantile_or_inf(ttfts, n, p)
        return "never" if v == float("inf") else f"{v:.2f} s"

    wall = f"{run.wall_s:.1f} s" if run.finished else f"not finished after {cap:.0f} s"
    retries = sum(max(0, r["att"] - 1) for r in recs)
    return [
        kind,
        wall,
        str(len(ok)),
        str(failed),
        str(unfinished),
        str(silent),
        str(retries),
        q(50),
        q(95),
        q(99),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--quick", action="store_true", help="the hangs scenario only, 300 items, 15 s cap (< 40 s)"
    )
    ap.add_argument("--requests", type=int, default=None, help="items per run (500; quick 300)")
    ap.add_argument(
        "--cap", type=float, default=None, help="wall-clock cap per client, s (45; quick 15)"
    )
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--concurrency", type=int, default=16, help="per shard")
    ap.add_argument(
        "--scenario",
        action="append",
        choices=list(SCENARIOS),
        help="repeatable (default: all but mixed)",
    )
    args = ap.parse_args()
    n = args.requests or (300 if args.quick else 500)
    cap = args.cap or (15.0 if args.quick else 45.0)
    scenarios = args.scenario or (
        ["hangs"] if args.quick else ["hangs", "429-storm", "resets-truncations"]
    )

    print(f"# bench_faults: {machine()}")
    print(
        f"# {args.shards} shards x {args.concurrency} concurrent, {n} items, "
        "TTFT 50 ms, 2 ms/token, "
        f"100-200 completion tokens; cap {cap:.0f} s per client; shardline deadlines "
        f"{SHARDLINE_DEADLINES}\n"
    )
    t0 = time.monotonic()
    tokens = workload(n, seed=2)
    for name in scenarios:
        spec = SCENARIOS[name]
        rows = []
        with fake_servers(1, faults=spec, seed=7, **TIMING) as servers:
            variants: list[tuple[str, str, dict[str, Any]]] = [
                ("shardline", "shardline", {}),
                ("semaphore", "semaphore", {}),
            ]
            for label, kind, retry in variants:
                params: dict[str, Any] = {
                    "urls": [s.base_url for s in servers],
                    "shards": args.shards,
                    "concurrency": args.concurrency,
                    "tokens": tokens,
                    "prompt": PROMPT,
                    "model": "shardline-fake",
                    "item_timing": True,
                    "no_report": True,
                    "deadlines": SHARDLINE_DEADLINES,
                    "retry": retry,
                }
                run = run_client(kind, params, cap_s=cap, servers=servers)
                if not run.finished and run.summary:
                    print(f"! {kind}: {run.stderr_tail[-600:]}", file=sys.stderr)
                rows.append(row(label, run, n))
        print(f'### {name}: `--faults "{spec}"`\n')
        print(
            table(
                [
                    "client",
                    "wall time",
                    "ok",
                    "failed",
                    "unfinished",
                    "silently truncated",
                    "retries",
                    "TTFT p50",
                    "TTFT p95",
                    "TTFT p99",
                ],
                rows,
            )
        )
        print()
    print(f"(total {time.monotonic() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
