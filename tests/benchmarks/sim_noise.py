"""Background loss against the live limit, on simulated servers in virtual time.

Not a timed benchmark: each case is one ``trio.run`` on a ``MockClock`` (fixed
seeds, the same numbers on every machine, about a second each)::

    uv run python tests/benchmarks/sim_noise.py

Servers (``tests/test_flow_sim.py``): a share ``loss`` of requests fails at random
whatever the load (503 or a reset), on top of a capacity (429 beyond it; 1000 means
none), and optionally a share ``stall`` of requests that stall until a 60 s TTFT
deadline. Workers retry like shards. Columns: the limit's time-weighted mean over
the run's second half (``limit``), successes in the run, the learned background
loss (``noise``), and the most requests the server held at once (``peak``).
Check out an older commit to see the same cases without background-loss learning.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import attrs
import trio
import trio.testing

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shardline._exceptions import Cause
from shardline._flow import AdaptiveLimit
from test_flow_sim import CapacityServer, NoisyServer, Served, run_workload


@attrs.define(eq=False)
class _Stalling:
    """A share ``stall`` of requests sends nothing until a 60 s TTFT deadline."""

    inner: NoisyServer
    stall: float
    rng: random.Random

    @property
    def peak(self) -> int:
        return self.inner.peak

    async def serve(self) -> Served:
        if self.rng.random() < self.stall:
            await trio.sleep(60.0)
            return Cause.TTFT_TIMEOUT, None, None
        return await self.inner.serve()


def case(
    *, capacity: int, loss: float, stall: float, ceiling: int, workers: int, seed: int
) -> tuple[float, int, float, int]:
    async def main() -> tuple[float, int, float, int]:
        rng = random.Random(seed)
        # With stalls, shorter answers: the 60 s stalls are what the case is about.
        timing = {"prefill": (0.05, 0.05), "service": (0.1, 0.3)} if stall else {}
        inner = CapacityServer(capacity=capacity, rng=rng, **timing)
        noisy = NoisyServer(inner=inner, loss=loss, rng=rng)
        server = _Stalling(noisy, stall, rng) if stall else noisy
        flow = AdaptiveLimit(ceiling=ceiling, latency=None)
        duration = 600.0
        result = await run_workload(server, flow, workers=workers, duration=duration, rng=rng)
        noise = getattr(flow.statistics(), "noise", float("nan"))
        return result.mean_limit(since=duration / 2), result.successes, noise, server.peak

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def main() -> int:
    cases = (
        [(1000, loss, 0.0, 32, 48) for loss in (0.0, 0.05, 0.15, 0.3)]
        + [(16, loss, 0.0, 32, 48) for loss in (0.0, 0.15, 0.3)]
        + [
            (1000, 0.12, 0.01, 64, 64),
            (1000, 0.2, 0.02, 64, 64),
        ]
    )
    print("| capacity | loss | stall | ceiling | seed | limit | successes | noise | peak |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for capacity, loss, stall, ceiling, workers in cases:
        for seed in (5, 6):
            limit, ok, noise, peak = case(
                capacity=capacity,
                loss=loss,
                stall=stall,
                ceiling=ceiling,
                workers=workers,
                seed=seed,
            )
            print(
                f"| {capacity} | {loss:.2f} | {stall:.2f} | {ceiling} | {seed} | {limit:.1f} "
                f"| {ok} | {noise:.2f} | {peak} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
