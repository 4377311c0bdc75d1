"""``shardline run`` and ``shardline check``: options in, a batch run (or one probe) out.

``shardline run INPUT.jsonl`` reads one request per line (lazily), sends them
through a pipeline, appends one result line per finished item to the output,
writes every event to the events file, shows progress, and prints the run
report at the end::

    export OPENAI_API_KEY=...            # the key only ever comes from the environment
    shardline run prompts.jsonl --model gpt-4o-mini --shards 8 --concurrency 16
    # -> prompts.out.jsonl, prompts.events.jsonl, report on stdout

This module owns the command line only: the ``run`` and ``check`` parsers,
turning options and the environment into
:class:`~shardline._batch_io.BatchSettings` (:func:`resolve_run_settings`), and
dispatching to the batch runner (:func:`shardline._batch.run_batch`), to Ray
(:func:`shardline.ray.run_on_ray`) or to the endpoint probe
(:func:`shardline._endpoint_check.check_endpoint`). What a run does, and its
exit statuses, are documented where they are implemented.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ._cli_options import (
    UsageError,
    add_deadline_options,
    add_endpoint_options,
    add_pipeline_options,
    build_config,
)
from ._cli_ray import add_ray_options, ray_settings
from ._config import DEFAULT_BASE_URL, PipelineConfig
from ._exit import ExitStatus, print_error

if TYPE_CHECKING:
    from ._batch_io import BatchSettings

__all__ = ["check_command", "register", "resolve_run_settings", "run_check", "run_command"]

_EXIT_EPILOG = (
    f"exit status: {ExitStatus.OK} all ok, {ExitStatus.FAILED_ITEMS} some items failed, "
    f"{ExitStatus.USAGE} usage/config/file error or an endpoint that cannot work, "
    f"{ExitStatus.INTERRUPTED} interrupted, {ExitStatus.INTERNAL} internal error."
)


def _require_key(config: PipelineConfig) -> None:
    for endpoint in config.all_endpoints():
        if endpoint.api_key is None and endpoint.base_url.rstrip("/") == DEFAULT_BASE_URL:
            raise UsageError(
                f"OPENAI_API_KEY is not set, and {DEFAULT_BASE_URL} needs an API key; set it "
                "in the environment, or point --base-url (OPENAI_BASE_URL) at a server that "
                "needs none"
            )


def resolve_run_settings(args: argparse.Namespace, environ: Mapping[str, str]) -> BatchSettings:
    """Turn parsed ``shardline run`` options plus the environment into :class:`BatchSettings`.

    Raises:
        UsageError: for an invalid option or environment value, naming it.
    """
    # Here, not at the top: ``shardline --help`` needs neither events nor output files.
    from ._batch_io import BatchSettings, default_paths

    if args.resume and args.overwrite:
        raise UsageError(
            "--resume and --overwrite cannot be used together: --resume continues the "
            "output, --overwrite replaces it"
        )
    config = build_config(args, environ)
    _require_key(config)
    input_path = Path(args.input)
    out_default, events_default = default_paths(input_path)
    output = Path(args.output) if args.output else out_default
    events = Path(args.events) if args.events else events_default
    if output == events:
        raise UsageError(f"--output and --events must be different files, both are {output}")
    if output == input_path or events == input_path:
        raise UsageError(f"--output and --events must not be the input file {input_path}")
    return BatchSettings(
        input=input_path,
        output=output,
        events=events,
        report_json=Path(args.report_json) if args.report_json else None,
        html=Path(args.html) if args.html else None,
        config=config,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )


def register(subparsers: Any) -> None:
    """Add the ``run`` and ``check`` subcommands to the ``shardline`` parser."""
    run = subparsers.add_parser(
        "run",
        help="send a JSONL file of requests through a sharded pipeline",
        description=(
            "Send every line of INPUT (a JSON object with 'messages' or 'prompt', or 'input' "
            "with 'api': 'embeddings' or 'responses'; an optional 'id', and any other OpenAI "
            "parameters) to an OpenAI-compatible API. One result "
            "line per item is appended to the output as it finishes; every event goes to "
            "the events file; the run report is printed at the end. The API key is read "
            "from OPENAI_API_KEY only."
        ),
        epilog=(
            "defaults: output INPUT.out.jsonl, events INPUT.events.jsonl (next to the input). "
            + _EXIT_EPILOG
            + " Ctrl-C once drains, twice cancels; unfinished items are not written, so "
            "--resume runs them. A run whose first attempts all fail with connect_error or "
            "HTTP 401/403/404 stops and exits 2 (unless --no-fail-fast)."
        ),
    )
    run.add_argument("input", metavar="INPUT.jsonl", help="requests, one JSON object per line")
    add_endpoint_options(run)
    f = run.add_argument_group("files")
    f.add_argument("--output", "-o", metavar="OUT.jsonl", help="results (INPUT.out.jsonl)")
    f.add_argument("--events", metavar="EVENTS.jsonl", help="events (INPUT.events.jsonl)")
    f.add_argument("--report-json", metavar="FILE", help="also write the report as JSON")
    f.add_argument(
        "--html", metavar="FILE", help="also write the report with charts as an HTML page"
    )
    f.add_argument(
        "--resume",
        action="store_true",
        help="continue an existing output: skip ids already ok, retry failed ones, append",
    )
    f.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing output file (not with --resume)",
    )
    add_pipeline_options(run, demo=False)
    s = run.add_argument_group("safety")
    s.add_argument(
        "--check",
        action="store_true",
        help="first send one tiny request (max_tokens 1) to each endpoint, in the API of the "
        "input's first request; stop with exit 2 if one fails",
    )
    s.add_argument(
        "--no-fail-fast",
        action="store_true",
        help="keep going even when every first attempt fails with connect_error or "
        "HTTP 401/403/404 (for a server still starting)",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress display")
    add_ray_options(run)
    run.set_defaults(func=run_command)

    check = subparsers.add_parser(
        "check",
        help="send one tiny request to the endpoint and model, report ok or the cause",
        description=(
            "Send one tiny request (max_tokens 1, one attempt, no retry) to each endpoint "
            "a run would use, with its model, and print one line per endpoint: ok with the "
            "latency, or the cause of the failure (connect_error, HTTP 401, 404, ...). "
            "Takes the endpoint options and variables of 'shardline run'; 'shardline run "
            "--check' does the same before a run, in the API of the input's first request."
        ),
        epilog=f"exit status: {ExitStatus.OK} every endpoint ok, {ExitStatus.USAGE} a check "
        "failed or a usage error.",
    )
    add_endpoint_options(check)
    check.add_argument(
        "--api",
        choices=tuple(_PROBE_APIS),
        default="chat",
        help="the API to probe (default: chat)",
    )
    add_deadline_options(check, stall=False)
    check.set_defaults(func=check_command)


#: What ``shardline check --api`` takes (the keys of ``_endpoint_check.PROBES``,
#: named here so that ``--help`` imports neither trio nor httpx; a test keeps them equal).
_PROBE_APIS = ("chat", "completions", "embeddings", "responses")


def run_check(
    config: PipelineConfig,
    title: str,
    out: IO[str],
    err: IO[str],
    *,
    api: str = "chat",
    label: str = "check ",
) -> bool:
    """Probe every endpoint once; one line each (ok on ``out``, a failure on ``err``).

    Returns whether every endpoint answered.
    """
    import trio  # here, not at the top: ``shardline --help`` imports neither trio nor httpx

    from ._endpoint_check import check_endpoints

    results = trio.run(functools.partial(check_endpoints, config, api=api))
    for result in results:
        if result.ok:
            print(f"{title}: {label}{result.describe()}", file=out, flush=True)
        else:
            print(f"{title}: error: {label}{result.describe()}", file=err, flush=True)
    return all(result.ok for result in results)


def input_api(path: Path) -> str:
    """The API of the input's first usable request (``chat`` when it has none)."""
    from ._jsonl import read_input

    entries = read_input(path)
    try:
        for entry in entries:
            if entry.request is not None:
                return entry.request.api
    except OSError:
        pass  # the run itself reports an unreadable input, naming the file
    finally:
        entries.close()
    return "chat"


