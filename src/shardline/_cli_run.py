"""``shardline run`` and ``shardline demo``: a JSONL file through a sharded pipeline.

``shardline run INPUT.jsonl`` reads one request per line (lazily), sends them
through a pipeline, appends one result line per finished item to the output,
writes every event to the events file, shows progress, and prints the run
report at the end::

    export OPENAI_API_KEY=...            # the key only ever comes from the environment
    shardline run prompts.jsonl --model gpt-4o-mini --shards 8 --concurrency 16
    # -> prompts.out.jsonl, prompts.events.jsonl, report on stdout

Default paths: the output is ``INPUT.out.jsonl`` and the events file
``INPUT.events.jsonl``, next to the input (``.jsonl``/``.ndjson``/``.json`` is
dropped from the input name first). An existing non-empty output is never
overwritten silently: pass ``--resume`` to continue it or ``--overwrite`` to
start again.

Exit status: 0 every item ok; 1 the run finished with failed items; 2 usage,
config or file error (nothing was sent); 130 interrupted (Ctrl-C or SIGTERM),
after the output, events and report were flushed; 70 a bug in shardline (one
line on stderr, the traceback in a file it names).

Ctrl-C once: stop admitting new items and drain (in-flight requests may finish
within ``--drain-grace`` seconds; queued ones are not sent). Ctrl-C again:
cancel the in-flight requests now. Items that did not finish are not written
to the output, so ``--resume`` runs them.

Crash safety: each output line is flushed as it is written and fsynced every
second (in a worker thread) and at exit; an item's ``item_end`` event is
written only after its output line, so after ``kill -9`` the events never
claim more than the output holds. ``--resume`` compacts the output to its ok
lines (atomically, see :func:`shardline._jsonl.prepare_resume`), skips those
ids and appends the rest: the final output holds every input id once, and only
the requests that were in flight at the kill are sent again.

``shardline demo`` does the same against the fake server, started in-process
with a realistic fault mix, on generated input.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import attrs
import trio

from ._cli import EXIT_FAILED_ITEMS, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from ._events import Event, EventFileReader, ItemEnd
from ._exceptions import ConfigError
from ._jsonl import (
    InputEntry,
    OutputWriter,
    ResumeState,
    count_lines,
    outcome_to_json,
    prepare_resume,
    read_input,
)
from ._models import ItemId, Outcome, Status
from ._progress import ProgressDisplay, ProgressSnapshot, ShardRow, open_progress
from ._sinks import EventSink, JsonlEventSink, TeeSink
from .report import LiveMetrics, ReportBuilder, render_text

if TYPE_CHECKING:
    from ._backoff import Backoff
    from ._config import PipelineConfig
    from ._pipeline import Pipeline

__all__ = [
    "DEFAULT_DEMO_FAULTS",
    "RunSettings",
    "RunSummary",
    "UsageError",
    "default_paths",
    "demo_command",
    "execute_run",
    "register",
    "resolve_run_settings",
    "run_command",
]

#: Exit status for a bug in shardline (sysexits' EX_SOFTWARE); the traceback goes to a file.
EXIT_INTERNAL = 70
#: Outcomes buffered between the pipeline and the output writer. Small, so
#: that after ``kill -9`` little beyond the requests in flight is sent again.
OUTCOME_BUFFER = 8
#: Seconds in-flight requests may take to finish after Ctrl-C (``--drain-grace``).
DEFAULT_CLI_DRAIN_GRACE = 10.0
#: Seconds between fsyncs of the output file.
OUTPUT_FSYNC_INTERVAL = 1.0

#: The demo's fault mix, as a ``--faults`` spec of the fake server: a few percent
#: of 429s with a short Retry-After, 5xx, connection resets, stalls before the
#: first token and mid-stream, keep-alive drips and truncated streams.
DEFAULT_DEMO_FAULTS = (
    "rate_limit=0.03:retry_after=0.5,"
    "http_500=0.01,http_503=0.01,"
    "reset=0.01:after=2,"
    "stall_headers=0.004,stall_mid=0.004:after=2,"
    "drip=0.004:after=1:interval=0.1,"
    "truncate=0.01:after=3"
)

_INPUT_SUFFIXES = (".jsonl", ".ndjson", ".json")


class UsageError(Exception):
    """A bad option, environment value or file: exit status 2, nothing sent."""


# -- settings ------------------------------------------------------------------------------


def default_paths(input_path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """The default output and events paths for ``input_path``.

    ``data/prompts.jsonl`` → ``data/prompts.out.jsonl``, ``data/prompts.events.jsonl``.
    """
    path = Path(input_path)
    stem = path.name
    for suffix in _INPUT_SUFFIXES:
        if stem.endswith(suffix) and len(stem) > len(suffix):
            stem = stem[: -len(suffix)]
            break
    return path.with_name(stem + ".out.jsonl"), path.with_name(stem + ".events.jsonl")


@attrs.frozen(kw_only=True)
class RunSettings:
    """Everything ``shardline run`` needs, validated (see :func:`resolve_run_settings`)."""

    input: Path
    output: Path
    events: Path
    report_json: Path | None
    config: PipelineConfig
    resume: bool = False
    overwrite: bool = False
    progress: bool = True
    title: str = "shardline run"


#: Which option sets the parameter a ConfigError message starts with.
_OPTION_FOR_PARAM = {
    "base_url": "--base-url (OPENAI_BASE_URL)",
    "shard_count": "--shards (SHARD_COUNT)",
    "concurrency": "--concurrency (LLM_CONCURRENCY)",
    "queue_size": "--queue-size",
    "rpm": "--rpm",
    "tpm": "--tpm",
    "max_attempts": "--max-attempts",
    "connect": "--connect-timeout",
    "ttft": "--ttft-timeout",
    "stall": "--stall-timeout",
    "attempt": "--attempt-timeout",
    "drain_grace": "--drain-grace",
}


def _config_error(exc: ConfigError) -> UsageError:
    message = str(exc)
    param = message.split(" ", 1)[0]
    option = _OPTION_FOR_PARAM.get(param)
    if option is not None:
        return UsageError(f"invalid value for {option}: {message}")
    return UsageError(f"invalid configuration: {message}")


def build_config(
    args: argparse.Namespace,
    environ: Mapping[str, str],
    *,
    backoff: Backoff | None = None,
    retry: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> PipelineConfig:
    """The :class:`PipelineConfig` for parsed ``run``/``demo`` options and the environment.

    Flags win over environment variables, which win over the defaults.
    ``backoff`` and ``retry`` (extra :class:`RetryPolicy` fields) let the demo
    use delays that suit the fake server.

    Raises:
        UsageError: naming the option (and its variable) whose value is invalid.
    """
    from ._backoff import Backoff, RetryPolicy
    from ._config import Deadlines, Endpoint, PipelineConfig

    try:
        endpoint = Endpoint.from_env(
            environ, base_url=getattr(args, "base_url", None), model=getattr(args, "model", None)
        )
        policy = RetryPolicy.from_env(
            environ,
            backoff=backoff if backoff is not None else Backoff.from_env(environ),
            max_attempts=getattr(args, "max_attempts", None),
            **dict(retry or {}),
        )
        deadlines = Deadlines(
            connect=args.connect_timeout,
            ttft=args.ttft_timeout,
            stall=args.stall_timeout,
            attempt=args.attempt_timeout,
        )
        return PipelineConfig.from_env(
            environ,
            endpoint=endpoint,
            shard_count=args.shards,
            concurrency=args.concurrency,
            queue_size=getattr(args, "queue_size", None),
            rpm=getattr(args, "rpm", None),
            tpm=getattr(args, "tpm", None),
            retry=policy,
            deadlines=deadlines,
            drain_grace=args.drain_grace,
            **overrides,
        )
    except ConfigError as exc:
        raise _config_error(exc) from None


def resolve_run_settings(args: argparse.Namespace, environ: Mapping[str, str]) -> RunSettings:
    """Turn parsed ``shardline run`` options plus the environment into :class:`RunSettings`.

    Raises:
        UsageError: for an invalid option or environment value, naming it.
    """
    from ._config import DEFAULT_BASE_URL

    config = build_config(args, environ)
    endpoint = config.endpoint
    if endpoint.api_key is None and endpoint.base_url.rstrip("/") == DEFAULT_BASE_URL:
        raise UsageError(
            f"OPENAI_API_KEY is not set, and {DEFAULT_BASE_URL} needs an API key; set it in "
            "the environment, or point --base-url (OPENAI_BASE_URL) at a server that needs none"
        )
    input_path = Path(args.input)
    out_default, events_default = default_paths(input_path)
    output = Path(args.output) if args.output else out_default
    events = Path(args.events) if args.events else events_default
    if output == events:
        raise UsageError(f"--output and --events must be different files, both are {output}")
    if output == input_path or events == input_path:
        raise UsageError(f"--output and --events must not be the input file {input_path}")
    return RunSettings(
        input=input_path,
        output=output,
        events=events,
        report_json=Path(args.report_json) if args.report_json else None,
        config=config,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )


# -- the run -------------------------------------------------------------------------------


@attrs.define(eq=False)
class RunSummary:
    """What a run did: counts of lines written and how it ended."""

    total: int = 0
    skipped: int = 0
    ok: int = 0
    failed: int = 0
    cancelled: int = 0
    interrupted: bool = False
    resume: ResumeState | None = None

    def record(self, outcome: Outcome) -> None:
        if outcome.status is Status.OK:
            self.ok += 1
        elif outcome.status is Status.FAILED:
            self.failed += 1
        else:
            self.cancelled += 1

    @property
    def exit_status(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        if self.failed or self.cancelled:
            return EXIT_FAILED_ITEMS
        return EXIT_OK


@attrs.define(eq=False)
class _Interrupt:
    """Ctrl-C handling: the first signal drains, the second cancels in-flight work."""

    display: ProgressDisplay
    feed_scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    wait_scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    pipeline: Pipeline | None = None
    signals: int = 0

    def fire(self) -> None:
        self.signals += 1
        if self.signals == 1:
            self.display.message(
                "shardline: interrupted: draining (no new items; in-flight requests may "
                "finish). Press Ctrl-C again to stop now."
            )
            self.feed_scope.cancel()
            self.wait_scope.cancel()
        else:
            self.display.message("shardline: interrupted again: cancelling in-flight requests")
            self.feed_scope.cancel()
            self.wait_scope.cancel()
            if self.pipeline is not None:
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


class _OutputFirstSink:
    """Holds each item's ``item_end`` event until its output line is written.

    The output file and the events file cannot be updated atomically together.
    The pipeline emits an item's ``item_end`` before handing its outcome to the
    writer task, so a ``kill -9`` in between would leave an item that the
    events call ended but the output lacks: ``--resume`` runs it again and the
    report would count it twice. This sink reverses the order: a non-cancelled
    ``item_end`` (and every event after it, to keep the file in order) waits
    until :meth:`written` is called for that id right after its line is
    written, so the events file never runs ahead of the output. The window
    left is the few microseconds between the two ``write`` calls.

    Memory: the events emitted while one outcome is on its way to the writer
    (milliseconds of events).
    """

    def __init__(self, downstream: EventSink) -> None:
        self._down = downstream
        self._held: collections.deque[Event] = collections.deque()
        self._credits: dict[ItemId, int] = {}

    @staticmethod
    def _needs_line(event: Event) -> bool:
        return isinstance(event, ItemEnd) and event.status != Status.CANCELLED.value

    def emit(self, event: Event) -> None:
        if self._held or self._needs_line(event):
            self._held.append(event)
            self._release()
        else:
            self._down.emit(event)

    def written(self, item_id: ItemId) -> None:
        """The output line of ``item_id`` is written: release its ``item_end``."""
        self._credits[item_id] = self._credits.get(item_id, 0) + 1
        self._release()

    def _release(self) -> None:
        held = self._held
        while held:
            event = held[0]
            if self._needs_line(event):
                assert isinstance(event, ItemEnd)
                credit = self._credits.get(event.item_id, 0)
                if credit == 0:
                    return
                if credit == 1:
                    del self._credits[event.item_id]
                else:
                    self._credits[event.item_id] = credit - 1
            held.popleft()
            self._down.emit(event)

    def close(self) -> None:
        """Release whatever is still held (the run failed before writing it), then close."""
        try:
            while self._held:
                self._down.emit(self._held.popleft())
        finally:
            self._down.close()


async def _feed(
    pipeline: Pipeline,
    entries: Iterator[InputEntry],
    send: trio.MemorySendChannel[Outcome],
    writer: OutputWriter,
    gate: _OutputFirstSink,
    summary: RunSummary,
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
                writer.write(outcome_to_json(outcome, line=entry.line))
                gate.written(entry.item_id)
                passed += 1
                if passed % 64 == 0:
                    await trio.lowlevel.checkpoint()
                continue
            await pipeline.submit(entry.request, send.clone())


async def _consume(
    recv: trio.MemoryReceiveChannel[Outcome],
    writer: OutputWriter,
    gate: _OutputFirstSink,
    summary: RunSummary,
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
    summary: RunSummary,
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
        tpm_now=snap.tpm_total_current,
        tpm_previous=snap.tpm_total_previous,
        tpm_peak=snap.peak_tpm_total,
        retries=snap.retries_by_cause,
        shards=tuple(
            ShardRow(
                shard=s.shard,
                in_flight=s.in_flight,
                queued=s.queued,
                capacity=s.capacity,
                cooling=s.cooling,
                done=s.done,
                retries=s.retries,
            )
            for s in stats.shards
        ),
        draining=interrupted,
    )


async def _show_progress(
    display: ProgressDisplay, snapshot: Callable[[], ProgressSnapshot]
) -> None:
    while True:
        await trio.sleep(display.interval)
        display.update(snapshot())


async def _sync_output(writer: OutputWriter) -> None:
    """Fsync the output every OUTPUT_FSYNC_INTERVAL seconds, in a worker thread."""
    while True:
        await trio.sleep(OUTPUT_FSYNC_INTERVAL)
        if writer.dirty:
            await trio.to_thread.run_sync(writer.fsync_written)


async def _run_pipeline(
    settings: RunSettings,
    config: PipelineConfig,
    *,
    summary: RunSummary,
    writer: OutputWriter,
    sink: _OutputFirstSink,
    live: LiveMetrics,
    display: ProgressDisplay,
) -> None:
    from ._pipeline import open_pipeline

    interrupt = _Interrupt(display=display)
    skip = summary.resume.done if summary.resume is not None else None
    send, recv = trio.open_memory_channel[Outcome](OUTCOME_BUFFER)
    all_done = trio.Event()
    started = trio.current_time()
    with contextlib.closing(read_input(settings.input, skip=skip, yield_skipped=True)) as entries:
        final: ProgressSnapshot | None = None
        try:
            async with trio.open_nursery() as outer:
                await outer.start(interrupt.watch)
                outer.start_soon(_consume, recv, writer, sink, summary, all_done)
                outer.start_soon(_sync_output, writer)
                try:
                    async with open_pipeline(config, sink=sink) as pipeline:
                        interrupt.pipeline = pipeline

                        def snapshot() -> ProgressSnapshot:
                            return _snapshot(
                                pipeline, live, summary, started, interrupted=interrupt.signals > 0
                            )

                        outer.start_soon(_show_progress, display, snapshot)
                        with interrupt.feed_scope:
                            await _feed(pipeline, entries, send, writer, sink, summary)
                        with interrupt.wait_scope:
                            await all_done.wait()
                        if interrupt.signals:
                            # Leave as Ctrl-C does, so run_end records reason "cancelled".
                            raise KeyboardInterrupt
                except* KeyboardInterrupt:
                    pass
                # Leaving the pipeline drained it: every admitted item has its outcome.
                await all_done.wait()
                final = snapshot()
                outer.cancel_scope.cancel()
        finally:
            summary.interrupted = interrupt.signals > 0
            display.close(final)


def _unwritable(path: Path | None) -> str | None:
    """Why ``path`` cannot be written, checked before any file is touched (or ``None``)."""
    if path is None:
        return None
    parent = path.parent
    if path.is_dir():
        return "it is a directory"
    if not parent.is_dir():
        return f"directory {parent} does not exist"
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        return "permission denied"
    return None


def _print_error(stderr: IO[str], title: str, message: str) -> None:
    print(f"{title}: error: {message}", file=stderr, flush=True)


def check_files(settings: RunSettings, summary: RunSummary, err: IO[str]) -> int | None:
    """Check the input, output, events and report paths before anything is sent.

    Counts the input's lines into ``summary.total``. Returns ``None`` when all is
    well, else prints one line naming the file and returns the exit status (2).
    Shared by the single-machine run and ``--ray``.
    """
    title = settings.title
    try:
        summary.total = count_lines(settings.input)
    except OSError as exc:
        _print_error(err, title, _file_error(exc, "read input file", settings.input))
        return EXIT_USAGE
    if (
        not settings.resume
        and not settings.overwrite
        and settings.output.exists()
        and settings.output.stat().st_size > 0
    ):
        _print_error(
            err,
            title,
            f"output file {settings.output} already exists; pass --resume to continue it "
            "or --overwrite to start again",
        )
        return EXIT_USAGE
    for what, target in (
        ("output file", settings.output),
        ("events file", settings.events),
        ("report", settings.report_json),
    ):
        problem = _unwritable(target)
        if problem is not None:
            _print_error(err, title, f"cannot write {what} {target}: {problem}")
            return EXIT_USAGE
    return None


def open_output(
    settings: RunSettings, summary: RunSummary, err: IO[str], *, fsync_interval: float | None
) -> OutputWriter | int:
    """Check the files (:func:`check_files`), prepare a resume, and open the output.

    Prints the no-model warning and the resume summary. Returns the writer, or
    the exit status (2) after printing one line naming the file. Shared by the
    single-machine run and ``--ray``.
    """
    status = check_files(settings, summary, err)
    if status is not None:
        return status
    title = settings.title
    try:
        if settings.resume:
            summary.resume = prepare_resume(settings.output)
        writer = OutputWriter(
            settings.output, truncate=not settings.resume, fsync_interval=fsync_interval
        )
    except OSError as exc:
        _print_error(err, title, _file_error(exc, "write output file", settings.output))
        return EXIT_USAGE
    if settings.config.endpoint.model is None:
        print(
            f"{title}: warning: no model set (--model or OPENAI_MODEL): lines without a "
            "'model' field are sent without one",
            file=err,
            flush=True,
        )
    if settings.resume and summary.resume is not None and summary.resume.kept:
        r = summary.resume
        print(
            f"{title}: resuming {settings.output}: {r.kept} items already ok are skipped; "
            f"dropped {r.dropped_failed} failed and {r.dropped_torn} torn lines (they run again)",
            file=err,
            flush=True,
        )
    return writer


def _file_error(exc: OSError, what: str, path: Path) -> str:
    reason = exc.strerror or str(exc)
    return f"cannot {what} {path}: {reason}"


def execute_run(
    settings: RunSettings,
    *,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
    server: Callable[[], contextlib.AbstractAsyncContextManager[str]] | None = None,
) -> int:
    """Run a batch file end to end and return the exit status.

    Args:
        settings: What to run.
        stdout: Where the report goes (default ``sys.stdout``).
        stderr: Where progress and errors go (default ``sys.stderr``).
        server: For the demo: an async context manager factory yielding a base
            URL that replaces the configured one (the in-process fake server).
    """
    out = sys.stdout if stdout is None else stdout
    err = sys.stderr if stderr is None else stderr
    title = settings.title
    summary = RunSummary()
    # 1. Everything that can be wrong with files, before anything is sent.
    # fsync runs in a worker thread (_sync_output) and at close, not inline.
    opened = open_output(settings, summary, err, fsync_interval=None)
    if isinstance(opened, int):
        return opened
    writer = opened
    try:
        events_sink = JsonlEventSink(settings.events, append=settings.resume)
    except OSError as exc:
        writer.close()
        _print_error(err, title, _file_error(exc, "write events file", settings.events))
        return EXIT_USAGE
    live = LiveMetrics()
    builder = _report_builder(settings, err)
    sink = _OutputFirstSink(TeeSink(events_sink, live, builder))
    display = open_progress(enabled=settings.progress, stream=err)

    async def main() -> None:
        config = settings.config
        async with contextlib.AsyncExitStack() as stack:
            if server is not None:
                url = await stack.enter_async_context(server())
                config = attrs.evolve(config, endpoint=attrs.evolve(config.endpoint, base_url=url))
            await _run_pipeline(
                settings,
                config,
                summary=summary,
                writer=writer,
                sink=sink,
                live=live,
                display=display,
            )

    try:
        try:
            trio.run(main)
        finally:
            writer.close()
            sink.close()
    except BaseException as exc:
        leaves = _leaves(exc)
        if all(isinstance(e, KeyboardInterrupt) for e in leaves):
            summary.interrupted = True
        elif all(isinstance(e, OSError | KeyboardInterrupt) for e in leaves):
            for e in leaves:
                if isinstance(e, OSError):
                    _print_error(err, title, str(e))
            return EXIT_USAGE
        elif isinstance(exc, Exception):
            return _internal_error(exc, title, err)
        else:
            raise
    _finish_report(settings, builder, events_sink.hexdigest(), out, err)
    _print_summary(settings, summary, err)
    return summary.exit_status


def _internal_error(exc: Exception, title: str, err: IO[str]) -> int:
    """A bug: one line for the user, the traceback in a file for the bug report."""
    first = next((e for e in _leaves(exc) if not isinstance(e, KeyboardInterrupt)), exc)
    fd, name = tempfile.mkstemp(prefix="shardline-crash-", suffix=".txt")
    with os.fdopen(fd, "w") as f:
        traceback.print_exception(exc, file=f)
    _print_error(
        err,
        title,
        f"internal error: {type(first).__name__}: {first} (output and events are flushed; "
        f"traceback in {name}, please report it)",
    )
    return EXIT_INTERNAL


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def _report_builder(settings: RunSettings, err: IO[str]) -> ReportBuilder:
    """A report builder that has already folded in the events of earlier (resumed) runs.

    The report printed at the end then covers the whole events file, exactly
    as ``shardline report EVENTS.jsonl`` computes it, without reading the
    file again after a long run.
    """
    builder = ReportBuilder()
    if not settings.resume or not settings.events.exists():
        return builder
    try:
        with EventFileReader(settings.events) as reader:
            for event in reader:
                builder.emit(event)
    except (OSError, ValueError) as exc:
        print(
            f"{settings.title}: warning: cannot read the earlier events in {settings.events} "
            f"({exc}); the report covers this run only",
            file=err,
            flush=True,
        )
        return ReportBuilder()
    return builder


def _finish_report(
    settings: RunSettings, builder: ReportBuilder, digest: str, out: IO[str], err: IO[str]
) -> None:
    """Print the report (and write ``--report-json``): the whole events file's report."""
    try:
        report = builder.build(events_sha256=digest)
    except ValueError as exc:
        _print_error(err, settings.title, f"cannot compute the report: {exc}")
        return
    print(render_text(report), file=out, flush=True)
    if settings.report_json is not None:
        try:
            settings.report_json.write_text(json.dumps(report.to_json(), indent=2) + "\n")
        except OSError as exc:
            _print_error(
                err, settings.title, _file_error(exc, "write report", settings.report_json)
            )


