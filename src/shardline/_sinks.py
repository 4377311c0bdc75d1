"""Event sinks: where a run's events go.

A sink is anything with a synchronous ``emit(event)`` and ``close()``. The
pipeline calls ``emit`` from its trio tasks once per event, so it must be cheap
and must not block on anything but local disk: no network, no locks held
across awaits (there are no awaits). Combine sinks with :class:`TeeSink`::

    jsonl = JsonlEventSink("events.jsonl")
    live = LiveMetrics()
    sink = TeeSink(jsonl, live)
    async with open_pipeline(config, sink=sink) as pipeline:
        ...
    sink.close()
    print(jsonl.hexdigest())  # == sha256sum events.jsonl

Sinks here are not thread-safe and are not meant to be: trio runs the
pipeline's tasks in one thread.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from os import PathLike
from typing import IO, Protocol, runtime_checkable

from ._events import Event, RunEnd, encode_event

__all__ = [
    "DEFAULT_FSYNC_INTERVAL",
    "EventSink",
    "JsonlEventSink",
    "MemoryEventSink",
    "TeeSink",
]

#: Seconds of run time (the events' ``t``) between two fsyncs of a :class:`JsonlEventSink`.
DEFAULT_FSYNC_INTERVAL = 1.0


@runtime_checkable
class EventSink(Protocol):
    """What the pipeline writes events to: implement this to plug in your own.

    ``emit`` is called synchronously from trio tasks, once per event, in the
    order the events happened. Keep it cheap: append to a buffer, bump a
    counter, write a line to a local file. Anything slow (a network exporter)
    belongs behind a bounded buffer that a task of your own drains.
    ``close`` is called once, after the last event; it may flush and sync.
    """

    def emit(self, event: Event) -> None:
        """Record one event."""

    def close(self) -> None:
        """Flush and release resources; no ``emit`` follows."""


class MemoryEventSink:
    """Keeps every event in a list, in order: for tests and small runs.

    Memory grows with the run (a few hundred bytes per event); use a
    :class:`JsonlEventSink` for long runs.

    Example::

        sink = MemoryEventSink()
        async with open_pipeline(config, sink=sink) as pipeline:
            await pipeline.complete(request)
        report = compute_report(sink.events, events_sha256=None)
    """

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.closed = False

    def emit(self, event: Event) -> None:
        """Append ``event`` to :attr:`events`."""
        if self.closed:
            raise ValueError("emit() on a closed MemoryEventSink")
        self.events.append(event)

    def close(self) -> None:
        """Mark the sink closed; a later ``emit`` raises."""
        self.closed = True

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<MemoryEventSink {len(self.events)} events, {state}>"


class JsonlEventSink:
    """Writes one JSON line per event and hashes exactly the bytes it wrote.

    Each line is written with one ``write`` and flushed at once, so a crash
    loses at most the line being written and another process can ``tail -f``
    the file. The file is also ``fsync``-ed when ``fsync_interval`` seconds of
    run time (the events' ``t``, so it follows trio's clock) have passed since
    the last sync, on ``run_end``, and on :meth:`close`.

    :meth:`hexdigest` is the sha256 of the whole file: with ``append=True``
    the existing content is hashed first, so after a resumed run the digest
    still equals ``sha256sum`` of the file. A torn last line left by a crash
    (content after the final ``\\n``) is cut off before appending; its length
    is in :attr:`truncated_bytes`.

    This is blocking file I/O done inline in trio tasks, like logging: cheap on
    a local disk, not meant for network filesystems.

    Args:
        path: The events file.
        append: Append to an existing file (resume) instead of replacing it.
        fsync_interval: Seconds of run time between fsyncs; ``None`` syncs
            only on ``run_end`` and close.

    Raises:
        ValueError: if ``fsync_interval`` is negative.
        OSError: if the file cannot be opened.
    """

    def __init__(
        self,
        path: str | PathLike[str],
        *,
        append: bool = False,
        fsync_interval: float | None = DEFAULT_FSYNC_INTERVAL,
    ) -> None:
        if fsync_interval is not None and not fsync_interval >= 0:
            raise ValueError(f"fsync_interval must be >= 0 or None, got {fsync_interval!r}")
        self.path = path
        self.fsync_interval = fsync_interval
        self.truncated_bytes = 0
        self._hash = hashlib.sha256()
        self._lines = 0
        self._last_sync_t: float | None = None
        self._file: IO[bytes] | None
        if append:
            self._file = self._open_append(path)
        else:
            self._file = open(path, "wb")  # noqa: SIM115 - closed by close()

    def _open_append(self, path: str | PathLike[str]) -> IO[bytes]:
        f = open(path, "a+b")  # noqa: SIM115 - closed by close()
        try:
            f.seek(0)
            good = 0  # bytes up to and including the last newline
            for raw in f:
                if raw.endswith(b"\n"):
                    self._hash.update(raw)
                    self._lines += 1
                    good += len(raw)
                else:
                    self.truncated_bytes = len(raw)
            if self.truncated_bytes:
                f.truncate(good)
                f.flush()
                os.fsync(f.fileno())
            f.seek(0, os.SEEK_END)
        except BaseException:
            f.close()
            raise
        return f

    @property
    def lines(self) -> int:
        """Lines in the file (including those there before an append)."""
        return self._lines

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._file is None

    def emit(self, event: Event) -> None:
        """Write, flush and hash one line.

        Raises:
            ValueError: if the sink is closed, or the event cannot be encoded.
            OSError: if writing fails (disk full …).
        """
        f = self._file
        if f is None:
            raise ValueError("emit() on a closed JsonlEventSink")
        data = encode_event(event)
        f.write(data)
        f.flush()
        self._hash.update(data)
        self._lines += 1
        t = event.t
        if isinstance(event, RunEnd):
            self._sync(t)
        elif self.fsync_interval is not None:
            if self._last_sync_t is None:
                self._last_sync_t = t
            elif t - self._last_sync_t >= self.fsync_interval:
                self._sync(t)

    def _sync(self, t: float | None) -> None:
        if self._file is not None:
            os.fsync(self._file.fileno())
        self._last_sync_t = t

    def hexdigest(self) -> str:
        """sha256 (hex) of every byte in the file so far: equals ``sha256sum`` of the file."""
        return self._hash.hexdigest()

    @property
    def sha256(self) -> str:
        """Same as :meth:`hexdigest`."""
        return self._hash.hexdigest()

    def close(self) -> None:
        """Flush, fsync and close the file. Idempotent."""
        f = self._file
        if f is None:
            return
        try:
            f.flush()
            os.fsync(f.fileno())
        finally:
            self._file = None
            f.close()

    def __enter__(self) -> JsonlEventSink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._file is None else "open"
        return f"<JsonlEventSink {str(self.path)!r}: {self._lines} lines, {state}>"


class TeeSink:
    """Sends every event to several sinks, in the order given.

    Example::

        sink = TeeSink(JsonlEventSink("events.jsonl"), LiveMetrics())

    If one sink's ``emit`` raises, the exception propagates and the later sinks
    do not see that event: a failing events file should stop the run, not be
    papered over. :meth:`close` closes every sink even if one fails, then
    re-raises the first error.
    """

    def __init__(self, *sinks: EventSink) -> None:
        self.sinks: tuple[EventSink, ...] = sinks

    def emit(self, event: Event) -> None:
        """Pass ``event`` to every sink, in order."""
        for sink in self.sinks:
            sink.emit(event)

    def close(self) -> None:
        """Close every sink, even if one fails; then raise the first failure."""
        first: BaseException | None = None
        for sink in self.sinks:
            try:
                sink.close()
            except BaseException as exc:  # close the rest, then re-raise
                if first is None:
                    first = exc
        if first is not None:
            raise first

    def __repr__(self) -> str:
        return f"<TeeSink of {', '.join(type(s).__name__ for s in self.sinks)}>"
