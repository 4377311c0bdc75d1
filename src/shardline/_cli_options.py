"""The options ``run``, ``demo`` and ``check`` share, and turning them into a pipeline config.

This module owns the command line's view of a :class:`~shardline.PipelineConfig`:
the endpoint, pipeline and deadline option groups (their help shows the
library's own defaults, imported, never restated), :func:`build_config`
(flags win over environment variables, which win over the defaults), and
:class:`UsageError`, whose message names the option at fault. It runs nothing.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

import attrs

from ._backoff import DEFAULT_MAX_ATTEMPTS, Backoff, RetryPolicy
from ._config import (
    DEFAULT_ATTEMPT_TIMEOUT,
    DEFAULT_CONCURRENCY,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_DRAIN_GRACE,
    DEFAULT_HEDGE_BUDGET,
    DEFAULT_QUEUE_SIZE,
    DEFAULT_SHARD_COUNT,
    DEFAULT_STALL_TIMEOUT,
    DEFAULT_TTFT_TIMEOUT,
    TRANSPORTS,
    Deadlines,
    Endpoint,
    Hedging,
    PipelineConfig,
)
from ._exceptions import ConfigError

__all__ = [
    "UsageError",
    "add_deadline_options",
    "add_endpoint_options",
    "add_pipeline_options",
    "build_config",
]


class UsageError(Exception):
    """A bad option, environment value or file: exit status 2, nothing sent."""


#: Which option sets the parameter a ConfigError message starts with.
_OPTION_FOR_PARAM = {
    "base_url": "--base-url (OPENAI_BASE_URL)",
    "transport": "--transport (SHARDLINE_TRANSPORT)",
    "shard_count": "--shards (SHARD_COUNT)",
    "concurrency": "--concurrency (LLM_CONCURRENCY)",
    "queue_size": "--queue-size",
    "rpm": "--rpm",
    "tpm": "--tpm",
    "max_attempts": "--max-attempts",
    "connect": "--connect-timeout",
    "ttft": "--ttft-timeout",
    "stall": "--stall-timeout",
    "attempt": "--attempt-timeout",
    "drain_grace": "--drain-grace",
    "after": "--hedge-after",
    "budget": "--hedge-budget",
}


def _config_error(exc: ConfigError) -> UsageError:
    message = str(exc)
    param = message.split(" ", 1)[0]
    option = _OPTION_FOR_PARAM.get(param)
    if option is not None:
        return UsageError(f"invalid value for {option}: {message}")
    return UsageError(f"invalid configuration: {message}")


def build_config(
    args: argparse.Namespace,
    environ: Mapping[str, str],
    *,
    backoff: Backoff | None = None,
    retry: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> PipelineConfig:
    """The :class:`PipelineConfig` for parsed options and the environment.

    Flags win over environment variables, which win over the library's
    defaults; an option a subcommand does not have keeps its default.
    ``backoff`` and ``retry`` (extra :class:`RetryPolicy` fields) let the demo
    use delays that suit the fake server.

    Raises:
        UsageError: naming the option (and its variable) whose value is invalid.
    """
    try:
        urls: list[str] = getattr(args, "base_url", None) or []
        endpoint = Endpoint.from_env(
            environ,
            base_url=urls[0] if urls else None,
            model=getattr(args, "model", None),
            transport=getattr(args, "transport", None),
        )
        shard_count = getattr(args, "shards", None)
        if len(urls) > 1:
            # Several replicas: one endpoint each, sharing the key, model and headers.
            overrides.setdefault(
                "endpoints", tuple(attrs.evolve(endpoint, base_url=u) for u in urls)
            )
            if shard_count is None:
                shard_count = len(urls)
        policy = RetryPolicy.from_env(
            environ,
            backoff=backoff if backoff is not None else Backoff.from_env(environ),
            max_attempts=getattr(args, "max_attempts", None),
            **dict(retry or {}),
        )
        deadlines = Deadlines(
            connect=getattr(args, "connect_timeout", DEFAULT_CONNECT_TIMEOUT),
            ttft=getattr(args, "ttft_timeout", DEFAULT_TTFT_TIMEOUT),
            stall=getattr(args, "stall_timeout", DEFAULT_STALL_TIMEOUT),
            attempt=getattr(args, "attempt_timeout", DEFAULT_ATTEMPT_TIMEOUT),
        )
        return PipelineConfig.from_env(
            environ,
            endpoint=endpoint,
            shard_count=shard_count,
            concurrency=getattr(args, "concurrency", None),
            queue_size=getattr(args, "queue_size", None),
            routing=getattr(args, "routing", None),
            rpm=getattr(args, "rpm", None),
            tpm=getattr(args, "tpm", None),
            retry=policy,
            deadlines=deadlines,
            drain_grace=getattr(args, "drain_grace", None),
            hedging=_hedging(args),
            **overrides,
        )
    except ConfigError as exc:
        raise _config_error(exc) from None


def _hedging(args: argparse.Namespace) -> Hedging | None:
    """The :class:`Hedging` of ``--hedge-after`` / ``--hedge-budget`` (either turns it on)."""
    after = getattr(args, "hedge_after", None)
    budget = getattr(args, "hedge_budget", None)
    if after is None and budget is None:
        return None
    return Hedging(
        after="p95" if after is None else after,
        budget=DEFAULT_HEDGE_BUDGET if budget is None else budget,
    )


def _hedge_after(text: str) -> float | str:
    if text.strip().lower() in ("auto", "p95"):
        return "p95"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 'auto' or a number of seconds, got {text!r}"
        ) from None


def _seconds(text: str) -> float | None:
    if text.strip().lower() in ("none", "off"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of seconds or 'none', got {text!r}"
        ) from None


def add_endpoint_options(p: argparse.ArgumentParser) -> None:
    """``--base-url`` and ``--model`` (the key comes from ``OPENAI_API_KEY`` only)."""
    e = p.add_argument_group("endpoint")
    e.add_argument(
        "--base-url",
        metavar="URL",
        action="append",
        help=(
            "API root (env OPENAI_BASE_URL; default: OpenAI's); repeat it for several "
            "replicas (env SHARDLINE_BASE_URLS), which share the shards, the key and the model"
        ),
    )
    e.add_argument("--model", metavar="NAME", help="default model (env OPENAI_MODEL)")
    e.add_argument(
        "--transport",
        choices=TRANSPORTS,
        help="what carries requests under httpx: 'lean', shardline's HTTP/1.1 transport "
        "(less CPU per streamed event; no HTTP/2, gives way to a proxy), or 'httpx', httpx's "
        "own (env SHARDLINE_TRANSPORT; default: lean, httpx with HTTP/2)",
    )


def add_deadline_options(p: argparse.ArgumentParser, *, stall: bool = True) -> None:
    """The per-attempt deadlines, in seconds or ``none``; defaults are the library's."""
    d = p.add_argument_group("deadlines (seconds, or 'none')")
    d.add_argument(
        "--connect-timeout",
        type=_seconds,
        default=DEFAULT_CONNECT_TIMEOUT,
        metavar="S",
        help=f"to get a connection (default: {DEFAULT_CONNECT_TIMEOUT:g})",
    )
    d.add_argument(
        "--ttft-timeout",
        type=_seconds,
        default=DEFAULT_TTFT_TIMEOUT,
        metavar="S",
        help=f"from sending to the first token (default: {DEFAULT_TTFT_TIMEOUT:g})",
    )
    if stall:
        d.add_argument(
            "--stall-timeout",
            type=_seconds,
            default=DEFAULT_STALL_TIMEOUT,
            metavar="S",
            help="between two tokens; keep-alives do not count "
            f"(default: {DEFAULT_STALL_TIMEOUT:g})",
        )
    d.add_argument(
        "--attempt-timeout",
        type=_seconds,
        default=DEFAULT_ATTEMPT_TIMEOUT,
        metavar="S",
        help=f"for a whole attempt (default: {DEFAULT_ATTEMPT_TIMEOUT:g})",
    )


