"""OpenTelemetry metrics and spans from events, after the GenAI semantic conventions.

Needs the optional extra: ``pip install 'shardline[otel]'`` (the API; bring
your SDK and exporter, or take the SDK from the extra). ``opentelemetry`` is
imported when an :class:`OpenTelemetrySink` is made, so ``import shardline``
works without it.

Metrics (the client metrics of the GenAI conventions, with their recommended
bucket boundaries as advice):

* ``gen_ai.client.operation.duration`` (s): each attempt that ended, not
  cancelled; ``error.type`` is its cause when it failed.
* ``gen_ai.client.token.usage`` ({token}): each successful attempt's input and
  output tokens, ``gen_ai.token.type`` ``input`` / ``output``.
* ``gen_ai.client.operation.time_to_first_chunk`` (s): each attempt's first
  content event (streamed runs only, as the conventions ask).
* ``shardline.items`` (counter, ``shardline.status``, ``error.type``) and
  ``shardline.retries`` (counter, ``error.type``): what the report counts.

All carry ``gen_ai.operation.name``, ``gen_ai.provider.name``,
``gen_ai.request.model``, ``server.address`` and ``server.port``.

Spans: one ``shardline.item`` span per item, from admission to its end, and
one client span per attempt inside it (``"chat MODEL"``, as the conventions
name them), from its start to its end, with its cause in ``error.type`` and
``shardline.cause`` and an error status when it failed. A scheduled retry is
an event on the item span. Times are the events' (``run_start.started_at +
t``), so a saved events file replays into the same spans.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

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
)
from ._models import ItemId, Status
from ._prometheus import DURATION_BUCKETS, TOKEN_BUCKETS, TTFC_BUCKETS

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import Span, TracerProvider

__all__ = ["OpenTelemetrySink"]

_SCOPE = "shardline"


def _import_otel() -> tuple[Any, Any]:
    try:
        from opentelemetry import metrics, trace
    except ImportError as exc:
        raise ImportError(
            "OpenTelemetrySink needs opentelemetry-api, which comes with the 'otel' extra: "
            "pip install 'shardline[otel]'"
        ) from exc
    return metrics, trace


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("shardline")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return ""


def _ns(seconds: float) -> int:
    return round(seconds * 1e9)


class OpenTelemetrySink:
    """An event sink that records OpenTelemetry metrics and spans (O(1) per event).

    It uses the providers you pass, or the global ones (``opentelemetry.metrics``
    and ``opentelemetry.trace``), so a configured SDK exports what it records::

        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.trace import TracerProvider

        sink = TeeSink(
            JsonlEventSink("events.jsonl"),
            OpenTelemetrySink(meter_provider=MeterProvider(...),
                              tracer_provider=TracerProvider(...)),
        )

    Memory: the open item spans and the start times of attempts in flight,
    bounded by the queue and in-flight sizes. :meth:`close` ends the spans of
    items that never ended (``shardline.status`` ``unfinished``).

    Args:
        meter_provider: Where the metrics go (default: the global provider).
        tracer_provider: Where the spans go (default: the global provider).
        operation_name: ``gen_ai.operation.name`` (``chat`` or ``text_completion``).
        provider_name: ``gen_ai.provider.name`` (``openai`` for any
            OpenAI-compatible API unless you know better).
        request_model: ``gen_ai.request.model``; default: the endpoint's model
            from ``run_start``.

    Raises:
        ImportError: if opentelemetry-api is not installed, naming the extra.
    """

    def __init__(
        self,
        *,
        meter_provider: MeterProvider | None = None,
        tracer_provider: TracerProvider | None = None,
        operation_name: str = "chat",
        provider_name: str = "openai",
        request_model: str | None = None,
    ) -> None:
        metrics, trace = _import_otel()
        shardline_version = _version()
        meter = metrics.get_meter(_SCOPE, shardline_version, meter_provider=meter_provider)
        self._tracer = trace.get_tracer(_SCOPE, shardline_version, tracer_provider=tracer_provider)
        self._trace = trace
        self._operation = operation_name
        self._provider = provider_name
        self._fixed_model = request_model
        self._model = request_model or ""
        self._server: dict[str, str | int] = {}
        self._streaming = True
        self._anchor = 0.0
        self.duration = meter.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="GenAI operation duration: one HTTP attempt, from send to its end.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.token_usage = meter.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Number of input and output tokens used by successful attempts.",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS,
        )
        self.time_to_first_chunk = meter.create_histogram(
            "gen_ai.client.operation.time_to_first_chunk",
            unit="s",
            description="Time from sending an attempt to its first content chunk.",
            explicit_bucket_boundaries_advisory=TTFC_BUCKETS,
        )
        self.items = meter.create_counter(
            "shardline.items",
            unit="{item}",
            description="Items that reached their terminal status (ok, failed, cancelled).",
        )
        self.retries = meter.create_counter(
            "shardline.retries",
            unit="{retry}",
            description="Retries scheduled, by the cause of the failed attempt.",
        )
        self._item_spans: dict[ItemId, Span] = {}
        self._attempts: dict[tuple[ItemId, int, int], float] = {}

    def __repr__(self) -> str:
        return (
            f"<OpenTelemetrySink model {self._model!r}: {len(self._item_spans)} items open, "
            f"{len(self._attempts)} attempts in flight>"
        )

    def _attributes(self) -> dict[str, str | int]:
        return {
            "gen_ai.operation.name": self._operation,
            "gen_ai.provider.name": self._provider,
            "gen_ai.request.model": self._model,
            **self._server,
        }

    def emit(self, event: Event) -> None:
        """Record one event."""
        if isinstance(event, AttemptStart):
            self._attempts[(event.item_id, event.shard, event.attempt)] = event.t
        elif isinstance(event, AttemptEnd):
            self._attempt_end(event)
        elif isinstance(event, FirstToken):
            if self._streaming:
                self.time_to_first_chunk.record(event.ttft_s, self._attributes())
        elif isinstance(event, ItemAdmitted):
            self._item_admitted(event)
        elif isinstance(event, RetryScheduled):
            self.retries.add(1, {**self._attributes(), "error.type": event.cause.value})
            span = self._item_spans.get(event.item_id)
            if span is not None:
                span.add_event(
                    "retry_scheduled",
                    {
                        "error.type": event.cause.value,
                        "shardline.attempt": event.attempt,
                        "shardline.delay_s": event.delay_s,
                    },
                    timestamp=_ns(self._anchor + event.t),
                )
        elif isinstance(event, ItemEnd):
            self._item_end(event)
        elif isinstance(event, RunStart):
            self._run_start(event)

    def _run_start(self, event: RunStart) -> None:
        self._anchor = event.started_at
        endpoint = event.config.get("endpoint")
        if not isinstance(endpoint, dict):
            endpoint = {}
        self._streaming = endpoint.get("stream") is not False
        if self._fixed_model is None:
            model = endpoint.get("model")
            self._model = model if isinstance(model, str) else ""
        self._server = {}
        base_url = endpoint.get("base_url")
        if isinstance(base_url, str):
            try:
                url = urlsplit(base_url)
                host, port = url.hostname, url.port
            except ValueError:
                host, port = None, None
            if host:
                self._server["server.address"] = host
                default = {"http": 80, "https": 443}.get(url.scheme)
                if port or default:
                    self._server["server.port"] = port or default or 0
        self._attempts.clear()

    def _item_admitted(self, event: ItemAdmitted) -> None:
        if event.item_id in self._item_spans:
            return
        self._item_spans[event.item_id] = self._tracer.start_span(
            "shardline.item",
            kind=self._trace.SpanKind.INTERNAL,
            start_time=_ns(self._anchor + event.t),
            attributes={"shardline.item_id": str(event.item_id), "shardline.shard": event.shard},
        )

    def _attempt_end(self, event: AttemptEnd) -> None:
        started = self._attempts.pop((event.item_id, event.shard, event.attempt), None)
        ok = event.outcome is AttemptOutcome.OK
        attributes = self._attributes()
        if event.outcome is not AttemptOutcome.CANCELLED:
            if not ok:
                attributes["error.type"] = event.cause.value if event.cause else "_OTHER"
            self.duration.record(event.duration_s, attributes)
            if ok:
                base = self._attributes()
                if event.prompt_tokens is not None:
                    self.token_usage.record(
                        event.prompt_tokens, {**base, "gen_ai.token.type": "input"}
                    )
                if event.completion_tokens is not None:
                    self.token_usage.record(
                        event.completion_tokens, {**base, "gen_ai.token.type": "output"}
                    )
        self._attempt_span(event, started, attributes)

    def _attempt_span(
        self, event: AttemptEnd, started: float | None, attributes: dict[str, str | int]
    ) -> None:
        trace = self._trace
        end = self._anchor + event.t
        start = self._anchor + started if started is not None else end - event.duration_s
        parent = self._item_spans.get(event.item_id)
        context = trace.set_span_in_context(parent) if parent is not None else None
        span_attributes: dict[str, Any] = {
            **attributes,
            "shardline.item_id": str(event.item_id),
            "shardline.shard": event.shard,
            "shardline.attempt": event.attempt,
            "shardline.outcome": event.outcome.value,
        }
        if event.cause is not None:
            span_attributes["shardline.cause"] = event.cause.value
        if event.status_code is not None:
            span_attributes["http.response.status_code"] = event.status_code
        if event.prompt_tokens is not None:
            span_attributes["gen_ai.usage.input_tokens"] = event.prompt_tokens
        if event.completion_tokens is not None:
            span_attributes["gen_ai.usage.output_tokens"] = event.completion_tokens
        if event.ttft_s is not None:
            span_attributes["shardline.ttft_s"] = event.ttft_s
        name = f"{self._operation} {self._model}" if self._model else self._operation
        span = self._tracer.start_span(
            name,
            context=context,
            kind=trace.SpanKind.CLIENT,
            start_time=_ns(start),
            attributes=span_attributes,
        )
        if event.outcome is AttemptOutcome.FAILED:
            cause = event.cause.value if event.cause else "_OTHER"
            span.set_status(trace.Status(trace.StatusCode.ERROR, cause))
        span.end(end_time=_ns(end))

    def _item_end(self, event: ItemEnd) -> None:
        attributes: dict[str, str | int] = {
            **self._attributes(),
            "shardline.status": event.status.value,
        }
        if event.status is Status.FAILED:
            attributes["error.type"] = event.cause.value if event.cause else "_OTHER"
        self.items.add(1, attributes)
        span = self._item_spans.pop(event.item_id, None)
        if span is None:
            return
        span.set_attribute("shardline.status", event.status.value)
        span.set_attribute("shardline.attempts", event.attempts)
        if event.cause is not None:
            span.set_attribute("shardline.cause", event.cause.value)
        if event.status is Status.FAILED:
            span.set_status(
                self._trace.Status(self._trace.StatusCode.ERROR, attributes["error.type"])
            )
        span.end(end_time=_ns(self._anchor + event.t))

    def close(self) -> None:
        """End the spans of items that never ended; the metrics stay with their provider."""
        for span in self._item_spans.values():
            span.set_attribute("shardline.status", "unfinished")
            span.end()
        self._item_spans.clear()
        self._attempts.clear()
