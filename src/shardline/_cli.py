"""The ``shardline`` command: a thin dispatcher over subcommand modules.

Each subcommand lives in its own module with a ``register(subparsers)`` function
that adds its parser and sets ``func`` to a callable ``(args) -> int`` returning
the exit status (:class:`shardline._exit.ExitStatus`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import _cli_demo, _cli_fake_server, _cli_report, _cli_run
from ._exit import ExitStatus


class _Version(argparse.Action):
    """``--version``, reading the installed version only when asked (importlib.metadata)."""

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        from . import __version__

        # On stdout, as argparse's own version action prints it.
        print(f"shardline {__version__}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The ``shardline`` parser with every subcommand (the docs hook renders its help)."""
    parser = argparse.ArgumentParser(
        prog="shardline",
        description="Hang-proof, sharded requests to OpenAI-compatible LLM APIs.",
    )
    parser.add_argument(
        "--version", action=_Version, nargs=0, help="show program's version number and exit"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _cli_run.register(sub)
    _cli_demo.register(sub)
    _cli_report.register(sub)
    _cli_fake_server.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``shardline`` console script."""
    # httpx imports its own command line (click, rich, pygments: about 0.2 s) whenever
    # click is installed (encode/httpx#3547); this process never runs it, so mark it
    # absent: httpx then defines its stub ``httpx.main``. Nothing else changes.
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.func(args)
    except KeyboardInterrupt:
        print("shardline: interrupted", file=sys.stderr)
        return ExitStatus.INTERRUPTED
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
