"""``shardline fake-server``: run the fault-injecting fake server as a process.

The first line of stdout is the base URL (``http://127.0.0.1:PORT/v1``),
flushed at once, so a parent process can read it and point clients at it::

    $ shardline fake-server --port 0 --faults "rate_limit=0.05,reset=0.01" --seed 7
    http://127.0.0.1:41237/v1

It serves until interrupted (Ctrl-C / SIGINT) or terminated (SIGTERM), then exits
0 without a traceback. A bad ``--faults`` spec or option exits 2 with a message
naming the problem.

``python -m shardline._cli_fake_server [OPTIONS]`` runs the same command without
loading the other subcommands; `shardline.testing.fake_server_process` uses it.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from typing import Any

from ._exit import ExitStatus

_EPILOG = """\
fault spec (--faults): comma-separated entries
  KIND=RATE[:param...]               drawn for a fraction RATE of requests (seeded)
  KIND@item=ID[/ATTEMPT][:param...]  scripted for one item (x-shardline-item-id header)
  KIND@request=N[:param...]          scripted for the N-th completion request
params: after=N  retry_after=SECONDS  duration=SECONDS  interval=SECONDS
        variant=NAME (malformed_shape only; without it a variant is drawn per request)
kinds: stall_headers stall_after_headers stall_mid drip rate_limit http_500
       http_502 http_503 reset truncate malformed error_event malformed_shape
       html_page
malformed_shape variants: choices_not_list choice_not_object delta_not_object
       message_not_object content_not_string finish_reason_not_string
       usage_negative usage_not_integer error_not_object json_array json_scalar
       not_utf8 garbage_after_finish line_too_long
example: --faults "rate_limit=0.05:retry_after=2,stall_mid=0.01:after=3,reset@item=a/1"
         --faults "malformed_shape=0.3,malformed_shape@item=a/1:variant=content_not_string"
