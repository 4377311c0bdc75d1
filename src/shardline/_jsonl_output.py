"""JSONL batch output: result lines, a crash-safe appending writer, and resume.

The output half of the file layer of ``shardline run`` (the input half is
:mod:`shardline._jsonl`). The output is appended one line per finished item.

Output format, one JSON object per finished item::

    {"id": "q1", "status": "ok", "text": "...", "finish_reason": "stop",
     "usage": {...}, "attempts": 1, "shard": 3, "ttft_s": 0.21, "latency_s": 0.9}
    {"id": "t1", "status": "ok", "text": "", "finish_reason": "tool_calls", ...,
     "tool_calls": [{"id": "call_1", "type": "function",
                     "function": {"name": "lookup", "arguments": "{\"q\": \"x\"}"},
                     "arguments_valid": true}]}
    {"id": 7, "line": 7, "status": "failed", "text": null, "usage": null, "attempts": 0,
     "shard": null, "ttft_s": null, "latency_s": 0.0,
     "error": {"cause": "invalid_input", "message": "in.jsonl:7: invalid JSON ..."}}

An ``ok`` line has these keys only when the answer had them: ``tool_calls``
(the API's shape, plus ``arguments_valid``: whether the arguments parse as a
JSON object), ``reasoning``, ``refusal``, ``logprobs`` (choice 0's
``logprobs.content`` entries), ``embeddings`` (one list of floats per input).

Items cancelled by a Ctrl-C drain (or a stop on a dead endpoint) are **not**
written: the output only holds items that reached a final status, so
``--resume`` simply runs whatever is missing.

Resume (``--resume``) works in two steps, see :func:`prepare_resume`: the
existing output is first *compacted* into a temporary file that keeps only
complete ``ok`` lines (one per id; torn or failed lines are dropped), which is
fsynced and atomically renamed over the original; then the run appends to it
and skips every input id found there. The final file therefore holds every
input line's id exactly once, with its latest status. A crash during
compaction leaves either the old file or the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import attrs

from ._jsonl import CHUNK, IdSet, peek_id
from ._models import Outcome, Result, Status

__all__ = [
    "OutputWriter",
    "ResumeState",
    "outcome_to_json",
    "prepare_resume",
    "repair_torn_tail",
]


def answer_fields(result: Result) -> dict[str, Any]:
    """The parts of an answer beyond its text that it has, as an output record holds them:
    ``tool_calls`` (each with ``arguments_valid``), ``reasoning``, ``refusal``,
    ``logprobs`` and ``embeddings``."""
    fields: dict[str, Any] = {}
    if result.tool_calls:
        fields["tool_calls"] = [
            {**call.to_json(), "arguments_valid": call.arguments_valid}
            for call in result.tool_calls
        ]
    if result.reasoning is not None:
        fields["reasoning"] = result.reasoning
    if result.refusal is not None:
        fields["refusal"] = result.refusal
    if result.logprobs is not None:
        fields["logprobs"] = list(result.logprobs)
    if result.embeddings is not None:
        fields["embeddings"] = result.embeddings
    return fields


def outcome_to_json(outcome: Outcome, *, line: int | None = None) -> dict[str, Any]:
    """The output record of one finished item (see the module docstring)."""
    record: dict[str, Any] = {"id": outcome.id}
    if line is not None:
        record["line"] = line
    status = outcome.status.value
    result = outcome.result
    if outcome.status is Status.OK and result is not None:
        record.update(
            status=status,
            text=result.text,
            finish_reason=result.finish_reason,
            usage=result.usage.to_json(),
            attempts=result.attempts,
            shard=result.shard,
            ttft_s=_round(result.ttft_s),
            latency_s=_round(result.latency_s),
        )
        record.update(answer_fields(result))
        return record
    error = outcome.error
    cause = outcome.cause
    message = getattr(error, "message", None) if error is not None else None
    if not isinstance(message, str):
        message = str(error) if error is not None else ""
    record.update(
        status=status,
        text=None,
        usage=None,
        attempts=outcome.attempts,
        shard=outcome.shard,
        ttft_s=None,
        latency_s=_round(outcome.latency_s),
        error={"cause": cause.value if cause is not None else None, "message": message},
    )
    return record


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


class OutputWriter:
    """Appends one JSON line per finished item; flushed per line, fsynced at intervals.

    Every :meth:`write` ends with a flush, so a crash loses at most the line
    being written (a torn last line, which :func:`prepare_resume` removes). An
    ``fsync`` happens when :meth:`write` finds the last one older than
    ``fsync_interval`` seconds, on :meth:`sync`, and on :meth:`close`, so a
    power loss costs at most about that interval.

    An fsync can take milliseconds; inside trio, pass ``fsync_interval=None``
    and call :meth:`fsync_written` from a worker thread every second
    (``await trio.to_thread.run_sync(writer.fsync_written)``) so the event
    loop never waits for the disk.

    Args:
        path: The output file. It is opened for appending (created if missing).
        fsync_interval: Seconds between fsyncs done by :meth:`write`; ``0``
            fsyncs every line, ``None`` never (only :meth:`sync`,
            :meth:`fsync_written` and :meth:`close` do).
        clock: Where time comes from; pass ``trio.current_time`` inside trio.
        truncate: Start the file empty instead of appending.

    Use as a context manager or call :meth:`close`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fsync_interval: float | None = 1.0,
        clock: Callable[[], float] = time.monotonic,
        truncate: bool = False,
    ) -> None:
        self.path = Path(path)
        self._file: IO[bytes] = open(self.path, "wb" if truncate else "ab")  # noqa: SIM115
        self._interval = fsync_interval
        self._clock = clock
        self._last_sync = clock()
        self._dirty = False
        self.lines_written = 0

    def write(self, record: dict[str, Any]) -> None:
        """Write one record as a line and flush it; fsync if the interval has passed."""
        text = json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
        try:
            data = text.encode()
        except UnicodeEncodeError:
            # Lone surrogates (a server may send "\\ud800" escapes): escape everything instead,
            # which is still valid JSON and decodes to the same string.
            data = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        self._file.write(data)
        self._file.flush()
        self._dirty = True
        self.lines_written += 1
        if self._interval is not None and self._clock() - self._last_sync >= self._interval:
            self.sync()

    @property
    def dirty(self) -> bool:
        """True when lines were written since the last fsync."""
        return self._dirty

    def fsync_written(self) -> None:
        """Fsync what :meth:`write` has already flushed; safe to call from a worker thread.

        It touches only the file descriptor (every line is flushed by
        :meth:`write` before it returns), never the Python file buffer.
        """
        if self._dirty and not self._file.closed:
            self._dirty = False
            os.fsync(self._file.fileno())

    def sync(self) -> None:
        """Flush and fsync now (cheap when nothing was written since the last sync)."""
        if self._file.closed:
            return
        self._file.flush()
        if self._dirty:
            os.fsync(self._file.fileno())
            self._dirty = False
        self._last_sync = self._clock()

    def close(self) -> None:
        """Flush, fsync and close. Idempotent."""
        if not self._file.closed:
            self.sync()
            self._file.close()

    @property
    def closed(self) -> bool:
        return self._file.closed

    def __enter__(self) -> OutputWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<OutputWriter {str(self.path)!r} {state}, {self.lines_written} lines written>"


