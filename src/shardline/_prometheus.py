"""Prometheus metrics from events, named after the OpenTelemetry GenAI conventions.

Needs the optional extra: ``pip install 'shardline[prometheus]'``. The
``prometheus_client`` import happens when a :class:`PrometheusSink` is made,
so ``import shardline`` works without it.

Exported series (OpenTelemetry names in Prometheus form: dots become
underscores, seconds get the ``_seconds`` unit suffix, ``{token}`` has none):

* ``gen_ai_client_operation_duration_seconds`` (histogram) is
  ``gen_ai.client.operation.duration``;
* ``gen_ai_client_token_usage`` (histogram) is ``gen_ai.client.token.usage``;
* ``gen_ai_client_operation_time_to_first_chunk_seconds`` (histogram) is
  ``gen_ai.client.operation.time_to_first_chunk``;
* ``shardline_attempts_total{outcome,cause}``, ``shardline_retries_total{cause}``,
  ``shardline_items_total{status}`` (counters);
* ``shardline_queued{shard}``, ``shardline_in_flight{shard}``,
  ``shardline_shard_cooling{shard}`` (gauges).

The ``gen_ai_*`` series carry ``gen_ai_operation_name``, ``gen_ai_provider_name``
and ``gen_ai_request_model`` (the semconv attributes, dots to underscores);
the duration adds ``error_type`` (the attempt's cause, empty on success) and
token usage adds ``gen_ai_token_type`` (``input`` / ``output``). One HTTP
attempt is one GenAI operation: its duration is observed at ``attempt_end``,
its token usage when it succeeded, its time to first chunk at ``first_token``
(streamed runs only, as the conventions ask: ``config["endpoint"]["stream"]``).
Bucket boundaries are the ones the conventions recommend.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._events import (
    AttemptEnd,
    AttemptOutcome,
    AttemptStart,
    Event,
    FirstToken,
    ItemAdmitted,
    ItemEnd,
    RetryScheduled,
    RunStart,
    ShardCondition,
    ShardState,
)
from ._models import ItemId

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["DURATION_BUCKETS", "TOKEN_BUCKETS", "TTFC_BUCKETS", "PrometheusSink"]

#: ``gen_ai.client.operation.duration`` buckets recommended by the semantic conventions.
DURATION_BUCKETS = (
    0.01,
    0.02,
    0.04,
    0.08,
    0.16,
    0.32,
    0.64,
    1.28,
    2.56,
    5.12,
    10.24,
    20.48,
    40.96,
    81.92,
)
#: ``gen_ai.client.token.usage`` buckets recommended by the semantic conventions.
TOKEN_BUCKETS = tuple(float(4**k) for k in range(14))  # 1, 4, 16, ... 67108864
#: Time-to-first-chunk buckets (the conventions' time-to-first-token boundaries).
TTFC_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)

_GENAI_LABELS = ("gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model")


def _import_prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:
        raise ImportError(
            "PrometheusSink needs prometheus-client, which comes with the 'prometheus' extra: "
            "pip install 'shardline[prometheus]'"
        ) from exc
    return prometheus_client


class PrometheusSink:
    """An event sink that keeps Prometheus metrics up to date (O(1) per event).

    Register it in your own registry and expose that registry however you
    like (``prometheus_client.start_http_server(port, registry=registry)``,
    or your web framework)::

        from prometheus_client import CollectorRegistry

        registry = CollectorRegistry()
        sink = TeeSink(JsonlEventSink("events.jsonl"), PrometheusSink(registry))

    It is not a process-global: two sinks need two registries, and nothing is
    registered in ``prometheus_client.REGISTRY`` unless you pass it.

    Args:
        registry: Where to register the metrics.
        operation_name: ``gen_ai.operation.name`` (``chat`` or ``text_completion``).
        provider_name: ``gen_ai.provider.name`` (``openai`` for any OpenAI-compatible API
            unless you know better, e.g. ``azure.ai.openai``).
        request_model: ``gen_ai.request.model``; default: ``config["endpoint"]["model"]``
            from the ``run_start`` event, or ``""``.

    Raises:
        ImportError: if prometheus-client is not installed, naming the extra.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        operation_name: str = "chat",
        provider_name: str = "openai",
        request_model: str | None = None,
    ) -> None:
        prom = _import_prometheus()
        self.registry = registry
        self._operation_name = operation_name
        self._provider_name = provider_name
        self._fixed_model = request_model
        self._model = request_model or ""
        self.duration = prom.Histogram(
            "gen_ai_client_operation_duration",
            "GenAI operation duration: one HTTP attempt, from send to its end.",
            labelnames=(*_GENAI_LABELS, "error_type"),
            unit="seconds",
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.token_usage = prom.Histogram(
            "gen_ai_client_token_usage",
            "Number of input and output tokens used by successful attempts.",
            labelnames=(*_GENAI_LABELS, "gen_ai_token_type"),
            buckets=TOKEN_BUCKETS,
            registry=registry,
        )
        self.time_to_first_chunk = prom.Histogram(
            "gen_ai_client_operation_time_to_first_chunk",
            "Time from sending an attempt to its first content chunk.",
            labelnames=_GENAI_LABELS,
            unit="seconds",
            buckets=TTFC_BUCKETS,
            registry=registry,
        )
        self.attempts = prom.Counter(
            "shardline_attempts",
            "Attempts that ended, by outcome (ok, failed, cancelled) and cause.",
            labelnames=("outcome", "cause"),
            registry=registry,
        )
        self.retries = prom.Counter(
            "shardline_retries",
            "Retries scheduled, by the cause of the failed attempt.",
            labelnames=("cause",),
            registry=registry,
        )
        self.items = prom.Counter(
            "shardline_items",
            "Items that reached their terminal status (ok, failed, cancelled).",
            labelnames=("status",),
            registry=registry,
        )
        self.queued = prom.Gauge(
            "shardline_queued",
            "Items admitted to a shard and waiting for their first attempt.",
            labelnames=("shard",),
            registry=registry,
        )
        self.in_flight = prom.Gauge(
            "shardline_in_flight",
            "HTTP attempts under way.",
            labelnames=("shard",),
            registry=registry,
        )
        self.cooling = prom.Gauge(
            "shardline_shard_cooling",
            "1 while a shard waits out a Retry-After, else 0.",
            labelnames=("shard",),
            registry=registry,
        )
        self._queued_items: dict[ItemId, int] = {}
        self._streaming = True

    def _genai(self) -> tuple[str, str, str]:
        return (self._operation_name, self._provider_name, self._model)

    def emit(self, event: Event) -> None:
        """Update the metrics with one event."""
        if isinstance(event, AttemptEnd):
            ok = event.outcome is AttemptOutcome.OK
            cause = "" if event.cause is None else event.cause.value
            self.attempts.labels(event.outcome.value, "" if ok else cause).inc()
            self.in_flight.labels(str(event.shard)).dec()
            if event.outcome is AttemptOutcome.CANCELLED:
                return
            error_type = "" if ok else cause or "_OTHER"
            self.duration.labels(*self._genai(), error_type).observe(event.duration_s)
            if ok:
                if event.prompt_tokens is not None:
                    self.token_usage.labels(*self._genai(), "input").observe(event.prompt_tokens)
                if event.completion_tokens is not None:
                    self.token_usage.labels(*self._genai(), "output").observe(
                        event.completion_tokens
                    )
        elif isinstance(event, FirstToken):
            if self._streaming:  # the conventions: streaming calls only
                self.time_to_first_chunk.labels(*self._genai()).observe(event.ttft_s)
        elif isinstance(event, AttemptStart):
            self._unqueue(event.item_id)
            self.in_flight.labels(str(event.shard)).inc()
        elif isinstance(event, ItemAdmitted):
            self._queued_items[event.item_id] = event.shard
            self.queued.labels(str(event.shard)).inc()
        elif isinstance(event, RetryScheduled):
            self.retries.labels(event.cause.value).inc()
        elif isinstance(event, ItemEnd):
            self._unqueue(event.item_id)
            self.items.labels(event.status.value).inc()
        elif isinstance(event, ShardState):
            self.cooling.labels(str(event.shard)).set(
                1 if event.state is ShardCondition.COOLING else 0
            )
        elif isinstance(event, RunStart):
            endpoint = event.config.get("endpoint")
            if not isinstance(endpoint, dict):
                endpoint = {}
            self._streaming = endpoint.get("stream") is not False
            if self._fixed_model is None:
                model = endpoint.get("model")
                self._model = model if isinstance(model, str) else ""
            for shard in range(event.shard_count):
                self.queued.labels(str(shard)).set(0)
                self.in_flight.labels(str(shard)).set(0)
                self.cooling.labels(str(shard)).set(0)
            self._queued_items.clear()

    def _unqueue(self, item_id: ItemId) -> None:
        shard = self._queued_items.pop(item_id, None)
        if shard is not None:
            self.queued.labels(str(shard)).dec()

    def close(self) -> None:
        """Nothing to release: the metrics stay readable in the registry."""
