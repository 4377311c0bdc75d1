"""``ShardlineBatch``: a Ray Data callable class that runs batches through one pipeline.

A Ray Data actor lives for the whole dataset and is handed batch after batch.
This class gives each actor one long-lived trio loop, in a thread of its own,
holding one open pipeline (its shards, their httpx pools, queues and caps).
Each batch is handed to that loop with ``trio.from_thread.run``; the pool's
connections are reused from batch to batch, and nothing is created per batch.

This module owns the actor's life (its loop thread, its pipeline, its tagged
events); turning batches into requests and outcomes into columns is
:mod:`shardline.ray._rows`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import uuid
from collections.abc import Sequence
from typing import IO, Any, Literal

import attrs
import trio

from .._config import Endpoint, PipelineConfig
from .._events import Event, ItemEnd, event_to_json
from .._exceptions import ConfigError
from .._models import ItemId, Outcome, Request
from .._pipeline import Pipeline, open_pipeline
from ._merge import batch_end_line, batch_start_line, tag_event
from ._rows import (
    COLUMNS,
    Entry,
    batch_identity,
    build_batch,
    entries_of,
    record_of,
    row_of,
    rows_of,
)

__all__ = [
    "COLUMNS",
    "DEFAULT_STARTUP_TIMEOUT",
    "ShardlineBatch",
    "batch_identity",
]

#: Seconds an actor waits for its trio loop to open the pipeline before giving up.
DEFAULT_STARTUP_TIMEOUT = 60.0
#: Seconds :meth:`ShardlineBatch.close` waits for the loop to drain and stop.
CLOSE_TIMEOUT = 60.0

# -- events ----------------------------------------------------------------------------------


class _TaggedSink:
    """Writes tagged event lines (see :mod:`shardline.ray._merge`); runs on the trio thread.

    An item's events carry the batch and execution it was submitted with;
    events of no item (a shard cooling down) carry none. Lines go to a file,
    or to a buffer that :meth:`take` empties (inline events).
    """

    def __init__(self, actor: str, file: IO[str] | None) -> None:
        self.actor = actor
        self._file = file
        self._buffer: list[str] = []
        self._items: dict[ItemId, tuple[str, str]] = {}
        self.started_at = 0.0
        self.shard_count = 0
        self.config: dict[str, Any] = {}

    def emit(self, event: Event) -> None:
        obj = event_to_json(event)
        if obj["kind"] == "run_start":
            self.started_at = obj["started_at"]
            self.shard_count = obj["shard_count"]
            self.config = obj["config"]
        item_id = getattr(event, "item_id", None)
        tag = self._items.get(item_id) if item_id is not None else None
        batch, exec_id = tag if tag is not None else (None, None)
        self._write(tag_event(obj, actor=self.actor, batch=batch, exec_id=exec_id))
        if isinstance(event, ItemEnd):
            self._items.pop(event.item_id, None)

    def begin(self, batch: str, exec_id: str, ids: Sequence[ItemId], t: float) -> None:
        for item_id in ids:
            self._items[item_id] = (batch, exec_id)
        self._write(
            batch_start_line(
                actor=self.actor,
                batch=batch,
                exec_id=exec_id,
                t=t,
                rows=len(ids),
                started_at=self.started_at,
                shard_count=self.shard_count,
                config=self.config,
            )
        )

    def end(self, batch: str, exec_id: str, rows: int, t: float) -> None:
        self._write(batch_end_line(actor=self.actor, batch=batch, exec_id=exec_id, t=t, rows=rows))
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())

    def _write(self, line: str) -> None:
        if self._file is not None:
            self._file.write(line)
            self._file.flush()
        else:
            self._buffer.append(line)

    def take(self) -> str:
        """The buffered lines (inline events), emptied."""
        text = "".join(self._buffer)
        self._buffer.clear()
        return text

    def close(self) -> None:
        if self._file is not None and not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()


# -- the loop thread -------------------------------------------------------------------------


@attrs.define(eq=False)
class _Box:
    """Where the batch task leaves its cancel scope, for the calling thread to cancel."""

    scope: trio.CancelScope | None = None


class _LoopThread:
    """One trio loop in a thread of its own, holding one open pipeline until :meth:`stop`."""

    def __init__(
        self, config: PipelineConfig, sink: _TaggedSink, run_id: str, startup_timeout: float
    ) -> None:
        self._config = config
        self._sink = sink
        self._run_id = run_id
        self._ready = threading.Event()
        self.error: BaseException | None = None
        self.token: trio.lowlevel.TrioToken | None = None
        self.pipeline: Pipeline | None = None
        self._stop: trio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="shardline-trio", daemon=True)
        self._thread.start()
        if not self._ready.wait(startup_timeout):
            raise RuntimeError(f"the pipeline did not open within {startup_timeout:g} s")
        if self.error is not None:
            raise self.error
        if self.pipeline is None:
            raise RuntimeError("the pipeline's trio loop ended before it opened")

    def _main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as exc:
            self.error = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._stop = trio.Event()
        self.token = trio.lowlevel.current_trio_token()
        async with open_pipeline(self._config, sink=self._sink, run_id=self._run_id) as pipeline:
            self.pipeline = pipeline
            self._ready.set()
            await self._stop.wait()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self.pipeline is not None

    def stop(self, timeout: float) -> None:
        """Leave the pipeline (it drains) and end the loop; wait up to ``timeout`` seconds."""
        token, stop = self.token, self._stop
        if token is not None and stop is not None and self._thread.is_alive():
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(stop.set, trio_token=token)
        self._thread.join(timeout)


def _interrupt_only(exc: BaseException) -> bool:
    """Whether ``exc`` is a KeyboardInterrupt, or a group holding nothing else (``ray.cancel``)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_interrupt_only(e) for e in exc.exceptions)
    return isinstance(exc, KeyboardInterrupt)