def run_command(args: argparse.Namespace) -> int:
    """``shardline run``: resolve options, maybe ``--check``, then run here or on Ray."""
    title = "shardline run"
    try:
        settings = resolve_run_settings(args, os.environ)
        on_ray = ray_settings(args) if args.ray else None
    except UsageError as exc:
        print_error(sys.stderr, title, str(exc))
        return ExitStatus.USAGE
    if args.check and not run_check(
        settings.config, title, sys.stderr, sys.stderr, api=input_api(settings.input)
    ):
        return ExitStatus.USAGE
    if on_ray is not None:
        from .ray import run_on_ray  # Ray itself is imported only when a run uses it

        return run_on_ray(settings, on_ray)
    from ._batch import run_batch  # the pipeline: trio and httpx, not needed for --help

    return run_batch(settings, fail_fast=not args.no_fail_fast)


def check_command(args: argparse.Namespace) -> int:
    """``shardline check``: one tiny request; exit 0 if it succeeded, 2 if not."""
    title = "shardline check"
    try:
        config = build_config(args, os.environ)
        _require_key(config)
    except UsageError as exc:
        print_error(sys.stderr, title, str(exc))
        return ExitStatus.USAGE
    ok = run_check(config, title, sys.stdout, sys.stderr, api=args.api, label="")
    return ExitStatus.OK if ok else ExitStatus.USAGE
