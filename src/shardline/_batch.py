"""The batch runner: a JSONL input through a pipeline into an output file and an events file.

:func:`run_batch` is what ``shardline run`` and ``shardline demo`` call (the
CLI only turns its options into :class:`~shardline._batch_io.BatchSettings`),
and what a program that runs batch files itself can call. It owns the run
between the file checks and the report: feeding the input lazily into the
pipeline (invalid lines are written at once as ``invalid_input``), consuming
outcomes into the output, keeping the events file from running ahead of the
output, fsyncing, the progress display, Ctrl-C and SIGTERM, and stopping a
run whose endpoint cannot work (:mod:`shardline._endpoint_check`).

Ctrl-C once: stop admitting new items and drain (in-flight requests may finish
within the config's ``drain_grace``; queued ones are not sent). Ctrl-C again:
cancel the in-flight requests now. Items that did not finish are not written
to the output, so a resumed run sends them. A run stopped because every first
attempt failed the same non-transient way (see
:class:`~shardline._endpoint_check.FirstAttemptsWatch`) ends the same way: the
lines already written stay, unfinished items are not written, exit status 2.

Crash safety: each output line is flushed as it is written and fsynced every
second (in a worker thread) and at exit; an item's ``item_end`` event is
written only after its output line, so after ``kill -9`` the events never
claim more than the output holds. A resume compacts the output to its ok
lines (atomically, see :func:`shardline._jsonl_output.prepare_resume`), skips those
ids and appends the rest: the final output holds every input id once, and only
the requests that were in flight at the kill are sent again.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import IO

import attrs
import httpx
import trio

from ._batch_io import (
    OUTPUT_FSYNC_INTERVAL,
    BatchSettings,
    BatchSummary,
    OutputFirstSink,
    file_error,
    finish_report,
    open_output,
    print_summary,
    report_builder,
)
from ._config import PipelineConfig
from ._endpoint_check import DeadEndpoint, FirstAttemptsWatch
from ._exit import ExitStatus, print_error
from ._jsonl import InputEntry, read_input
from ._jsonl_output import OutputWriter, outcome_to_json
from ._live import LiveMetrics
from ._models import Outcome, Status
from ._pipeline import Pipeline, open_pipeline
from ._progress import ProgressDisplay, ProgressSnapshot, open_progress
from ._sinks import EventSink, JsonlEventSink, TeeSink

__all__ = ["OUTCOME_BUFFER", "run_batch"]

#: Outcomes buffered between the pipeline and the output writer. Small, so
#: that after ``kill -9`` little beyond the requests in flight is sent again.
OUTCOME_BUFFER = 8
#: Seconds between checks for an idle pipeline whose outcome stream has not ended.
LOST_CHECK_INTERVAL = 1.0


@attrs.define(eq=False)
class _Stop:
    """Ending a run early: Ctrl-C (once drains, twice cancels) or a dead endpoint (cancels).

    Every way out cancels the feeding (no new items) and the wait for the
    last outcome; cancelling the pipeline ends the in-flight items as
    ``cancelled``, which are not written, so a resumed run sends them.
    """

    display: ProgressDisplay
    feed_scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    wait_scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    pipeline: Pipeline | None = None
    signals: int = 0
    dead: DeadEndpoint | None = None

    @property
    def stopping(self) -> bool:
        return self.signals > 0 or self.dead is not None

    def fire(self) -> None:
        """A SIGINT or SIGTERM arrived."""
        self.signals += 1
        if self.signals == 1:
            self.display.message(
                "shardline: interrupted: draining (no new items; in-flight requests may "
                "finish). Press Ctrl-C again to stop now."
            )
            self._stop(cancel=False)
        else:
            self.display.message("shardline: interrupted again: cancelling in-flight requests")
            self._stop(cancel=True)

    def endpoint_dead(self, verdict: DeadEndpoint) -> None:
        """The first attempts say the endpoint cannot work: stop now (no drain)."""
        if self.dead is None:
            self.dead = verdict
            self._stop(cancel=True)

    def _stop(self, *, cancel: bool) -> None:
        self.feed_scope.cancel()
        self.wait_scope.cancel()
        if cancel and self.pipeline is not None:
            self.pipeline.cancel()

    async def watch(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if threading.current_thread() is not threading.main_thread():
            # Signals reach only the main thread; run embedded elsewhere, we have none.
            task_status.started()
            return
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async for _ in signals:
                self.fire()


async def _feed(
    pipeline: Pipeline,
    entries: Iterator[InputEntry],
    send: trio.MemorySendChannel[Outcome],
    writer: OutputWriter,
    gate: OutputFirstSink,
    summary: BatchSummary,
) -> None:
    async with send:
        passed = 0
        for entry in entries:
            if entry.skipped:
                summary.skipped += 1
                passed += 1
                if passed % 256 == 0:
                    await trio.lowlevel.checkpoint()
                continue
            if entry.error is not None or entry.request is None:
                assert entry.error is not None
                outcome = pipeline.reject(entry.item_id, entry.error)
                summary.record(outcome)
                summary.invalid += 1
                writer.write(outcome_to_json(outcome, line=entry.line))
                gate.written(entry.item_id)
                passed += 1
                if passed % 64 == 0:
                    await trio.lowlevel.checkpoint()
                continue
            await pipeline.submit(entry.request, send.clone())
            summary.submitted += 1


async def _consume(
    recv: trio.MemoryReceiveChannel[Outcome],
    writer: OutputWriter,
    gate: OutputFirstSink,
    summary: BatchSummary,
    done: trio.Event,
) -> None:
    async with recv:
        async for outcome in recv:
            summary.record(outcome)
            if outcome.status is Status.CANCELLED:
                continue  # not written: --resume runs it again
            writer.write(outcome_to_json(outcome))
            gate.written(outcome.id)
    done.set()


def _snapshot(
    pipeline: Pipeline,
    live: LiveMetrics,
    summary: BatchSummary,
    started: float,
    *,
    interrupted: bool,
) -> ProgressSnapshot:
    stats = pipeline.statistics()
    snap = live.snapshot(now_utc=time.time())
    return ProgressSnapshot(
        elapsed_s=trio.current_time() - started,
        total=summary.total,
        skipped=summary.skipped,
        done=stats.done,
        ok=stats.ok,
        failed=stats.failed,
        cancelled=stats.cancelled,
        in_flight=stats.in_flight,
        queued=stats.queued,
        limit=stats.limit,
        ceiling=sum(s.capacity for s in stats.shards),
        tpm_now=snap.tpm_total_current,
        tpm_previous=snap.tpm_total_previous,
        tpm_peak=snap.peak_tpm_total,
        retries=snap.retries_by_cause,
        shards=stats.shards,
        draining=interrupted,
    )


async def _show_progress(
    display: ProgressDisplay, snapshot: Callable[[], ProgressSnapshot]
) -> None:
    while True:
        await trio.sleep(display.interval)
        display.update(snapshot())


async def _notice_lost(pipeline: Pipeline, wait_scope: trio.CancelScope) -> None:
    """Stop waiting for the end of the outcome stream once the pipeline holds no item.

    Normally the stream ends with the last outcome and the run never gets
    here. If a defect loses an outcome, the item's channel clone stays open and
    the stream never ends: every ``LOST_CHECK_INTERVAL`` seconds this looks for
    an idle pipeline (nothing queued, no item holding a slot) and then ends the
    wait, so the run finishes and reports the loss instead of hanging.
    """
    while True:
        await trio.sleep(LOST_CHECK_INTERVAL)
        stats = pipeline.statistics()
        if stats.queued == 0 and sum(s.busy for s in stats.shards) == 0:
            wait_scope.cancel()
            return


async def _sync_output(writer: OutputWriter) -> None:
    """Fsync the output every OUTPUT_FSYNC_INTERVAL seconds, in a worker thread."""
    while True:
        await trio.sleep(OUTPUT_FSYNC_INTERVAL)
        if writer.dirty:
            await trio.to_thread.run_sync(writer.fsync_written)


@attrs.frozen(kw_only=True)
class _Sinks:
    """The run's sink chain: watch → output-first gate → events file, live metrics, report."""

    watch: FirstAttemptsWatch | None
    gate: OutputFirstSink
    live: LiveMetrics

    @property
    def head(self) -> EventSink:
        return self.watch if self.watch is not None else self.gate


