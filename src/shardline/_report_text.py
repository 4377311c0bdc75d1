"""A run report as plain text, for terminals and logs.

This module owns the presentation of a :class:`~shardline._report.RunReport`
(:func:`render_text`): which figures are shown, in what order and format. It
computes nothing; ``rich`` is imported only when a report is rendered.
"""

from __future__ import annotations

from ._report import RunReport

__all__ = ["proof_rows", "render_text"]


def _fmt_s(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1.0:
        return f"{value * 1000:.0f} ms"
    return f"{value:.2f} s"


def _fmt_rate(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f} %"


def _fmt_duration(seconds: float) -> str:
    minutes, secs = divmod(seconds, 60.0)
    hours, minutes = divmod(int(minutes), 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02.0f}s"
    if minutes:
        return f"{minutes}m{secs:04.1f}s"
    return f"{secs:.1f}s"


#: How the printed report names each of ``RunReport.answer_counts``.
_ANSWER_LABELS = {
    "tool_call_items": "with tool calls",
    "tool_calls": "calls",
    "tool_arguments_invalid": "bad arguments",
    "reasoning_items": "reasoning",
    "refusal_items": "refusals",
    "embeddings": "vectors",
}


def proof_rows(report: RunReport) -> list[tuple[str, str]]:
    """The proof block's rows, as the text and HTML reports both show them."""
    return [
        ("run_id", report.run_id),
        ("shard_count", str(report.shard_count)),
        ("proof_minute_utc", report.proof_minute_utc or "-"),
        ("peak_aggregate_tpm_total", f"{report.peak_aggregate_tpm_total:,}"),
        ("peak_completion_tpm_out", f"{report.peak_completion_tpm_out:,}"),
        ("peak_prompt_tpm_in", f"{report.peak_prompt_tpm_in:,}"),
        ("events_sha256", report.events_sha256 or "- (not from a file)"),
    ]


def render_text(report: RunReport, *, width: int = 100) -> str:
    """A readable, plain-text report (rich tables, no colour), for terminals and logs.

    The proof block comes first, with the exact field names, so it can be
    pasted into a write-up; then items and retries, latency tails, causes,
    each endpoint's live in-flight limit (min / time-weighted median / max and
    the overload signals that lowered it), and the per-shard breakdown.
    """
    import io

    from rich import box
    from rich.console import Console
    from rich.table import Table

    buf = io.StringIO()
    console = Console(file=buf, width=width, color_system=None, highlight=False, soft_wrap=False)

    proof = Table(title="proof", title_justify="left", show_header=False, box=None, pad_edge=False)
    proof.add_column(style="bold", no_wrap=True)
    proof.add_column(no_wrap=True)
    for name, value in proof_rows(report):
        proof.add_row(name, value)
    console.print(proof)
    console.print()

    summary = Table(
        title="items", title_justify="left", show_header=False, box=None, pad_edge=False
    )
    summary.add_column(style="bold", no_wrap=True)
    summary.add_column(no_wrap=True)
    summary.add_row("items", f"{report.items:,}")
    summary.add_row("succeeded", f"{report.succeeded:,}  ({_fmt_rate(report.success_rate)})")
    summary.add_row("failed", f"{report.failed:,}")
    summary.add_row("cancelled", f"{report.cancelled:,}")
    if report.unfinished:
        summary.add_row("unfinished", f"{report.unfinished:,}  (admitted, never ended)")
    if report.backlog_minutes:
        backlog = (
            f"{_fmt_rate(report.success_rate_under_backlog)} of {report.backlog_items:,} items "
            f"in {report.backlog_minutes} backlog minute(s)"
        )
    else:
        backlog = "- (no whole minute with a non-empty queue)"
    summary.add_row("under backlog", backlog)
    summary.add_row("attempts", f"{report.attempts:,}")
    summary.add_row("retries", f"{report.retries:,}  ({report.retry_rate or 0:.3f} per item)")
    if report.hedges:
        summary.add_row(
            "hedges",
            f"{report.hedges:,} sent ({_fmt_rate(report.hedge_rate)} extra requests), "
            f"{report.hedge_wins:,} won by the hedge",
        )
    summary.add_row("tokens_in_total", f"{report.tokens_in_total:,}")
    summary.add_row("tokens_out_total", f"{report.tokens_out_total:,}")
    if report.usage_estimated_items or report.usage_missing_items:
        summary.add_row(
            "usage",
            f"{report.usage_estimated_items:,} estimated, {report.usage_missing_items:,} missing",
        )
    if set(report.items_by_api) - {"chat"}:
        by_api = ", ".join(f"{n:,} {api}" for api, n in report.items_by_api.items())
        summary.add_row("apis", by_api)
    if report.answer_counts:
        answers = ", ".join(
            f"{n:,} {_ANSWER_LABELS.get(key, key)}" for key, n in report.answer_counts.items()
        )
        summary.add_row("answers", answers)
    summary.add_row("duration", _fmt_duration(report.duration_s))
    summary.add_row("started", report.started_at_utc or "-")
    summary.add_row("end", report.end_reason or "no run_end (incomplete)")
    console.print(summary)
    console.print()

    tails = Table(title="latency (successful items)", title_justify="left", box=box.SIMPLE)
    tails.add_column("")
    for q in ("p50", "p95", "p99"):
        tails.add_column(q, justify="right")
    for name, p in (("ttft_s", report.ttft_s), ("latency_s", report.latency_s)):
        tails.add_row(name, _fmt_s(p.p50), _fmt_s(p.p95), _fmt_s(p.p99))
    console.print(tails)

    causes = sorted(
        set(report.retry_causes) | set(report.attempt_failures) | set(report.failure_causes)
    )
    if causes:
        table = Table(title="causes", title_justify="left", box=box.SIMPLE)
        table.add_column("cause")
        table.add_column("failed attempts", justify="right")
        table.add_column("retries", justify="right")
        table.add_column("failed items", justify="right")
        for cause in causes:
            table.add_row(
                cause,
                str(report.attempt_failures.get(cause, 0)),
                str(report.retry_causes.get(cause, 0)),
                str(report.failure_causes.get(cause, 0)),
            )
        console.print(table)

    if report.endpoints:
        table = Table(
            title="endpoints (attempts sent to each)", title_justify="left", box=box.SIMPLE
        )
        for name in ("endpoint", "shards", "attempts", "ok", "ttft p50", "ttft p95"):
            table.add_column(name, justify="right")
        table.add_column("open", no_wrap=True)
        table.add_column("failed attempts")
        for e in report.endpoints:
            failed = ", ".join(f"{cause} {n}" for cause, n in e.failed_attempts.items())
            table.add_row(
                str(e.endpoint),
                str(len(e.shards)),
                f"{e.attempts:,}",
                f"{e.ok_attempts:,}",
                _fmt_s(e.ttft_s.p50),
                _fmt_s(e.ttft_s.p95),
                f"{e.opened}x, {e.open_s:.1f} s" if e.opened else "-",
                failed or "-",
            )
        console.print(table)
    if report.limits:
        table = Table(
            title="live in-flight limit, per endpoint", title_justify="left", box=box.SIMPLE
        )
        for name in ("endpoint", "initial", "min", "median", "max", "final", "changes"):
            table.add_column(name, justify="right")
        table.add_column("lowered by")
        for lim in report.limits:
            lowered = ", ".join(f"{reason} {n}" for reason, n in lim.decreases.items())
            table.add_row(
                str(lim.endpoint),
                str(lim.initial),
                str(lim.min),
                str(lim.median),
                str(lim.max),
                str(lim.final),
                f"{lim.changes:,}",
                lowered or "-",
            )
        console.print(table)
    else:
        console.print(
            "live in-flight limit: no limit_change events (adaptive flow control off, "
            "or the limit never moved from its initial value)"
        )
        console.print()

    if report.shards:
        table = Table(title="shards", title_justify="left", box=box.SIMPLE)
        for name in ("shard", "items", "ok", "failed", "attempts", "retries", "tokens out"):
            table.add_column(name, justify="right")
        table.add_column("ttft p95", justify="right")
        table.add_column("cooldowns", justify="right")
        for s in report.shards:
            table.add_row(
                str(s.shard),
                f"{s.items:,}",
                f"{s.succeeded:,}",
                f"{s.failed:,}",
                f"{s.attempts:,}",
                f"{s.retries:,}",
                f"{s.tokens_out:,}",
                _fmt_s(s.ttft_s.p95),
                str(s.cooldowns),
            )
        console.print(table)
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines()) + "\n"
