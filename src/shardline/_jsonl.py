"""JSONL batch files: a lazy input reader, a crash-safe output writer, and resume.

This is the file layer of ``shardline run``. It never holds a whole file in
memory: the input is read one line at a time as the pipeline asks for work, and
the output is appended one line per finished item.

Input format, one JSON object per line::

    {"id": "q1", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 16}
    {"prompt": "Once upon a time"}

``id`` is a string or an integer; when absent the item's id is its 1-based line
number. Blank lines are skipped. Every other key is passed to the server.

Output format, one JSON object per finished item::

    {"id": "q1", "status": "ok", "text": "...", "finish_reason": "stop",
     "usage": {...}, "attempts": 1, "shard": 3, "ttft_s": 0.21, "latency_s": 0.9}
    {"id": 7, "line": 7, "status": "failed", "text": null, "usage": null, "attempts": 0,
     "shard": null, "ttft_s": null, "latency_s": 0.0,
     "error": {"cause": "invalid_input", "message": "in.jsonl:7: invalid JSON ..."}}

Items cancelled by a Ctrl-C drain are **not** written: the output only holds
items that reached a final status, so ``--resume`` simply runs whatever is
missing.

Resume (``--resume``) works in two steps, see :func:`prepare_resume`: the
existing output is first *compacted* into a temporary file that keeps only
complete ``ok`` lines (one per id; torn or failed lines are dropped), which is
fsynced and atomically renamed over the original; then the run appends to it
and skips every input id found there. The final file therefore holds every
input line's id exactly once, with its latest status. A crash during
compaction leaves either the old file or the new one, never a mix.

Memory: duplicate detection and the resume skip-list keep one entry per
distinct id in an :class:`IdSet`, a compact open-addressing table of 128-bit
digests (about 32 bytes per id at worst, so ten million ids take about
320 MiB, and the ids' own length does not matter).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import struct
import tempfile
import time
from array import array
from collections.abc import Callable, Generator
from pathlib import Path
from typing import IO, Any

import attrs

from ._exceptions import InputError
from ._models import ItemId, Outcome, Request, Status, request_from_json

__all__ = [
    "IdSet",
    "InputEntry",
    "OutputWriter",
    "ResumeState",
    "count_lines",
    "outcome_to_json",
    "prepare_resume",
    "read_input",
    "repair_torn_tail",
]

_CHUNK = 1 << 20
_unpack_key = struct.Struct("<QQ").unpack
_blake2b = hashlib.blake2b


class IdSet:
    """A set of item ids that costs a fixed ~32 bytes per id, whatever the id's length.

    Each id is reduced to a 128-bit BLAKE2b digest of its type and value (so
    ``7`` and ``"7"`` are different ids) and kept in an open-addressing table
    of two ``array('Q')`` columns. A false "already seen" needs two distinct
    ids with the same 128-bit digest: about 10**-24 for ten million ids.

    It is not a general set: there is no removal and no iteration.

    Example::

        seen = IdSet()
        seen.add("q1")  # True: new
        seen.add("q1")  # False: already there
        "q1" in seen    # True
    """

    __slots__ = ("_hi", "_lo", "_mask", "_size")

    def __init__(self, capacity: int = 1024) -> None:
        slots = 16
        while slots < capacity * 2:
            slots *= 2
        self._alloc(slots)
        self._size = 0

    def _alloc(self, slots: int) -> None:
        self._hi = array("Q", bytes(8 * slots))
        self._lo = array("Q", bytes(8 * slots))
        self._mask = slots - 1

    @staticmethod
    def _key(item_id: ItemId) -> tuple[int, int]:
        if isinstance(item_id, int):
            data = b"i:" + str(item_id).encode()
        else:
            # surrogatepass: JSON can carry lone surrogates ("\\ud800") in an id.
            data = b"s:" + item_id.encode("utf-8", "surrogatepass")
        hi, lo = _unpack_key(_blake2b(data, digest_size=16).digest())
        # (0, 0) marks an empty slot; a real digest of all zeroes is nudged.
        if hi == 0 and lo == 0:
            lo = 1
        return hi, lo

    def _find(self, hi: int, lo: int) -> tuple[int, bool]:
        mask = self._mask
        i = hi & mask
        his, los = self._hi, self._lo
        while True:
            h, l_ = his[i], los[i]
            if h == hi and l_ == lo:
                return i, True
            if h == 0 and l_ == 0:
                return i, False
            i = (i + 1) & mask

    def add(self, item_id: ItemId) -> bool:
        """Add ``item_id``; return ``True`` if it was new, ``False`` if already present."""
        return self.add_key(self._key(item_id))

    @staticmethod
    def key(item_id: ItemId) -> tuple[int, int]:
        """The digest that :meth:`add_key` and :meth:`contains_key` take (hash once, use twice)."""
        return IdSet._key(item_id)

    def contains_key(self, key: tuple[int, int]) -> bool:
        """Membership by a key from :meth:`key`."""
        return self._find(*key)[1]

    def add_key(self, key: tuple[int, int]) -> bool:
        """:meth:`add` by a key from :meth:`key`."""
        hi, lo = key
        i, found = self._find(hi, lo)
        if found:
            return False
        self._hi[i] = hi
        self._lo[i] = lo
        self._size += 1
        if self._size * 2 > self._mask + 1:
            self._grow()
        return True

    def _grow(self) -> None:
        old_hi, old_lo = self._hi, self._lo
        self._alloc((self._mask + 1) * 2)
        for hi, lo in zip(old_hi, old_lo, strict=True):
            if hi or lo:
                i, _ = self._find(hi, lo)
                self._hi[i] = hi
                self._lo[i] = lo

    def __contains__(self, item_id: object) -> bool:
        if isinstance(item_id, bool) or not isinstance(item_id, str | int):
            return False
        return self._find(*self._key(item_id))[1]

    def __len__(self) -> int:
        return self._size

    def __repr__(self) -> str:
        return f"<IdSet {self._size} ids, {self._mask + 1} slots>"


@attrs.frozen(kw_only=True)
class InputEntry:
    """One non-blank input line: a request to send, or the error that makes it unusable.

    Attributes:
        line: The 1-based line number.
        item_id: The item's id (its line number when the line gives none or
            cannot be parsed).
        request: The request, with ``id`` filled in; ``None`` when ``error`` is set.
        error: Why the line is unusable (invalid JSON, no ``messages``/``prompt``,
            duplicate id …); its message names the file and line.
        skipped: True for a line whose id is in the skip set (only yielded
            with ``yield_skipped=True``); it has neither request nor error.
    """

    line: int
    item_id: ItemId
    request: Request | None = None
    error: InputError | None = None
    skipped: bool = False


def _peek_id(obj: object) -> ItemId | None:
    if isinstance(obj, dict):
        value = obj.get("id")
        if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
            return value
    return None


def read_input(
    path: str | os.PathLike[str],
    *,
    skip: IdSet | None = None,
    seen: IdSet | None = None,
    on_skip: Callable[[ItemId], None] | None = None,
    yield_skipped: bool = False,
) -> Generator[InputEntry, None, None]:
    """Yield the entries of a JSONL input file lazily, one line at a time.

    The file is opened when iteration starts and closed when the generator is
    exhausted or closed, so a ten-million-line file costs one line of memory
    plus the id sets.

    Args:
        path: The input file.
        skip: Ids to pass over silently (the ones ``--resume`` found done). A
            skipped line still counts for duplicate detection.
        seen: The set used to detect duplicate ids (a fresh one by default).
        on_skip: Called with the id of each skipped line.
        yield_skipped: Also yield skipped lines (``skipped=True``), so an async
            caller can checkpoint while a long resumed prefix is passed over.

    Yields:
        An :class:`InputEntry` per non-blank line that is not skipped.

    Raises:
        OSError: If the file cannot be opened or read (check it first with
            :func:`count_lines` to fail before anything is sent).
    """
    source = os.fspath(path)
    seen = IdSet() if seen is None else seen
    with open(source, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except (UnicodeDecodeError, ValueError) as exc:
                reason = f"invalid JSON: {exc}"
                yield InputEntry(
                    line=line_no,
                    item_id=line_no,
                    error=InputError(reason, source=source, line=line_no),
                )
                continue
            item_id = _peek_id(obj)
            if item_id is None:
                item_id = line_no
            if b"\\u" in raw and _SURROGATE_ESCAPE.search(raw) and not _encodable(obj):
                reason = "a \\uXXXX escape is a lone surrogate, which is not valid Unicode"
                yield InputEntry(
                    line=line_no,
                    item_id=line_no,
                    error=InputError(reason, source=source, line=line_no),
                )
                continue
            key = IdSet.key(item_id)
            # Reserve the id even if the line is invalid, so a later line reusing it
            # is a duplicate.
            first = seen.add_key(key)
            if first and skip is not None and skip.contains_key(key):
                # Already done: no need to validate it again (the fast path of a resume).
                if on_skip is not None:
                    on_skip(item_id)
                if yield_skipped:
                    yield InputEntry(line=line_no, item_id=item_id, skipped=True)
                continue
            try:
                request = request_from_json(obj, source=source, line=line_no)
            except InputError as exc:
                yield InputEntry(line=line_no, item_id=item_id, error=exc)
                continue
            if not first:
                error = InputError(
                    f"duplicate id {item_id!r} (ids must be unique in a file)",
                    source=source,
                    line=line_no,
                )
                yield InputEntry(line=line_no, item_id=item_id, error=error)
                continue
            if request.id is None:
                request = attrs.evolve(request, id=item_id)
            yield InputEntry(line=line_no, item_id=item_id, request=request)


#: A JSON escape of a UTF-16 surrogate; a valid pair decodes to one character,
#: a lone one to a string that cannot be encoded (nor sent, nor logged).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _encodable(obj: object) -> bool:
    try:
        json.dumps(obj, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return False
    return True


def count_lines(path: str | os.PathLike[str]) -> int:
    """Count the non-blank lines of a file by streaming it (never holding it in memory).

    Cheap enough to run before a batch (millions of lines a second) so progress
    can show "done of total" and an ETA. Raises :class:`OSError` if the file
    cannot be read, which makes it the up-front check of the input file too.
    """
    count = 0
    with open(path, "rb", buffering=_CHUNK) as f:
        for raw in f:
            if not raw.isspace():
                count += 1
    return count


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
            step = min(_CHUNK, pos)
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
                item_id = _peek_id(obj)
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