async def _run_pipeline(
    settings: BatchSettings,
    config: PipelineConfig,
    *,
    summary: BatchSummary,
    writer: OutputWriter,
    sinks: _Sinks,
    stop: _Stop,
    transport: Callable[[int], httpx.AsyncBaseTransport] | None,
) -> None:
    skip = summary.resume.done if summary.resume is not None else None
    send, recv = trio.open_memory_channel[Outcome](OUTCOME_BUFFER)
    all_done = trio.Event()
    started = trio.current_time()
    display = stop.display
    with contextlib.closing(read_input(settings.input, skip=skip, yield_skipped=True)) as entries:
        final: ProgressSnapshot | None = None
        try:
            async with trio.open_nursery() as outer:
                await outer.start(stop.watch)
                outer.start_soon(_consume, recv, writer, sinks.gate, summary, all_done)
                outer.start_soon(_sync_output, writer)
                try:
                    async with open_pipeline(
                        config, sink=sinks.head, transport=transport
                    ) as pipeline:
                        stop.pipeline = pipeline

                        def snapshot() -> ProgressSnapshot:
                            return _snapshot(
                                pipeline, sinks.live, summary, started, interrupted=stop.stopping
                            )

                        outer.start_soon(_show_progress, display, snapshot)
                        with stop.feed_scope:
                            await _feed(pipeline, entries, send, writer, sinks.gate, summary)
                            if sinks.watch is not None:
                                sinks.watch.input_done()
                            outer.start_soon(_notice_lost, pipeline, stop.wait_scope)
                        with stop.wait_scope:
                            await all_done.wait()
                        if stop.stopping:
                            # Leave as Ctrl-C does, so run_end records reason "cancelled"
                            # (an ordinary exception would record "error").
                            raise KeyboardInterrupt
                except* KeyboardInterrupt:
                    pass
                # Leaving the pipeline drained it: every submitted item has its outcome,
                # and the stream of outcomes ends once the last one is written...
                if not all_done.is_set():
                    # ...unless a defect lost one: its channel clone stays open and the
                    # stream never ends. Once every task waits, whatever arrived is written.
                    # Imported here only: trio.testing imports pytest when installed.
                    from trio.testing import wait_all_tasks_blocked

                    await wait_all_tasks_blocked()
                if not all_done.is_set():
                    received = summary.ok + summary.failed + summary.cancelled - summary.invalid
                    summary.lost = max(0, summary.submitted - received)
                final = snapshot()
                outer.cancel_scope.cancel()
        finally:
            summary.interrupted = stop.signals > 0
            if stop.dead is not None:
                summary.stopped = stop.dead.describe()
            display.close(final)