def _print_summary(settings: RunSettings, summary: RunSummary, err: IO[str]) -> None:
    parts = [f"{summary.ok} ok", f"{summary.failed} failed"]
    if summary.skipped:
        parts.append(f"{summary.skipped} skipped (already ok)")
    if summary.cancelled:
        parts.append(f"{summary.cancelled} not finished (run again with --resume)")
    print(
        f"{settings.title}: {', '.join(parts)}; output {settings.output}, events {settings.events}",
        file=err,
        flush=True,
    )


# -- argument parsing ----------------------------------------------------------------------


def _seconds(text: str) -> float | None:
    if text.strip().lower() in ("none", "off"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of seconds or 'none', got {text!r}"
        ) from None


def _add_pipeline_options(p: argparse.ArgumentParser, *, demo: bool) -> None:
    from ._config import (
        DEFAULT_ATTEMPT_TIMEOUT,
        DEFAULT_CONNECT_TIMEOUT,
        DEFAULT_STALL_TIMEOUT,
        DEFAULT_TTFT_TIMEOUT,
    )

    g = p.add_argument_group("pipeline")
    g.add_argument(
        "--shards",
        type=int,
        default=8 if demo else None,
        metavar="N",
        help="number of shards, each with its own queue, cap and connection pool "
        + ("(default: 8)" if demo else "(env SHARD_COUNT; default: 1)"),
    )
    g.add_argument(
        "--concurrency",
        type=int,
        default=16 if demo else None,
        metavar="N",
        help="in-flight requests per shard "
        + ("(default: 16)" if demo else "(env LLM_CONCURRENCY; default: 16)"),
    )
    if demo:
        p.set_defaults(
            max_attempts=None,
            connect_timeout=2.0,
            ttft_timeout=1.0,
            stall_timeout=0.5,
            attempt_timeout=10.0,
            drain_grace=2.0,
        )
        return
    g.add_argument("--queue-size", type=int, metavar="N", help="queue bound per shard (64)")
    g.add_argument("--rpm", type=float, metavar="N", help="requests per minute, all shards")
    g.add_argument("--tpm", type=float, metavar="N", help="tokens per minute, all shards")
    g.add_argument(
        "--max-attempts", type=int, metavar="N", help="attempts per item, the first included (5)"
    )
    d = p.add_argument_group("deadlines (seconds, or 'none')")
    d.add_argument(
        "--connect-timeout",
        type=_seconds,
        default=DEFAULT_CONNECT_TIMEOUT,
        metavar="S",
        help=f"to get a connection (default: {DEFAULT_CONNECT_TIMEOUT:g})",
    )
    d.add_argument(
        "--ttft-timeout",
        type=_seconds,
        default=DEFAULT_TTFT_TIMEOUT,
        metavar="S",
        help=f"from sending to the first token (default: {DEFAULT_TTFT_TIMEOUT:g})",
    )
    d.add_argument(
        "--stall-timeout",
        type=_seconds,
        default=DEFAULT_STALL_TIMEOUT,
        metavar="S",
        help=f"between two tokens; keep-alives do not count (default: {DEFAULT_STALL_TIMEOUT:g})",
    )
    d.add_argument(
        "--attempt-timeout",
        type=_seconds,
        default=DEFAULT_ATTEMPT_TIMEOUT,
        metavar="S",
        help=f"for a whole attempt (default: {DEFAULT_ATTEMPT_TIMEOUT:g})",
    )
    d.add_argument(
        "--drain-grace",
        type=float,
        default=DEFAULT_CLI_DRAIN_GRACE,
        metavar="S",
        help="after Ctrl-C, how long in-flight requests may take to finish "
        f"(default: {DEFAULT_CLI_DRAIN_GRACE:g})",
    )


