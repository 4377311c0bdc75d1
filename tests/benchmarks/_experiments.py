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


PATCHES: dict[str, Callable[[], None]] = {
    "coarse_deadline": coarse_deadline,
}


def apply(names: list[str]) -> None:
    for name in names:
        PATCHES[name]()
