"""The lean transport's body decoders agree with h11, however the bytes are split."""

from __future__ import annotations

import h11
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardline._transport_body import (
    MAX_LINE_BYTES,
    ChunkedBody,
    LengthBody,
    UntilCloseBody,
    body_for,
)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (taken modulo its length)."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for point in [*points, len(data)]:
        pieces.append(data[last:point])
        last = point
    return [p for p in pieces if p]


def h11_body(head: bytes, body: bytes) -> tuple[bytes, bool]:
    """What h11 makes of ``body`` after ``head``: the payload, and whether it completed."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(head + body)
    out, ended = b"", False
    while True:
        event = conn.next_event()
        if type(event) is h11.Data:
            out += event.data
        elif type(event) is h11.EndOfMessage:
            ended = True
            break
        elif event is h11.NEED_DATA:
            break
    return out, ended


def encode_chunked(chunks: list[bytes], extension: bytes, trailers: list[bytes]) -> bytes:
    out = b"".join(b"%x%s\r\n%s\r\n" % (len(c), extension, c) for c in chunks if c)
    return out + b"0\r\n" + b"".join(t + b"\r\n" for t in trailers) + b"\r\n"


@given(
    chunks=st.lists(st.binary(max_size=40), max_size=8),
    extension=st.sampled_from([b"", b";name=value", b";a", b" "]),
    trailers=st.lists(st.sampled_from([b"x-trailer: 1", b"etag: abc"]), max_size=2),
    cuts=st.lists(st.integers(0, 10_000), max_size=10),
)
def test_chunked_bodies_decode_as_h11_decodes_them(
    chunks: list[bytes], extension: bytes, trailers: list[bytes], cuts: list[int]
) -> None:
    """Whatever the chunking and read boundaries, the payload is h11's, and it ends once."""
    wire = encode_chunked(chunks, extension, trailers)
    head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    expected, ended = h11_body(head, wire)
    assert ended
    decoder = ChunkedBody()
    got = b""
    for piece in split(wire, cuts):
        assert not decoder.done
        got += decoder.feed(piece)
    assert got == expected == b"".join(chunks)
    assert decoder.done
    assert decoder.reusable
    decoder.eof()  # the server may close afterwards: not an error


def h11_error_at_eof(head: bytes, body: bytes) -> str | None:
    """h11's message when the server closes after ``body``, or None if the body was whole."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(head + body)
    conn.receive_data(b"")
    try:
        while type(conn.next_event()) is not h11.EndOfMessage:
            pass
    except h11.RemoteProtocolError as exc:
        return str(exc)
    return None


@given(
    chunks=st.lists(st.binary(min_size=1, max_size=40), max_size=8),
    extension=st.sampled_from([b"", b";x=1"]),
)
def test_reads_of_exactly_one_chunk_decode_as_h11_decodes_them(
    chunks: list[bytes], extension: bytes
) -> None:
    """A paced server's reads hold one chunk each (the decoder's fast path): same payload."""
    wire = encode_chunked(chunks, extension, [])
    expected, ended = h11_body(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", wire)
    assert ended
    decoder = ChunkedBody()
    reads = [b"%x%s\r\n%s\r\n" % (len(c), extension, c) for c in chunks] + [b"0\r\n\r\n"]
    assert [decoder.feed(read) for read in reads] == [*chunks, b""]
    assert b"".join(chunks) == expected
    assert decoder.done


@given(
    body=st.binary(max_size=200),
    cuts=st.lists(st.integers(0, 10_000), max_size=6),
    drop=st.integers(1, 50),
)
def test_a_cut_chunked_body_fails_at_eof_as_h11_does(
    body: bytes, cuts: list[int], drop: int
) -> None:
    """A chunked body cut anywhere before its end raises h11's own error at EOF."""
    wire = encode_chunked([body], b"", [])
    wire = wire[: max(0, len(wire) - drop)]
    expected = h11_error_at_eof(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", wire)
    assert expected is not None
    decoder = ChunkedBody()
    for piece in split(wire, cuts):
        decoder.feed(piece)
    assert not decoder.done
    with pytest.raises(h11.RemoteProtocolError) as info:
        decoder.eof()
    assert str(info.value) == expected


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (b"zz\r\n", "illegal chunk header"),
        (b"0x10\r\n", "illegal chunk header"),
        (b"+5\r\n", "illegal chunk header"),
        (b"1\r\nab\r\n", "malformed chunk footer"),
        (b"1" * (MAX_LINE_BYTES + 1), "Receive buffer too long"),
    ],
)
def test_malformed_chunked_bodies_raise(wire: bytes, message: str) -> None:
    """Sizes that are not 1-20 hex digits, missing CRLFs and endless lines are errors
    (raised at once, or after the payload before them was handed out)."""
    decoder = ChunkedBody()

    def feed_then_close() -> None:
        decoder.feed(wire)
        decoder.eof()

    with pytest.raises(h11.RemoteProtocolError, match=message):
        feed_then_close()


