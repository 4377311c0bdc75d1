"""Short streams, whole process: shardline vs the semaphore pattern, side by side.

Not a timed test: it prints a table of ratios measured in one run. Run it from the
repository root::

    uv run python tests/benchmarks/bench_short.py              # 3 rounds, < 1 min
    uv run python tests/benchmarks/bench_short.py --rounds 5 --requests 4000

Issue 17's "short streams" case: 2,000 requests of 16 completion tokens each (a
200-token prompt, one token per SSE event, usage included), 8 shards x 16 in
flight, against one fake-server process that answers at once, so the client's
own cost per request is what is measured. Each client is a fresh process and
its time runs **from spawning the process to its exit**: interpreter start-up
and imports count, as they do for a user who runs a batch. Clients run
interleaved, round after round, so a noisy neighbour hits them alike; the table
gives medians.

Clients (``_clients.py``): ``shardline`` (``open_pipeline`` + ``Pipeline.map``,
events to a JSONL file), ``semaphore`` (asyncio + ``openai.AsyncOpenAI`` per
shard + ``asyncio.Semaphore(16)`` per shard), ``httpx-sharded`` (a bare httpx
loop on trio with shardline's pool layout, the floor) and ``raw`` (hand-written
HTTP/1.1 on asyncio sockets, the ceiling).
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

from _harness import PROMPT, ClientRun, fake_servers, fmt, machine, run_client, table

DEFAULT_CLIENTS = ("shardline", "semaphore", "httpx-sharded", "raw")


def one(kind: str, url: str, args: argparse.Namespace, tmp: Path) -> ClientRun:
    params: dict[str, Any] = {
        "urls": [url],
        "shards": args.shards,
        "concurrency": args.concurrency,
        "tokens": [args.tokens] * args.requests,
        "prompt": PROMPT,
        "model": "shardline-fake",
    }
    if kind.startswith("shardline"):
        params["events"] = str(tmp / f"events-{time.monotonic_ns()}.jsonl")
        params["no_report"] = True  # the batch's own work, not the report afterwards
    return run_client(kind, params, cap_s=180)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--tokens", type=int, default=16, help="completion tokens per request")
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--concurrency", type=int, default=16, help="per shard")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", default=",".join(DEFAULT_CLIENTS), help="comma-separated")
    args = ap.parse_args()
    kinds = [k for k in args.clients.split(",") if k]
    print(f"# bench_short: {machine()}")
    print(
        f"# {args.requests} requests x {args.tokens} tokens, {args.shards} x "
        f"{args.concurrency} in flight, one fake server answering at once; "
        f"whole process timed, {args.rounds} interleaved rounds, medians\n"
    )
    runs: dict[str, list[ClientRun]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory() as tmp, fake_servers(1) as servers:
        url = servers[0].base_url
        for _ in range(args.rounds):
            for kind in kinds:
                run = one(kind, url, args, Path(tmp))
                runs[kind].append(run)
                state = "ok" if run.finished else "NOT FINISHED"
                print(
                    f"  {kind}: {run.process_s:.2f} s, {run.ok}/{len(run.records)} ok, {state}",
                    flush=True,
                )
    rows = []
    medians: dict[str, dict[str, float]] = {}
    for kind, done in runs.items():
        done = [r for r in done if r.finished]
        if not done:
            rows.append([kind, "not finished", "-", "-", "-", "-"])
            continue
        medians[kind] = {
            "process_s": statistics.median(r.process_s for r in done),
            "cpu_s": statistics.median(r.client_proc_cpu_s for r in done),
            "ok": min(r.ok for r in done),
        }
    base = medians.get("semaphore")
    floor = medians.get("httpx-sharded")
    for kind, m in medians.items():
        rows.append(
            [
                kind,
                fmt(m["process_s"]),
                fmt(m["cpu_s"]),
                fmt(base["process_s"] / m["process_s"]) + "x" if base else "-",
                fmt(floor["process_s"] / m["process_s"]) + "x" if floor else "-",
                f"{m['ok']:.0f}/{args.requests}",
            ]
        )
    print()
    headers = [
        "client",
        "whole process s",
        "process CPU s",
        "speed vs semaphore",
        "speed vs httpx-sharded",
        "ok (worst round)",
    ]
    print(table(headers, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
