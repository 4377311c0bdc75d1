"""Candidate hot-path optimisations, applied by monkeypatching (benchmarks only).

``_clients.py shardline`` applies the patches named in its ``opt`` parameter, so
``bench_throughput.py --opt`` measures each candidate against the unpatched
pipeline in the same run, and ``bench_overhead.py`` adds a row per candidate,
before anyone edits ``src/``. Each patch is the proposed change verbatim.

There are none at the moment: the earlier candidates (``coarse_deadline``, the
stall deadline moved only when it falls behind; ``url_cache``, a cached
``httpx.URL``; ``orjson_loads``, orjson for stream chunks) were measured here
and landed in ``src/`` (the performance page gives their numbers), so their
patches, which replaced functions that have changed since, were removed; so was
``wait_first`` (the lean transport waits for its socket before reading).
"""

from __future__ import annotations

from collections.abc import Callable

#: Candidate name -> the function that applies it.
PATCHES: dict[str, Callable[[], None]] = {}


def apply(names: list[str]) -> None:
    """Apply the named candidates (``KeyError`` for an unknown name)."""
    for name in names:
        PATCHES[name]()
