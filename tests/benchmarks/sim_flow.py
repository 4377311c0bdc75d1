"""Compare flow-control variants on simulated servers, in virtual time: ``python sim_flow.py``.

Not a timed benchmark: every run is one ``trio.run`` on a ``MockClock`` that jumps
whenever all tasks sleep, so ten virtual minutes take about a second and the
numbers are the same on every machine (fixed seeds).

Variants: ``fixed`` (the ceiling, no adaptation: the semaphore pattern), ``aimd``
(refusals only), ``aimd+vegas`` and ``aimd+gradient`` (refusals plus a TTFT signal
against its no-load minimum). Servers (``tests/test_flow_sim.py``): ``capacity``
(429 beyond K), ``capacity503`` (503 beyond K), ``queue`` (FIFO beyond K; TTFT grows),
``cut`` (one at a time; a new request cuts the one in flight).

Columns: ``thr/K`` = successes per second over the ideal ``K / mean service time``;
``limit`` = time-weighted mean limit over the second half, and ``limit/K``;
``over`` = the largest limit above K in the second half, as a fraction of K;
``ovl%`` = overload answers (429/503/cut) per attempt; ``ttft/base`` = mean TTFT over
the server's prefill time.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import trio
import trio.testing

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shardline._flow import AdaptiveLimit
from shardline._flow_latency import make_latency_signal
from shardline._flow_pacer import HeaderPacer
from test_flow_sim import (
    CapacityServer,
    CutServer,
    QueueServer,
    Server,
    SimResult,
    run_workload,
)

VARIANTS = (
    "fixed",
    "aimd",
    "vegas/ewma",
    "gradient/ewma",
    "vegas/min",
    "gradient/min",
    "little/min",
)


#: Prefill (the TTFT of an unloaded server) varies with prompt length: 0.1-1.0 s.
NOISY = (0.1, 1.0)


def make_server(kind: str, capacity: int, rng: random.Random) -> Server:
    if kind == "capacity":
        return CapacityServer(capacity=capacity, rng=rng)
    if kind == "capacity503":
        return CapacityServer(capacity=capacity, rng=rng, status=503)
    if kind == "capacity~":
        return CapacityServer(capacity=capacity, rng=rng, prefill=NOISY)
    if kind == "queue":
        return QueueServer(capacity=capacity, rng=rng)
    if kind == "queue~":
        return QueueServer(capacity=capacity, rng=rng, prefill=NOISY)
    if kind == "cut":
        return CutServer(rng=rng)
    raise ValueError(kind)


def make_limit(variant: str, ceiling: int) -> AdaptiveLimit:
    if variant == "fixed":
        return AdaptiveLimit(ceiling=ceiling, floor=ceiling, latency=None)
    if variant == "aimd":
        return AdaptiveLimit(ceiling=ceiling, latency=None)
    kind, current = variant.split("/")
    signal = make_latency_signal(
        {"vegas": "vegas", "gradient": "gradient", "little": "little"}[kind],  # type: ignore[arg-type]
        current="ewma" if current == "ewma" else "recent_min",
    )
    return AdaptiveLimit(ceiling=ceiling, latency=signal)


def simulate(
    kind: str,
    variant: str,
    *,
    capacity: int,
    ceiling: int,
    workers: int,
    duration: float,
    seed: int,
) -> SimResult:
    rng = random.Random(seed)
    server = make_server(kind, capacity, rng)
    flow = make_limit(variant, ceiling)

    async def main() -> SimResult:
        return await run_workload(server, flow, workers=workers, duration=duration, rng=rng)

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def simulate_split(shards: int, *, duration: float, seed: int) -> tuple[float, float, float]:
    """Per-shard limits (floor 1 each) against one cut-the-stream server, vs one shared limit.

    Returns (cut streams per attempt with per-shard limits, with one shared limit,
    successes per second per-shard / shared).
    """
    outcomes = []
    for split in (True, False):
        rng = random.Random(seed)
        server = CutServer(rng=rng)

        async def main(
            split: bool = split, server: CutServer = server, rng: random.Random = rng
        ) -> list[SimResult]:
            results: list[SimResult] = []
            shared = AdaptiveLimit(ceiling=4 * shards)

            async def one() -> None:
                flow = AdaptiveLimit(ceiling=4) if split else shared
                results.append(
                    await run_workload(server, flow, workers=8, duration=duration, rng=rng)
                )

            async with trio.open_nursery() as nursery:
                for _ in range(shards):
                    nursery.start_soon(one)
            return results

        results = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
        cuts = sum(r.overloads for r in results) / max(1, sum(r.attempts for r in results))
        rate = sum(r.successes for r in results) / duration
        outcomes.append((cuts, rate))
    return outcomes[0][0], outcomes[1][0], outcomes[0][1] / outcomes[1][1]


def simulate_pacer(paced: bool, *, duration: float, seed: int) -> tuple[int, int]:
    """Workers against a server announcing a fixed-window quota of 60 requests per 10 s.

    The server refuses (429) beyond the quota. Returns (successes, 429s).
    """
    rng = random.Random(seed)
    quota, window = 60, 10.0

    async def main() -> tuple[int, int]:
        pacer = HeaderPacer(rng=rng)
        start = trio.current_time()
        used: dict[int, int] = {}
        ok = refused = 0

        def headers(now: float) -> dict[str, str]:
            index = int((now - start) // window)
            reset = (index + 1) * window - (now - start)
            return {
                "x-ratelimit-limit-requests": str(quota),
                "x-ratelimit-remaining-requests": str(max(0, quota - used.get(index, 0))),
                "x-ratelimit-reset-requests": f"{reset:.3f}s",
            }

        async def worker() -> None:
            nonlocal ok, refused
            while True:
                if paced:
                    await pacer.wait()
                index = int((trio.current_time() - start) // window)
                await trio.sleep(rng.uniform(0.02, 0.05))  # the request reaches the server
                if used.get(index, 0) >= quota:
                    refused += 1
                    pacer.observe_headers(headers(trio.current_time()))
                    await trio.sleep(rng.uniform(0.5, 1.5))  # backoff without Retry-After
                    continue
                used[index] = used.get(index, 0) + 1
                pacer.observe_headers(headers(trio.current_time()))
                await trio.sleep(rng.uniform(0.5, 2.0))
                ok += 1

        with trio.move_on_after(duration):
            async with trio.open_nursery() as nursery:
                for _ in range(32):
                    nursery.start_soon(worker)
        return ok, refused

    result: tuple[int, int] = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="virtual seconds per run")
    parser.add_argument("--seeds", type=int, default=3, help="runs per cell, averaged")
    args = parser.parse_args()
    cases = [
        ("capacity", 24, 128, 200),
        ("capacity503", 24, 128, 200),
        ("capacity~", 24, 128, 200),
        ("queue", 24, 128, 200),
        ("queue~", 24, 128, 200),
        ("capacity", 4, 32, 64),
        ("queue", 4, 32, 64),
        ("cut", 1, 8, 16),
    ]
    mean_service = {"capacity~": 0.55, "queue~": 0.55}
    header = (
        f"{'server':<12}{'K':>4}{'ceil':>5} {'variant':<15}{'thr/K':>7}{'limit':>8}"
        f"{'limit/K':>8}{'over':>7}{'ovl%':>7}{'ttft/base':>10}"
    )
    print(f"# {args.duration:g} virtual s per run, mean of {args.seeds} seeds")
    print(header)
    print("-" * len(header))
    for kind, capacity, ceiling, workers in cases:
        for variant in VARIANTS:
            runs = [
                simulate(
                    kind,
                    variant,
                    capacity=capacity,
                    ceiling=ceiling,
                    workers=workers,
                    duration=args.duration,
                    seed=seed,
                )
                for seed in range(args.seeds)
            ]
            half = args.duration / 2
            prefill = mean_service.get(kind, 0.2)
            ideal = capacity / (prefill + 2.0)
            thr = sum(r.successes / r.duration for r in runs) / len(runs) / ideal
            limit = sum(r.mean_limit(half) for r in runs) / len(runs)
            over = max(r.overshoot(capacity, half) for r in runs)
            ovl = sum(r.overloads for r in runs) / max(1, sum(r.attempts for r in runs))
            ttft = sum(r.mean_ttft for r in runs) / len(runs) / prefill
            print(
                f"{kind:<12}{capacity:>4}{ceiling:>5} {variant:<15}{thr:>7.2f}{limit:>8.1f}"
                f"{limit / capacity:>8.2f}{over:>7.2f}{ovl * 100:>6.1f}%{ttft:>10.1f}"
            )
        print()

    print("# where the limit lives: 2 and 4 shards x 8 workers, one cut-the-stream server")
    print(
        f"{'shards':>6} {'cuts/attempt per-shard':>24} {'shared':>8} {'thr per-shard/shared':>22}"
    )
    for shards in (2, 4):
        split, shared, ratio = simulate_split(shards, duration=args.duration, seed=0)
        print(f"{shards:>6} {split * 100:>23.1f}% {shared * 100:>7.1f}% {ratio:>22.2f}")
    print()

    print("# header pacing: 32 workers, server quota 60 requests / 10 s, 429 beyond it")
    for paced in (False, True):
        ok, refused = simulate_pacer(paced, duration=args.duration, seed=0)
        label = "HeaderPacer" if paced else "no pacer"
        share = refused / max(1, ok + refused) * 100
        print(f"{label:<12} ok {ok:>6}  429s {refused:>6}  ({share:.1f}% of attempts)")


if __name__ == "__main__":
    main()
