"""The optional Prometheus sink: GenAI semconv names, shardline counters, gauges."""

from __future__ import annotations

import sys

import attrs
import pytest

pytest.importorskip("prometheus_client")

from prometheus_client import CollectorRegistry, generate_latest

from shardline._events import (
    AttemptEnd,
    AttemptStart,
    Event,
    FirstToken,
    ItemAdmitted,
    ItemEnd,
    RetryScheduled,
    RunStart,
    ShardState,
)
from shardline._prometheus import PrometheusSink

CONFIG = {"endpoint": {"base_url": "http://127.0.0.1:9/v1", "model": "tiny-model"}}
GENAI = {
    "gen_ai_operation_name": "chat",
    "gen_ai_provider_name": "openai",
    "gen_ai_request_model": "tiny-model",
}

EVENTS: list[Event] = [
    RunStart(t=0.0, run_id="p", started_at=1_764_403_200.0, shard_count=2, config=CONFIG),
    ItemAdmitted(t=0.0, item_id=1, shard=0),
    ItemAdmitted(t=0.0, item_id=2, shard=1),
    AttemptStart(t=0.1, item_id=1, shard=0, attempt=1),
    AttemptEnd(
        t=0.3,
        item_id=1,
        shard=0,
        attempt=1,
        outcome="failed",
        cause="rate_limited",
        status_code=429,
        duration_s=0.2,
    ),
    RetryScheduled(t=0.3, item_id=1, shard=0, attempt=2, delay_s=1.0, cause="rate_limited"),
    ShardState(t=0.3, shard=0, state="cooling", cooldown_s=1.0),
    AttemptStart(t=1.3, item_id=1, shard=0, attempt=2),
    FirstToken(t=1.5, item_id=1, shard=0, attempt=2, ttft_s=0.2),
    AttemptEnd(
        t=2.0,
        item_id=1,
        shard=0,
        attempt=2,
        outcome="ok",
        status_code=200,
        prompt_tokens=40,
        completion_tokens=9,
        ttft_s=0.2,
        duration_s=0.7,
    ),
    ItemEnd(
        t=2.0,
        item_id=1,
        shard=0,
        status="ok",
        attempts=2,
        latency_s=2.0,
        prompt_tokens=40,
        completion_tokens=9,
    ),
]


def _sinked(events: list[Event], **kwargs: str) -> tuple[CollectorRegistry, PrometheusSink]:
    registry = CollectorRegistry()
    sink = PrometheusSink(registry, **kwargs)
    for e in events:
        sink.emit(e)
    return registry, sink


def test_genai_histograms_use_semconv_names_and_attributes() -> None:
    """Duration, token usage and time to first chunk are exported under the semconv names."""
    registry, _ = _sinked(EVENTS)
    get = registry.get_sample_value
    assert get("gen_ai_client_operation_duration_seconds_count", {**GENAI, "error_type": ""}) == 1
    assert get("gen_ai_client_operation_duration_seconds_sum", {**GENAI, "error_type": ""}) == 0.7
    assert (
        get(
            "gen_ai_client_operation_duration_seconds_count",
            {**GENAI, "error_type": "rate_limited"},
        )
        == 1
    )
    assert get("gen_ai_client_token_usage_sum", {**GENAI, "gen_ai_token_type": "input"}) == 40
    assert get("gen_ai_client_token_usage_sum", {**GENAI, "gen_ai_token_type": "output"}) == 9
    assert get("gen_ai_client_operation_time_to_first_chunk_seconds_sum", GENAI) == 0.2
    assert (
        get(
            "gen_ai_client_token_usage_bucket",
            {**GENAI, "gen_ai_token_type": "input", "le": "64.0"},
        )
        == 1
    )


def test_shardline_counters_and_gauges() -> None:
    """Attempts by outcome/cause, retries by cause, items by status, and per-shard gauges."""
    registry, _ = _sinked(EVENTS)
    get = registry.get_sample_value
    assert get("shardline_attempts_total", {"outcome": "failed", "cause": "rate_limited"}) == 1
    assert get("shardline_attempts_total", {"outcome": "ok", "cause": ""}) == 1
    assert get("shardline_retries_total", {"cause": "rate_limited"}) == 1
    assert get("shardline_items_total", {"status": "ok"}) == 1
    assert get("shardline_queued", {"shard": "0"}) == 0
    assert get("shardline_queued", {"shard": "1"}) == 1
    assert get("shardline_in_flight", {"shard": "0"}) == 0
    assert get("shardline_shard_cooling", {"shard": "0"}) == 1
    text = generate_latest(registry).decode()
    assert "# TYPE gen_ai_client_operation_duration_seconds histogram" in text


def test_request_model_can_be_given() -> None:
    """An explicit request_model wins over the run_start config."""
    registry, _ = _sinked(EVENTS, request_model="override", provider_name="azure.ai.openai")
    labels = {
        "gen_ai_operation_name": "chat",
        "gen_ai_provider_name": "azure.ai.openai",
        "gen_ai_request_model": "override",
    }
    assert (
        registry.get_sample_value(
            "gen_ai_client_operation_time_to_first_chunk_seconds_count", labels
        )
        == 1
    )


def test_cancelled_attempts_are_counted_but_not_timed() -> None:
    """A cancelled attempt is not a GenAI operation result: counted, no duration sample."""
    events = [
        *EVENTS[:3],
        AttemptStart(t=0.1, item_id=2, shard=1, attempt=1),
        AttemptEnd(t=0.2, item_id=2, shard=1, attempt=1, outcome="cancelled", cause="cancelled"),
    ]
    registry, sink = _sinked(events)
    assert (
        registry.get_sample_value(
            "shardline_attempts_total", {"outcome": "cancelled", "cause": "cancelled"}
        )
        == 1
    )
    assert (
        registry.get_sample_value(
            "gen_ai_client_operation_duration_seconds_count", {**GENAI, "error_type": "cancelled"}
        )
        is None
    )
    assert registry.get_sample_value("shardline_in_flight", {"shard": "1"}) == 0
    sink.close()


def test_no_time_to_first_chunk_for_non_streamed_runs() -> None:
    """Time to first chunk is reported for streaming calls only (semconv)."""
    start = EVENTS[0]
    assert isinstance(start, RunStart)
    config = {"endpoint": {**CONFIG["endpoint"], "stream": False}}
    events: list[Event] = [attrs.evolve(start, config=config), *EVENTS[1:]]
    registry, _ = _sinked(events)
    name = "gen_ai_client_operation_time_to_first_chunk_seconds_count"
    assert registry.get_sample_value(name, GENAI) is None
    assert (
        registry.get_sample_value(
            "gen_ai_client_token_usage_count", {**GENAI, "gen_ai_token_type": "output"}
        )
        == 1
    )


def test_missing_prometheus_client_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without prometheus-client the error says which extra to install."""
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ImportError, match=r"pip install 'shardline\[prometheus\]'"):
        PrometheusSink(CollectorRegistry())
