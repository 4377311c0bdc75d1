"""The bytes of the ``malformed_shape`` and ``html_page`` faults.

It owns how each `ShapeVariant` looks on the wire, streamed (`shape_event`,
`shape_tail`) and non-streamed (`shape_body`), and the HTML page a gateway
answers with (`HTML_PAGE`). When they are sent is `_respond`'s business.

On the legacy ``/completions`` endpoint a choice carries ``text`` instead of a
``delta`` or ``message``: there ``delta_not_object`` and ``message_not_object``
make ``text`` a list and ``content_not_string`` makes it a number.
"""

from __future__ import annotations

from typing import Any, Final

from ._shapes import LONG_LINE_BYTES, ShapeVariant
from ._wire import ResponseTemplate, encode, fake_text, token_bytes

HTML_PAGE: Final = (
    b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head>\n"
    b"<body><h1>Please sign in to continue</h1>"
    b"<p>This network requires authentication (shardline fake server).</p></body></html>\n"
)
"""The body of an ``html_page`` fault (``200``, ``content-type: text/html``)."""

#: Variants a streamed response sends in place of its tail (finish, usage, [DONE]).
TAIL_VARIANTS: Final = frozenset(
    {
        ShapeVariant.FINISH_REASON_NOT_STRING,
        ShapeVariant.USAGE_NEGATIVE,
        ShapeVariant.USAGE_NOT_INTEGER,
        ShapeVariant.GARBAGE_AFTER_FINISH,
    }
)
#: Variants after whose bad chunk a streamed response ends (``[DONE]``, end of body).
_FINAL_EVENTS: Final = frozenset({ShapeVariant.CONTENT_NOT_STRING, ShapeVariant.ERROR_NOT_OBJECT})

_NOT_UTF8: Final = b"\xff\xfe\xc3("
_MARK: Final = "@@shape@@"
_DONE: Final = b"data: [DONE]\n\n"


def _data(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


def _chunk(resp: ResponseTemplate, choices: Any) -> dict[str, Any]:
    return {**resp.chunk_head(), "choices": choices}


def _choice(resp: ResponseTemplate, content: Any, finish_reason: Any = None) -> dict[str, Any]:
    if resp.chat:
        return {"index": 0, "delta": {"content": content}, "finish_reason": finish_reason}
    return {"index": 0, "text": content, "finish_reason": finish_reason}


def _not_utf8(value: dict[str, Any]) -> bytes:
    return encode(value).replace(_MARK.encode(), _NOT_UTF8)


def shape_event(resp: ResponseTemplate, variant: ShapeVariant, sent: int) -> tuple[bytes, bool]:
    """The bad event of a streamed response, sent after ``sent`` tokens.

    Returns:
        The ``data:`` event(s) to send, and whether the response ends after them
        (then they include ``[DONE]``).
    """
    word = token_bytes(sent, 1).decode() or fake_text(1)
    V = ShapeVariant
    if variant is V.CHOICES_NOT_LIST:
        event = _data(encode(_chunk(resp, 1)))
    elif variant is V.CHOICE_NOT_OBJECT:
        event = _data(encode(_chunk(resp, [1])))
    elif variant in (V.DELTA_NOT_OBJECT, V.MESSAGE_NOT_OBJECT):
        if resp.chat:
            choice: dict[str, Any] = {"index": 0, "delta": word, "finish_reason": None}
        else:
            choice = _choice(resp, [word])
        event = _data(encode(_chunk(resp, [choice])))
    elif variant is V.CONTENT_NOT_STRING:
        event = _data(encode(_chunk(resp, [_choice(resp, 5, resp.finish_reason)])))
    elif variant is V.ERROR_NOT_OBJECT:
        event = _data(b'{"error":"overloaded"}')
    elif variant is V.JSON_ARRAY:
        event = _data(encode([_chunk(resp, [_choice(resp, word)])]))
    elif variant is V.JSON_SCALAR:
        event = _data(b"42")
    elif variant is V.NOT_UTF8:
        event = _data(_not_utf8(_chunk(resp, [_choice(resp, _MARK)])))
    elif variant is V.LINE_TOO_LONG:
        event = _data(encode(_chunk(resp, [_choice(resp, "x" * LONG_LINE_BYTES)])))
    else:  # pragma: no cover - the tail variants are sent by shape_tail
        raise AssertionError(f"{variant} is a tail variant")
    if variant in _FINAL_EVENTS:
        return event + _DONE, True
    return event, False


def shape_tail(resp: ResponseTemplate, variant: ShapeVariant) -> bytes:
    """The tail (finish chunk, usage chunk, ``[DONE]``) of a streamed response, spoiled."""
    V = ShapeVariant
    if variant is V.FINISH_REASON_NOT_STRING:
        if resp.chat:
            choice: dict[str, Any] = {"index": 0, "delta": {}, "finish_reason": 1}
        else:
            choice = _choice(resp, "", 1)
        finish = _data(encode(_chunk(resp, [choice])))
        return finish + (resp.usage_event() if resp.include_usage else b"") + _DONE
    if variant in (V.USAGE_NEGATIVE, V.USAGE_NOT_INTEGER):
        usage = _bad_usage(resp, variant)
        return resp.finish_event() + _data(encode({**_chunk(resp, []), "usage": usage})) + _DONE
    if variant is V.GARBAGE_AFTER_FINISH:
        usage_event = resp.usage_event() if resp.include_usage else b""
        return resp.finish_event() + usage_event + b"data: }{ not json <garbage>\n\n" + _DONE
    raise AssertionError(f"{variant} is not a tail variant")  # pragma: no cover


def _bad_usage(resp: ResponseTemplate, variant: ShapeVariant) -> dict[str, Any]:
    usage: dict[str, Any] = dict(resp.usage_json())
    if variant is ShapeVariant.USAGE_NEGATIVE:
        return {k: -v - 1 for k, v in usage.items()}
    return {k: str(v) for k, v in usage.items()}


def shape_body(resp: ResponseTemplate, variant: ShapeVariant) -> bytes:
    """The whole body of a non-streamed response with ``variant``'s defect."""
    V = ShapeVariant
    body = resp.whole_dict()
    choice = body["choices"][0]
    if variant is V.CHOICES_NOT_LIST:
        body["choices"] = 1
    elif variant is V.CHOICE_NOT_OBJECT:
        body["choices"] = [1]
    elif variant in (V.DELTA_NOT_OBJECT, V.MESSAGE_NOT_OBJECT):
        if resp.chat:
            choice["message"] = choice["message"]["content"]
        else:
            choice["text"] = [choice["text"]]
    elif variant is V.CONTENT_NOT_STRING:
        if resp.chat:
            choice["message"]["content"] = 5
        else:
            choice["text"] = 5
    elif variant is V.FINISH_REASON_NOT_STRING:
        choice["finish_reason"] = 1
    elif variant in (V.USAGE_NEGATIVE, V.USAGE_NOT_INTEGER):
        body["usage"] = _bad_usage(resp, variant)
    elif variant is V.ERROR_NOT_OBJECT:
        return b'{"error":"overloaded"}'
    elif variant is V.JSON_ARRAY:
        return encode([body])
    elif variant is V.JSON_SCALAR:
        return b"42"
    elif variant is V.NOT_UTF8:
        if resp.chat:
            choice["message"]["content"] = _MARK
        else:
            choice["text"] = _MARK
        return _not_utf8(body)
    elif variant is V.GARBAGE_AFTER_FINISH:
        return encode(body) + b"\n}{ not json <garbage>"
    elif variant is V.LINE_TOO_LONG:
        return b"x" * LONG_LINE_BYTES
    return encode(body)
