"""Throughput, side by side: shardline vs the semaphore pattern vs raw httpx vs raw sockets.

Not a timed test: it prints tables of ratios measured in one run. Run it from the
repository root::

    uv run python tests/benchmarks/bench_throughput.py --quick     # < 40 s
    uv run python tests/benchmarks/bench_throughput.py             # < 3 min

Every client runs in its own process against the same fake-server process(es) on
127.0.0.1, with the same total concurrency (``--shards`` x ``--concurrency``) and
the same requests: 200-token prompts, 100 to 200 completion tokens (seeded), one
token per SSE event, streamed with ``stream_options.include_usage``.

Clients (see ``_clients.py``):

* ``shardline``: ``open_pipeline`` + ``Pipeline.map``, events written to a JSONL
  file, TPM from ``compute_report`` on that file, on the default (lean) transport;
* ``shardline-lean``: the same with ``Endpoint(transport="lean")`` named;
* ``shardline-httpx``: the same on ``Endpoint(transport="httpx")`` (httpcore's pool);
* ``semaphore``: asyncio + ``openai.AsyncOpenAI`` (one per shard) + one
  ``asyncio.Semaphore`` per shard + doubling backoff capped at 30 s;
* ``httpx``: one ``httpx.AsyncClient`` + one ``trio.CapacityLimiter``, no pipeline
  (shardline's overhead floor);
* ``raw``: hand-rolled HTTP/1.1 keep-alive over asyncio sockets (the ceiling).

Scenarios: ``burst`` (the server answers at once: the client's own cost is all
that is measured) and, in the full run, ``paced`` (TTFT 50 ms, 2 ms per token:
events arrive one or a few per read, as from a real server).

Columns: completion tokens/s and requests/s over the load phase; client CPU
milliseconds per request (``resource.getrusage`` of the client process over the
load phase) and microseconds per streamed event (one content event per
completion token); server CPU as a fraction of one core (``/proc``: near 1.0 means
the server, not the client, is the limit); for shardline, the peak completion
TPM of its own report. Ratios are of requests/s (and CPU per request), against
the semaphore pattern, raw httpx and httpx-sharded, measured in the same run.
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

from _harness import (
    PROMPT,
    ClientRun,
    fake_servers,
    fmt,
    machine,
    run_client,
    table,
    workload,
)

KINDS = (
    "shardline",
    "shardline-lean",
    "shardline-httpx",
    "shardline-opt",
    "shardline-nosink",
    "semaphore",
    "httpx",
    "httpx-sharded",
    "raw",
)
DEFAULT_KINDS = ("shardline", "semaphore", "httpx", "httpx-sharded", "raw")
SCENARIOS = {
    "burst": {"ttft": 0.0, "itl": 0.0},
    "paced": {"ttft": 0.05, "itl": 0.002},
}
# The raw client is so cheap that it gets more requests, for a measurable wall time.
SCALE = {"raw": 4.0}


def measure(
    kind: str, servers: list[Any], shards: int, concurrency: int, n: int, tmp: Path
) -> ClientRun:
    params: dict[str, Any] = {
        "urls": [s.base_url for s in servers],
        "shards": shards,
        "concurrency": concurrency,
        "tokens": workload(int(n * SCALE.get(kind, 1.0))),
        "prompt": PROMPT,
        "model": "shardline-fake",
    }
    if kind.startswith("shardline"):
        params["events"] = str(tmp / f"events-{time.monotonic_ns()}.jsonl")
    return run_client(kind, params, cap_s=150, servers=servers)


def summarize(runs: list[ClientRun]) -> dict[str, Any]:
    """Median over rounds of the per-run rates."""
    done = [r for r in runs if r.finished]
    if not done:
        return {"finished": False}

    def med(f: Any) -> float:
        return statistics.median(f(r) for r in done)

    out: dict[str, Any] = {
        "finished": True,
        "tok_s": med(lambda r: r.completion_tokens / r.wall_s),
        "req_s": med(lambda r: r.ok / r.wall_s),
        "cpu_ms": med(lambda r: 1000 * r.summary["cpu_s"] / max(1, r.ok)),
        # One content event per completion token: client CPU per streamed event.
        "cpu_us_event": med(lambda r: 1e6 * r.summary["cpu_s"] / max(1, r.completion_tokens)),
        "client_util": med(lambda r: r.summary["cpu_s"] / r.wall_s),
        "server_util": med(lambda r: r.server_cpu_s / r.wall_s),
        "ok": sum(r.ok for r in done),
        "requests": sum(len(r.records) for r in done),
        "tpm": None,
    }
    reports = [r.summary["report"] for r in done if "report" in r.summary]
    if reports:
        # The report's rate: completion tokens over the run's duration, per minute
        # (runs are shorter than a minute, so the peak-minute fields hold a run's total).
        out["tpm"] = statistics.median(
            60 * rep["tokens_out_total"] / rep["duration_s"] for rep in reports
        )
        out["tpm_total"] = statistics.median(
            60 * (rep["tokens_out_total"] + rep["tokens_in_total"]) / rep["duration_s"]
            for rep in reports
        )
    return out


def render(results: dict[str, dict[str, Any]], label: str) -> str:
    base = results.get("semaphore", {})
    floor = results.get("httpx", {})
    sharded = results.get("httpx-sharded", {})
    rows = []
    for kind in KINDS:
        r = results.get(kind)
        if r is None:
            continue
        if not r["finished"]:
            rows.append([kind, "not finished", *["-"] * 11])
            continue
        vs_sem = r["req_s"] / base["req_s"] if base.get("finished") else None
        vs_httpx = r["req_s"] / floor["req_s"] if floor.get("finished") else None
        cpu_vs_sem = base["cpu_ms"] / r["cpu_ms"] if base.get("finished") else None
        cpu_vs_httpx = floor["cpu_ms"] / r["cpu_ms"] if floor.get("finished") else None
        vs_sharded = r["req_s"] / sharded["req_s"] if sharded.get("finished") else None
        cpu_vs_sharded = sharded["cpu_ms"] / r["cpu_ms"] if sharded.get("finished") else None
        rows.append(
            [
                kind,
                fmt(r["tok_s"], ",.0f"),
                fmt(r["req_s"], ",.1f"),
                fmt(r["cpu_ms"], ".2f"),
                fmt(r["cpu_us_event"], ".1f"),
                fmt(r["client_util"], ".2f"),
                fmt(r["server_util"], ".2f"),
                fmt(r["tpm"], ",.0f") if r["tpm"] is not None else "-",
                f"{fmt(vs_sem)}x / {fmt(cpu_vs_sem)}x",
                f"{fmt(vs_httpx)}x / {fmt(cpu_vs_httpx)}x",
                f"{fmt(vs_sharded)}x / {fmt(cpu_vs_sharded)}x",
                f"{r['ok']}/{r['requests']}",
            ]
        )
    headers = [
        "client",
        "completion tok/s",
        "req/s",
        "client CPU ms/req",
        "client CPU µs/event",
        "client CPU (cores)",
        "server CPU (cores)",
        "TPM out (own report)",
        "vs semaphore (req/s / CPU)",
        "vs raw httpx (req/s / CPU)",
        "vs httpx-sharded (req/s / CPU)",
        "ok/requests",
    ]
    return f"### {label}\n\n" + table(headers, rows)


def proof_minute(args: argparse.Namespace) -> int:
    """Run shardline alone for 130 s (burst) and print its report's proof block."""
    print(f"# bench_throughput --proof-minute: {machine()}")
    with (
        tempfile.TemporaryDirectory(prefix="shardline-bench-") as tmpdir,
        fake_servers(args.servers, **SCENARIOS["burst"]) as servers,
    ):
        params: dict[str, Any] = {
            "urls": [s.base_url for s in servers],
            "shards": args.shards,
            "concurrency": args.concurrency,
            "tokens": workload(1000),
            "prompt": PROMPT,
            "model": "shardline-fake",
            "events": str(Path(tmpdir) / "events.jsonl"),
            "duration": 130.0,
        }
        run = run_client("shardline", params, cap_s=200, servers=servers)
    if not run.finished:
        print(f"not finished: {run.stderr_tail[-800:]}")
        return 1
    rep = run.summary["report"]
    rows = [
        [k, f"{rep[k]:,}" if isinstance(rep[k], int) else str(rep[k])]
        for k in (
            "proof_minute_utc",
            "peak_aggregate_tpm_total",
            "peak_completion_tpm_out",
            "peak_prompt_tpm_in",
            "items",
            "succeeded",
            "tokens_out_total",
        )
    ]
    rows.append(
        [
            "run wall s / client CPU ms per request",
            f"{run.wall_s:.1f} / {1000 * run.summary['cpu_s'] / max(1, run.ok):.2f}",
        ]
    )
    rows.append(["reference (production proof block)", "364,704 out / 738,652 total"])
    print(table(["report field (shardline's own report)", "value"], rows))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--quick", action="store_true", help="one round, burst only, fewer requests (< 40 s)"
    )
    ap.add_argument("--requests", type=int, default=None, help="requests per run (600; quick 300)")
    ap.add_argument(
        "--rounds", type=int, default=None, help="rounds, medians reported (2; quick 1)"
    )
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--concurrency", type=int, default=16, help="per shard")
    ap.add_argument(
        "--servers", type=int, default=1, help="fake-server processes (shards spread over them)"
    )
    ap.add_argument("--scenario", choices=[*SCENARIOS, "all"], default=None)
    ap.add_argument("--clients", default=",".join(DEFAULT_KINDS), help="comma-separated subset")
    ap.add_argument(
        "--opt",
        action="store_true",
        help="add shardline-opt: shardline with the candidate patches of _experiments.py",
    )
    ap.add_argument(
        "--proof-minute",
        action="store_true",
        help="only shardline, for 130 s, so its report's peak UTC minute is a full minute",
    )
    args = ap.parse_args()
    if args.proof_minute:
        return proof_minute(args)
    n = args.requests or (300 if args.quick else 600)
    rounds = args.rounds or (1 if args.quick else 2)
    scenario = args.scenario or ("burst" if args.quick else "all")
    scenarios = list(SCENARIOS) if scenario == "all" else [scenario]
    wanted = args.clients.split(",") + (["shardline-opt"] if args.opt else [])
    kinds = [k for k in KINDS if k in wanted]

    print(f"# bench_throughput: {machine()}")
    print(
        f"# {args.shards} shards x {args.concurrency} = {args.shards * args.concurrency} "
        f"concurrent requests, {n} requests per run (raw: {int(n * SCALE['raw'])}), "
        f"{rounds} round(s), {args.servers} fake-server process(es)\n"
    )
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="shardline-bench-") as tmpdir:
        tmp = Path(tmpdir)
        for name in scenarios:
            timing = SCENARIOS[name]
            runs: dict[str, list[ClientRun]] = {k: [] for k in kinds}
            with fake_servers(args.servers, **timing) as servers:
                for _ in range(rounds):
                    for kind in kinds:
                        run = measure(kind, servers, args.shards, args.concurrency, n, tmp)
                        if not run.finished:
                            print(
                                f"! {kind} did not finish: {run.stderr_tail[-800:]}",
                                file=sys.stderr,
                            )
                        runs[kind].append(run)
            results = {k: summarize(v) for k, v in runs.items()}
            label = (
                f"{name}: ttft {timing['ttft'] * 1000:.0f} ms, {timing['itl'] * 1000:.0f} ms/token"
            )
            print(render(results, label))
            print()
            sr = results.get("shardline", {})
            if sr.get("tpm"):
                print(
                    f"shardline's own report, as a rate: completion TPM {sr['tpm']:,.0f}, "
                    f"aggregate TPM {sr['tpm_total']:,.0f} (reference production proof "
                    "block: peak_completion_tpm_out 364,704, peak_aggregate_tpm_total 738,652)"
                )
            for kind, r in results.items():
                if r.get("finished") and r["server_util"] > 0.85 * args.servers:
                    print(
                        f"note: the fake server was the limit for {kind} "
                        f"(server CPU {r['server_util']:.2f} cores)"
                    )
            print()
    print(f"(total {time.monotonic() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
