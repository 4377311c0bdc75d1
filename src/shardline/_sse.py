"""Server-sent events: an incremental, bounded, sans-I/O decoder.

:class:`SSEDecoder` turns bytes, in chunks of any size, into
:class:`SSEEvent` records, following the WHATWG ``text/event-stream`` rules:
``LF``, ``CRLF`` or lone ``CR`` line ends, ``:`` comments (the usual
keep-alives), ``event``/``data``/``id``/``retry`` fields, multi-line
``data``. Memory is bounded: a line longer than ``max_line_bytes``, or one
event's data longer than ``max_event_bytes``, raises
:class:`~shardline.ProtocolError` instead of buffering forever. It never
reads a socket, so it is tested by feeding bytes; what the events *mean* as
an OpenAI stream is :mod:`shardline._openai`'s business.

Why hand-written rather than httpx-sse: httpx-sse sits on
``Response.aiter_lines()``, whose line buffer has no bound, so a server
sending one endless line grows memory without limit; it is also measured
slower here (see ``tests/benchmarks/bench_sse.py`` and the notes).
"""

from __future__ import annotations

from typing import NamedTuple, NoReturn

from ._exceptions import ProtocolError
from ._validate import integer

__all__ = [
    "DEFAULT_MAX_EVENT_BYTES",
    "DEFAULT_MAX_LINE_BYTES",
    "DONE",
    "SSEDecoder",
    "SSEEvent",
]

#: Longest line accepted, in bytes, without its line end. One OpenAI chunk is
#: a few hundred bytes; a 1 MiB line is a broken or hostile server.
DEFAULT_MAX_LINE_BYTES = 1 << 20
#: Largest data of one event (all its ``data:`` lines), in bytes.
DEFAULT_MAX_EVENT_BYTES = 4 << 20

#: The data of OpenAI's end-of-stream sentinel event.
DONE = "[DONE]"

_BOM = b"\xef\xbb\xbf"


