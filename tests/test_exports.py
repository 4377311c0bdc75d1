"""The public surface: exactly the names in __all__, all importable, none private."""

from __future__ import annotations

import importlib

import shardline
import shardline.testing

PUBLIC = {
    "SCHEMA_VERSION", "AttemptEnd", "AttemptError", "AttemptStart", "AttemptTimeout",
    "Backoff", "Cause", "ChatRequest", "ClientError", "CompletionRequest", "ConfigError",
    "ConnectError", "ConnectTimeout", "ConnectionLost", "DeadlineExceeded", "Deadlines",
    "Endpoint", "Event", "EventDecodeError", "EventFileReader", "EventSink", "FirstToken",
    "HTTPStatusError", "InputError", "ItemAdmitted", "ItemCancelled", "ItemEnd", "ItemId",
    "JsonlEventSink", "LiveMetrics", "LiveShard", "MinuteTokens", "ReportBuilder",
    "PrometheusSink", "LiveSnapshot", "MemoryEventSink", "Outcome",
    "Percentiles", "Pipeline", "PipelineConfig", "PipelineStatistics", "PoolTimeout",
    "ProtocolError", "RateLimited", "ReportError", "Request", "Result", "RetryBudget",
    "RetryPolicy", "RetryScheduled", "RunEnd", "RunReport", "RunStart", "ServerError",
    "ShardReport", "ShardState", "ShardStatistics", "ShardlineError", "StallTimeout",
    "Status", "TTFTTimeout", "TeeSink", "TransportError", "Truncated", "Usage",
    "compute_report", "event_from_json", "event_to_json", "no_delays", "open_pipeline",
    "parse_retry_after", "render_text", "request_from_json",
}  # fmt: skip


def test_all_is_exactly_the_public_names() -> None:
    """shardline.__all__ lists exactly the intended public names, sorted."""
    assert set(shardline.__all__) == PUBLIC
    assert shardline.__all__ == sorted(shardline.__all__, key=lambda n: (not n.isupper(), n))


def test_every_public_name_resolves() -> None:
    """Each name in __all__ is an attribute of the package and of the public namespace."""
    for name in shardline.__all__:
        assert getattr(shardline, name) is not None


def test_testing_is_not_imported_by_the_package() -> None:
    """`import shardline` does not pull in shardline.testing, nor the optional Ray extra."""
    import subprocess
    import sys

    code = (
        "import sys, shardline; "
        "assert 'shardline.testing' not in sys.modules; "
        "assert 'ray' not in sys.modules; "
        "assert 'prometheus_client' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_testing_all_resolves() -> None:
    """shardline.testing.__all__ names resolve."""
    mod = importlib.import_module("shardline.testing")
    for name in mod.__all__:
        assert hasattr(mod, name), name
