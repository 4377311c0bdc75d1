"""The ``shardline`` command: a thin dispatcher over subcommand modules.

Each subcommand lives in its own module with a ``register(subparsers)`` function
that adds its parser and sets ``func`` to a callable ``(args) -> int`` returning
the exit status. Exit statuses: 0 all ok; 1 finished with failed items; 2 usage,
config or file errors; 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

EXIT_OK = 0
EXIT_FAILED_ITEMS = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    from . import _cli_fake_server, _cli_report, _cli_run

    parser = argparse.ArgumentParser(
        prog="shardline",
        description="Hang-proof, sharded requests to OpenAI-compatible LLM APIs.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"shardline {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _cli_run.register(sub)
    _cli_report.register(sub)
    _cli_fake_server.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``shardline`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.func(args)
    except KeyboardInterrupt:
        print("shardline: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