"""


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text!r}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 0 and 65535, got {text!r}")
    return value


def register(subparsers: Any) -> None:
    """Add the ``fake-server`` subcommand to the ``shardline`` parser.

    Args:
        subparsers: The object returned by ``ArgumentParser.add_subparsers()``.
    """
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "fake-server",
        help="run the fault-injecting OpenAI-compatible fake server",
        description=(
            "Serve a fake OpenAI-compatible API (chat/completions, completions, embeddings, "
            "responses, models) that misbehaves on request. Prints its base URL on the first "
            "line of stdout and serves until Ctrl-C."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=_port, default=0, help="TCP port; 0 picks a free one")
    parser.add_argument("--faults", default="", metavar="SPEC", help="fault spec (see below)")
    parser.add_argument("--seed", type=int, default=0, help="seed of rate-drawn faults")
    parser.add_argument(
        "--ttft", type=_non_negative_float, default=0.0, metavar="S", help="time to first token"
    )
    parser.add_argument(
        "--itl",
        type=_non_negative_float,
        default=0.0,
        metavar="S",
        help="inter-token latency (seconds per token)",
    )
    parser.add_argument(
        "--tokens-per-event", type=_positive_int, default=1, metavar="N", help="tokens per event"
    )
    parser.add_argument(
        "--default-max-tokens",
        type=_positive_int,
        default=None,
        metavar="N",
        help="completion tokens when a request sets no max_tokens (default 16)",
    )
    parser.add_argument(
        "--model",
        action="append",
        default=None,
        metavar="NAME",
        help="model listed by GET /v1/models (repeatable)",
    )
    parser.add_argument(
        "--max-connections",
        type=_positive_int,
        default=None,
        metavar="N",
        help="connections served at once (default 4096)",
    )
    load = parser.add_argument_group(
        "load models",
        "How the server behaves under load (see shardline.testing.LoadModel). "
        "llama.cpp's server is --preempt --no-usage; vLLM is --capacity K --overload queue.",
    )
    load.add_argument(
        "--capacity",
        type=_positive_int,
        default=None,
        metavar="K",
        help="completion requests in flight at most (default: no limit)",
    )
    load.add_argument(
        "--overload",
        choices=("429", "503", "queue"),
        default="429",
        help="beyond --capacity: refuse with 429 or 503, or queue first come first served "
        "(default 429)",
    )
    load.add_argument(
        "--capacity-retry-after",
        type=_non_negative_float,
        default=None,
        metavar="S",
        help="retry-after seconds on a capacity refusal (default: no header)",
    )
    load.add_argument(
        "--rpm", type=_positive_int, default=None, metavar="N", help="requests per minute limit"
    )
    load.add_argument(
        "--tpm",
        type=_positive_int,
        default=None,
        metavar="N",
        help="tokens (prompt + max_tokens) per minute limit",
    )
    load.add_argument(
        "--preempt",
        action="store_true",
        help="one request at a time; a new request cuts the one in flight (llama.cpp)",
    )
    load.add_argument(
        "--no-usage",
        action="store_true",
        help="never send the usage chunk of a stream, even when asked",
    )
    load.add_argument(
        "--slow-first-share",
        type=_non_negative_float,
        default=0.0,
        metavar="F",
        help="share of first attempts (x-shardline-attempt: 1) with a slow first token",
    )
    load.add_argument(
        "--slow-first-delay",
        type=_non_negative_float,
        default=0.0,
        metavar="S",
        help="extra seconds before the first token of a slow first attempt",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the server until Ctrl-C. Returns the exit status."""
    import trio

    from .testing import DEFAULT_MAX_TOKENS, DEFAULT_MODEL, FaultPlan, LoadModel, TimingModel
    from .testing._faults import FaultSpecError
    from .testing._server import DEFAULT_MAX_CONNECTIONS, serve_fake_server

    try:
        plan = FaultPlan.parse(args.faults)
    except FaultSpecError as exc:
        print(f"shardline fake-server: --faults: {exc}", file=sys.stderr)
        return ExitStatus.USAGE
    timing = TimingModel(ttft=args.ttft, itl=args.itl, tokens_per_event=args.tokens_per_event)
    try:
        load = LoadModel(
            capacity=args.capacity,
            overload=args.overload,
            retry_after=args.capacity_retry_after,
            rpm=args.rpm,
            tpm=args.tpm,
            preempt=args.preempt,
            slow_first_share=args.slow_first_share,
            slow_first_delay=args.slow_first_delay,
        )
    except ValueError as exc:
        print(f"shardline fake-server: {exc}", file=sys.stderr)
        return ExitStatus.USAGE

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_sigterm, nursery.cancel_scope)
            server = await nursery.start(
                _serve,
                serve_fake_server,
                {
                    "host": args.host,
                    "port": args.port,
                    "faults": plan,
                    "timing": timing,
                    "seed": args.seed,
                    "default_max_tokens": args.default_max_tokens or DEFAULT_MAX_TOKENS,
                    "models": tuple(args.model or (DEFAULT_MODEL,)),
                    "max_connections": args.max_connections or DEFAULT_MAX_CONNECTIONS,
                    "load": load,
                    "no_usage": args.no_usage,
                },
            )
            print(server.base_url, flush=True)
            print(
                f"shardline fake-server: serving {server.base_url} "
                f"(faults: {args.faults or 'none'}, seed {args.seed}); Ctrl-C to stop",
                file=sys.stderr,
                flush=True,
            )

    # Ctrl-C must work even when the parent started us with SIGINT ignored
    # (as shells do for background jobs).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    status = ExitStatus.OK
    try:
        trio.run(main)
    except* KeyboardInterrupt:
        print("shardline fake-server: stopped", file=sys.stderr, flush=True)
    except* OSError as group:
        print(f"shardline fake-server: cannot listen: {group.exceptions[0]}", file=sys.stderr)
        status = ExitStatus.USAGE
    return status


async def _stop_on_sigterm(scope: Any) -> None:
    """SIGTERM stops the server as cleanly as Ctrl-C (exit 0)."""
    import trio

    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async for _ in signals:
            print("shardline fake-server: stopped", file=sys.stderr, flush=True)
            scope.cancel()
            return


async def _serve(fn: Any, kwargs: dict[str, Any], *, task_status: Any) -> None:
    await fn(task_status=task_status, **kwargs)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``shardline fake-server`` with ``argv`` (the options only). Returns the exit status."""
    parser = argparse.ArgumentParser(prog="shardline")
    register(parser.add_subparsers())
    args = parser.parse_args(["fake-server", *(sys.argv[1:] if argv is None else argv)])
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