@given(length=st.integers(0, 100), extra=st.binary(max_size=5), cuts=st.lists(st.integers()))
def test_length_bodies_stop_at_their_length(length: int, extra: bytes, cuts: list[int]) -> None:
    """Content-Length bodies give exactly that many bytes; bytes past them forbid reuse."""
    wire = bytes(range(length % 256)) * (length // 256 + 1)
    wire = wire[:length]
    decoder = LengthBody(length)
    got = b""
    for piece in split(wire + extra, cuts):
        got += decoder.feed(piece)
    assert got == wire
    assert decoder.done
    assert decoder.reusable == (not extra)


def test_a_short_length_body_is_a_peer_closed_error() -> None:
    """EOF before Content-Length bytes arrived: h11's message, with both counts."""
    decoder = LengthBody(10)
    decoder.feed(b"12")
    with pytest.raises(
        h11.RemoteProtocolError,
        match=r"^peer closed connection without sending complete message body "
        r"\(received 2 bytes, expected 10\)$",
    ):
        decoder.eof()


def test_until_close_bodies_end_at_eof_and_are_never_reused() -> None:
    """Without framing the body is everything up to the server's close."""
    decoder = UntilCloseBody()
    assert decoder.feed(b"abc") == b"abc"
    decoder.eof()
    assert decoder.done
    assert not decoder.reusable


@pytest.mark.parametrize(
    ("method", "status", "headers", "version", "kind", "keep"),
    [
        (b"GET", 200, [("content-length", "3")], b"1.1", LengthBody, True),
        (b"GET", 200, [("transfer-encoding", "chunked")], b"1.1", ChunkedBody, True),
        (b"GET", 200, [], b"1.1", UntilCloseBody, False),
        (b"HEAD", 200, [("content-length", "3")], b"1.1", LengthBody, True),
        (b"GET", 204, [], b"1.1", LengthBody, True),
        (b"GET", 304, [], b"1.1", LengthBody, True),
        (
            b"GET",
            200,
            [("content-length", "3"), ("connection", "close")],
            b"1.1",
            LengthBody,
            False,
        ),
        (
            b"GET",
            200,
            [("content-length", "3"), ("connection", "x, Close")],
            b"1.1",
            LengthBody,
            False,
        ),
        (b"GET", 200, [("content-length", "3")], b"1.0", LengthBody, False),
    ],
)
def test_framing_follows_rfc_9112(
    method: bytes,
    status: int,
    headers: list[tuple[str, str]],
    version: bytes,
    kind: type,
    keep: bool,
) -> None:
    """HEAD, 204 and 304 have no body; chunked beats length; close and HTTP/1.0 end the socket."""
    response = h11.Response(status_code=status, headers=headers, http_version=version)
    decoder, keep_alive = body_for(method, response)
    assert type(decoder) is kind
    assert keep_alive is keep
    if method == b"HEAD" or status in (204, 304):
        assert decoder.done
