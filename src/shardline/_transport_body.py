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
complete. ``reusable`` is false when the connection cannot carry another
request (bytes after the end of the body, or a body that ends at close).
"""

from __future__ import annotations

import re

import h11

__all__ = ["Body", "ChunkedBody", "LengthBody", "UntilCloseBody", "body_for"]

#: The longest chunk-size line (size, extensions) or trailer section accepted.
MAX_LINE_BYTES = 16 * 1024

#: h11's chunk-size grammar: 1 to 20 hex digits, optional extensions, optional blanks.
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,20})(?:;[^\r\n]*)?[ \t]*")

# ChunkedBody._need, when not a count of payload bytes still due:
_SIZE_LINE = -1
_CHUNK_END = -2  # the CRLF after a chunk's data
_TRAILERS = -3


class LengthBody:
    """A body of exactly ``length`` bytes."""

    __slots__ = ("done", "remaining", "reusable", "total")

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
                "peer closed connection without sending complete message body: "
                f"received {self.total - self.remaining} bytes, expected {self.total}"
            )


class ChunkedBody:
    """A ``Transfer-Encoding: chunked`` body."""

    __slots__ = ("_buffer", "_need", "done", "reusable")

    def __init__(self) -> None:
        self._buffer = b""
        self._need = _SIZE_LINE
        self.done = False
        self.reusable = True

    def feed(self, data: bytes) -> bytes:
        if self.done:
            if data:
                self.reusable = False
            return b""
        buf = self._buffer + data if self._buffer else data
        end = len(buf)
        pos = 0
        out: list[bytes] = []
        need = self._need
        while pos < end:
            if need > 0:  # chunk data
                take = min(need, end - pos)
                out.append(buf[pos : pos + take])
                pos += take
                need -= take
                if need == 0:
                    need = _CHUNK_END
                continue
            if need == _CHUNK_END:
                if end - pos < 2:
                    break
                if buf[pos : pos + 2] != b"\r\n":
                    raise h11.RemoteProtocolError("chunk data not followed by CRLF")
                pos += 2
                need = _SIZE_LINE
                continue
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                if end - pos > MAX_LINE_BYTES:
                    raise h11.RemoteProtocolError("chunk header or trailer line too long")
                break
            line = buf[pos:eol]
            pos = eol + 2
            if need == _SIZE_LINE:
                match = _CHUNK_SIZE.fullmatch(line)
                if match is None:
                    raise h11.RemoteProtocolError(f"illegal chunk header: {line[:40]!r}")
                need = int(match.group(1), 16)
                if need == 0:
                    need = _TRAILERS
            elif line:  # a trailer field: read and ignored, as httpx ignores trailers
                continue
            else:  # the empty line that ends the trailers: the body is complete
                self.done = True
                if pos < end:
                    self.reusable = False
                pos = end
        self._need = need
        self._buffer = buf[pos:] if pos < end else b""
        if len(self._buffer) > MAX_LINE_BYTES:
            raise h11.RemoteProtocolError("chunk header or trailer section too long")
        if not out:
            return b""
        return out[0] if len(out) == 1 else b"".join(out)

    def eof(self) -> None:
        self.reusable = False
        if not self.done:
            raise h11.RemoteProtocolError(
                "peer closed connection without sending complete message body: "
                "incomplete chunked read"
            )


class UntilCloseBody:
    """A body without framing: everything until the server closes the connection."""

    __slots__ = ("done", "reusable")

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
