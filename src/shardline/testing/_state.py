"""The state one fake server shares with its connections.

`ServerState` is the record `FakeServer` builds and every connection reads (as
trio's memory channels share one ``MemoryChannelState``): settings, the fault
plan in force, the counters and the timer. Connections never see the
`FakeServer` object itself, so no module below the server imports it.
"""

from __future__ import annotations

import time

import attrs

from ._faults import FaultPlan
from ._load import LoadGate, LoadModel
from ._stats import Counters
from ._timing import Ticker, TimingModel


@attrs.define(eq=False, kw_only=True)
class ServerState:
    """Settings and live state of one fake server, shared with its connections."""

    timing: TimingModel
    seed: int
    default_max_tokens: int
    models: tuple[str, ...]
    faults: FaultPlan
    load: LoadModel = attrs.field(factory=LoadModel)
    no_usage: bool = False
    gate: LoadGate = attrs.field(
        default=attrs.Factory(lambda self: LoadGate(self.load), takes_self=True), init=False
    )
    counters: Counters = attrs.field(factory=Counters)
    ticker: Ticker = attrs.field(factory=Ticker)
    created: int = attrs.field(factory=lambda: int(time.time()))