def register(subparsers: Any) -> None:
    """Add the ``run`` and ``demo`` subcommands to the ``shardline`` parser."""
    run = subparsers.add_parser(
        "run",
        help="send a JSONL file of requests through a sharded pipeline",
        description=(
            "Send every line of INPUT (a JSON object with 'messages' or 'prompt', an optional "
            "'id', and any other OpenAI parameters) to an OpenAI-compatible API. One result "
            "line per item is appended to the output as it finishes; every event goes to "
            "the events file; the run report is printed at the end. The API key is read "
            "from OPENAI_API_KEY only."
        ),
        epilog=(
            "defaults: output INPUT.out.jsonl, events INPUT.events.jsonl (next to the input). "
            "exit status: 0 all ok, 1 some items failed, 2 usage/config/file error, "
            "130 interrupted, 70 internal error. Ctrl-C once drains, twice cancels; "
            "unfinished items are not written, so --resume runs them."
        ),
    )
    run.add_argument("input", metavar="INPUT.jsonl", help="requests, one JSON object per line")
    e = run.add_argument_group("endpoint")
    e.add_argument(
        "--base-url", metavar="URL", help="API root (env OPENAI_BASE_URL; default: OpenAI's)"
    )
    e.add_argument("--model", metavar="NAME", help="default model (env OPENAI_MODEL)")
    f = run.add_argument_group("files")
    f.add_argument("--output", "-o", metavar="OUT.jsonl", help="results (INPUT.out.jsonl)")
    f.add_argument("--events", metavar="EVENTS.jsonl", help="events (INPUT.events.jsonl)")
    f.add_argument("--report-json", metavar="FILE", help="also write the report as JSON")
    f.add_argument(
        "--resume",
        action="store_true",
        help="continue an existing output: skip ids already ok, retry failed ones, append",
    )
    f.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    _add_pipeline_options(run, demo=False)
    run.add_argument("--no-progress", action="store_true", help="no progress display")
    try:  # --ray, --ray-actors ...: shardline.ray imports Ray itself only when a run uses it
        from .ray._run import add_ray_options
    except ImportError:  # pragma: no cover - a trimmed install without the ray module
        pass
    else:
        add_ray_options(run)
    run.set_defaults(func=run_command)

    demo = subparsers.add_parser(
        "demo",
        help="run generated items through the in-process fake server, with faults",
        description=(
            "Start the fake OpenAI-compatible server in this process with a realistic fault "
            "mix (429 with Retry-After, 5xx, resets, stalls, drips, truncated streams), run "
            "generated items through a sharded pipeline with short deadlines, show progress "
            "and print the report. Needs no API key and no network."
        ),
    )
    demo.add_argument("--items", type=int, default=3000, metavar="N", help="items (3000)")
    _add_pipeline_options(demo, demo=True)
    demo.add_argument("--seed", type=int, default=0, help="seed of inputs and faults (0)")
    demo.add_argument(
        "--faults",
        default=DEFAULT_DEMO_FAULTS,
        metavar="SPEC",
        help="fault spec of the fake server (default: a few %% of every kind)",
    )
    demo.add_argument("--output", "-o", metavar="OUT.jsonl", help="results (in a temp dir)")
    demo.add_argument("--events", metavar="EVENTS.jsonl", help="events (in a temp dir)")
    demo.add_argument("--report-json", metavar="FILE", help="also write the report as JSON")
    demo.add_argument("--no-progress", action="store_true", help="no progress display")
    demo.set_defaults(func=demo_command)


