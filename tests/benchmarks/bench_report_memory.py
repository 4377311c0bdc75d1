"""Memory of the report computation for 10 thousand to 1 million successful items.

Not a timed test: it prints a table. Run it from the repository root::

    uv run python tests/benchmarks/bench_report_memory.py --quick   # 10k, 100k (< 30 s)
    uv run python tests/benchmarks/bench_report_memory.py           # also 1M (~2 min)

Each size folds that many successful ``item_end`` events (8 shards, latencies
log-normal between 1 ms and 1 h, generated on the fly, never held) into a
:class:`~shardline.report.ReportBuilder` under ``tracemalloc`` and prints the
builder's live memory once all are in, next to what keeping every sample as a
C double would cost (the report before the quantile sketch: four doubles per
item, run and shard, TTFT and latency), and the largest error of the report's
p50/p95/p99 against the exact percentiles of the same samples. The
sketches hold the samples up to 2,048 per shard, then one bucket per 2 % of the
values' range: at most 756 per sketch for 1 ms to 1 h, whatever the count.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import machine, table

from shardline._events import ItemEnd, RunStart
from shardline._report import percentile
from shardline.report import ReportBuilder

SHARDS = 8
SIZES = (10_000, 100_000, 1_000_000)


def latencies(n: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [min(3600.0, max(1e-3, rng.lognormvariate(0.0, 2.0))) for _ in range(n)]


def one(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    tracemalloc.start()
    builder = ReportBuilder()
    builder.emit(RunStart(t=0.0, run_id="bench", started_at=0.0, shard_count=SHARDS, config={}))
    base = tracemalloc.get_traced_memory()[0]
    began = time.perf_counter()
    for i in range(n):
        latency = min(3600.0, max(1e-3, rng.lognormvariate(0.0, 2.0)))
        builder.emit(
            ItemEnd(
                t=i * 0.001,
                item_id=i,
                shard=i % SHARDS,
                status="ok",
                attempts=1,
                latency_s=latency,
                ttft_s=latency / 10,
            )
        )
    fold_s = time.perf_counter() - began
    used = tracemalloc.get_traced_memory()[0] - base
    held = sum(a.ttft.size + a.latency.size for a in builder._shards.values())
    report = builder.build()
    tracemalloc.stop()
    exact = sorted(latencies(n, seed))  # the same samples again, outside the trace
    worst = 0.0
    lat = report.latency_s
    for p, got in ((50, lat.p50), (95, lat.p95), (99, lat.p99)):
        want = percentile(exact, p)
        assert got is not None
        assert want is not None
        worst = max(worst, abs(got - want) / want)
    return [
        f"{n:,}",
        f"{used / 1024:,.0f}",
        f"{held:,}",
        f"{4 * 8 * n / 1024:,.0f}",
        f"{worst * 100:.3f}",
        f"{fold_s / n * 1e6:.1f}",
    ]


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="10k and 100k items only")
    args = ap.parse_args()
    sizes = SIZES[:2] if args.quick else SIZES
    print(f"# bench_report_memory: {machine()}")
    print(f"# ReportBuilder, {SHARDS} shards, successful items only, tracemalloc\n")
    rows = [one(n, seed=n) for n in sizes]
    print(
        table(
            [
                "items",
                "builder KiB",
                "numbers held by the sketches",
                "all samples as doubles KiB",
                "worst p50/p95/p99 error %",
                "µs per event (traced)",
            ],
            rows,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
