"""The fake OpenAI-compatible server: trio for I/O and time, h11 for HTTP/1.1 parsing.

This module owns the public face: `FakeServer` (the handle a test holds),
`serve_fake_server` (the ``nursery.start`` form) and `open_fake_server` (the
``async with`` form), and the accept loop. The rest lives below it, each module
with one reason to change: `_wire` (OpenAI encoders), `_timing` (timing model
and timer), `_stats` (counters), `_connection` (the h11 connection and its I/O
primitives), `_respond` (responses and fault execution), `_routes` (what to
answer), `_state` (the record they share).

Hot path notes: request parsing and response headers go through h11; the body
of a streamed response is written as raw chunked-encoding frames built from
pre-encoded per-request templates, and every event that is already due is
coalesced into one frame, so with ``itl=0`` a whole stream costs a handful of
``send_all`` calls.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

import attrs
import trio

from ._connection import serve_connection
from ._faults import FaultPlan
from ._load import LoadModel
from ._routes import handle
from ._state import ServerState
from ._stats import FakeServerStatistics
from ._timing import TimingModel
from ._wire import DEFAULT_MAX_TOKENS, DEFAULT_MODEL, MAX_COMPLETION_TOKENS

__all__ = ["DEFAULT_MAX_CONNECTIONS", "FakeServer", "open_fake_server", "serve_fake_server"]

DEFAULT_MAX_CONNECTIONS: Final = 4096
"""Connections served at once; the next ``accept`` waits for one to close."""


@attrs.define(eq=False, kw_only=True)
class FakeServer:
    """A running fake OpenAI-compatible server; get one from `open_fake_server`.

    Point any OpenAI-compatible client at `base_url`. The server answers
    ``POST {base_url}/chat/completions``, ``POST {base_url}/completions``,
    ``POST {base_url}/embeddings``, ``POST {base_url}/responses`` and
    ``GET {base_url}/models`` (any path ending in one of these works, so
    Azure-style deployment URLs do too), with deterministic text, vectors and
    usage, at the speed of its `TimingModel`, misbehaving as its `FaultPlan` says.

    It is not a model: the text is a fixed word sequence (`fake_text`), a
    tool call's arguments are ``{"text": <that text>}``, reasoning is the same
    text, vectors are `fake_embedding`, and ``n > 1`` is not simulated.

    Example::

        async with open_fake_server(faults="http_503=0.2", seed=1) as server:
            await run_my_pipeline(base_url=server.base_url)
            stats = server.statistics()
            print(stats.faults["http_503"], "failures injected,", stats.completed, "answered")

    Attributes:
        host: The address it listens on.
        port: The TCP port it listens on.
    """

    host: str
    port: int
    _state: ServerState

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT/v1``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    @property
    def timing(self) -> TimingModel:
        """Its timing model."""
        return self._state.timing

    @property
    def seed(self) -> int:
        """The seed of rate-drawn faults."""
        return self._state.seed

    @property
    def default_max_tokens(self) -> int:
        """Completion tokens when a request sets no limit."""
        return self._state.default_max_tokens

    @property
    def models(self) -> tuple[str, ...]:
        """Model names ``GET /v1/models`` lists; the first is echoed when a request names none."""
        return self._state.models

    @property
    def load(self) -> LoadModel:
        """Its load model."""
        return self._state.load

    @property
    def no_usage(self) -> bool:
        """Whether it withholds the usage chunk of streams."""
        return self._state.no_usage

    @property
    def faults(self) -> FaultPlan:
        """The fault plan in force."""
        return self._state.faults

    def set_faults(self, plan: FaultPlan | None) -> None:
        """Replace the fault plan; requests that arrive from now on use the new one.

        Example: heal a server mid-test with ``server.set_faults(None)``.
        """
        self._state.faults = plan if plan is not None else FaultPlan()

    def statistics(self) -> FakeServerStatistics:
        """Return a frozen snapshot of the server's counters."""
        return self._state.counters.snapshot()

    def __repr__(self) -> str:
        c = self._state.counters
        return (
            f"<FakeServer {self.base_url}: {c.in_flight} in flight, {c.requests} requests, "
            f"{sum(c.faults.values())} faults>"
        )


