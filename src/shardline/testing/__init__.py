"""Test helpers for shardline users: a fault-injecting OpenAI-compatible server.

This package is deliberately public (like ``trio.testing``) and is not imported
by ``shardline`` itself. Start a server in-process with `open_fake_server`
(or ``nursery.start(serve_fake_server)``), from pytest with the ``fake_server``
fixture, or as a process with ``shardline fake-server``.
"""

from __future__ import annotations

from ._causes import EXPECTED_CAUSE as EXPECTED_CAUSE
from ._causes import EXPECTED_CAUSE_NON_STREAMING as EXPECTED_CAUSE_NON_STREAMING
from ._causes import expected_cause as expected_cause
from ._faults import FAULT_KINDS as FAULT_KINDS
from ._faults import Fault as Fault
from ._faults import FaultKind as FaultKind
from ._faults import FaultPlan as FaultPlan
from ._faults import FaultSpecError as FaultSpecError
from ._load import LoadModel as LoadModel
from ._process import FakeServerProcess as FakeServerProcess
from ._process import fake_server_process as fake_server_process
from ._server import FakeServer as FakeServer
from ._server import open_fake_server as open_fake_server
from ._server import serve_fake_server as serve_fake_server
from ._shapes import SHAPE_VARIANTS as SHAPE_VARIANTS
from ._shapes import ShapeVariant as ShapeVariant
from ._stats import STATS_PATH as STATS_PATH
from ._stats import FakeServerStatistics as FakeServerStatistics
from ._stats import fetch_statistics as fetch_statistics
from ._timing import TimingModel as TimingModel
from ._transport import TRANSPORT_FAULTS as TRANSPORT_FAULTS
from ._transport import FakeTransport as FakeTransport
from ._transport import FaultPicker as FaultPicker
from ._wire import DEFAULT_MAX_TOKENS as DEFAULT_MAX_TOKENS
from ._wire import DEFAULT_MODEL as DEFAULT_MODEL
from ._wire import count_prompt_tokens as count_prompt_tokens
from ._wire import fake_text as fake_text
from ._wire_apis import fake_embedding as fake_embedding

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_MODEL",
    "EXPECTED_CAUSE",
    "EXPECTED_CAUSE_NON_STREAMING",
    "FAULT_KINDS",
    "SHAPE_VARIANTS",
    "STATS_PATH",
    "TRANSPORT_FAULTS",
    "FakeServer",
    "FakeServerProcess",
    "FakeServerStatistics",
    "FakeTransport",
    "Fault",
    "FaultKind",
    "FaultPicker",
    "FaultPlan",
    "FaultSpecError",
    "LoadModel",
    "ShapeVariant",
    "TimingModel",
    "count_prompt_tokens",
    "expected_cause",
    "fake_embedding",
    "fake_server_process",
    "fake_text",
    "fetch_statistics",
    "open_fake_server",
    "serve_fake_server",
]
