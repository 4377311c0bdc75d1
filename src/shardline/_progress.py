"""Progress display for ``shardline run`` and ``shardline demo``.

A run shows a :class:`ProgressSnapshot` every so often. Where it goes depends
on where stderr goes:

* a terminal: a live panel drawn with rich (done of total, ok and failed,
  items per second and ETA, current and peak TPM, retries by cause, and one row
  per shard with its in-flight, queued and cooling state), redrawn in place;
* anything else (a log file, CI): one plain line every few seconds, so a log
  shows the run moving without a screenful of control codes;
* ``--no-progress``: nothing until the report.

The snapshot is a plain value built by the caller from
:meth:`Pipeline.statistics` and the live metrics sink, so the renderers are
pure functions that tests can call directly.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from typing import IO, TYPE_CHECKING, Protocol

import attrs

if TYPE_CHECKING:  # rich is imported when a terminal shows the panel, not before
    from rich.console import Console, RenderableType
    from rich.text import Text

from ._state import ShardStatistics

__all__ = [
    "NullProgress",
    "PlainProgress",
    "ProgressDisplay",
    "ProgressSnapshot",
    "RichProgress",
    "format_duration",
    "open_progress",
    "plain_line",
    "rich_panel",
]

#: Seconds between two plain progress lines when stderr is not a terminal.
PLAIN_INTERVAL = 5.0
#: Seconds between two redraws of the live panel on a terminal.
LIVE_INTERVAL = 0.5
#: Shard rows shown in the live panel; more shards are summed in one last row.
MAX_SHARD_ROWS = 16


@attrs.frozen(kw_only=True)
class ProgressSnapshot:
    """What the progress display shows at one moment.

    Attributes:
        elapsed_s: Seconds since this run started.
        total: Items in the input (non-blank lines), or ``None`` if unknown.
        skipped: Items skipped because a resumed output already has them ok.
        done: Items this run finished (ok + failed + cancelled).
        ok, failed, cancelled: How they finished.
        in_flight, queued: HTTP attempts under way / items waiting in queues.
        limit: The endpoint's live in-flight limit (adaptive flow control), or
            ``None`` when it is fixed.
        ceiling: What the limit may grow to: the shards' capacities summed.
        tpm_now: Tokens of successful items in the current UTC minute so far.
        tpm_previous: Tokens in the previous UTC minute (a full minute's TPM).
        tpm_peak: The best UTC minute so far (the report's peak TPM).
        retries: Retries scheduled, by cause.
        shards: One row per shard.
        draining: True after Ctrl-C: no new items are admitted.
    """

    elapsed_s: float
    total: int | None
    skipped: int = 0
    done: int = 0
    ok: int = 0
    failed: int = 0
    cancelled: int = 0
    in_flight: int = 0
    queued: int = 0
    limit: int | None = None
    ceiling: int | None = None
    tpm_now: int = 0
    tpm_previous: int = 0
    tpm_peak: int = 0
    retries: Mapping[str, int] = attrs.field(factory=dict)
    shards: tuple[ShardStatistics, ...] = ()
    draining: bool = False

    @property
    def remaining(self) -> int | None:
        """Items still to finish in this run, when the total is known."""
        if self.total is None:
            return None
        return max(0, self.total - self.skipped - self.done)

    @property
    def rate(self) -> float:
        """Items finished per second in this run."""
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        """Seconds to go at the current rate, or ``None`` when it cannot be told yet."""
        remaining = self.remaining
        if remaining is None or self.rate <= 0:
            return None
        return remaining / self.rate


def format_duration(seconds: float | None) -> str:
    """``75.2`` → ``"1m15s"``; ``None`` or not finite → ``"?"``."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


def _done_of_total(snap: ProgressSnapshot) -> str:
    finished = snap.skipped + snap.done
    if snap.total is None:
        return f"{finished} done"
    pct = 100.0 * finished / snap.total if snap.total else 100.0
    return f"{finished}/{snap.total} done ({pct:.0f}%)"


def _retries_text(retries: Mapping[str, int]) -> str:
    if not retries:
        return "none"
    ordered = sorted(retries.items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{cause} {count}" for cause, count in ordered)


def _eta_text(snap: ProgressSnapshot) -> str:
    return "-" if snap.draining else format_duration(snap.eta_s)


def _limit_text(snap: ProgressSnapshot) -> str:
    """``"limit 24 of 128"``; ``"limit fixed"`` without adaptive flow control."""
    if snap.limit is None:
        return "limit fixed"
    if snap.ceiling is None:
        return f"limit {snap.limit}"
    return f"limit {snap.limit} of {snap.ceiling}"


def plain_line(snap: ProgressSnapshot) -> str:
    """One line for logs: everything the live panel shows, shards summed."""
    parts = [
        _done_of_total(snap),
        f"ok {snap.ok}",
        f"failed {snap.failed}",
    ]
    if snap.cancelled:
        parts.append(f"cancelled {snap.cancelled}")
    parts += [
        f"in flight {snap.in_flight}",
        _limit_text(snap),
        f"queued {snap.queued}",
        f"TPM {snap.tpm_now:,} this minute, {snap.tpm_previous:,} last, peak {snap.tpm_peak:,}",
        f"retries {sum(snap.retries.values())}",
        f"{snap.rate:.1f}/s",
        f"ETA {_eta_text(snap)}",
    ]
    if snap.skipped:
        parts.append(f"{snap.skipped} skipped (resume)")
    line = "shardline: " + ", ".join(parts)
    if snap.draining:
        line += " [draining after Ctrl-C]"
    return line


def rich_panel(snap: ProgressSnapshot) -> RenderableType:
    """The live panel for a terminal."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    head = Text()
    head.append(_done_of_total(snap), style="bold")
    head.append("   ok ")
    head.append(str(snap.ok), style="green")
    head.append("   failed ")
    head.append(str(snap.failed), style="red" if snap.failed else "")
    if snap.cancelled:
        head.append(f"   cancelled {snap.cancelled}", style="yellow")
    head.append(
        f"   {snap.rate:.1f} items/s   elapsed {format_duration(snap.elapsed_s)}"
        f"   ETA {_eta_text(snap)}"
    )
    if snap.skipped:
        head.append(f"   ({snap.skipped} already done, skipped)", style="dim")
    tokens = Text(
        f"TPM this minute {snap.tpm_now:,}   last minute {snap.tpm_previous:,}   "
        f"peak {snap.tpm_peak:,}   "
        f"in flight {snap.in_flight} ({_limit_text(snap)})   queued {snap.queued}"
    )
    retries = Text("retries: " + _retries_text(snap.retries))
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold dim")
    for name in ("shard", "in flight", "queued", "done", "retries", "state"):
        table.add_column(name, justify="right" if name != "state" else "left")
    rows = list(snap.shards)
    hidden: list[ShardStatistics] = []
    if len(rows) > MAX_SHARD_ROWS:
        # Show the shards worth looking at: cooling first, then the most loaded.
        rows.sort(key=lambda r: (not r.cooling, -(r.in_flight + r.queued), r.shard))
        rows, hidden = (
            sorted(rows[: MAX_SHARD_ROWS - 1], key=lambda r: r.shard),
            rows[MAX_SHARD_ROWS - 1 :],
        )
    for row in rows:
        table.add_row(
            str(row.shard),
            f"{row.in_flight}/{row.capacity}",
            str(row.queued),
            str(row.done),
            str(row.retries),
            _state_text(row),
        )
    if hidden:
        table.add_row(
            f"+{len(hidden)}",
            f"{sum(r.in_flight for r in hidden)}/{sum(r.capacity for r in hidden)}",
            str(sum(r.queued for r in hidden)),
            str(sum(r.done for r in hidden)),
            str(sum(r.retries for r in hidden)),
            Text(f"{sum(r.cooling for r in hidden)} cooling", style="dim"),
        )
    parts: list[RenderableType] = [head, tokens, retries]
    if snap.shards:
        parts.append(table)
    if snap.draining:
        parts.append(
            Text(
                "Ctrl-C: draining (no new items; in-flight may finish). "
                "Press Ctrl-C again to stop now.",
                style="yellow",
            )
        )
    return Group(*parts)


class ProgressDisplay(Protocol):
    """Shows snapshots; ``interval`` says how often the caller should call :meth:`update`."""

    interval: float

    def update(self, snap: ProgressSnapshot) -> None: ...

    def message(self, text: str) -> None:
        """Show one line of news (Ctrl-C received …) without garbling the display."""

    def close(self, snap: ProgressSnapshot | None = None) -> None: ...


class NullProgress:
    """``--no-progress``: shows no progress, only messages (on ``stream``, stderr by default)."""

    interval = 1.0

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream

    def update(self, snap: ProgressSnapshot) -> None:
        pass

    def message(self, text: str) -> None:
        print(text, file=self.stream if self.stream is not None else sys.stderr, flush=True)

    def close(self, snap: ProgressSnapshot | None = None) -> None:
        pass


class PlainProgress:
    """One plain line per ``interval`` seconds (when stderr is not a terminal)."""

    def __init__(self, stream: IO[str], *, interval: float = PLAIN_INTERVAL) -> None:
        self.stream = stream
        self.interval = interval

    def update(self, snap: ProgressSnapshot) -> None:
        print(plain_line(snap), file=self.stream, flush=True)

    def message(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def close(self, snap: ProgressSnapshot | None = None) -> None:
        if snap is not None:
            self.update(snap)


class RichProgress:
    """A live panel redrawn in place on a terminal.

    Rich's own refresh thread is not used (``auto_refresh=False``): the run's
    trio task calls :meth:`update`, so nothing runs outside the nursery.
    """

    def __init__(self, console: Console, *, interval: float = LIVE_INTERVAL) -> None:
        from rich.live import Live

        self.interval = interval
        self._live = Live(console=console, auto_refresh=False, transient=False)
        self._live.start()

    def update(self, snap: ProgressSnapshot) -> None:
        self._live.update(rich_panel(snap), refresh=True)

    def message(self, text: str) -> None:
        self._live.console.print(text, style="yellow", markup=False, highlight=False)

    def close(self, snap: ProgressSnapshot | None = None) -> None:
        if snap is not None:
            self._live.update(rich_panel(snap), refresh=True)
        self._live.stop()


def open_progress(*, enabled: bool, stream: IO[str] | None = None) -> ProgressDisplay:
    """The display that suits ``stream`` (stderr by default): rich, plain, or none."""
    stream = sys.stderr if stream is None else stream
    if not enabled:
        return NullProgress(stream)
    if stream.isatty():
        from rich.console import Console

        return RichProgress(Console(file=stream))
    return PlainProgress(stream)


def _state_text(row: ShardStatistics) -> Text:
    """A shard's state: its endpoint's circuit when not closed, else cooling or ok."""
    from rich.text import Text

    if row.circuit != "closed":
        where = f"endpoint {row.endpoint} {row.circuit.replace('_', '-')}"
        return Text(where, style="red" if row.circuit == "open" else "yellow")
    return Text("cooling", style="yellow") if row.cooling else Text("ok", style="dim")
