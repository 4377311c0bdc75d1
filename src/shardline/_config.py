"""Configuration value objects: endpoint, deadlines, pipeline.

Every config object is a frozen attrs class with keyword-only arguments and
validators whose messages name the parameter and the bound. ``None`` means
"disabled". Build from the environment with the ``from_env()`` classmethods.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any, Literal
from urllib.parse import urlencode

import attrs

from ._backoff import RetryPolicy
from ._exceptions import ConfigError
from ._validate import integer, number

__all__ = [
    "DEFAULT_ATTEMPT_TIMEOUT",
    "DEFAULT_BASE_URL",
    "DEFAULT_BREAKER_COOLDOWN",
    "DEFAULT_BREAKER_MAX_COOLDOWN",
    "DEFAULT_BREAKER_THRESHOLD",
    "DEFAULT_CONCURRENCY",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_DRAIN_GRACE",
    "DEFAULT_HEDGE_BUDGET",
    "DEFAULT_HEDGE_MIN_SAMPLES",
    "DEFAULT_QUEUE_SIZE",
    "DEFAULT_SHARD_COUNT",
    "DEFAULT_STALL_TIMEOUT",
    "DEFAULT_TTFT_TIMEOUT",
    "TRANSPORTS",
    "Deadlines",
    "Endpoint",
    "FlowControl",
    "Hedging",
    "PipelineConfig",
]

#: With several endpoints: health failures in a row that open an endpoint's circuit.
DEFAULT_BREAKER_THRESHOLD = 5
#: Seconds an open circuit waits before its probe; doubled by each failed probe.
DEFAULT_BREAKER_COOLDOWN = 5.0
#: The longest cooldown, however many probes failed.
DEFAULT_BREAKER_MAX_COOLDOWN = 60.0

DEFAULT_BASE_URL = "https://api.openai.com/v1"
#: What carries an endpoint's requests under httpx (``Endpoint.transport``).
Transport = Literal["httpx", "lean"]
#: The values of ``Endpoint.transport``.
TRANSPORTS: tuple[Transport, ...] = ("httpx", "lean")
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_TTFT_TIMEOUT = 60.0
DEFAULT_STALL_TIMEOUT = 30.0
DEFAULT_ATTEMPT_TIMEOUT = 600.0


def env_int(name: str, environ: Mapping[str, str]) -> int | None:
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name} must be an integer, got {raw!r}") from None


@attrs.frozen(kw_only=True)
class Deadlines:
    """How long each phase of one attempt may take; ``None`` disables a deadline.

    Unlike a socket read timeout, these know what progress is: only a content
    event (a non-empty text delta, a finish reason) resets the stall clock.
    SSE comments, keep-alive bytes, empty deltas and role-only chunks do not.

    Args:
        connect: Seconds to get a connection (from the shard's pool, or a new one).
        ttft: Seconds from sending the request to the first content event.
        stall: Seconds allowed between two content events.
        attempt: Wall-clock seconds for the whole exchange.

    The caller's own cancel scope bounds an item across all its retries;
    these bound one attempt.
    """

    connect: float | None = attrs.field(
        default=DEFAULT_CONNECT_TIMEOUT,
        validator=number("connect", gt=0, unit="seconds", optional=True),
    )
    ttft: float | None = attrs.field(
        default=DEFAULT_TTFT_TIMEOUT, validator=number("ttft", gt=0, unit="seconds", optional=True)
    )
    stall: float | None = attrs.field(
        default=DEFAULT_STALL_TIMEOUT,
        validator=number("stall", gt=0, unit="seconds", optional=True),
    )
    attempt: float | None = attrs.field(
        default=DEFAULT_ATTEMPT_TIMEOUT,
        validator=number("attempt", gt=0, unit="seconds", optional=True),
    )


def _default_transport(endpoint: Endpoint) -> Transport:
    """``"lean"``, or httpx's own transport where HTTP/2 needs it."""
    return "httpx" if endpoint.http2 else "lean"


def _redacted_repr(value: str | None) -> str:
    return "None" if value is None else "'***'"


@attrs.frozen(kw_only=True)
class Endpoint:
    """Where requests go and how they authenticate.

    Args:
        base_url: The API root, for example ``http://127.0.0.1:8000/v1``.
        api_key: Sent as ``Authorization: Bearer …`` (or ``api-key`` for Azure).
            Never shown in reprs, events, logs or errors.
        model: The default model for requests that name none.
        headers: Extra headers sent with every request.
        azure_api_version: When set, use Azure OpenAI conventions: an
            ``api-key`` header and an ``api-version`` query parameter.
        http2: Use HTTP/2 (needs the ``shardline[http2]`` extra).
        transport: What carries the requests under httpx: ``"lean"``,
            shardline's HTTP/1.1 transport on trio sockets, with one LIFO stack
            of idle connections per shard and less client CPU per streamed
            event (the default), or ``"httpx"``, httpx's own transport
            (httpcore's pool; the default with ``http2=True``). ``"lean"`` does
            not speak HTTP/2; with a proxy set in the environment it gives way
            to httpx's transport.
        stream: Stream responses (the default): TTFT and stall deadlines need it.
        weight: This endpoint's share of the shards when a pipeline has
            several (``PipelineConfig.endpoints``); relative, > 0.
    """

    base_url: str = attrs.field(default=DEFAULT_BASE_URL)
    api_key: str | None = attrs.field(default=None, repr=_redacted_repr)
    model: str | None = None
    headers: Mapping[str, str] = attrs.field(factory=dict, converter=dict)
    azure_api_version: str | None = None
    http2: bool = False
    transport: Transport = attrs.field(default=attrs.Factory(_default_transport, takes_self=True))
    stream: bool = True
    weight: float = attrs.field(default=1.0, validator=number("weight", gt=0))

    @base_url.validator
    def _check_base_url(self, _attr: object, value: str) -> None:
        if not isinstance(value, str) or not value.startswith(("http://", "https://")):
            raise ConfigError(f"base_url must start with http:// or https://, got {value!r}")

    @transport.validator
    def _check_transport(self, _attr: object, value: object) -> None:
        if value not in TRANSPORTS:
            raise ConfigError(f"transport must be 'httpx' or 'lean', got {value!r}")
        if value == "lean" and self.http2:
            raise ConfigError(
                "transport='lean' speaks HTTP/1.1 only: use transport='httpx' with http2=True"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Endpoint:
        """Build from ``OPENAI_BASE_URL``, ``OPENAI_API_KEY``, ``OPENAI_MODEL``,
        ``OPENAI_API_VERSION`` and ``SHARDLINE_TRANSPORT``.

        Keyword overrides that are not ``None`` win over the environment.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        if env.get("OPENAI_BASE_URL"):
            values["base_url"] = env["OPENAI_BASE_URL"]
        if env.get("OPENAI_API_KEY"):
            values["api_key"] = env["OPENAI_API_KEY"]
        if env.get("OPENAI_MODEL"):
            values["model"] = env["OPENAI_MODEL"]
        if env.get("OPENAI_API_VERSION"):
            values["azure_api_version"] = env["OPENAI_API_VERSION"]
        if env.get("SHARDLINE_TRANSPORT", "").strip():
            values["transport"] = env["SHARDLINE_TRANSPORT"].strip().lower()
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def auth_headers(self) -> dict[str, str]:
        """Headers to send: extra headers plus authentication."""
        out = dict(self.headers)
        if self.api_key:
            if self.azure_api_version is not None:
                out["api-key"] = self.api_key
            else:
                out["Authorization"] = f"Bearer {self.api_key}"
        return out

    def url_for(self, path: str) -> str:
        """The full URL of an API path, for example ``chat/completions``.

        With ``azure_api_version`` set it carries the ``api-version`` query parameter.
        """
        url = self.base_url.rstrip("/") + "/" + path.lstrip("/")
        if self.azure_api_version is not None:
            url += "?" + urlencode({"api-version": self.azure_api_version})
        return url

    def safe_dict(self) -> dict[str, Any]:
        """A JSON-able description without secrets (for the run-start event)."""
        return {
            "base_url": self.base_url,
            "model": self.model,
            "api_key_set": self.api_key is not None,
            "header_names": sorted(self.headers),
            "azure_api_version": self.azure_api_version,
            "http2": self.http2,
            "transport": self.transport,
            "stream": self.stream,
            "weight": self.weight,
        }


DEFAULT_SHARD_COUNT = 1
DEFAULT_CONCURRENCY = 16
DEFAULT_QUEUE_SIZE = 64
DEFAULT_DRAIN_GRACE = 30.0


@attrs.frozen(kw_only=True)
class FlowControl:
    """How a pipeline fits what it sends to what the server can take.

    With ``adaptive`` on (the default), ``PipelineConfig.concurrency`` is each
    shard's *ceiling*, and one live in-flight limit per endpoint, shared by its
    shards, moves between ``floor`` and ``shard_count * concurrency``: down
    (x0.9) on overload signals (429, 503, a cut stream, a timeout while the
    server otherwise answers), up by one on successes while the limit is in
    use, and held back when TTFT rises over its no-load floor (servers that
    queue instead of refusing). A server's capacity belongs to the server:
    a one-at-a-time server gets one request at a time, however many shards.
    See the flow-control explanation page for the algorithm and its measurements.

    Example::

        FlowControl(adaptive=False)   # a fixed cap: concurrency per shard, always

    Args:
        adaptive: Adapt the in-flight limit (``False``: a fixed
            ``concurrency`` per shard, as in a plain semaphore pattern).
        floor: The lowest the limit goes (>= 1).
        initial: Where the limit starts (``None``: 4, or the ceiling if lower);
            it grows by one per success until the server objects.
        pace_headers: Read ``x-ratelimit-*`` headers (OpenAI's, and other
            providers' variants) and wait before a send would overrun what
            the server says remains, so 429s become rare instead of being how
            the limit is found.
        breaker_threshold: With several endpoints, health failures in a row
            (connection refused or lost, 5xx, timeouts, cut streams) that open
            an endpoint's circuit: its shards send no new attempt there until
            a probe succeeds.
        breaker_cooldown: Seconds an open circuit waits before its probe
            (doubled by each failed probe, up to 60 s).
    """

    adaptive: bool = True
    floor: int = attrs.field(default=1, validator=integer("floor", ge=1))
    initial: int | None = attrs.field(
        default=None, validator=integer("initial", ge=1, optional=True)
    )
    pace_headers: bool = True
    breaker_threshold: int = attrs.field(
        default=DEFAULT_BREAKER_THRESHOLD, validator=integer("breaker_threshold", ge=1)
    )
    breaker_cooldown: float = attrs.field(
        default=DEFAULT_BREAKER_COOLDOWN,
        validator=number("breaker_cooldown", gt=0, unit="seconds"),
    )


def _endpoint_tuple(value: Iterable[Endpoint]) -> tuple[Endpoint, ...]:
    return tuple(value)


DEFAULT_HEDGE_BUDGET = 0.05
DEFAULT_HEDGE_MIN_SAMPLES = 20
_hedge_seconds = number("after", gt=0, unit="seconds")


def _hedge_after(inst: object, attr: object, value: object) -> None:
    if isinstance(value, str):
        if value != "p95":
            raise ConfigError(f"after must be 'p95' or a number of seconds, got {value!r}")
        return
    _hedge_seconds(inst, attr, value)


@attrs.frozen(kw_only=True)
class Hedging:
    """Hedged requests: a second leg for an attempt slow to its first token.

    An attempt with no content after ``after`` seconds gets one hedge: the same
    request, sent on another shard. The first leg with content wins; the other
    is cancelled at once (its connection closed, so the server can abort it).
    "The Tail at Scale" reports a p99.9 cut from 1,800 ms to 74 ms this way for
    2 % more requests. See the hedging how-to.

    Example::

        PipelineConfig(hedging=Hedging())                # after the learned p95 TTFT
        PipelineConfig(hedging=Hedging(after=2.0))       # after 2 s without content

    Args:
        after: ``"p95"``: the 95th percentile of the endpoint's recent TTFTs
            (learned from the last 256, once ``min_samples`` are in), or a
            number of seconds.
        budget: Hedges at most this share of requests (a token bucket filled
            by requests, gRPC retry throttling's shape). Hedges are not retries
            and do not spend the retry budget.
        min_samples: TTFTs seen on the endpoint before ``after="p95"`` hedges at all.
    """

    after: float | Literal["p95"] = attrs.field(default="p95", validator=_hedge_after)
    budget: float = attrs.field(
        default=DEFAULT_HEDGE_BUDGET, validator=number("budget", gt=0, le=1)
    )
    min_samples: int = attrs.field(
        default=DEFAULT_HEDGE_MIN_SAMPLES, validator=integer("min_samples", ge=1)
    )


def _routing(_inst: object, _attr: object, value: str) -> None:
    if value not in ("hash", "least_loaded"):
        raise ConfigError(f"routing must be 'hash' or 'least_loaded', got {value!r}")


@attrs.frozen(kw_only=True)
class PipelineConfig:
    """Everything a pipeline needs to know, validated up front.

    Example::

        config = PipelineConfig(
            endpoint=Endpoint(base_url="http://127.0.0.1:8000/v1", model="m"),
            shard_count=8,
            concurrency=16,
        )

    Args:
        endpoint: Where requests go (:class:`Endpoint`).
        endpoints: Several replicas of one service, instead of ``endpoint``:
            the shards are spread over them by weight (each gets at least
            one), each shard talks to one endpoint, and each endpoint has its
            own adaptive limit, header pacer and circuit breaker. An item whose
            attempt failed retries on another endpoint when one is healthy.
        shard_count: Number of shards, each with its own queue, cap and pool.
        concurrency: Per-shard in-flight cap (and connection pool size).
        queue_size: Per-shard queue bound. Memory held by queued items is at
            most ``shard_count * queue_size`` requests.
        routing: ``"least_loaded"`` (the default: each item goes to the shard
            with the fewest items queued or taken, so no slot idles while
            another shard has a backlog) or ``"hash"`` (a stable hash of the
            item id: the same id always lands on the same shard, reproducible
            placement at the price of uneven queues).
        rpm: Requests per minute over any 60 s window, all shards together
            (``None``: no limit). Retries count.
        tpm: Tokens per minute over any 60 s window (``None``: no limit). Each
            attempt is charged an estimate (prompt + max_tokens) and reconciled
            with the usage the server reports.
        retry: The :class:`RetryPolicy` (attempts, backoff, Retry-After, budget).
        deadlines: The per-attempt :class:`Deadlines`.
        drain_grace: Seconds in-flight work may take to finish when the
            pipeline is left, before it is cancelled.
        flow: The :class:`FlowControl` (adaptive in-flight limit, header pacing).
        hedging: The :class:`Hedging` of attempts slow to their first token
            (``None``, the default: no hedged requests).
        seed: Seeds the jitter of backoff delays, for reproducible runs.
    """

    endpoint: Endpoint = attrs.field(factory=Endpoint)
    endpoints: tuple[Endpoint, ...] = attrs.field(default=(), converter=_endpoint_tuple)
    shard_count: int = attrs.field(
        default=DEFAULT_SHARD_COUNT, validator=integer("shard_count", ge=1)
    )
    concurrency: int = attrs.field(
        default=DEFAULT_CONCURRENCY, validator=integer("concurrency", ge=1)
    )
    queue_size: int = attrs.field(default=DEFAULT_QUEUE_SIZE, validator=integer("queue_size", ge=1))
    routing: Literal["hash", "least_loaded"] = attrs.field(
        default="least_loaded", validator=_routing
    )
    rpm: float | None = attrs.field(
        default=None, validator=number("rpm", gt=0, unit="requests per minute", optional=True)
    )
    tpm: float | None = attrs.field(
        default=None, validator=number("tpm", gt=0, unit="tokens per minute", optional=True)
    )
    retry: RetryPolicy = attrs.field(factory=RetryPolicy)
    deadlines: Deadlines = attrs.field(factory=Deadlines)
    flow: FlowControl = attrs.field(factory=FlowControl)
    hedging: Hedging | None = None
    drain_grace: float = attrs.field(
        default=DEFAULT_DRAIN_GRACE, validator=number("drain_grace", ge=0, unit="seconds")
    )
    seed: int | None = None

    def __attrs_post_init__(self) -> None:
        if not self.endpoints:
            return
        for i, endpoint in enumerate(self.endpoints):
            if not isinstance(endpoint, Endpoint):
                raise ConfigError(f"endpoints[{i}] must be an Endpoint, got {endpoint!r}")
        if self.endpoint != Endpoint() and self.endpoint not in self.endpoints:
            raise ConfigError("give endpoint or endpoints, not both")
        if self.shard_count < len(self.endpoints):
            raise ConfigError(
                f"shard_count must be >= the number of endpoints ({len(self.endpoints)}), "
                f"got {self.shard_count}"
            )

    def all_endpoints(self) -> tuple[Endpoint, ...]:
        """``endpoints``, or ``(endpoint,)`` when only one was given."""
        return self.endpoints or (self.endpoint,)

    def shard_endpoints(self) -> list[int]:
        """The endpoint (index into :meth:`all_endpoints`) of each shard.

        Shares follow the weights (largest remainder), at least one shard each,
        interleaved so that shard ``i`` and ``i + 1`` differ where they can.
        """
        endpoints = self.all_endpoints()
        n = self.shard_count
        total = sum(e.weight for e in endpoints)
        exact = [n * e.weight / total for e in endpoints]
        counts = [max(1, int(x)) for x in exact]
        while sum(counts) > n:  # the minimum of one each took too many
            i = max(range(len(counts)), key=lambda j: (counts[j] - exact[j], counts[j]))
            counts[i] -= 1
        while sum(counts) < n:
            i = max(range(len(counts)), key=lambda j: (exact[j] - counts[j], -j))
            counts[i] += 1
        order: list[int] = []
        left = counts[:]
        while len(order) < n:
            for i in range(len(left)):
                if left[i] > 0:
                    order.append(i)
                    left[i] -= 1
        return order

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> PipelineConfig:
        """Build from the environment, then apply keyword overrides that are not ``None``.

        Reads ``SHARD_COUNT``, ``LLM_CONCURRENCY``, ``LLM_RETRY_BACKOFF_S`` and,
        for the endpoint, ``OPENAI_BASE_URL``, ``OPENAI_API_KEY``, ``OPENAI_MODEL``
        and ``OPENAI_API_VERSION``. ``SHARDLINE_BASE_URLS`` (separated by commas
        or spaces) names several replicas, which share the key and model.

        Raises:
            ConfigError: naming the variable or option and the bound.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        if "endpoint" not in overrides or overrides["endpoint"] is None:
            values["endpoint"] = Endpoint.from_env(env)
        several = env.get("SHARDLINE_BASE_URLS", "").replace(",", " ").split()
        if several and overrides.get("endpoints") is None:
            first = values.get("endpoint", overrides.get("endpoint"))
            template = first if isinstance(first, Endpoint) else Endpoint.from_env(env)
            values["endpoints"] = tuple(attrs.evolve(template, base_url=u) for u in several)
            values["endpoint"] = values["endpoints"][0]
            values["shard_count"] = max(DEFAULT_SHARD_COUNT, len(several))
        shards = env_int("SHARD_COUNT", env)
        if shards is not None:
            values["shard_count"] = shards
        concurrency = env_int("LLM_CONCURRENCY", env)
        if concurrency is not None:
            values["concurrency"] = concurrency
        if "retry" not in overrides or overrides["retry"] is None:
            values["retry"] = RetryPolicy.from_env(env)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def safe_dict(self) -> dict[str, Any]:
        """A JSON-able description without secrets (for the run-start event)."""
        out = attrs.asdict(
            self,
            recurse=True,
            filter=lambda a, _v: a.name not in ("endpoint", "endpoints"),
            value_serializer=lambda _i, _a, v: (
                sorted(str(x) for x in v) if isinstance(v, frozenset | set) else v
            ),
        )
        out["endpoint"] = self.all_endpoints()[0].safe_dict()
        if self.endpoints:
            out["endpoints"] = [e.safe_dict() for e in self.endpoints]
            out["shard_endpoints"] = self.shard_endpoints()
        return out
