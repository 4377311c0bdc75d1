"""Run reports and live metrics, computed from a run's events alone.

A run's proof is its events file. :func:`compute_report` folds events into a
:class:`RunReport` (a pure function of the events, so a saved file gives the
same report as the live run); :class:`ReportBuilder` is the same computation
as an event sink; :func:`render_text` prints a report. For a progress display,
:class:`LiveMetrics` keeps cheap running counters and hands out
:class:`LiveSnapshot` records; :class:`PrometheusSink` exports them to
Prometheus and :class:`OpenTelemetrySink` to OpenTelemetry::

    from shardline.events import EventFileReader
    from shardline.report import compute_report, render_text

    with EventFileReader("events.jsonl") as reader:
        report = compute_report(reader, events_sha256=None)
    print(render_text(report))

The definitions of every figure are on the docs' *Metric definitions* page.
"""

from ._live import LiveMetrics as LiveMetrics
from ._live import LiveShard as LiveShard
from ._live import LiveSnapshot as LiveSnapshot
from ._otel import OpenTelemetrySink as OpenTelemetrySink
from ._prometheus import PrometheusSink as PrometheusSink
from ._report import LimitReport as LimitReport
from ._report import MinuteTokens as MinuteTokens
from ._report import Percentiles as Percentiles
from ._report import ReportError as ReportError
from ._report import RunReport as RunReport
from ._report import ShardReport as ShardReport
from ._report_builder import ReportBuilder as ReportBuilder
from ._report_builder import compute_report as compute_report
from ._report_text import render_text as render_text

__all__ = [
    "LimitReport",
    "LiveMetrics",
    "LiveShard",
    "LiveSnapshot",
    "MinuteTokens",
    "OpenTelemetrySink",
    "Percentiles",
    "PrometheusSink",
    "ReportBuilder",
    "ReportError",
    "RunReport",
    "ShardReport",
    "compute_report",
    "render_text",
]
