"""shardline: hang-proof, sharded requests to OpenAI-compatible LLM APIs, on trio.

Open a pipeline, send requests, read the proof::

    async with shardline.open_pipeline(config, sink=shardline.JsonlEventSink(path)) as pipeline:
        result = await pipeline.complete(shardline.ChatRequest(messages=[...]))

Everything public is re-exported here; the underscore modules are private.
The deliberately public submodule :mod:`shardline.testing` (fake server,
fixtures) is not imported by this package.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from ._backoff import Backoff as Backoff
from ._backoff import RetryBudget as RetryBudget
from ._backoff import RetryPolicy as RetryPolicy
from ._backoff import no_delays as no_delays
from ._backoff import parse_retry_after as parse_retry_after
from ._config import Deadlines as Deadlines
from ._config import Endpoint as Endpoint
from ._events import SCHEMA_VERSION as SCHEMA_VERSION
from ._events import AttemptEnd as AttemptEnd
from ._events import AttemptStart as AttemptStart
from ._events import Event as Event
from ._events import EventDecodeError as EventDecodeError
from ._events import EventFileReader as EventFileReader
from ._events import FirstToken as FirstToken
from ._events import ItemAdmitted as ItemAdmitted
from ._events import ItemEnd as ItemEnd
from ._events import RetryScheduled as RetryScheduled
from ._events import RunEnd as RunEnd
from ._events import RunStart as RunStart
from ._events import ShardState as ShardState
from ._events import event_from_json as event_from_json
from ._events import event_to_json as event_to_json
from ._exceptions import AttemptError as AttemptError
from ._exceptions import AttemptTimeout as AttemptTimeout
from ._exceptions import Cause as Cause
from ._exceptions import ClientError as ClientError
from ._exceptions import ConfigError as ConfigError
from ._exceptions import ConnectError as ConnectError
from ._exceptions import ConnectionLost as ConnectionLost
from ._exceptions import ConnectTimeout as ConnectTimeout
from ._exceptions import DeadlineExceeded as DeadlineExceeded
from ._exceptions import HTTPStatusError as HTTPStatusError
from ._exceptions import InputError as InputError
from ._exceptions import ItemCancelled as ItemCancelled
from ._exceptions import PoolTimeout as PoolTimeout
from ._exceptions import ProtocolError as ProtocolError
from ._exceptions import RateLimited as RateLimited
from ._exceptions import ServerError as ServerError
from ._exceptions import ShardlineError as ShardlineError
from ._exceptions import StallTimeout as StallTimeout
from ._exceptions import TransportError as TransportError
from ._exceptions import Truncated as Truncated
from ._exceptions import TTFTTimeout as TTFTTimeout
from ._live import LiveMetrics as LiveMetrics
from ._live import LiveShard as LiveShard
from ._live import LiveSnapshot as LiveSnapshot
from ._models import ChatRequest as ChatRequest
from ._models import CompletionRequest as CompletionRequest
from ._models import ItemId as ItemId
from ._models import Outcome as Outcome
from ._models import Request as Request
from ._models import Result as Result
from ._models import Status as Status
from ._models import Usage as Usage
from ._models import request_from_json as request_from_json
from ._pipeline import Pipeline as Pipeline
from ._pipeline import PipelineConfig as PipelineConfig
from ._pipeline import PipelineStatistics as PipelineStatistics
from ._pipeline import open_pipeline as open_pipeline
from ._prometheus import PrometheusSink as PrometheusSink
from ._report import MinuteTokens as MinuteTokens
from ._report import Percentiles as Percentiles
from ._report import ReportError as ReportError
from ._report import RunReport as RunReport
from ._report import ShardReport as ShardReport
from ._report_builder import ReportBuilder as ReportBuilder
from ._report_builder import compute_report as compute_report
from ._report_text import render_text as render_text
from ._shard import ShardStatistics as ShardStatistics
from ._sinks import EventSink as EventSink
from ._sinks import JsonlEventSink as JsonlEventSink
from ._sinks import MemoryEventSink as MemoryEventSink
from ._sinks import TeeSink as TeeSink

try:
    __version__ = version("shardline")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "SCHEMA_VERSION",
    "AttemptEnd",
    "AttemptError",
    "AttemptStart",
    "AttemptTimeout",
    "Backoff",
    "Cause",
    "ChatRequest",
    "ClientError",
    "CompletionRequest",
    "ConfigError",
    "ConnectError",
    "ConnectTimeout",
    "ConnectionLost",
    "DeadlineExceeded",
    "Deadlines",
    "Endpoint",
    "Event",
    "EventDecodeError",
    "EventFileReader",
    "EventSink",
    "FirstToken",
    "HTTPStatusError",
    "InputError",
    "ItemAdmitted",
    "ItemCancelled",
    "ItemEnd",
    "ItemId",
    "JsonlEventSink",
    "LiveMetrics",
    "LiveShard",
    "LiveSnapshot",
    "MemoryEventSink",
    "MinuteTokens",
    "Outcome",
    "Percentiles",
    "Pipeline",
    "PipelineConfig",
    "PipelineStatistics",
    "PoolTimeout",
    "PrometheusSink",
    "ProtocolError",
    "RateLimited",
    "ReportBuilder",
    "ReportError",
    "Request",
    "Result",
    "RetryBudget",
    "RetryPolicy",
    "RetryScheduled",
    "RunEnd",
    "RunReport",
    "RunStart",
    "ServerError",
    "ShardReport",
    "ShardState",
    "ShardStatistics",
    "ShardlineError",
    "StallTimeout",
    "Status",
    "TTFTTimeout",
    "TeeSink",
    "TransportError",
    "Truncated",
    "Usage",
    "compute_report",
    "event_from_json",
    "event_to_json",
    "no_delays",
    "open_pipeline",
    "parse_retry_after",
    "render_text",
    "request_from_json",
]
