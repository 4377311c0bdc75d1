"""The body framing of an HTTP/1.1 response, decoded with a few bytes operations per read.

:class:`~shardline._transport.LeanTransport` lets h11 parse and validate the
response head, then decodes the body here: a streamed completion is hundreds
of tiny chunks, and h11's general state machine (an event object, state
transitions and a regex per chunk) was the largest share of the client's CPU
per SSE event. These decoders do only what RFC 9112 section 7 asks of a
client, with h11's rules and h11's error messages:

* :class:`LengthBody`: ``Content-Length: n`` (``n`` may be 0);
* :class:`ChunkedBody`: ``Transfer-Encoding: chunked``, chunk extensions and
  trailers read and ignored, sizes at most 20 hex digits, lines bounded;
* :class:`UntilCloseBody`: no framing, the body ends when the server closes.

Each ``feed(data)`` returns the payload bytes in ``data`` (maybe ``b""``) and
sets ``done`` at the end of the body; ``eof()`` says the server closed the
connection and raises :class:`h11.RemoteProtocolError` if the body was not
complete. Malformed framing raises it too, but only once the payload before
the fault was handed out, as h11 would (its ``error`` is then set and raised
by the next ``feed``), so a reader sees the content that did arrive.
``reusable`` is false when the connection cannot carry another request
(bytes after the end of the body, or a body that ends at close).
"""

from __future__ import annotations

import re

import h11

__all__ = ["Body", "ChunkedBody", "LengthBody", "UntilCloseBody", "body_for"]

#: The longest chunk-size line (size, extensions) or trailer section accepted.
MAX_LINE_BYTES = 16 * 1024

