"""A run report as one self-contained HTML page with charts.

This module owns the page (:func:`render_html`): the proof block and summary
tables of the text report, and inline SVG charts drawn from a
:class:`~shardline._report_series.RunSeries`. Nothing is fetched when the page
opens: no script, no stylesheet or font from elsewhere, so it works offline,
as an e-mail attachment and under a strict Content-Security-Policy. It
computes nothing from events (:func:`report_and_series` folds a stream of
events into both records in one pass).

Why inline SVG drawn in Python rather than a JavaScript charting library
inlined into the page (uPlot is about 50 kB minified, Chart.js about 200 kB):
the charts here are a few step lines, stacked bars and histograms, which take
a few hundred lines to draw; the page stays small (tens of kB for a long run,
since series are bucketed), renders with scripts disabled, prints, and is
tested by parsing it, without a browser and without a vendored file to keep
up to date. What it gives up is interactivity (zoom, hover read-outs); each
chart's ``<title>`` and the tables carry the exact figures instead.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from html import escape

from ._events import Event
from ._report import RunReport
from ._report_builder import ReportBuilder
from ._report_series import RunSeries, SeriesBuilder
from ._report_svg import PALETTE, Band, Bars, Line, Marker, histogram, stacked_bars, step_lines
from ._report_text import _fmt_duration, _fmt_rate, _fmt_s, proof_rows

__all__ = ["render_html", "report_and_series"]

# More queued lines than this and the queued chart shows their sum.
_MAX_LINES = 10

_CSS = """
body{font-family:system-ui,sans-serif;margin:0 auto;max-width:980px;padding:16px 20px;
color:#1d1d1f;background:#fafafa;line-height:1.4}
h1{font-size:1.4em;margin:.2em 0}h2{font-size:1.15em;margin:1.6em 0 .4em;border-bottom:1px solid
#ddd;padding-bottom:.2em}h3{font-size:1em;margin:.8em 0 .3em}
table{border-collapse:collapse;margin:.3em 0 .8em;font-variant-numeric:tabular-nums}
th,td{padding:2px 7px;border-bottom:1px solid #e5e5e5;text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left}table.kv th{text-align:left;font-weight:600}
table.kv td{text-align:left;font-family:ui-monospace,monospace}
.proof{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px 12px;
overflow-x:auto}
figure{margin:.6em 0 1.2em;background:#fff;border:1px solid #e5e5e5;border-radius:6px;
padding:6px}figure svg{display:block;width:100%;height:auto}
figcaption{font-size:.9em;color:#555;margin:4px 6px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:10px}
table.wrap-last td:last-child,table.wrap-last th:last-child{white-space:normal;text-align:left}
.grid figure{margin:0}.note{color:#555;font-size:.9em}.scroll{overflow-x:auto}
"""


def report_and_series(
    events: Iterable[Event], *, events_sha256: str | None = None
) -> tuple[RunReport, RunSeries]:
    """Fold ``events`` into the run's report and its series, in one pass.

    Raises:
        ReportError: as :func:`~shardline.report.compute_report` does.
    """
    reports, series = ReportBuilder(), SeriesBuilder()
    for event in events:
        reports.emit(event)
        series.emit(event)
    report = reports.build(events_sha256=events_sha256)
    built = series.build()
    assert built is not None  # the report builder raised if there was no run_start
    return report, built


def _table(
    headers: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    name: str,
    caption: str = "",
    cls: str = "",
) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    cap = f"<caption>{escape(caption)}</caption>" if caption else ""
    return (
        f'<div class="scroll"><table class="{cls}" data-table="{name}">{cap}'
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"
    )


def _kv(rows: Sequence[tuple[str, str]], *, name: str) -> str:
    body = "".join(
        f'<tr data-field="{escape(k)}"><th>{escape(k)}</th><td>{escape(v)}</td></tr>'
        for k, v in rows
    )
    return f'<table class="kv" data-table="{name}"><tbody>{body}</tbody></table>'


def _minute_epoch(minute_utc: str) -> float:
    return datetime.strptime(minute_utc, "%Y-%m-%dT%H:%MZ").replace(tzinfo=UTC).timestamp()


def _figure(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{escape(caption)}</figcaption></figure>"


def _proof(report: RunReport) -> str:
    return f'<div class="proof">{_kv(proof_rows(report), name="proof")}</div>'


def _summary(report: RunReport) -> str:
    rows = [
        ("items", f"{report.items:,}"),
        ("succeeded", f"{report.succeeded:,} ({_fmt_rate(report.success_rate)})"),
        ("failed", f"{report.failed:,}"),
        ("cancelled", f"{report.cancelled:,}"),
        ("unfinished", f"{report.unfinished:,}"),
        ("attempts", f"{report.attempts:,}"),
        ("retries", f"{report.retries:,} ({report.retry_rate or 0:.3f} per item)"),
        ("tokens_in_total", f"{report.tokens_in_total:,}"),
        ("tokens_out_total", f"{report.tokens_out_total:,}"),
        ("duration", _fmt_duration(report.duration_s)),
        ("started", report.started_at_utc or "-"),
        ("end", report.end_reason or "no run_end (incomplete)"),
    ]
    if report.backlog_minutes:
        rows.insert(
            5,
            (
                "under backlog",
                f"{_fmt_rate(report.success_rate_under_backlog)} of "
                f"{report.backlog_items:,} items in {report.backlog_minutes} minute(s)",
            ),
        )
    return _kv(rows, name="items")


def _tails(report: RunReport) -> str:
    rows = [
        (name, _fmt_s(p.p50), _fmt_s(p.p95), _fmt_s(p.p99))
        for name, p in (("ttft_s", report.ttft_s), ("latency_s", report.latency_s))
    ]
    return _table(("", "p50", "p95", "p99"), rows, name="latency")


def _causes(report: RunReport) -> str:
    causes = sorted(
        set(report.retry_causes) | set(report.attempt_failures) | set(report.failure_causes)
    )
    if not causes:
        return '<p class="note">No attempt failed.</p>'
    rows = [
        (
            cause,
            str(report.attempt_failures.get(cause, 0)),
            str(report.retry_causes.get(cause, 0)),
            str(report.failure_causes.get(cause, 0)),
        )
        for cause in causes
    ]
    return _table(("cause", "failed attempts", "retries", "failed items"), rows, name="causes")


def _endpoints(report: RunReport) -> str:
    if not report.limits:
        return (
            '<p class="note">No limit_change events: adaptive flow control was off, or the '
            "limit never moved from its initial value.</p>"
        )
    rows = [
        (
            str(lim.endpoint),
            str(lim.initial),
            str(lim.min),
            str(lim.median),
            str(lim.max),
            str(lim.final),
            f"{lim.changes:,}",
            ", ".join(f"{reason} {n}" for reason, n in lim.decreases.items()) or "-",
        )
        for lim in report.limits
    ]
    headers = ("endpoint", "initial", "min", "median", "max", "final", "changes", "lowered by")
    return _table(headers, rows, name="endpoints", caption="live in-flight limit", cls="wrap-last")


def _shards(report: RunReport) -> str:
    rows = [
        (
            str(s.shard),
            f"{s.items:,}",
            f"{s.succeeded:,}",
            f"{s.failed:,}",
            f"{s.attempts:,}",
            f"{s.retries:,}",
            f"{s.tokens_in:,}",
            f"{s.tokens_out:,}",
            _fmt_s(s.ttft_s.p50),
            _fmt_s(s.ttft_s.p95),
            _fmt_s(s.latency_s.p95),
            f"{s.cooldowns} ({s.cooldown_s:.1f} s)",
        )
        for s in report.shards
    ]
    headers = (
        "shard",
        "items",
        "ok",
        "failed",
        "attempts",
        "retries",
        "tokens in",
        "tokens out",
        "ttft p50",
        "ttft p95",
        "latency p95",
        "cooldowns",
    )
    return _table(headers, rows, name="shards")


def _minutes(report: RunReport) -> str:
    rows = [
        (
            m.minute_utc + (" (peak)" if m.minute_utc == report.proof_minute_utc else ""),
            f"{m.prompt_tokens:,}",
            f"{m.completion_tokens:,}",
            f"{m.total_tokens:,}",
            f"{m.items:,}",
        )
        for m in report.tpm_by_minute
    ]
    table = _table(("minute (UTC)", "in", "out", "total", "items"), rows, name="minutes")
    return f"<details><summary>tokens per UTC minute ({len(rows)})</summary>{table}</details>"


def _tokens_chart(report: RunReport, series: RunSeries) -> str:
    scale = 60.0 / series.bucket_s
    bands = []
    if report.proof_minute_utc is not None:
        start = _minute_epoch(report.proof_minute_utc)
        bands.append(
            Band(
                start=start,
                end=start + 60,
                name="peak-minute",
                label=(
                    f"peak minute {report.proof_minute_utc[11:16]}Z: "
                    f"{report.peak_prompt_tpm_in:,} in, {report.peak_completion_tpm_out:,} out"
                ),
            )
        )
    svg = step_lines(
        name="tokens",
        title="Tokens per minute, in (prompt) and out (completion)",
        start=series.start,
        bucket_s=series.bucket_s,
        lines=[
            Line(
                label="in (prompt)", values=[v * scale for v in series.tokens_in], color=PALETTE[0]
            ),
            Line(
                label="out (completion)",
                values=[v * scale for v in series.tokens_out],
                color=PALETTE[1],
            ),
        ],
        y_label="tokens / min",
        bands=bands,
    )
    return _figure(
        svg,
        f"Tokens of successful items per minute, in {series.bucket_s}-second buckets "
        "(a rate: the bucket's tokens times 60 over its width); the shaded minute is the "
        "proof minute.",
    )


def _sum(columns: Iterable[Sequence[float | None]]) -> list[float | None]:
    total: list[float | None] = []
    for column in zip(*columns, strict=True):
        values = [v for v in column if v is not None]
        total.append(sum(values) if values else None)
    return total


def _flow_chart(series: RunSeries) -> str:
    lines = [
        Line(
            label="in flight (all shards)",
            values=_sum(series.in_flight.values()),
            color=PALETTE[0],
        )
    ]
    for k, (endpoint, values) in enumerate(series.limit.items()):
        lines.append(
            Line(
                label=f"live limit, endpoint {endpoint}",
                values=values,
                color=PALETTE[(4 + k) % len(PALETTE)],
                dashed=True,
            )
        )
    svg = step_lines(
        name="flow",
        title="Attempts in flight and the live in-flight limit over time",
        start=series.start,
        bucket_s=series.bucket_s,
        lines=lines,
        y_label="in flight",
    )
    return _figure(
        svg,
        "Attempts in flight, summed over the shards, and each endpoint's live in-flight limit "
        f"(time-weighted means over {series.bucket_s}-second buckets).",
    )


def _queued_chart(series: RunSeries) -> str:
    if len(series.queued) <= _MAX_LINES:
        lines = [
            Line(label=f"shard {shard}", values=values, color=PALETTE[k % len(PALETTE)])
            for k, (shard, values) in enumerate(series.queued.items())
        ]
        what = "per shard"
    else:
        lines = [Line(label="all shards", values=_sum(series.queued.values()), color=PALETTE[1])]
        what = "summed over the shards"
    svg = step_lines(
        name="queued",
        title="Items queued over time",
        start=series.start,
        bucket_s=series.bucket_s,
        lines=lines,
        y_label="queued",
    )
    return _figure(
        svg,
        f"Items admitted and waiting for their first attempt, {what} (time-weighted means "
        f"over {series.bucket_s}-second buckets).",
    )


def _shard_charts(series: RunSeries) -> str:
    figures = []
    for shard in sorted(series.in_flight):
        lines = [Line(label="in flight", values=series.in_flight[shard], color=PALETTE[0])]
        if series.concurrency is not None:
            lines.append(
                Line(
                    label="ceiling",
                    values=[series.concurrency if v is not None else None for v in lines[0].values],
                    color=PALETTE[8],
                    dashed=True,
                )
            )
        bands = [
            Band(
                start=series.bucket_start(i),
                end=series.bucket_start(i + 1),
                label="",
                name="cooling",
                color="#fbe0d6",
            )
            for i, share in enumerate(series.cooling.get(shard, ()))
            if share
        ]
        svg = step_lines(
            name=f"shard-{shard}",
            title=f"Shard {shard}: attempts in flight",
            start=series.start,
            bucket_s=series.bucket_s,
            lines=lines,
            y_label="in flight",
            bands=bands,
            width=480,
            height=200,
        )
        figures.append(_figure(svg, f"shard {shard} (shaded: cooling down after a 429)"))
    return f'<div class="grid">{"".join(figures)}</div>'


def _retries_chart(series: RunSeries) -> str:
    layers = [
        Bars(label=cause, values=counts, color=PALETTE[k % len(PALETTE)])
        for k, (cause, counts) in enumerate(series.retries.items())
    ]
    svg = stacked_bars(
        name="retries",
        title="Retries scheduled over time, by cause",
        start=series.start,
        bucket_s=series.bucket_s,
        layers=layers,
        y_label="retries",
    )
    return _figure(svg, f"Retries scheduled per {series.bucket_s}-second bucket, by cause.")


def _histograms(report: RunReport, series: RunSeries) -> str:
    out = []
    for name, hist, tails, what in (
        ("ttft", series.ttft, report.ttft_s, "Time to first token"),
        ("latency", series.latency, report.latency_s, "Latency (admission to end)"),
    ):
        markers = [
            Marker(label=q, value=v)
            for q, v in (("p50", tails.p50), ("p95", tails.p95), ("p99", tails.p99))
            if v is not None
        ]
        svg = histogram(
            name=name,
            title=f"{what} of successful items",
            edges=hist.edges,
            counts=hist.counts,
            markers=markers,
            color=PALETTE[0] if name == "ttft" else PALETTE[2],
        )
        out.append(
            _figure(
                svg,
                f"{what} of the {hist.total:,} successful items, ten bins per decade (log "
                "scale); the rules are the report's p50, p95 and p99.",
            )
        )
    return "".join(out)


def render_html(report: RunReport, series: RunSeries) -> str:
    """The report as one self-contained HTML page (UTF-8 text, no external resource).

    Args:
        report: The run's report (its tables and marked figures).
        series: The same run's series (its charts), from the same events.
    """
    title = f"shardline run {report.run_id}"
    generated = math.floor(series.run_end)
    body = [
        f"<h1>{escape(title)}</h1>",
        f'<p class="note">{report.items:,} items on {report.shard_count} shard(s), started '
        f"{escape(report.started_at_utc or '-')}, ran {_fmt_duration(report.duration_s)}; "
        f"last event {datetime.fromtimestamp(generated, tz=UTC):%Y-%m-%dT%H:%M:%SZ}.</p>",
        "<h2>Proof</h2>",
        _proof(report),
        "<h2>Items</h2>",
        _summary(report),
        "<h2>Tokens per minute</h2>",
        _tokens_chart(report, series),
        _minutes(report),
        "<h2>Latency</h2>",
        _tails(report),
        _histograms(report, series),
        "<h2>Retries and causes</h2>",
        _retries_chart(series),
        _causes(report),
        "<h2>Flow: in flight, queued, live limit</h2>",
        _flow_chart(series),
        _queued_chart(series),
        "<h3>Per endpoint</h3>",
        _endpoints(report),
        "<h2>Shards</h2>",
        _shards(report),
        _shard_charts(series),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )
