"""shardline: hang-proof, sharded requests to OpenAI-compatible LLM APIs, on trio.

Open a pipeline, send requests, read the proof::

    async with shardline.open_pipeline(config, sink=shardline.JsonlEventSink(path)) as pipeline:
        result = await pipeline.complete(shardline.ChatRequest(messages=[...]))

This namespace holds what an embedding application needs: the pipeline, its
config records, requests and results, the root errors and the everyday sinks.
The rest lives in documented public sub-namespaces:

* :mod:`shardline.errors`: the whole exception tree;
* :mod:`shardline.events`: event records, their JSONL form, all the sinks;
* :mod:`shardline.report`: run reports, text rendering, live and Prometheus metrics.

The deliberately public submodule :mod:`shardline.testing` (fake server,
fixtures) is not imported by this package; the underscore modules are private.

Every name here, and the three sub-namespaces, are imported on first use
(PEP 562), so ``import shardline._cli`` for ``shardline --help`` does not pay
for trio and httpx. Type checkers and the docs read the imports below the
``TYPE_CHECKING`` guard; ``_EXPORTS`` is the same table for the runtime
(:mod:`shardline._lazy`; a test keeps the two equal).
"""

from typing import TYPE_CHECKING

from . import _lazy

#: Where each public name lives: name -> private module.
_EXPORTS: dict[str, str] = {
    "Backoff": "_backoff",
    "RetryPolicy": "_backoff",
    "no_delays": "_backoff",
    "RetryBudget": "_budget",
    "Deadlines": "_config",
    "Endpoint": "_config",
    "FlowControl": "_config",
    "Hedging": "_config",
    "PipelineConfig": "_config",
    "AttemptError": "_exceptions",
    "Cause": "_exceptions",
    "ConfigError": "_exceptions",
    "InputError": "_exceptions",
    "ItemCancelled": "_exceptions",
    "ShardlineError": "_exceptions",
    "ChatRequest": "_models",
    "CompletionRequest": "_models",
    "EmbeddingRequest": "_models",
    "Outcome": "_models",
    "Request": "_models",
    "ResponsesRequest": "_models",
    "Result": "_models",
    "Status": "_models",
    "ToolCall": "_models",
    "Usage": "_models",
    "Pipeline": "_pipeline",
    "PipelineStatistics": "_pipeline",
    "open_pipeline": "_pipeline",
    "EventSink": "_sinks",
    "JsonlEventSink": "_sinks",
    "MemoryEventSink": "_sinks",
    "TeeSink": "_sinks",
    "ShardStatistics": "_state",
}
_SUBMODULES = frozenset({"errors", "events", "report"})


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("shardline")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0.0.0"


# Type checkers and the docs see the imports; the runtime imports on first use.
if TYPE_CHECKING:
    __version__: str

    from . import errors as errors
    from . import events as events
    from . import report as report
    from ._backoff import Backoff as Backoff
    from ._backoff import RetryPolicy as RetryPolicy
    from ._backoff import no_delays as no_delays
    from ._budget import RetryBudget as RetryBudget
    from ._config import Deadlines as Deadlines
    from ._config import Endpoint as Endpoint
    from ._config import FlowControl as FlowControl
    from ._config import Hedging as Hedging
    from ._config import PipelineConfig as PipelineConfig
    from ._exceptions import AttemptError as AttemptError
    from ._exceptions import Cause as Cause
    from ._exceptions import ConfigError as ConfigError
    from ._exceptions import InputError as InputError
    from ._exceptions import ItemCancelled as ItemCancelled
    from ._exceptions import ShardlineError as ShardlineError
    from ._models import ChatRequest as ChatRequest
    from ._models import CompletionRequest as CompletionRequest
    from ._models import EmbeddingRequest as EmbeddingRequest
    from ._models import Outcome as Outcome
    from ._models import Request as Request
    from ._models import ResponsesRequest as ResponsesRequest
    from ._models import Result as Result
    from ._models import Status as Status
    from ._models import ToolCall as ToolCall
    from ._models import Usage as Usage
    from ._pipeline import Pipeline as Pipeline
    from ._pipeline import PipelineStatistics as PipelineStatistics
    from ._pipeline import open_pipeline as open_pipeline
    from ._sinks import EventSink as EventSink
    from ._sinks import JsonlEventSink as JsonlEventSink
    from ._sinks import MemoryEventSink as MemoryEventSink
    from ._sinks import TeeSink as TeeSink
    from ._state import ShardStatistics as ShardStatistics
else:
    __getattr__, __dir__ = _lazy.lazy_namespace(
        __name__, globals(), _EXPORTS, submodules=_SUBMODULES, computed={"__version__": _version}
    )

del TYPE_CHECKING  # not a public name

__all__ = [
    "AttemptError",
    "Backoff",
    "Cause",
    "ChatRequest",
    "CompletionRequest",
    "ConfigError",
    "Deadlines",
    "EmbeddingRequest",
    "Endpoint",
    "EventSink",
    "FlowControl",
    "Hedging",
    "InputError",
    "ItemCancelled",
    "JsonlEventSink",
    "MemoryEventSink",
    "Outcome",
    "Pipeline",
    "PipelineConfig",
    "PipelineStatistics",
    "Request",
    "ResponsesRequest",
    "Result",
    "RetryBudget",
    "RetryPolicy",
    "ShardStatistics",
    "ShardlineError",
    "Status",
    "TeeSink",
    "ToolCall",
    "Usage",
    "no_delays",
    "open_pipeline",
]