async def serve_fake_server(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    faults: FaultPlan | str | None = None,
    timing: TimingModel | None = None,
    seed: int = 0,
    default_max_tokens: int = DEFAULT_MAX_TOKENS,
    models: tuple[str, ...] = (DEFAULT_MODEL,),
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    load: LoadModel | None = None,
    no_usage: bool = False,
    task_status: trio.TaskStatus[FakeServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a fake OpenAI-compatible server until cancelled.

    The ``nursery.start`` form of `open_fake_server`: it reports the
    running `FakeServer` once it listens, then serves until its
    nursery is cancelled. Everything it started, including stalled responses,
    ends with it.

    Example::

        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve_fake_server)
            ...  # use server.base_url
            nursery.cancel_scope.cancel()

    Args:
        host: Address to listen on (loopback by default; the server is a test tool).
        port: TCP port; 0 picks a free one (read it back from ``server.port``).
        faults: A `FaultPlan`, or a ``--faults`` text spec, or ``None``.
        timing: The `TimingModel`; ``None`` answers as fast as possible.
        seed: Seed of rate-drawn faults.
        default_max_tokens: Completion tokens when a request sets no ``max_tokens``.
        models: Model names ``GET /v1/models`` lists; the first is echoed when a
            request names no model.
        max_connections: Connections served at once; more wait in the listen backlog.
        load: The `LoadModel` (capacity, queueing, rate limits, preemption, slow first
            tokens); ``None`` has no limits.
        no_usage: Never send the usage chunk of a stream, even when the request asks
            for it with ``stream_options.include_usage`` (as some servers do).
        task_status: Supplied by ``nursery.start``.

    Raises:
        FaultSpecError: if ``faults`` is a text spec that does not parse.
        ValueError: for an invalid option (the message names it).
        OSError: if the address cannot be bound.
    """
    if isinstance(faults, str):
        faults = FaultPlan.parse(faults)
    if isinstance(default_max_tokens, bool) or not 1 <= default_max_tokens <= MAX_COMPLETION_TOKENS:
        raise ValueError(
            f"default_max_tokens must be between 1 and {MAX_COMPLETION_TOKENS}, "
            f"got {default_max_tokens!r}"
        )
    if max_connections < 1:
        raise ValueError(f"max_connections must be >= 1, got {max_connections!r}")
    models = tuple(models)
    if not models:
        raise ValueError("models must name at least one model, got ()")
    listeners = await trio.open_tcp_listeners(port, host=host)
    try:
        sockname = listeners[0].socket.getsockname()
        state = ServerState(
            timing=timing if timing is not None else TimingModel(),
            seed=seed,
            default_max_tokens=default_max_tokens,
            models=models,
            faults=faults if faults is not None else FaultPlan(),
            load=load if load is not None else LoadModel(),
            no_usage=no_usage,
        )
        server = FakeServer(host=host, port=int(sockname[1]), state=state)
        slots = trio.Semaphore(max_connections)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(state.ticker.run)
            for listener in listeners:
                nursery.start_soon(_accept_loop, state, listener, slots, nursery)
            task_status.started(server)
    finally:
        with trio.CancelScope(shield=True):
            for listener in listeners:
                await listener.aclose()


async def _accept_loop(
    state: ServerState,
    listener: trio.SocketListener,
    slots: trio.Semaphore,
    nursery: trio.Nursery,
) -> None:
    while True:
        await slots.acquire()
        try:
            stream = await listener.accept()
        except BaseException:
            slots.release()
            raise
        nursery.start_soon(_connection_task, state, stream, slots)


async def _connection_task(
    state: ServerState, stream: trio.SocketStream, slots: trio.Semaphore
) -> None:
    try:
        await serve_connection(state, stream, handle)
    finally:
        slots.release()


@asynccontextmanager
async def open_fake_server(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    faults: FaultPlan | str | None = None,
    timing: TimingModel | None = None,
    seed: int = 0,
    default_max_tokens: int = DEFAULT_MAX_TOKENS,
    models: tuple[str, ...] = (DEFAULT_MODEL,),
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    load: LoadModel | None = None,
    no_usage: bool = False,
) -> AsyncIterator[FakeServer]:
    """Run a fake OpenAI-compatible server for the duration of an ``async with`` block.

    Like a flight simulator for your pipeline: it speaks the real protocol, and
    engine failures happen on your schedule. Leaving the block stops the server
    and ends every response it was still sending, stalled ones included.

    Example::

        async with open_fake_server(faults="rate_limit=0.1", seed=7) as server:
            async with httpx.AsyncClient(base_url=server.base_url) as client:
                r = await client.post("/chat/completions", json={
                    "model": "m", "messages": [{"role": "user", "content": "hi"}]})
            print(server.statistics().faults)

    Args:
        host: Address to listen on.
        port: TCP port; 0 picks a free one.
        faults: A `FaultPlan`, a ``--faults`` text spec, or ``None``.
        timing: The `TimingModel`; ``None`` answers as fast as possible.
        seed: Seed of rate-drawn faults.
        default_max_tokens: Completion tokens when a request sets no ``max_tokens``.
        models: Model names ``GET /v1/models`` lists.
        max_connections: Connections served at once.
        load: The `LoadModel`; ``None`` has no limits.
        no_usage: Never send the usage chunk of a stream, even when asked.

    Yields:
        The running `FakeServer`.
    """
    async with trio.open_nursery() as nursery:
        server: FakeServer = await nursery.start(
            _serve_partial(
                host=host,
                port=port,
                faults=faults,
                timing=timing,
                seed=seed,
                default_max_tokens=default_max_tokens,
                models=models,
                max_connections=max_connections,
                load=load,
                no_usage=no_usage,
            )
        )
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()


def _serve_partial(**kwargs: Any) -> Any:
    async def run(*, task_status: trio.TaskStatus[FakeServer] = trio.TASK_STATUS_IGNORED) -> None:
        await serve_fake_server(task_status=task_status, **kwargs)

    return run