#: The demo's own shape and deadlines: short, to suit the in-process fake server.
_DEMO_SHARDS = 8
_DEMO_DEADLINES = {
    "connect_timeout": 2.0,
    "ttft_timeout": 1.0,
    "stall_timeout": 0.5,
    "attempt_timeout": 10.0,
    "drain_grace": 2.0,
}


def add_pipeline_options(p: argparse.ArgumentParser, *, demo: bool) -> None:
    """Shards and concurrency; for ``run`` also limits, attempts, deadlines and drain grace."""
    g = p.add_argument_group("pipeline")
    g.add_argument(
        "--shards",
        type=int,
        default=_DEMO_SHARDS if demo else None,
        metavar="N",
        help="number of shards, each with its own queue, cap and connection pool "
        + (
            f"(default: {_DEMO_SHARDS})"
            if demo
            else f"(env SHARD_COUNT; default: {DEFAULT_SHARD_COUNT})"
        ),
    )
    g.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY if demo else None,
        metavar="N",
        help="in-flight requests per shard "
        + (
            f"(default: {DEFAULT_CONCURRENCY})"
            if demo
            else f"(env LLM_CONCURRENCY; default: {DEFAULT_CONCURRENCY})"
        ),
    )
    if demo:
        p.set_defaults(max_attempts=None, **_DEMO_DEADLINES)
        return
    g.add_argument(
        "--queue-size",
        type=int,
        metavar="N",
        help=f"queue bound per shard (default: {DEFAULT_QUEUE_SIZE})",
    )
    g.add_argument(
        "--routing",
        choices=("least_loaded", "hash"),
        help="item to shard: the least loaded shard (the default), or a stable hash of the id",
    )
    g.add_argument("--rpm", type=float, metavar="N", help="requests per minute, all shards")
    g.add_argument("--tpm", type=float, metavar="N", help="tokens per minute, all shards")
    g.add_argument(
        "--max-attempts",
        type=int,
        metavar="N",
        help=f"attempts per item, the first included (default: {DEFAULT_MAX_ATTEMPTS})",
    )
    add_deadline_options(p)
    h = p.add_argument_group("hedged requests (off unless one of these is given)")
    h.add_argument(
        "--hedge-after",
        type=_hedge_after,
        metavar="auto|S",
        help="send a second leg of an attempt with no content after S seconds, on another "
        "shard; the first with content wins ('auto': the endpoint's learned p95 TTFT)",
    )
    h.add_argument(
        "--hedge-budget",
        type=float,
        metavar="FRACTION",
        help=f"hedges per request, at most (default: {DEFAULT_HEDGE_BUDGET:g})",
    )
    p.add_argument_group("shutdown").add_argument(
        "--drain-grace",
        type=float,
        default=None,
        metavar="S",
        help="after Ctrl-C, how long in-flight requests may take to finish "
        f"(default: {DEFAULT_DRAIN_GRACE:g})",
    )