def run_batch(
    settings: BatchSettings,
    *,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
    server: Callable[[], contextlib.AbstractAsyncContextManager[str]] | None = None,
    transport: Callable[[int], httpx.AsyncBaseTransport] | None = None,
    fail_fast: bool = True,
) -> ExitStatus:
    """Run a JSONL batch file end to end; return the exit status.

    Example::

        settings = BatchSettings(
            input=Path("prompts.jsonl"),
            output=Path("prompts.out.jsonl"),
            events=Path("prompts.events.jsonl"),
            report_json=None,
            config=PipelineConfig.from_env(),
        )
        status = run_batch(settings)   # the report goes to stdout, progress to stderr

    Not async: it owns its ``trio.run`` (and Ctrl-C/SIGTERM handling when
    called from the main thread). Inside trio, use :func:`~shardline.open_pipeline`.

    Args:
        settings: What to run (:class:`~shardline._batch_io.BatchSettings`).
        stdout: Where the report goes (default ``sys.stdout``).
        stderr: Where progress, warnings and errors go (default ``sys.stderr``).
        server: For the demo: an async context manager factory yielding a base
            URL that replaces the configured one (the in-process fake server).
        transport: Passed to :func:`~shardline.open_pipeline` (tests).
        fail_fast: Stop the run when its first attempts all fail the same
            non-transient way (:class:`~shardline._endpoint_check.FirstAttemptsWatch`).

    Returns:
        :class:`~shardline._exit.ExitStatus`: ``OK``, ``FAILED_ITEMS``,
        ``USAGE`` (a file error, or a run stopped on a dead endpoint),
        ``INTERRUPTED`` or ``INTERNAL``.
    """
    out = sys.stdout if stdout is None else stdout
    err = sys.stderr if stderr is None else stderr
    title = settings.title
    summary = BatchSummary()
    # 1. Everything that can be wrong with files, before anything is sent.
    # fsync runs in a worker thread (_sync_output) and at close, not inline.
    opened = open_output(settings, summary, err, fsync_interval=None)
    if isinstance(opened, int):
        return ExitStatus(opened)
    writer = opened
    try:
        events_sink = JsonlEventSink(settings.events, append=settings.resume)
    except OSError as exc:
        writer.close()
        print_error(err, title, file_error(exc, "write events file", settings.events))
        return ExitStatus.USAGE
    live = LiveMetrics()
    builder = report_builder(settings, err)
    gate = OutputFirstSink(TeeSink(events_sink, live, builder))
    stop = _Stop(display=open_progress(enabled=settings.progress, stream=err))

    async def main() -> None:
        config = settings.config
        async with contextlib.AsyncExitStack() as stack:
            if server is not None:
                url = await stack.enter_async_context(server())
                config = attrs.evolve(config, endpoint=attrs.evolve(config.endpoint, base_url=url))
            # With several endpoints, a dead one is their circuit breaker's business.
            watch = (
                FirstAttemptsWatch(
                    gate, base_url=config.endpoint.base_url, on_dead=stop.endpoint_dead
                )
                if fail_fast and not config.endpoints
                else None
            )
            await _run_pipeline(
                settings,
                config,
                summary=summary,
                writer=writer,
                sinks=_Sinks(watch=watch, gate=gate, live=live),
                stop=stop,
                transport=transport,
            )

    try:
        try:
            trio.run(main)
        finally:
            writer.close()
            gate.close()
    except BaseException as exc:
        leaves = _leaves(exc)
        if all(isinstance(e, KeyboardInterrupt) for e in leaves):
            summary.interrupted = True
        elif all(isinstance(e, OSError | KeyboardInterrupt) for e in leaves):
            for e in leaves:
                if isinstance(e, OSError):
                    print_error(err, title, str(e))
            return ExitStatus.USAGE
        elif isinstance(exc, Exception):
            return _internal_error(exc, title, err)
        else:
            raise
    finish_report(settings, lambda: builder.build(events_sha256=events_sink.hexdigest()), out, err)
    print_summary(settings, summary, err)
    if summary.lost:
        print_error(
            err,
            title,
            f"internal error: {summary.lost} submitted items got no outcome from the "
            "pipeline (a defect in shardline, please report it); they are not written, so "
            "--resume runs them",
        )
    if summary.internal:
        print_error(
            err,
            title,
            f"internal error: a defect in shardline failed {summary.internal} items (cause"
            " internal_error; the traceback is in the events' item_end message and was"
            " logged); every other item ran, and all output is written. Please report it.",
        )
    if summary.stopped is not None:
        print(f"{title}: stopped: {summary.stopped}", file=err, flush=True)
    return summary.exit_status


def _internal_error(exc: Exception, title: str, err: IO[str]) -> ExitStatus:
    """A bug: one line for the user, the traceback in a file for the bug report."""
    first = next((e for e in _leaves(exc) if not isinstance(e, KeyboardInterrupt)), exc)
    fd, name = tempfile.mkstemp(prefix="shardline-crash-", suffix=".txt")
    with os.fdopen(fd, "w") as f:
        traceback.print_exception(exc, file=f)
    print_error(
        err,
        title,
        f"internal error: {type(first).__name__}: {first} (output and events are flushed; "
        f"traceback in {name}, please report it)",
    )
    return ExitStatus.INTERNAL


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]
