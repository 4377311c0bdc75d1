"""JSONL batch input: a lazy reader of request lines, and the id set that skips and dedups.

The input half of the file layer of ``shardline run`` (the output half, the
crash-safe writer and resume, is :mod:`shardline._jsonl_output`). It never
holds a whole file in memory: the input is read one line at a time as the
pipeline asks for work.

Input format, one JSON object per line::

    {"id": "q1", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 16}
    {"prompt": "Once upon a time"}

``id`` is a string or an integer; when absent the item's id is its 1-based line
number. Blank lines are skipped. Every other key is passed to the server.

Memory: duplicate detection and the resume skip-list keep one entry per
distinct id in an :class:`IdSet`, a compact open-addressing table of 128-bit
digests (about 32 bytes per id at worst, so ten million ids take about
320 MiB, and the ids' own length does not matter).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from array import array
from collections.abc import Callable, Generator

import attrs

from ._exceptions import InputError
from ._models import ItemId, Request, request_from_json

__all__ = [
    "CHUNK",
    "IdSet",
    "InputEntry",
    "count_lines",
    "peek_id",
    "read_input",
]

#: Bytes read at a time when scanning a file.
CHUNK = 1 << 20
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


def peek_id(obj: object) -> ItemId | None:
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
            item_id = peek_id(obj)
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
    with open(path, "rb", buffering=CHUNK) as f:
        for raw in f:
            if not raw.isspace():
                count += 1
    return count