def repair_torn_tail(path: str | os.PathLike[str]) -> int:
    """Truncate a partial last line (one without its newline, as ``kill -9`` can leave).

    Returns:
        The number of bytes removed (0 when the file ends with a newline, is
        empty, or does not exist).
    """
    try:
        f = open(path, "r+b")  # noqa: SIM115
    except FileNotFoundError:
        return 0
    with f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        # Walk back in chunks to the last newline.
        pos = size
        keep = 0
        while pos > 0:
            step = min(CHUNK, pos)
            pos -= step
            f.seek(pos)
            block = f.read(step)
            idx = block.rfind(b"\n")
            if idx >= 0:
                keep = pos + idx + 1
                break
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
        return size - keep


@attrs.frozen(kw_only=True)
class ResumeState:
    """What :func:`prepare_resume` found in an existing output file.

    Attributes:
        done: Ids already written with status ``ok``: the run skips them.
        kept: ``ok`` lines kept.
        dropped_failed: Failed lines dropped (their items run again).
        dropped_duplicate: Extra ``ok`` lines for an id already kept.
        dropped_torn: Torn or unparsable lines dropped (0 or 1 after ``kill -9``).
    """

    done: IdSet
    kept: int = 0
    dropped_failed: int = 0
    dropped_duplicate: int = 0
    dropped_torn: int = 0


def prepare_resume(path: str | os.PathLike[str]) -> ResumeState:
    """Compact an output file for ``--resume`` and return the ids it already has.

    Keeps the first complete ``ok`` line of each id, drops failed lines (their
    items are retried), duplicate ``ok`` lines and torn/unparsable lines; the
    kept lines are written byte for byte to a temporary file in the same
    directory, fsynced, and atomically renamed over ``path`` (the directory is
    fsynced too). A missing file is an empty, valid start.

    Raises:
        OSError: If the file cannot be read or the directory is not writable.
    """
    target = Path(path)
    done = IdSet()
    if not target.exists():
        return ResumeState(done=done)
    kept = failed = dup = torn = 0
    directory = target.parent if str(target.parent) else Path(".")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".resume", dir=directory)
    try:
        with open(target, "rb") as src, os.fdopen(fd, "wb") as dst:
            for raw in src:
                if not raw.endswith(b"\n"):
                    torn += 1  # a partial last line: the write that kill -9 interrupted
                    continue
                try:
                    obj = json.loads(raw)
                except (UnicodeDecodeError, ValueError):
                    torn += 1
                    continue
                item_id = peek_id(obj)
                if item_id is None or not isinstance(obj, dict):
                    torn += 1
                    continue
                if obj.get("status") != Status.OK.value:
                    failed += 1
                    continue
                if not done.add(item_id):
                    dup += 1
                    continue
                dst.write(raw)
                kept += 1
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(directory)
    return ResumeState(
        done=done, kept=kept, dropped_failed=failed, dropped_duplicate=dup, dropped_torn=torn
    )


def _fsync_dir(directory: Path) -> None:
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(dfd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(dfd)
