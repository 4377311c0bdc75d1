"""Candidate hot-path optimisations, applied by monkeypatching (benchmarks only).

``_clients.py shardline`` applies the patches named in its ``opt`` parameter, so
``bench_throughput.py --opt`` measures each candidate against the unpatched
pipeline in the same run, before anyone edits ``src/``. Each patch here is the
proposed change verbatim; the notes (``/work/notes/benchmarks.md``) give the
diff and the numbers.

* ``coarse_deadline`` -- :func:`shardline._attempt._read_stream` moves the
  progress scope's deadline on every read that carried content
  (``progress.deadline = now + stall``): each move is a heap push in trio's
  deadline table, about 3-6 us; a paced stream has one read per event, so
  about 150 per response. The patch moves it only when it has fallen
  behind ``now + stall``, and then to ``now + stall + slack`` with
  ``slack = min(1 s, stall / 20)``: the stall timeout fires at most ``slack``
  late (never early), and the deadline moves about once per ``slack`` seconds
  instead of once per event.
* ``url_cache`` -- a cached ``httpx.URL`` and no empty ``params`` per request.
* ``orjson_loads`` -- orjson for the stream's JSON (run under ``uv run --with orjson``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio


def coarse_deadline() -> None:
    from shardline import _attempt as A

    def _slack(stall: float | None) -> float:
        return 0.0 if stall is None else min(1.0, stall / 20)

    async def _read_stream(
        response: Any,
        request: Any,
        deadlines: Any,
        on_first_token: Callable[[float], None] | None,
        state: Any,
        progress: trio.CancelScope,
    ) -> Any:
        decoder = A.SSEDecoder(max_line_bytes=A.DEFAULT_MAX_LINE_BYTES)
        acc = A._TrackingAccumulator()
        state.acc = acc
        stall = deadlines.stall
        slack = _slack(stall)
        tail_deadline: float | None = None
        current_time = trio.current_time

        def handle(chunk: bytes) -> None:
            nonlocal tail_deadline
            progressed = False
            for event in decoder.feed(chunk):
                if acc.feed(event):
                    progressed = True
            acc.events_seen = decoder.events
            acc.keepalives = decoder.comments
            if progressed:
                now = current_time()
                acc.last_progress_at = now
                if state.first_token_at is None:
                    state.first_token_at = now
                    if on_first_token is not None:
                        on_first_token(now - state.start)
                    # The TTFT deadline gives way to the stall deadline.
                    progress.deadline = A.math.inf if stall is None else now + stall + slack
                elif stall is not None and progress.deadline < now + stall:
                    # Moved only when it fell behind: at most once per `slack` seconds.
                    progress.deadline = now + stall + slack
            if acc.complete:
                if tail_deadline is None:
                    tail_deadline = current_time() + A.TAIL_GRACE
                if progress.deadline > tail_deadline:
                    progress.deadline = tail_deadline

        await A._consume(response, handle)
        pending = decoder.pending_bytes
        for event in decoder.end():
            acc.feed(event)
        if not acc.complete:
            raise A.Truncated(
                "stream ended without a finish reason or [DONE]"
                f" after {acc.progress_events} content events"
                + (f" (an unfinished {pending}-byte line was dropped)" if pending else ""),
                status_code=response.status_code,
                partial=state.partial,
            )
        return A._result(state, acc, request, status_code=response.status_code)

    A._read_stream = _read_stream  # type: ignore[assignment]


def url_cache() -> None:
    """``_exchange`` builds the URL string per request and passes ``params={}``.

    httpx parses a string URL on every request, and merging even an empty params
    dict parses it again (``build_request``: 60 us -> 30 us with a cached
    ``httpx.URL`` and no params). The patch makes ``Endpoint.url_for`` return a
    cached ``httpx.URL`` and ``Endpoint.params`` return ``None`` when empty.
    """
    import httpx

    from shardline._config import Endpoint

    original_url_for = Endpoint.url_for
    original_params = Endpoint.params

    # Endpoint holds a dict (headers), so it is not hashable: key on identity and
    # keep the endpoint alive in the value.
    cache: dict[tuple[int, str], tuple[Any, httpx.URL]] = {}

    def url_for(self: Any, path: str) -> Any:
        hit = cache.get((id(self), path))
        if hit is None:
            hit = cache[(id(self), path)] = (self, httpx.URL(original_url_for(self, path)))
        return hit[1]

    def params(self: Any) -> Any:
        return original_params(self) or None

    Endpoint.url_for = url_for  # type: ignore[method-assign]
    Endpoint.params = params  # type: ignore[method-assign]


def orjson_loads() -> None:
    """``StreamAccumulator(loads=orjson.loads)`` in the attempt (needs ``--with orjson``)."""
    try:
        import orjson
    except ImportError:
        return  # not installed: the patch is a no-op (the row then equals shardline)
    from shardline import _attempt as A

    init = A._TrackingAccumulator.__init__

    def __init__(self: Any) -> None:
        init(self)
        self._loads = orjson.loads

    A._TrackingAccumulator.__init__ = __init__  # type: ignore[method-assign]


PATCHES: dict[str, Callable[[], None]] = {
    "coarse_deadline": coarse_deadline,
    "url_cache": url_cache,
    "orjson_loads": orjson_loads,
}


def apply(names: list[str]) -> None:
    for name in names:
        PATCHES[name]()
