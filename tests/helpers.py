"""Helpers shared by the test modules: input files, reports, virtual time, SSE bytes, fakes.

Test modules import them as ``from helpers import ...`` (``tests/`` has no
``__init__.py``, so pytest puts it on ``sys.path``). Fake servers are not here:
tests use what users get from `shardline.testing`, the ``fake_server`` and
``fake_server_factory`` fixtures (a server in the test's trio loop) and
``fake_server_process`` (a server in a child process, for code that runs its own
``trio.run`` or its own processes).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio
import trio.testing

from shardline._events import EventFileReader
from shardline.report import RunReport, compute_report
from shardline.testing import FakeTransport, FaultPicker

# -- files ------------------------------------------------------------------------------------


def write_input(
    path: Path,
    n: int,
    *,
    prefix: str = "q",
    max_tokens: int | None = 8,
    extra: Iterable[str] = (),
) -> Path:
    """Write ``n`` chat requests (ids ``{prefix}0`` ...) as JSONL, then the ``extra`` lines."""
    with open(path, "w") as f:
        for i in range(n):
            record: dict[str, Any] = {
                "id": f"{prefix}{i}",
                "messages": [{"role": "user", "content": f"item {i}"}],
            }
            if max_tokens is not None:
                record["max_tokens"] = max_tokens
            f.write(json.dumps(record) + "\n")
        for line in extra:
            f.write(line + "\n")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every line of a JSONL file, parsed."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def report_of(path: Path) -> RunReport:
    """The report of an events file, with the file's digest."""
    with EventFileReader(path) as reader:
        report = compute_report(reader, events_sha256=None)
        return attrs.evolve(report, events_sha256=reader.hexdigest())


# -- time -------------------------------------------------------------------------------------


def run_virtual(fn: Callable[[], Awaitable[Any]]) -> Any:
    """Run ``fn`` in a fresh trio run on a clock that jumps over every sleep."""
    return trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


# -- SSE bytes --------------------------------------------------------------------------------


def sse(obj: object) -> bytes:
    """One ``data:`` event carrying ``obj`` as JSON."""
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def chunk(content: str | None = None, *, role: bool = False, finish: str | None = None) -> bytes:
    """One chat-completion chunk event: an assistant role, some content, a finish reason."""
    delta: dict[str, str] = {}
    if role:
        delta["role"] = "assistant"
    if content is not None:
        delta["content"] = content
    return sse({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """``data`` cut at the given offsets (taken modulo its length + 1); pieces may be empty."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(data[last:p])
        last = p
    pieces.append(data[last:])
    return pieces


class Body(httpx.AsyncByteStream):
    """A response body that yields the given parts, one read each."""

    def __init__(self, parts: Sequence[bytes]) -> None:
        self.parts = parts

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for part in self.parts:
            yield part


# -- transports -------------------------------------------------------------------------------


def mock_transports(
    handler: Callable[[httpx.Request], httpx.Response],
) -> Callable[[int], httpx.AsyncBaseTransport]:
    """A per-shard transport factory: every shard's ``httpx.MockTransport`` calls ``handler``."""
    return lambda _shard: httpx.MockTransport(handler)


class Transports:
    """A per-shard factory of `FakeTransport` that remembers the transport of each shard."""

    def __init__(self, plan: FaultPicker | None = None, **kwargs: Any) -> None:
        self.plan = plan
        self.kwargs = kwargs
        self.by_shard: dict[int, FakeTransport] = {}

    def __call__(self, shard: int) -> FakeTransport:
        t = (
            FakeTransport(**self.kwargs)
            if self.plan is None
            else FakeTransport(plan=self.plan, **self.kwargs)
        )
        self.by_shard[shard] = t
        return t
