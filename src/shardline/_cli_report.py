"""``shardline report EVENTS.jsonl [--json] [--html FILE]``: the run report of a saved events file.

The file is read one line at a time (memory does not grow with it) and hashed
as it is read, so ``events_sha256`` in the report is ``sha256sum`` of the file.
The report is computed exactly as during the run, so it equals the live run's
report. ``--html FILE`` also writes the report with charts as one
self-contained HTML page (:mod:`shardline._report_html`), from the same single
pass over the file. Exit statuses: 0 report printed; 2 missing or unreadable
file, a bad line (the message names the file and the line, without a
traceback), or an HTML file that cannot be written.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import IO, Any

import attrs

from ._exit import ExitStatus

__all__ = ["register", "run_report"]


def register(subparsers: Any) -> None:
    """Add the ``report`` subcommand to the ``shardline`` parser."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "report",
        help="print the run report of an events file",
        description=(
            "Compute the run report (proof block, retries and causes, TTFT and latency "
            "tails, per-shard breakdown) from a saved events JSONL file. The report equals "
            "the one printed at the end of the run, and events_sha256 is the sha256sum of "
            "the file."
        ),
    )
    parser.add_argument("events", metavar="EVENTS.jsonl", help="the events file of a run")
    parser.add_argument(
        "--json", action="store_true", help="print the report fields as one JSON object"
    )
    parser.add_argument(
        "--html",
        metavar="FILE",
        help="also write the report with charts as one self-contained HTML page",
    )
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    return run_report(args.events, as_json=args.json, html=args.html)


def run_report(
    path: str,
    *,
    as_json: bool = False,
    html: str | None = None,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
) -> int:
    """Print the report of the events file at ``path``; return the exit status.

    Args:
        path: The events JSONL file.
        as_json: Print the JSON fields (``RunReport.to_json()``) instead of text.
        html: Also write the HTML report (with charts) to this file.
        stdout: Where the report goes (default ``sys.stdout``).
        stderr: Where errors go (default ``sys.stderr``).
    """
    out = sys.stdout if stdout is None else stdout
    err = sys.stderr if stderr is None else stderr

    def fail(message: str) -> int:
        print(f"shardline report: {message}", file=err)
        return ExitStatus.USAGE

    # Here, not at the top: the other subcommands (``run``, ``--help``) do not need them.
    from ._events import EventDecodeError, EventFileReader
    from ._report import ReportError
    from ._report_html import render_html, report_and_series
    from ._report_text import render_text

    try:
        reader = EventFileReader(path)
    except OSError as exc:
        return fail(f"cannot read {path}: {exc.strerror or exc}")
    with reader:
        try:
            report, series = report_and_series(reader)
        except EventDecodeError as exc:
            return fail(str(exc))
        except ReportError as exc:
            # Raised at the offending event, or after the whole file when it had none.
            where = path if reader.complete else f"{path}:{reader.lines}"
            return fail(f"{where}: {exc}")
        except OSError as exc:
            return fail(f"cannot read {path}: {exc.strerror or exc}")
        report = attrs.evolve(report, events_sha256=reader.hexdigest())
    if html is not None:
        try:
            with open(html, "w", encoding="utf-8") as f:
                f.write(render_html(report, series))
        except OSError as exc:
            return fail(f"cannot write {html}: {exc.strerror or exc}")
    if as_json:
        print(json.dumps(report.to_json(), indent=2, ensure_ascii=False), file=out)
    else:
        print(render_text(report), file=out, end="")
    return ExitStatus.OK
