"""The fake server's clock: how fast the fake model "generates", and one timer for all streams.

It owns `TimingModel` (the public timing record) and `Ticker`, the single
timer task that wakes every paced stream of a server. Everything reads
``trio.current_time()``, so virtual time (``MockClock``) drives it.
"""

from __future__ import annotations

import heapq
import itertools
import math
from typing import Any

import attrs
import trio


def _check_delay(name: str) -> Any:
    def check(_inst: object, _attr: object, value: float) -> None:
        if not (value >= 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")

    return check


def _check_tokens_per_event(_inst: object, _attr: object, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"tokens_per_event must be an integer >= 1, got {value!r}")


@attrs.frozen(kw_only=True)
class TimingModel:
    """How fast the fake model "generates".

    A streamed response sends its headers and the role-only first chunk at once,
    the first content event ``ttft`` seconds after the request was read, and
    each later event ``itl * tokens_in_that_event`` seconds after the previous
    one, so tokens per second do not change with ``tokens_per_event``. A
    non-streamed response is sent whole when the last token is "generated".
    All times are trio time: under ``MockClock(autojump_threshold=0)`` a
    10-second TTFT costs no real time.

    Example::

        TimingModel(ttft=0.2, itl=0.02, tokens_per_event=4)   # 50 tok/s, 12.5 events/s

    Args:
        ttft: Seconds to the first content event.
        itl: Inter-token latency: seconds per token after the first event.
        tokens_per_event: Tokens carried by one SSE content event.
    """

    ttft: float = attrs.field(default=0.0, validator=_check_delay("ttft"))
    itl: float = attrs.field(default=0.0, validator=_check_delay("itl"))
    tokens_per_event: int = attrs.field(default=1, validator=_check_tokens_per_event)


class Ticker:
    """One timer task for every paced stream of a server.

    ``trio.sleep_until`` builds a cancel scope and registers a deadline per call
    (about 18 us of CPU each); a paced stream sleeps once per event, so with
    hundreds of streams that dominates. Here streams park on a heap and a single
    task wakes the due ones in one pass (about 4 us per sleep). Cancellation
    works as for any trio sleep: a cancelled sleeper is removed (lazily) and
    raises ``trio.Cancelled``.
    """

    __slots__ = ("_heap", "_next_due", "_seq", "_wake")

    def __init__(self) -> None:
        self._heap: list[list[Any]] = []
        self._seq = itertools.count()
        self._wake = trio.Event()
        self._next_due = math.inf

    async def sleep_until(self, due: float) -> None:
        entry: list[Any] = [due, next(self._seq), trio.lowlevel.current_task()]
        heapq.heappush(self._heap, entry)
        if due < self._next_due:
            self._next_due = due
            self._wake.set()

        def abort(_: Any) -> trio.lowlevel.Abort:
            entry[2] = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    async def run(self) -> None:
        heap = self._heap
        while True:
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                task = heapq.heappop(heap)[2]
                if task is not None:
                    trio.lowlevel.reschedule(task)
            self._next_due = heap[0][0] if heap else math.inf
            self._wake = trio.Event()
            with trio.move_on_at(self._next_due):
                await self._wake.wait()
