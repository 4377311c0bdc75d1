"""The files and the closing words of a batch run, shared by every way of running one.

This module owns what the single-machine runner (:mod:`shardline._batch`) and
the Ray runner (:mod:`shardline.ray._run`) both do around sending: the
settings record (:class:`BatchSettings`), the default paths, the checks made
before anything is sent (input readable, output not clobbered, every target
writable), opening the output (and compacting it for a resume), keeping the
events file from running ahead of the output (:class:`OutputFirstSink`), the
:class:`BatchSummary` of lines written, and the report and summary printed at
the end. It sends nothing and parses no command line.
"""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING

import attrs

from ._events import Event, EventFileReader, ItemEnd
from ._exceptions import Cause
from ._exit import ExitStatus, print_error
from ._jsonl import count_lines
from ._jsonl_output import OutputWriter, ResumeState, prepare_resume
from ._models import ItemId, Outcome, Status
from ._report_builder import ReportBuilder
from ._sinks import EventSink

if TYPE_CHECKING:
    from ._config import PipelineConfig
    from ._report import RunReport

__all__ = [
    "OUTPUT_FSYNC_INTERVAL",
    "BatchSettings",
    "BatchSummary",
    "OutputFirstSink",
    "check_files",
    "default_paths",
    "file_error",
    "finish_report",
    "open_output",
    "print_summary",
    "report_builder",
]

#: Seconds between fsyncs of the output file.
OUTPUT_FSYNC_INTERVAL = 1.0

_INPUT_SUFFIXES = (".jsonl", ".ndjson", ".json")


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


def _not_both(instance: BatchSettings, _attribute: object, overwrite: bool) -> None:
    if overwrite and instance.resume:
        raise ValueError(
            "resume and overwrite exclude each other: resume continues the output, "
            "overwrite replaces it"
        )


@attrs.frozen(kw_only=True)
class BatchSettings:
    """Everything a batch run needs: its files, its pipeline config and how it shows progress.

    A value object: the CLI builds one from its options and the environment
    (``shardline run``), and so can a program that runs batches itself.

    Args:
        input: The JSONL input, one request per line.
        output: Where one result line per finished item is appended.
        events: The events file (appended to on a resume).
        report_json: Where the report is also written as JSON (``None``: nowhere).
        html: Where the report is also written as an HTML page with charts,
            computed from the whole events file (``None``: nowhere).
        config: The :class:`~shardline.PipelineConfig` of the run.
        resume: Continue an existing output: skip ids already ok, append the rest.
        overwrite: Replace an existing non-empty output (without it, and without
            ``resume``, such an output is an error). Not together with ``resume``.
        progress: Show the live progress display on stderr.
        title: Prefixes every message (``"shardline run"``).

    Raises:
        ValueError: ``resume`` and ``overwrite`` are both true.
    """

    input: Path
    output: Path
    events: Path
    report_json: Path | None
    config: PipelineConfig
    resume: bool = False
    overwrite: bool = attrs.field(default=False, validator=_not_both)
    progress: bool = True
    title: str = "shardline run"
    html: Path | None = None


@attrs.define(eq=False)
class BatchSummary:
    """What a run did: counts of lines written and how it ended.

    ``stopped`` holds the one-line reason when the run was stopped because its
    endpoint cannot work (see :mod:`shardline._endpoint_check`). ``invalid``
    counts the input lines rejected before sending (also counted in ``failed``),
    ``submitted`` the items the pipeline accepted; ``lost`` counts submitted
    items that never got an outcome, and ``internal`` the items a defect in
    shardline failed (cause ``internal_error``): either is a defect in
    shardline, reported at the end with exit status 70.
    """

    total: int = 0
    skipped: int = 0
    ok: int = 0
    failed: int = 0
    cancelled: int = 0
    invalid: int = 0
    submitted: int = 0
    lost: int = 0
    internal: int = 0
    interrupted: bool = False
    stopped: str | None = None
    resume: ResumeState | None = None

    def record(self, outcome: Outcome) -> None:
        if outcome.status is Status.OK:
            self.ok += 1
        elif outcome.status is Status.FAILED:
            self.failed += 1
            if outcome.cause is Cause.INTERNAL_ERROR:
                self.internal += 1
        else:
            self.cancelled += 1

    @property
    def exit_status(self) -> ExitStatus:
        if self.lost or self.internal:
            return ExitStatus.INTERNAL
        if self.interrupted:
            return ExitStatus.INTERRUPTED
        if self.stopped is not None:
            return ExitStatus.USAGE
        if self.failed or self.cancelled:
            return ExitStatus.FAILED_ITEMS
        return ExitStatus.OK