#: h11's chunk-size grammar: 1 to 20 hex digits, optional extensions, optional blanks.
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,20})(?:;.*)?[ \t]*")
#: The end of a trailer section (h11's ``blank_line_regex``).
_BLANK_LINE = re.compile(rb"\n\r?\n")
#: A header field as h11 reads one: a token, a colon, a value of visible characters.
_TRAILER_FIELD = re.compile(
    rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+:[ \t]*(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?[ \t]*"
)

# ChunkedBody._need, when not a count of payload bytes still due:
_SIZE_LINE = -1
_CHUNK_END = -2  # the CRLF after a chunk's data
_TRAILERS = -3


class LengthBody:
    """A body of exactly ``length`` bytes."""

    __slots__ = ("done", "remaining", "reusable", "total")

    error = None

    def __init__(self, length: int) -> None:
        self.total = length
        self.remaining = length
        self.done = length == 0
        self.reusable = True

    def feed(self, data: bytes) -> bytes:
        if self.done:
            if data:
                self.reusable = False  # bytes after the body: never reuse this socket
            return b""
        if len(data) < self.remaining:
            self.remaining -= len(data)
            return data
        if len(data) > self.remaining:
            self.reusable = False
            data = data[: self.remaining]
        self.remaining = 0
        self.done = True
        return data

    def eof(self) -> None:
        self.reusable = False
        if not self.done:
            raise h11.RemoteProtocolError(
                "peer closed connection without sending complete message body "
                f"(received {self.total - self.remaining} bytes, expected {self.total})"
            )


class ChunkedBody:
    """A ``Transfer-Encoding: chunked`` body."""

    __slots__ = ("_buffer", "_footer", "_need", "done", "error", "reusable")

    def __init__(self) -> None:
        self._buffer = b""
        self._footer = b""
        self._need = _SIZE_LINE
        self.done = False
        self.reusable = True
        #: A framing fault found after some payload: raised by the next feed.
        self.error: h11.RemoteProtocolError | None = None

    def feed(self, data: bytes) -> bytes:
        if self.error is not None:
            raise self.error
        if self.done:
            if data:
                self.reusable = False
            return b""
        if self._need == _SIZE_LINE and not self._buffer:
            # The hot path of a paced stream: a read that is exactly one chunk.
            eol = data.find(b"\r\n")
            if eol > 0:
                start = eol + 2
                match = _CHUNK_SIZE.fullmatch(data, 0, eol)
                if match is not None:
                    size = int(match.group(1), 16)
                    if size and len(data) == start + size + 2 and data.endswith(b"\r\n"):
                        return data[start : start + size]
        buf = self._buffer + data if self._buffer else data
        out: list[bytes] = []
        try:
            self._decode(buf, out)
        except h11.RemoteProtocolError as exc:
            if not out:
                raise
            self.error = exc
            self.reusable = False
        if not out:
            return b""
        return out[0] if len(out) == 1 else b"".join(out)

    def _decode(self, buf: bytes, out: list[bytes]) -> None:
        end = len(buf)
        pos = 0
        need = self._need
        while pos < end:
            if need > 0:  # chunk data
                take = min(need, end - pos)
                out.append(buf[pos : pos + take])
                pos += take
                need -= take
                if need == 0:
                    need = _CHUNK_END
                    self._footer = b"\r\n"
                continue
            if need == _CHUNK_END:  # the CRLF after chunk data, maybe split across reads
                footer = self._footer
                got = buf[pos : pos + len(footer)]
                if got != footer[: len(got)]:
                    raise h11.RemoteProtocolError(
                        f"malformed chunk footer: {got!r} (expected {footer!r})"
                    )
                pos += len(got)
                self._footer = footer[len(got) :]
                if not self._footer:
                    need = _SIZE_LINE
                continue
            if need == _TRAILERS:
                ended = self._trailers(buf, pos)
                if ended < 0:
                    break
                self.done = True
                if ended < end:
                    self.reusable = False
                pos = end
                break
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            match = _CHUNK_SIZE.fullmatch(buf, pos, eol)
            if match is None:
                header = buf[pos : eol + 2]
                raise h11.RemoteProtocolError(f"illegal chunk header: {header!r}")
            pos = eol + 2
            need = int(match.group(1), 16)
            if need == 0:
                need = _TRAILERS
                continue
            stop = pos + need
            if buf[stop : stop + 2] == b"\r\n":
                # The whole chunk and its CRLF are here (the usual case): one step.
                out.append(buf[pos:stop])
                pos = stop + 2
                need = _SIZE_LINE
        self._need = need
        self._buffer = buf[pos:] if pos < end else b""
        if len(self._buffer) > MAX_LINE_BYTES:
            raise h11.RemoteProtocolError("Receive buffer too long")

    @staticmethod
    def _trailers(buf: bytes, pos: int) -> int:
        """Where the trailer section at ``pos`` ends, or -1 if it has not yet.

        h11's rules: lines end in LF or CRLF, an empty line ends the section,
        and each line must be a header field (trailers are read, then ignored,
        as httpx ignores them).
        """
        if buf[pos : pos + 1] == b"\n":
            return pos + 1
        if buf[pos : pos + 2] == b"\r\n":
            return pos + 2
        blank = _BLANK_LINE.search(buf, pos)
        if blank is None:
            return -1
        lines = buf[pos : blank.end()].split(b"\n")[:-2]
        for index, raw in enumerate(lines):
            line = raw[:-1] if raw.endswith(b"\r") else raw
            if line[:1] in (b" ", b"\t"):
                if index == 0:
                    raise h11.RemoteProtocolError("continuation line at start of headers")
                continue  # obsolete line folding: part of the previous field
            if _TRAILER_FIELD.fullmatch(line) is None:
                raise h11.RemoteProtocolError(f"illegal header line: {line!r}")
        return blank.end()

    def eof(self) -> None:
        self.reusable = False
        if self.error is not None:
            raise self.error
        if self.done:
            return
        if self._buffer:  # an incomplete line that will never end
            raise h11.RemoteProtocolError("peer unexpectedly closed connection")
        raise h11.RemoteProtocolError(
            "peer closed connection without sending complete message body (incomplete chunked read)"
        )


class UntilCloseBody:
    """A body without framing: everything until the server closes the connection."""

    __slots__ = ("done", "reusable")

    error = None

    def __init__(self) -> None:
        self.done = False
        self.reusable = False

    def feed(self, data: bytes) -> bytes:
        return data

    def eof(self) -> None:
        self.done = True


Body = LengthBody | ChunkedBody | UntilCloseBody


def body_for(method: bytes, response: h11.Response) -> tuple[Body, bool]:
    """The decoder of ``response``'s body, and whether the connection may be kept.

    h11 has validated the head (one ``Content-Length`` of digits, only
    ``chunked`` as a transfer coding, not both); this applies RFC 9112's
    rules of which framing applies, as h11's ``_body_framing`` does.
    """
    keep_alive = response.http_version == b"1.1"
    transfer_encoding = content_length = None
    for name, value in response.headers:
        if name == b"connection" and b"close" in (t.strip() for t in value.lower().split(b",")):
            keep_alive = False
        elif name == b"transfer-encoding":
            transfer_encoding = value
        elif name == b"content-length":
            content_length = value
    if response.status_code in (204, 304) or method == b"HEAD":
        return LengthBody(0), keep_alive
    if transfer_encoding is not None:
        return ChunkedBody(), keep_alive
    if content_length is not None:
        return LengthBody(int(content_length)), keep_alive
    return UntilCloseBody(), False