def run_command(args: argparse.Namespace) -> int:
    """``shardline run``: resolve options, then :func:`execute_run` (or Ray with ``--ray``)."""
    if getattr(args, "ray", False):
        from .ray._run import run_on_ray

        return run_on_ray(args)
    try:
        settings = resolve_run_settings(args, os.environ)
    except UsageError as exc:
        _print_error(sys.stderr, "shardline run", str(exc))
        return EXIT_USAGE
    return execute_run(settings)


# -- demo ----------------------------------------------------------------------------------

_TOPICS = (
    "the sea",
    "a lighthouse",
    "trio nurseries",
    "rate limits",
    "a long train journey",
    "bread",
    "sharding",
    "the first snow",
)


def write_demo_input(path: Path, items: int, seed: int) -> None:
    """Write ``items`` generated chat requests (varied prompts and lengths) to ``path``."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(items):
            topic = rng.choice(_TOPICS)
            words = rng.randint(5, 60)
            record = {
                "id": f"demo-{i:05d}",
                "messages": [
                    {"role": "system", "content": "You are terse."},
                    {
                        "role": "user",
                        "content": f"In about {words} words, write about {topic}. " * 2,
                    },
                ],
                "max_tokens": rng.randint(8, 48),
            }
            f.write(json.dumps(record) + "\n")


def demo_command(args: argparse.Namespace) -> int:
    """``shardline demo``: the fake server in-process, generated input, progress, report."""
    from ._backoff import Backoff

    title = "shardline demo"
    if args.items < 1:
        _print_error(
            sys.stderr, title, f"invalid value for --items: must be >= 1, got {args.items}"
        )
        return EXIT_USAGE
    try:
        from .testing import FaultPlan, FaultSpecError, TimingModel, open_fake_server

        try:
            plan = FaultPlan.parse(args.faults)
        except FaultSpecError as exc:
            raise UsageError(f"invalid value for --faults: {exc}") from None
        config = build_config(
            args,
            {},
            backoff=Backoff(initial=0.05, max=1.0, jitter=0.1),
            retry={"retry_after_cap": 2.0, "retry_after_jitter": 0.2},
            seed=args.seed,
        )
    except UsageError as exc:
        _print_error(sys.stderr, title, str(exc))
        return EXIT_USAGE
    config = attrs.evolve(config, endpoint=attrs.evolve(config.endpoint, model="shardline-demo"))
    workdir = Path(tempfile.mkdtemp(prefix="shardline-demo-"))
    input_path = workdir / "demo.jsonl"
    write_demo_input(input_path, args.items, args.seed)
    settings = RunSettings(
        input=input_path,
        output=Path(args.output) if args.output else workdir / "demo.out.jsonl",
        events=Path(args.events) if args.events else workdir / "demo.events.jsonl",
        report_json=Path(args.report_json) if args.report_json else None,
        config=config,
        overwrite=True,
        progress=not args.no_progress,
        title=title,
    )
    print(
        f"{title}: {args.items} items, {config.shard_count} shards x {config.concurrency} "
        f"in flight, fake server with faults: {args.faults}\n"
        f"{title}: input {input_path}",
        file=sys.stderr,
        flush=True,
    )
    timing = TimingModel(ttft=0.05, itl=0.004, tokens_per_event=4)

    @contextlib.asynccontextmanager
    async def server() -> AsyncIterator[str]:
        async with open_fake_server(faults=plan, timing=timing, seed=args.seed) as fake:
            yield fake.base_url

    return execute_run(settings, server=server)
