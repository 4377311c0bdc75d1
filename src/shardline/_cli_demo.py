"""``shardline demo``: generated items through the in-process fake server, with faults.

This module owns the demo only: its options, its generated input and the fake
server it starts; the run itself is :func:`shardline._batch.run_batch`, as for
``shardline run``. Needs no API key and no network.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs

from ._backoff import Backoff
from ._cli_options import UsageError, add_pipeline_options, build_config
from ._exit import ExitStatus, print_error

__all__ = ["DEFAULT_DEMO_FAULTS", "demo_command", "register", "write_demo_input"]

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


def register(subparsers: Any) -> None:
    """Add the ``demo`` subcommand to the ``shardline`` parser."""
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
    add_pipeline_options(demo, demo=True)
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
    demo.add_argument(
        "--html", metavar="FILE", help="also write the report with charts as an HTML page"
    )
    demo.add_argument("--no-progress", action="store_true", help="no progress display")
    demo.set_defaults(func=demo_command)


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
    # Here, not at the top: the other subcommands (``run``, ``--help``) do not need them.
    from ._batch_io import BatchSettings

    title = "shardline demo"
    try:
        if args.items < 1:
            raise UsageError(f"invalid value for --items: must be >= 1, got {args.items}")
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
        print_error(sys.stderr, title, str(exc))
        return ExitStatus.USAGE
    config = attrs.evolve(config, endpoint=attrs.evolve(config.endpoint, model="shardline-demo"))
    workdir = Path(tempfile.mkdtemp(prefix="shardline-demo-"))
    input_path = workdir / "demo.jsonl"
    write_demo_input(input_path, args.items, args.seed)
    settings = BatchSettings(
        input=input_path,
        output=Path(args.output) if args.output else workdir / "demo.out.jsonl",
        events=Path(args.events) if args.events else workdir / "demo.events.jsonl",
        report_json=Path(args.report_json) if args.report_json else None,
        html=Path(args.html) if args.html else None,
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

    from ._batch import run_batch  # the pipeline: trio and httpx, not needed for --help

    return run_batch(settings, server=server)
