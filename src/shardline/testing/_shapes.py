"""The variants of the ``malformed_shape`` fault: well-framed responses with wrong shapes.

Each `ShapeVariant` names one way a response can be valid HTTP (and, for most,
valid SSE and JSON) yet not the shape an OpenAI-compatible client may trust:
a field of the wrong type, a value where an object belongs, bytes that are not
UTF-8, a line longer than a client's bound. This module owns the names and the
seeded draw of a variant; the bytes are built by `_malformed`.
"""

from __future__ import annotations

import enum
import hashlib
from typing import Final


class ShapeVariant(enum.StrEnum):
    """One malformed shape the fake server can send (``malformed_shape`` fault).

    Each member's value is the name used in ``--faults`` specs
    (``malformed_shape@item=a/1:variant=content_not_string``), in
    ``FakeServerStatistics.malformed_shapes`` and in the ``x-shardline-shape``
    response header. Unless a member says otherwise, a streamed response gets
    one bad chunk after ``after_events`` content events and then carries on
    normally to its finish reason and ``[DONE]`` (so a lenient client would
    report success with text missing); a non-streamed response gets a whole
    body with that defect.
    """

    CHOICES_NOT_LIST = "choices_not_list"
    """``{"choices": 1}``."""
    CHOICE_NOT_OBJECT = "choice_not_object"
    """``{"choices": [1]}``."""
    DELTA_NOT_OBJECT = "delta_not_object"
    """The choice's ``delta`` is a string (non-streamed: its ``message`` is)."""
    MESSAGE_NOT_OBJECT = "message_not_object"
    """The choice's ``message`` is a string (streamed: its ``delta`` is)."""
    CONTENT_NOT_STRING = "content_not_string"
    """The content is a number, with a finish reason in the same chunk; then ``[DONE]``."""
    FINISH_REASON_NOT_STRING = "finish_reason_not_string"
    """The finish chunk's ``finish_reason`` is a number; then ``[DONE]``."""
    USAGE_NEGATIVE = "usage_negative"
    """All the content and the finish reason, then a usage chunk with negative counts
    (sent even if the request did not ask for usage)."""
    USAGE_NOT_INTEGER = "usage_not_integer"
    """Like ``usage_negative``, with the counts as strings (``"12"``)."""
    ERROR_NOT_OBJECT = "error_not_object"
    """``{"error": "overloaded"}``; then ``[DONE]`` (non-streamed: that body)."""
    JSON_ARRAY = "json_array"
    """A JSON array where the chunk (or body) object belongs."""
    JSON_SCALAR = "json_scalar"
    """A JSON number where the chunk (or body) object belongs."""
    NOT_UTF8 = "not_utf8"
    """A chunk (or body) whose content string holds bytes that are not UTF-8."""
    GARBAGE_AFTER_FINISH = "garbage_after_finish"
    """A complete answer, then a ``data:`` line that is not JSON before ``[DONE]``
    (non-streamed: bytes after the JSON body)."""
    LINE_TOO_LONG = "line_too_long"
    """A ``data:`` line of more than `LONG_LINE_BYTES` (1 MiB, shardline's bound) before
    its newline (non-streamed: a body of that size that is not JSON)."""


SHAPE_VARIANTS: Final[tuple[str, ...]] = tuple(v.value for v in ShapeVariant)
"""Every ``malformed_shape`` variant name, in a stable order."""

LONG_LINE_BYTES: Final = (1 << 20) + 1024
"""Length of the ``line_too_long`` line: just over a 1 MiB line bound."""

_STREAM_DRAW: Final = tuple(v for v in ShapeVariant if v is not ShapeVariant.MESSAGE_NOT_OBJECT)
_WHOLE_DRAW: Final = tuple(v for v in ShapeVariant if v is not ShapeVariant.DELTA_NOT_OBJECT)


def draw_variant(*, seed: int, key: str, stream: bool) -> ShapeVariant:
    """A variant drawn for one request, by a seeded hash of ``key`` (order-independent).

    ``delta_not_object`` and ``message_not_object`` are the same defect in the two
    modes, so a draw offers only the one named for the request's mode.
    """
    digest = hashlib.blake2b(f"{seed}\0shape\0{key}".encode(), digest_size=8).digest()
    choices = _STREAM_DRAW if stream else _WHOLE_DRAW
    return choices[int.from_bytes(digest, "big") % len(choices)]