class SSEEvent(NamedTuple):
    """One dispatched server-sent event (an immutable record).

    A named tuple rather than an attrs class: one is built per streamed token,
    and construction is about three times cheaper (measured in the SSE benchmark).

    Attributes:
        data: The ``data:`` lines joined with ``\\n``.
        event: The ``event:`` field, ``"message"`` when absent.
        id: The last event id seen on the stream, if any.
        retry: The ``retry:`` reconnection time in milliseconds, if this event set one.
    """

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Incremental ``text/event-stream`` decoder with bounded memory.

    Feed it the bytes as they arrive, in chunks of any size; it returns the
    events completed by each chunk. The same byte stream gives the same
    events however it is split. It is *not* an HTTP client and never blocks::

        decoder = SSEDecoder()
        async for chunk in response.aiter_raw():
            for event in decoder.feed(chunk):
                ...
        for event in decoder.end():
            ...

    Args:
        max_line_bytes: Longest line accepted (>= 1); a longer one raises
            :class:`~shardline.ProtocolError` as soon as it is known to be
            longer, so at most about this much (plus one read) is ever buffered.
        max_event_bytes: Largest total data of one event (>= 1).

    Attributes:
        comments: Comment lines seen (``: ping`` keep-alives and the like).
        events: Events dispatched so far.
    """

    __slots__ = (
        "_data",
        "_data_len",
        "_event",
        "_head",
        "_last_id",
        "_pending",
        "_pending_len",
        "_retry",
        "_skip_lf",
        "comments",
        "events",
        "max_event_bytes",
        "max_line_bytes",
    )

    def __init__(
        self,
        *,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    ) -> None:
        integer("max_line_bytes", ge=1)(self, None, max_line_bytes)
        integer("max_event_bytes", ge=1)(self, None, max_event_bytes)
        self.max_line_bytes = max_line_bytes
        self.max_event_bytes = max_event_bytes
        # Pieces of the unfinished last line; a list so a line dripped one byte
        # at a time costs O(n), not O(n**2), to assemble.
        self._pending: list[bytes] = []
        self._pending_len = 0
        self._head: bytes | None = b""  # bytes before the BOM check; None once done
        self._skip_lf = False
        self._data: list[bytes] = []
        self._data_len = 0
        self._event: bytes | None = None
        self._last_id: str | None = None
        self._retry: int | None = None
        self.comments = 0
        self.events = 0

    @property
    def pending_bytes(self) -> int:
        """Bytes of an unfinished line held in the buffer."""
        return self._pending_len

    def feed(self, data: bytes) -> list[SSEEvent]:
        """Decode one chunk; return the events it completed (often none, sometimes many).

        Raises:
            ProtocolError: a line or an event exceeds its bound, or data is not UTF-8.
        """
        if self._head is not None:
            head = self._head + data
            if len(head) < len(_BOM) and _BOM.startswith(head):
                self._head = head
                return []
            self._head = None
            data = head[len(_BOM) :] if head.startswith(_BOM) else head
        if (
            data[-2:] == b"\n\n"
            and data[:6] == b"data: "
            and data.find(b"\n") == len(data) - 2
            and not self._pending
            and not self._data
            and not self._skip_lf
            and self._event is None
            and b"\r" not in data
        ):
            # The hot path of a paced stream: one read, one whole one-line event.
            return self._single(data)
        if self._skip_lf and data:
            self._skip_lf = False
            if data[0] == 0x0A:
                data = data[1:]
        if b"\r" in data:
            # A CR at the very end may be the first half of a CRLF split across chunks.
            self._skip_lf = data[-1] == 0x0D
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        limit = self.max_line_bytes
        if b"\n" not in data:
            if data:
                self._pending.append(data)
                self._pending_len += len(data)
                if self._pending_len > limit:
                    self._line_too_long(self._pending_len)
            return []
        if self._pending:
            self._pending.append(data)
            data = b"".join(self._pending)
        lines = data.split(b"\n")
        tail = lines.pop()
        if tail:
            if len(tail) > limit:
                self._line_too_long(len(tail))
            self._pending = [tail]
            self._pending_len = len(tail)
        else:
            self._pending = []
            self._pending_len = 0
        out: list[SSEEvent] = []
        for line in lines:
            if len(line) > limit:
                self._line_too_long(len(line))
            if not line:
                if self._data:
                    self._dispatch(out)
                else:
                    self._event = None
                    self._retry = None
            elif line[:6] == b"data: ":  # the hot path: one data line per event
                self._add_data(line[6:])
            elif line[0] == 0x3A:  # ':' comment, the usual keep-alive
                self.comments += 1
            else:
                self._field(line)
        return out

    def end(self) -> list[SSEEvent]:
        """Signal the end of the stream; return a last event, if one was complete.

        An event whose lines all ended but whose closing blank line never came
        is dispatched (servers that close right after ``data: [DONE]\\n`` are
        common); an unfinished last line is discarded, as the standard says.
        """
        out: list[SSEEvent] = []
        self._pending = []
        self._pending_len = 0
        if self._data:
            self._dispatch(out)
        return out

    def _line_too_long(self, size: int) -> NoReturn:
        raise ProtocolError(
            f"SSE line longer than max_line_bytes ({self.max_line_bytes}): {size} bytes so far"
        )

    def _single(self, data: bytes) -> list[SSEEvent]:
        """``feed`` of exactly ``b"data: <value>\\n\\n"`` with nothing buffered: same result."""
        if len(data) - 2 > self.max_line_bytes:
            self._line_too_long(len(data) - 2)
        value = data[6:-2]
        if len(value) + 1 > self.max_event_bytes:
            raise ProtocolError(f"SSE event larger than max_event_bytes ({self.max_event_bytes})")
        try:
            text = value.decode()
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"SSE stream is not valid UTF-8: {exc.reason}") from exc
        self.events += 1
        event = SSEEvent(text, "message", self._last_id, self._retry)
        self._retry = None
        return [event]

    def _add_data(self, value: bytes) -> None:
        self._data_len += len(value) + 1
        if self._data_len > self.max_event_bytes:
            raise ProtocolError(f"SSE event larger than max_event_bytes ({self.max_event_bytes})")
        self._data.append(value)

    def _field(self, line: bytes) -> None:
        field, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if field == b"data":
            self._add_data(value)
        elif field == b"event":
            self._event = value
        elif field == b"id":
            if b"\x00" not in value:
                self._last_id = _utf8(value)
        elif field == b"retry" and value.isdigit():
            self._retry = int(value)
        # Any other field is ignored, as the standard says.

    def _dispatch(self, out: list[SSEEvent]) -> None:
        data = self._data
        event = self._event
        self._data = []
        self._data_len = 0
        self._event = None
        try:
            text = data[0].decode() if len(data) == 1 else b"\n".join(data).decode()
            name = "message" if not event else event.decode()
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"SSE stream is not valid UTF-8: {exc.reason}") from exc
        self.events += 1
        out.append(SSEEvent(text, name, self._last_id, self._retry))
        self._retry = None


def _utf8(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"SSE stream is not valid UTF-8: {exc.reason}") from exc
