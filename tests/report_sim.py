"""A seeded, valid events stream of a run of several minutes, for the report-view tests.

Items are admitted in waves, wait on their shard's queue, take one to three
attempts (failures with a cause, a retry scheduled after each), and end ok with
token counts; shards cool down after 429s and the endpoint's limit moves. The
stream is in time order, as a pipeline emits it.
"""

from __future__ import annotations

import random

from shardline._events import (
    AttemptEnd,
    AttemptStart,
    Event,
    FirstToken,
    ItemAdmitted,
    ItemEnd,
    LimitChange,
    RetryScheduled,
    RunEnd,
    RunStart,
    ShardState,
)

START = 1_764_403_200.0  # a whole UTC minute
CAUSES = ("rate_limited", "server_error", "stall_timeout", "connection_lost")


def simulate(
    *, seed: int = 0, items: int = 400, minutes: float = 5.0, shards: int = 4
) -> list[Event]:
    """The events of a simulated run (``t`` in run seconds from ``START + 17``)."""
    rng = random.Random(seed)
    started_at = START + 17.0
    span = minutes * 60.0
    timed: list[tuple[float, int, Event]] = []
    seq = 0

    def add(event: Event) -> None:
        nonlocal seq
        timed.append((event.t, seq, event))
        seq += 1

    for n in range(items):
        item_id = f"i{n}"
        shard = n % shards
        t = rng.uniform(0.0, span * 0.9)
        add(ItemAdmitted(t=t, item_id=item_id, shard=shard))
        admitted = t
        t += rng.uniform(0.0, 3.0)
        attempts = rng.choice((1, 1, 1, 2, 3))
        for attempt in range(1, attempts + 1):
            add(AttemptStart(t=t, item_id=item_id, shard=shard, attempt=attempt))
            ttft = rng.uniform(0.02, 0.8)
            duration = ttft + rng.uniform(0.1, 4.0)
            if attempt < attempts:
                cause = rng.choice(CAUSES)
                t += duration
                add(
                    AttemptEnd(
                        t=t,
                        item_id=item_id,
                        shard=shard,
                        attempt=attempt,
                        outcome="failed",
                        cause=cause,
                        duration_s=duration,
                    )
                )
                delay = rng.uniform(0.05, 1.0)
                add(
                    RetryScheduled(
                        t=t, item_id=item_id, shard=shard, attempt=attempt + 1, delay_s=delay,
                        cause=cause,
                    )
                )  # fmt: skip
                if cause == "rate_limited":
                    add(ShardState(t=t, shard=shard, state="cooling", cooldown_s=delay))
                    add(ShardState(t=t + delay, shard=shard, state="resumed"))
                t += delay
                continue
            prompt, completion = rng.randint(5, 200), rng.randint(1, 400)
            add(FirstToken(t=t + ttft, item_id=item_id, shard=shard, attempt=attempt, ttft_s=ttft))
            t += duration
            add(
                AttemptEnd(
                    t=t,
                    item_id=item_id,
                    shard=shard,
                    attempt=attempt,
                    outcome="ok",
                    prompt_tokens=prompt,
                    completion_tokens=completion,
                    ttft_s=ttft,
                    duration_s=duration,
                )
            )
            # Half the items carry their usage on item_end, half only on the attempt.
            on_end = n % 2 == 0
            add(
                ItemEnd(
                    t=t,
                    item_id=item_id,
                    shard=shard,
                    status="ok",
                    attempts=attempts,
                    latency_s=t - admitted,
                    prompt_tokens=prompt if on_end else None,
                    completion_tokens=completion if on_end else None,
                    ttft_s=ttft if on_end else None,
                )
            )
    limit = 8
    for k in range(40):
        new = max(1, min(32, limit + rng.choice((-3, 1, 1, 2))))
        if new != limit:
            add(LimitChange(t=k * span / 40, endpoint=0, old=limit, new=new, reason="measure"))
            limit = new
    timed.sort(key=lambda entry: (entry[0], entry[1]))
    end = timed[-1][0] + 0.5
    run_start = RunStart(
        t=0.0,
        run_id=f"sim-{seed}",
        started_at=started_at,
        shard_count=shards,
        config={"concurrency": 16},
    )
    return [run_start, *(event for _, _, event in timed), RunEnd(t=end, reason="completed")]