class ShardlineBatch:
    """A Ray Data callable class: every batch runs through one long-lived pipeline per actor.

    Think of each actor as one ``shardline run`` process that never exits: it
    opens its pipeline (shards, pools, queues, caps) once, in a trio loop on a
    thread of its own, and Ray hands it batch after batch. Rows come back as
    rows, one per input row and in the same order; a failed item is a row with
    ``status="failed"`` and its ``cause``, never an exception that fails the
    job. It is *not* a per-row function: never create one per batch.

    Example::

        import ray
        from shardline.ray import ShardlineBatch

        ds = ray.data.read_json("s3://bucket/prompts/")      # rows: id, messages, max_tokens
        out = ds.map_batches(
            ShardlineBatch,
            fn_constructor_kwargs={"config": config, "events_dir": "/mnt/shared/events"},
            compute=ray.data.ActorPoolStrategy(size=4),
            num_cpus=0.25,            # I/O bound: a fraction of a CPU per actor
            batch_size=256,
            batch_format="pandas",
        )
        out.write_json("s3://bucket/results/")

    Input rows are either request objects (the columns of one JSONL line:
    ``id``, ``messages`` or ``prompt``, ``model`` and any OpenAI parameter) or
    a single ``request`` column holding a JSON object per row. Give every row
    an ``id``: a row without one gets ``"<batch id>:<row>"``.

    Output rows (``output="columns"``): ``id``, ``status`` (``ok``/``failed``/
    ``cancelled``), ``text``, ``finish_reason``, ``prompt_tokens``,
    ``completion_tokens``, ``usage_estimated``, ``attempts``, ``cause``,
    ``message``, ``shard``, ``ttft_s``, ``latency_s``, ``tool_calls`` (JSON
    text), ``reasoning``, ``refusal`` and ``embeddings`` (null where the answer
    has none). With ``output="records"`` one ``record`` column holds the
    ``shardline run`` output line of each item (JSON text), which keeps mixed id
    types intact and carries logprobs too.

    Events: every event is written tagged with the actor, the batch identity
    (a digest of the batch's rows, so a batch Ray re-runs after a failure has
    the same one) and the execution. With ``events_dir`` each actor appends to
    ``{events_dir}/{run_id}.{actor}.events.jsonl``; with ``inline_events=True``
    they travel in an ``events`` column instead (the batch's events in its
    first row, ``""`` in the others), which needs no shared storage. Merge
    either into one run with :func:`~shardline.ray.merge_event_dir` /
    :func:`~shardline.ray.merge_events`; the merge keeps one execution per
    batch, so re-runs are not counted twice.

    Args:
        config: The pipeline config of each actor (default:
            ``PipelineConfig.from_env()`` read in the actor). ``shard_count``,
            ``concurrency``, ``rpm`` and ``tpm`` are per actor: divide global
            rate limits by the number of actors.
        api_key_env: When ``config`` has no API key, read it from this
            environment variable of the actor, so the key need not travel in
            the constructor arguments (``None``: do not).
        events_dir: Directory for the actors' event files (shared storage on a
            multi-node cluster).
        inline_events: Return events in an ``events`` column.
        output: ``"columns"`` or ``"records"``.
        run_id: Names the run: the prefix of the event files.
        startup_timeout: Seconds to wait for the pipeline to open.

    Raises:
        ConfigError: for an invalid combination of arguments.

    Cancellation: ``ray.cancel`` (or Ctrl-C in a direct call) reaches the
    calling thread as ``KeyboardInterrupt``, possibly inside an exception
    group; the batch's feeding is cancelled and a plain ``KeyboardInterrupt``
    is raised. Items already admitted finish in the background; their
    execution has no ``batch_end``, so the merge drops it if the batch ran
    again elsewhere.
    """

    def __init__(
        self,
        *,
        config: PipelineConfig | None = None,
        api_key_env: str | None = "OPENAI_API_KEY",
        events_dir: str | os.PathLike[str] | None = None,
        inline_events: bool = False,
        output: Literal["columns", "records"] = "columns",
        run_id: str = "ray",
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
    ) -> None:
        if output not in ("columns", "records"):
            raise ConfigError(f"output must be 'columns' or 'records', got {output!r}")
        if events_dir is not None and inline_events:
            raise ConfigError("give events_dir or inline_events=True, not both")
        if config is None:
            config = PipelineConfig.from_env()
        key = os.environ.get(api_key_env) if api_key_env else None
        if key and any(e.api_key is None for e in config.all_endpoints()):
            # Every actor gets the same endpoints, each with the key when it has none.
            def keyed(e: Endpoint) -> Endpoint:
                return e if e.api_key is not None else attrs.evolve(e, api_key=key)

            endpoints: tuple[Endpoint, ...] = tuple(map(keyed, config.endpoints))
            config = attrs.evolve(config, endpoint=keyed(config.endpoint), endpoints=endpoints)
        self.config = config
        self.output = output
        self.inline_events = inline_events
        self.run_id = run_id
        self.actor = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.events_path: str | None = None
        file: IO[str] | None = None
        if events_dir is not None:
            os.makedirs(events_dir, exist_ok=True)
            self.events_path = os.path.join(
                os.fspath(events_dir), f"{run_id}.{self.actor}.events.jsonl"
            )
            file = open(self.events_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._sink = _TaggedSink(self.actor, file)
        self._lock = threading.Lock()
        self._closed = False
        self.batches = 0
        try:
            self._loop: _LoopThread | None = _LoopThread(
                config, self._sink, f"{run_id}.{self.actor}", startup_timeout
            )
        except BaseException:
            self._loop = None
            self._sink.close()
            raise

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<ShardlineBatch {self.actor}: {self.batches} batches, {state}>"

    def __call__(self, batch: Any) -> Any:
        """Run one batch; return its results in the batch's own format (one row per row)."""
        loop = self._loop
        if self._closed or loop is None:
            raise RuntimeError("this ShardlineBatch is closed")
        if not loop.alive:
            raise RuntimeError("the pipeline's trio loop has stopped") from loop.error
        rows = rows_of(batch)
        batch_id = batch_identity(rows)
        exec_id = "x-" + uuid.uuid4().hex[:16]
        entries = entries_of(rows, batch_id)
        box = _Box()
        with self._lock:
            try:
                outcomes, blob = trio.from_thread.run(
                    self._run_batch, entries, batch_id, exec_id, box, trio_token=loop.token
                )
            except BaseException as exc:
                if _interrupt_only(exc):
                    scope = box.scope
                    if scope is not None and loop.token is not None:
                        with contextlib.suppress(trio.RunFinishedError):
                            trio.from_thread.run_sync(scope.cancel, trio_token=loop.token)
                    raise KeyboardInterrupt from None
                raise
            self.batches += 1
        columns = self._columns([outcomes[e.index] for e in entries])
        if self.inline_events:
            columns["events"] = [blob] + [""] * (len(entries) - 1) if entries else []
        return build_batch(batch, columns)

    def _columns(self, outcomes: list[Outcome]) -> dict[str, list[Any]]:
        if self.output == "records":
            return {"record": [record_of(o) for o in outcomes]}
        rows = [row_of(o) for o in outcomes]
        return {name: [r[name] for r in rows] for name in COLUMNS}

    async def _run_batch(
        self, entries: list[Entry], batch_id: str, exec_id: str, box: _Box
    ) -> tuple[dict[int, Outcome], str]:
        loop = self._loop
        assert loop is not None
        assert loop.pipeline is not None
        pipeline = loop.pipeline
        sink = self._sink
        sink.begin(batch_id, exec_id, [e.item_id for e in entries], pipeline.now())
        outcomes: dict[int, Outcome] = {}
        index_of: dict[ItemId, int] = {}
        requests: list[Request] = []
        for e in entries:
            if e.request is None:
                assert e.error is not None
                outcomes[e.index] = pipeline.reject(e.item_id, e.error)
            else:
                index_of[e.item_id] = e.index
                requests.append(e.request)
        if requests:
            # Buffer room for every outcome: if this batch is cancelled, items already
            # admitted can still deliver theirs without anyone receiving.
            send, recv = trio.open_memory_channel[Outcome](len(requests))
            with trio.CancelScope() as scope:
                box.scope = scope
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(pipeline.map, requests, send)
                    # Not closed on cancellation: late outcomes still fit its buffer.
                    async for outcome in recv:
                        outcomes[index_of[outcome.id]] = outcome
            if scope.cancelled_caught:
                return outcomes, ""  # nobody waits for it: the caller raised KeyboardInterrupt
        sink.end(batch_id, exec_id, len(entries), pipeline.now())
        return outcomes, sink.take()

    def close(self) -> None:
        """Leave the pipeline (it drains) and stop the actor's trio loop. Idempotent."""
        if self._closed:
            return
        self._closed = True
        loop, self._loop = self._loop, None
        try:
            if loop is not None:
                loop.stop(CLOSE_TIMEOUT)
        finally:
            self._sink.close()

    def __enter__(self) -> ShardlineBatch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()