def file_error(exc: OSError, what: str, path: Path) -> str:
    """``cannot write output file out.jsonl: Permission denied``."""
    reason = exc.strerror or str(exc)
    return f"cannot {what} {path}: {reason}"


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


def check_files(settings: BatchSettings, summary: BatchSummary, err: IO[str]) -> int | None:
    """Check the input, output, events and report paths before anything is sent.

    Counts the input's lines into ``summary.total``. Returns ``None`` when all is
    well, else prints one line naming the file and returns the exit status (2).
    """
    title = settings.title
    try:
        summary.total = count_lines(settings.input)
    except OSError as exc:
        print_error(err, title, file_error(exc, "read input file", settings.input))
        return ExitStatus.USAGE
    if (
        not settings.resume
        and not settings.overwrite
        and settings.output.exists()
        and settings.output.stat().st_size > 0
    ):
        print_error(
            err,
            title,
            f"output file {settings.output} already exists; pass --resume to continue it "
            "or --overwrite to start again",
        )
        return ExitStatus.USAGE
    for what, target in (
        ("output file", settings.output),
        ("events file", settings.events),
        ("report", settings.report_json),
        ("HTML report", settings.html),
    ):
        problem = _unwritable(target)
        if problem is not None:
            print_error(err, title, f"cannot write {what} {target}: {problem}")
            return ExitStatus.USAGE
    return None


def open_output(
    settings: BatchSettings, summary: BatchSummary, err: IO[str], *, fsync_interval: float | None
) -> OutputWriter | int:
    """Check the files (:func:`check_files`), prepare a resume, and open the output.

    Prints the no-model warning and the resume summary. Returns the writer, or
    the exit status (2) after printing one line naming the file.
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
        print_error(err, title, file_error(exc, "write output file", settings.output))
        return ExitStatus.USAGE
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


def report_builder(settings: BatchSettings, err: IO[str]) -> ReportBuilder:
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


def finish_report(
    settings: BatchSettings, build: Callable[[], RunReport], out: IO[str], err: IO[str]
) -> None:
    """Print the report ``build()`` computes (and write ``--report-json``).

    Args:
        build: Computes the whole events file's report; a ``ValueError`` from it
            (an events file that cannot be read back) is one error line.
    """
    # Imported at the end: rendering is not on the way to the first request.
    from ._report_text import render_text

    try:
        report = build()
    except ValueError as exc:
        print_error(err, settings.title, f"cannot compute the report: {exc}")
        return
    print(render_text(report), file=out, flush=True)
    if settings.report_json is not None:
        try:
            settings.report_json.write_text(json.dumps(report.to_json(), indent=2) + "\n")
        except OSError as exc:
            print_error(err, settings.title, file_error(exc, "write report", settings.report_json))
    if settings.html is not None:
        write_html_report(settings, err)


def write_html_report(settings: BatchSettings, err: IO[str]) -> None:
    """Write ``settings.html`` from the events file (read once more, from the start).

    The page covers the whole file, resumed runs included, exactly as
    ``shardline report EVENTS --html FILE`` makes it; a problem is one error line.
    """
    assert settings.html is not None
    # Imported when asked for: the charts' modules are not on the way to the first request.
    from ._report_html import render_html, report_and_series

    try:
        with EventFileReader(settings.events) as reader:
            report, series = report_and_series(reader)
            report = attrs.evolve(report, events_sha256=reader.hexdigest())
        settings.html.write_text(render_html(report, series), encoding="utf-8")
    except OSError as exc:
        print_error(err, settings.title, file_error(exc, "write HTML report", settings.html))
    except ValueError as exc:
        print_error(err, settings.title, f"cannot compute the HTML report: {exc}")


def print_summary(settings: BatchSettings, summary: BatchSummary, err: IO[str]) -> None:
    """The last line of a run: lines written by status, and where the files are."""
    parts = [f"{summary.ok} ok", f"{summary.failed} failed"]
    if summary.skipped:
        parts.append(f"{summary.skipped} skipped (already ok)")
    if summary.cancelled or summary.lost:
        unfinished = summary.cancelled + summary.lost
        parts.append(f"{unfinished} not finished (run again with --resume)")
    print(
        f"{settings.title}: {', '.join(parts)}; output {settings.output}, events {settings.events}",
        file=err,
        flush=True,
    )


class OutputFirstSink:
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
