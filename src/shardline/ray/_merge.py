"""Tagged actor events, and the merge that turns them into one run's events file.

Each :class:`~shardline.ray.ShardlineBatch` actor runs its own pipeline, so it
writes its own events. Ray re-runs a batch whose actor or node died, so the same
items can appear in the events of two (or more) *executions* of one batch. To
merge them into one run without double counting, every line an actor writes is
tagged: the ordinary event record (the ``shardline`` events schema) with three
more keys, which readers of ordinary events ignore::

    {"v":1,"kind":"item_end","t":3.2,"item_id":"q1",...,"actor":"h-412-9f2c","batch":"b-5e1d…","exec":"x-0c9a…"}

* ``actor``: the actor (host, pid and a random suffix). Its pipeline's
  ``run_start`` line anchors its ``t`` to UTC (``started_at``).
* ``batch``: the batch identity, a digest of the batch's rows. A batch that Ray
  runs again has the same rows, so it has the same ``batch`` id.
* ``exec``: one execution of a batch (random per call).

Two marker lines bracket an execution: ``{"kind":"batch_start",…,"rows":N}``
(which also carries the actor's ``started_at``, ``shard_count`` and ``config``)
and ``{"kind":"batch_end",…}``, written after the last item of the batch ended.
Events that belong to no batch (a shard cooling down between batches) have
``batch`` and ``exec`` set to ``null``.

The merge rule (:func:`merge_events`):

1. For every batch, keep exactly one execution: the **complete** one (it has a
   ``batch_end``) that ended last; if no execution of the batch completed (the
   run was interrupted), the one that was seen last, so its unfinished items
   show up in the report as they would in an interrupted single-machine run.
   Every other execution is dropped whole (``superseded`` in the summary).
2. Keep every event that belongs to no batch, except the actors' own
   ``run_start``/``run_end``.
3. Rebase time: an event's absolute time is its actor's ``started_at + t``; the
   merged run starts when the first actor that ran a kept batch started, and
   each event's ``t`` becomes its absolute time minus that (never below 0, so
   events of a driver that recorded invalid input before the actors started
   are at ``t == 0``). Events are written in
   time order (a k-way merge of the sources, which are each in time order).
4. Write one ``run_start`` (``shard_count``: the largest of the actors';
   ``config``: the first actor's, plus a ``ray`` entry describing the merge),
   the kept events, and one ``run_end``.

Shard numbers are not renumbered: shard ``k`` of the merged report is shard
``k`` of every actor. With ``hash`` routing an id lands on the same shard
index on whichever actor runs it, so the per-shard table matches a
single-machine run with the same ``--shards``.

Clock skew between machines shifts events of different actors against each
other by the skew (wall clocks anchor each actor); counts and token totals do
not depend on it, the TPM minute of an item can.
"""

from __future__ import annotations

import heapq
import json
import os
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import attrs

from .._events import RunEnd, RunStart, event_from_json
from .._sinks import JsonlEventSink

__all__ = [
    "MergeSummary",
    "batch_end_line",
    "batch_start_line",
    "merge_event_dir",
    "merge_events",
    "tag_event",
]

#: Kinds of the two marker lines of an execution; not part of the events schema.
BATCH_START = "batch_start"
BATCH_END = "batch_end"
_ACTOR_RUN_KINDS = frozenset({"run_start", "run_end"})


def _dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False) + "\n"


def tag_event(
    event_json: dict[str, Any], *, actor: str, batch: str | None, exec_id: str | None
) -> str:
    """One tagged line: an event's JSON object plus ``actor``, ``batch`` and ``exec``."""
    out = dict(event_json)
    out["actor"] = actor
    out["batch"] = batch
    out["exec"] = exec_id
    return _dumps(out)


def batch_start_line(
    *,
    actor: str,
    batch: str,
    exec_id: str,
    t: float,
    rows: int,
    started_at: float,
    shard_count: int,
    config: dict[str, Any],
) -> str:
    """The marker line that opens one execution of a batch."""
    return _dumps(
        {
            "v": 1,
            "kind": BATCH_START,
            "t": t,
            "actor": actor,
            "batch": batch,
            "exec": exec_id,
            "rows": rows,
            "started_at": started_at,
            "shard_count": shard_count,
            "config": config,
        }
    )


def batch_end_line(*, actor: str, batch: str, exec_id: str, t: float, rows: int) -> str:
    """The marker line written once every item of an execution has ended."""
    return _dumps(
        {
            "v": 1,
            "kind": BATCH_END,
            "t": t,
            "actor": actor,
            "batch": batch,
            "exec": exec_id,
            "rows": rows,
        }
    )


