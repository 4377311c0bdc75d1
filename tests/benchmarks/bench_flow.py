"""Adaptive flow control against overloaded servers, side by side, measured in one run.

Not a timed test: it prints tables. Run it from the repository root::

    uv run python tests/benchmarks/bench_flow.py            # about 5 minutes
    uv run python tests/benchmarks/bench_flow.py --events-dir /tmp/flow   # keep events files

Each scenario starts ``shardline fake-server`` in its own process with a load
model (``shardline.testing.fake_server_process``), then runs each client against
a fresh server, in its own process, with a hard wall-clock cap (``--cap``):

* ``capacity-24``: 429 without Retry-After beyond 24 completions in flight
  (issue 14's first case), 2,000 items. Clients: shardline adaptive at 8 shards
  x 16 (ceiling 128); shardline configured at capacity, 8 x 3 = 24 with
  ``FlowControl(adaptive=False)``; the semaphore pattern (asyncio +
  ``openai.AsyncOpenAI`` defaults + one semaphore per shard + doubling backoff,
  ``_clients.py semaphore``) at 8 x 16 and at 8 x 3.
* ``llama.cpp``: one request at a time, a new request cuts the stream in flight,
  no usage chunk; 120 items at 2 x 4.
* ``rpm-headers``: 600 requests per minute announced in ``x-ratelimit-*``
  headers, 429 beyond; 800 items at 4 x 8, a cap of 90 s (a pacer that waits for
  the quota's full reset needs about 60 s more).
* ``chaos``: about 30 % of attempts get a transient fault (429, 503, truncation,
  stall, reset, malformed shape); 400 items at 4 x 8.

Counts come from the server (``GET /_shardline/stats``), so every client is
measured the same way, the openai client's internal retries included:
``attempts`` are chat-completion requests the server received; ``429 %`` its
429s (capacity, rate limit and injected ``rate_limit`` faults) per attempt; ``cut`` streams it cut
(``preempt``). ``ok`` for the semaphore pattern excludes streams it accepted
cut short (``silent``: no usage, no finish reason; the pattern does not notice).
``x at-cap`` is the wall time over the shardline run configured at capacity.
``limit min/med/max`` is the live limit's min / time-weighted median / max from
the run report of shardline's events file (``fixed`` with adaptive flow off).
A client that raised out of its run is shown as ``crashed`` with the exception.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import PROMPT, ClientRun, fmt, machine, run_client, table, workload

from shardline.testing import LoadModel, TimingModel, fake_server_process

TIMING = TimingModel(ttft=0.05, itl=0.002)  # about 0.11 s per 20-40 token answer
CHAOS = (
    "rate_limit=0.08,http_503=0.06,truncate=0.04:after=2,stall_mid=0.03:after=2,"
    "reset=0.04:after=2,malformed_shape=0.05"
)
DEADLINES = {"connect": 5.0, "ttft": 10.0, "stall": 1.0, "attempt": 60.0}


@dataclass
class Client:
    label: str
    kind: str
    shards: int
    concurrency: int
    extra: dict[str, Any]


@dataclass
class Scenario:
    name: str
    items: int
    server: dict[str, Any]
    clients: list[Client]
    cap: float | None = None  # wall-clock cap per client run, if not --cap


def scenarios() -> list[Scenario]:
    adaptive = {"deadlines": DEADLINES}
    fixed = {"deadlines": DEADLINES, "flow": {"adaptive": False}}
    return [
        Scenario(
            "capacity-24",
            2000,
            {"load": LoadModel(capacity=24)},
            [
                Client("shardline adaptive 8x16", "shardline", 8, 16, adaptive),
                Client("shardline at capacity 8x3", "shardline", 8, 3, fixed),
                Client("semaphore openai 8x16", "semaphore", 8, 16, {}),
                Client("semaphore openai 8x3", "semaphore", 8, 3, {}),
            ],
        ),
        Scenario(
            "llama.cpp",
            120,
            {"load": LoadModel(preempt=True), "no_usage": True},
            [
                Client("shardline adaptive 2x4", "shardline", 2, 4, adaptive),
                Client("shardline fixed 2x4", "shardline", 2, 4, fixed),
                Client("semaphore openai 2x4", "semaphore", 2, 4, {}),
            ],
        ),
        Scenario(
            "rpm-headers",
            800,
            {"load": LoadModel(rpm=600)},
            [
                Client("shardline adaptive 4x8", "shardline", 4, 8, adaptive),
                Client(
                    "shardline no pacing 4x8",
                    "shardline",
                    4,
                    8,
                    {**adaptive, "flow": {"pace_headers": False}},
                ),
                Client("semaphore openai 4x8", "semaphore", 4, 8, {}),
            ],
            cap=90.0,
        ),
        Scenario(
            "chaos",
            400,
            {"faults": CHAOS, "seed": 5},
            [
                Client("shardline adaptive 4x8", "shardline", 4, 8, adaptive),
                Client("semaphore openai 4x8", "semaphore", 4, 8, {}),
            ],
        ),
    ]


@dataclass
class Measured:
    client: Client
    run: ClientRun
    attempts: int
    refused: int
    cut: int
    faults: int
    limit: str


def limit_figures(events: Path) -> str:
    """``min/median/max`` of the live limit, from the run report of ``events``."""
    from shardline._events import EventFileReader
    from shardline.report import compute_report

    if not events.exists():
        return "-"
    with EventFileReader(events) as reader:
        limits = compute_report(reader, events_sha256=None).limits
    return ", ".join(f"{lim.min}/{lim.median}/{lim.max}" for lim in limits) or "fixed"


def measure(sc: Scenario, client: Client, *, cap: float, events_dir: Path) -> Measured:
    tokens = workload(sc.items, seed=2, min_tokens=20, max_tokens=40)
    params: dict[str, Any] = {
        "urls": [],
        "shards": client.shards,
        "concurrency": client.concurrency,
        "tokens": tokens,
        "prompt": PROMPT,
        "model": "m",
        "max_attempts": 5,
        **client.extra,
    }
    events = events_dir / f"{sc.name}-{client.label.replace(' ', '-')}.jsonl"
    if client.kind == "shardline":
        params["events"] = str(events)
    with fake_server_process(timing=TIMING, **sc.server) as server:
        params["urls"] = [server.base_url]
        run = run_client(client.kind, params, cap_s=cap)
        stats = server.statistics()
    return Measured(
        client=client,
        run=run,
        attempts=stats.requests_by_endpoint.get("chat.completions", 0),
        refused=(
            stats.capacity_refusals + stats.rate_limit_refusals + stats.faults.get("rate_limit", 0)
        ),
        cut=stats.preempted,
        faults=sum(stats.faults.values()),
        limit=limit_figures(events) if client.kind == "shardline" else "-",
    )


def row(m: Measured, n: int, at_cap_wall: float | None) -> list[str]:
    recs = m.run.records
    silent = sum(1 for r in recs if r["ok"] and r["cause"] == "silently_truncated")
    ok = sum(1 for r in recs if r["ok"]) - silent
    failed = sum(1 for r in recs if not r["ok"])
    unfinished = n - len(recs)
    if m.run.finished:
        wall = f"{m.run.wall_s:.1f} s"
    elif "Traceback" in m.run.stderr_tail:
        error = m.run.stderr_tail.strip().splitlines()[-1].split(":")[0]
        wall = f"crashed ({error}) after {m.run.wall_s:.1f} s"
    else:
        wall = f"not finished after {m.run.cap_s:g} s"
    ratio = f"{m.run.wall_s / at_cap_wall:.2f}x" if at_cap_wall and m.run.finished else "-"
    share = m.refused / m.attempts if m.attempts else None
    return [
        m.client.label,
        f"{ok}/{failed}" + (f" (+{unfinished} unfinished)" if unfinished else ""),
        str(silent),
        wall,
        ratio,
        str(m.attempts),
        f"{fmt(None if share is None else 100 * share, '.1f')} %",
        str(m.cut),
        str(m.faults),
        m.limit,
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cap", type=float, default=60.0, help="wall-clock cap per client run, s")
    ap.add_argument("--events-dir", type=Path, default=None, help="keep shardline events here")
    ap.add_argument("--only", default=None, help="run only this scenario")
    args = ap.parse_args()
    print(f"# bench_flow -- {machine()}")
    print(f"# fake server timing: ttft {TIMING.ttft} s, {TIMING.itl} s per token, 20-40 tokens")
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        events_dir = args.events_dir or Path(tmp)
        events_dir.mkdir(parents=True, exist_ok=True)
        for sc in scenarios():
            if args.only and sc.name != args.only:
                continue
            cap = sc.cap or args.cap
            measured = [measure(sc, c, cap=cap, events_dir=events_dir) for c in sc.clients]
            at_cap = next((m.run.wall_s for m in measured if "at capacity" in m.client.label), None)
            print(f"\n## {sc.name}: {sc.items} items")
            headers = ["client", "ok/failed", "silent", "wall", "x at-cap", "attempts"]
            headers += ["429 %", "cut", "faults", "limit min/med/max"]
            print(table(headers, [row(m, sc.items, at_cap) for m in measured]))
    print(f"\n# total {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