@attrs.frozen(kw_only=True)
class MergeSummary:
    """What :func:`merge_events` wrote.

    Attributes:
        path: The merged events file.
        sha256: Its digest (equals ``sha256sum`` of the file).
        events: Events written, ``run_start`` and ``run_end`` included.
        actors: Actors that contributed kept events.
        batches: Batches kept (one execution each).
        complete_batches: Of those, batches whose kept execution completed.
        superseded: Executions dropped because another execution of the same
            batch was kept (Ray re-ran the batch).
        run_id: The merged run's id.
        started_at: UTC epoch seconds at the merged run's ``t == 0``.
    """

    path: Path
    sha256: str
    events: int
    actors: int
    batches: int
    complete_batches: int
    superseded: int
    run_id: str
    started_at: float


@attrs.define(eq=False)
class _Exec:
    actor: str
    complete: bool = False
    end_abs: float = float("-inf")
    last_abs: float = float("-inf")
    order: int = 0


@attrs.define(eq=False)
class _Actor:
    started_at: float | None = None
    shard_count: int = 0
    config: dict[str, Any] | None = None


def _read_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.endswith(b"\n"):
                return  # a torn last line (the actor died while writing it)
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except ValueError as exc:
                raise ValueError(f"{path}:{lineno}: invalid JSON: {exc}") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("kind"), str):
                raise ValueError(f"{path}:{lineno}: not a tagged event line")
            yield lineno, obj


def merge_events(
    sources: Iterable[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    run_id: str | None = None,
    reason: str = "completed",
    append: bool = False,
) -> MergeSummary:
    """Merge tagged actor events into one run's events file (see the module docstring).

    The result is an ordinary events file: ``shardline report OUTPUT`` and
    :func:`~shardline.report.compute_report` read it like the events of a
    single-machine run, with the same fields.

    Example::

        summary = merge_events(sorted(Path("events/").glob("*.jsonl")), "run.events.jsonl")
        print(summary.batches, "batches,", summary.superseded, "re-runs dropped")

    Args:
        sources: Files of tagged lines (an actor's events file, or a spool of the
            inline events of ``ShardlineBatch(inline_events=True)``). Each must be
            in time order per actor, as actors write them.
        output: The merged events file.
        run_id: The merged run's id (default: random).
        reason: The ``run_end`` reason: ``completed``, ``cancelled`` or ``error``.
        append: Append to an existing events file (a resumed run), as
            ``JsonlEventSink(append=True)`` does.

    Returns:
        A :class:`MergeSummary`.

    Raises:
        ValueError: a source line is not a tagged event (naming file and line),
            or no source holds any actor's events.
        OSError: a file cannot be read or written.
    """
    paths = [Path(p) for p in sources]
    actors: dict[str, _Actor] = {}
    execs: dict[tuple[str, str], _Exec] = {}
    order = 0

    def actor_of(name: str) -> _Actor:
        acc = actors.get(name)
        if acc is None:
            acc = actors[name] = _Actor()
        return acc

    loose_actors: set[str] = set()
    in_order: list[bool] = []

    # Pass 1: actors' anchors, executions and whether each completed.
    for path in paths:
        previous = float("-inf")
        ordered = True
        for _lineno, obj in _read_lines(path):
            name = str(obj.get("actor"))
            kind = obj["kind"]
            acc = actor_of(name)
            if kind in ("run_start", BATCH_START) and acc.started_at is None:
                acc.started_at = float(obj["started_at"])
                acc.shard_count = int(obj["shard_count"])
                acc.config = obj.get("config")
            if kind not in _ACTOR_RUN_KINDS and kind not in (BATCH_START, BATCH_END):
                at = (acc.started_at or 0.0) + float(obj.get("t", 0.0))
                ordered = ordered and at >= previous
                previous = max(previous, at)
            batch, exec_id = obj.get("batch"), obj.get("exec")
            if batch is None or exec_id is None:
                if kind not in _ACTOR_RUN_KINDS:
                    loose_actors.add(name)
                continue
            key = (str(batch), str(exec_id))
            ex = execs.get(key)
            if ex is None:
                order += 1
                ex = execs[key] = _Exec(actor=name, order=order)
            anchor = acc.started_at or 0.0
            at = anchor + float(obj.get("t", 0.0))
            ex.last_abs = max(ex.last_abs, at)
            if kind == BATCH_END:
                ex.complete = True
                ex.end_abs = max(ex.end_abs, at)
        in_order.append(ordered)

    # The kept execution of each batch.
    best: dict[str, tuple[str, _Exec]] = {}
    for (batch, exec_id), ex in execs.items():
        cur = best.get(batch)
        if cur is None or _rank(ex) > _rank(cur[1]):
            best[batch] = (exec_id, ex)
    kept = {(batch, exec_id) for batch, (exec_id, _ex) in best.items()}
    superseded = len(execs) - len(kept)

    # Which actors contribute, and the run's anchor.
    runners = {ex.actor for _b, (_x, ex) in best.items()}
    contributing = runners | loose_actors
    # The run starts when the first actor that ran a kept batch started; events of
    # actors that ran none (a driver recording invalid input) are clamped to it.
    anchors = [s for a in runners if (s := actors[a].started_at) is not None]
    if not anchors:
        anchors = [s for a in contributing if (s := actors[a].started_at) is not None]
    if not anchors:
        anchors = [s for a in actors.values() if (s := a.started_at) is not None]
    if not anchors:
        raise ValueError("no actor events to merge (no run_start or batch_start line)")
    run_started = min(anchors)
    shard_count = max((a.shard_count for a in actors.values()), default=1) or 1
    first_config = next(
        (
            actors[a].config
            for a in sorted(contributing, key=lambda a: actors[a].started_at or 0.0)
            if actors[a].config is not None
        ),
        None,
    )
    config = dict(first_config or {})
    config["ray"] = {
        "actors": len(contributing),
        "batches": len(kept),
        "superseded_executions": superseded,
    }

    # Pass 2: k-way merge of the kept events, in time order.
    def kept_events(index: int, path: Path) -> Iterator[tuple[float, int, int, dict[str, Any]]]:
        seq = 0
        for _lineno, obj in _read_lines(path):
            kind = obj["kind"]
            if kind in (BATCH_START, BATCH_END) or kind in _ACTOR_RUN_KINDS:
                continue
            batch, exec_id = obj.get("batch"), obj.get("exec")
            if batch is not None and (str(batch), str(exec_id)) not in kept:
                continue
            anchor = actors[str(obj.get("actor"))].started_at or run_started
            at = anchor + float(obj["t"])
            seq += 1
            yield at, index, seq, obj

    streams = [
        kept_events(i, p) if in_order[i] else iter(sorted(kept_events(i, p)))
        for i, p in enumerate(paths)
    ]
    rid = run_id or uuid.uuid4().hex[:12]
    sink = JsonlEventSink(output, append=append)
    written = 0
    last_t = 0.0
    try:
        sink.emit(
            RunStart(
                t=0.0,
                run_id=rid,
                started_at=run_started,
                shard_count=shard_count,
                config=config,
            )
        )
        written += 1
        for at, _i, _seq, obj in heapq.merge(*streams, key=lambda e: (e[0], e[1], e[2])):
            t = max(0.0, at - run_started)
            obj = dict(obj)
            obj["t"] = t
            event = event_from_json(obj)
            sink.emit(event)
            written += 1
            last_t = max(last_t, t)
        sink.emit(RunEnd(t=last_t, reason=reason))
        written += 1
    finally:
        sink.close()
    return MergeSummary(
        path=Path(output),
        sha256=sink.hexdigest(),
        events=written,
        actors=len(contributing),
        batches=len(kept),
        complete_batches=sum(1 for _b, (_x, ex) in best.items() if ex.complete),
        superseded=superseded,
        run_id=rid,
        started_at=run_started,
    )


def _rank(ex: _Exec) -> tuple[bool, float, int]:
    """Complete beats incomplete; then the later end (or last event); then the later seen."""
    return (ex.complete, ex.end_abs if ex.complete else ex.last_abs, ex.order)


def merge_event_dir(
    events_dir: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    run_id: str | None = None,
    reason: str = "completed",
) -> MergeSummary:
    """Merge every actor events file of ``events_dir`` (``*.events.jsonl``) into ``output``.

    The files are the ones :class:`~shardline.ray.ShardlineBatch` writes when
    given ``events_dir``; pass the same ``run_id`` as the batch class to pick
    only that run's files (``{run_id}.*.events.jsonl``).

    Raises:
        ValueError: no actor events file in ``events_dir``.
    """
    directory = Path(events_dir)
    pattern = f"{run_id}.*.events.jsonl" if run_id else "*.events.jsonl"
    files = sorted(p for p in directory.glob(pattern) if Path(output).resolve() != p.resolve())
    if not files:
        raise ValueError(f"no actor events files ({pattern}) in {directory}")
    return merge_events(files, output, run_id=run_id, reason=reason)
