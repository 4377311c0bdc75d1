"""The boundary for the other APIs: embeddings bodies and the Responses API, checked field by field.

Like :mod:`shardline._openai`, every field read is checked for its type
first, and anything else is a :class:`~shardline.errors.ProtocolError` naming
the field and where it was.

Embeddings (``POST /embeddings``, never streamed): ``data`` is a list of
objects, each with an ``index`` (integer >= 0; absent means its position)
and an ``embedding`` that is a list of finite numbers or, for
``encoding_format: "base64"``, a base64 string of little-endian float32s.
There must be one vector per input, each index once; a body with only the
first few is :class:`~shardline.errors.Truncated`.

Responses (``POST /responses``): a stream of typed events. Progress is a
non-empty ``response.output_text.delta``, ``response.reasoning_text.delta``,
``response.reasoning_summary_text.delta``, ``response.refusal.delta`` or
``response.function_call_arguments.delta``, and the terminal
``response.completed`` / ``response.incomplete``. ``response.failed`` and
``error`` events raise the error they carry (its code decides the cause, as
for chat). A stream that ends without a terminal event is truncated. The
answer is read from the terminal event's ``response`` (the same object a
non-streamed call returns), or from the deltas when its ``output`` is empty.
Its finish reason is ``stop`` (``tool_calls`` when it called functions) for
``completed``, and for ``incomplete`` the reason mapped to chat's words
(``max_output_tokens`` -> ``length``).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import sys
from array import array
from collections.abc import Callable
from typing import Any, Protocol

from ._exceptions import Truncated
from ._models import Usage
from ._openai import utf8
from ._sse import DONE, SSEEvent
from ._wirecheck import (
    Answer,
    Parts,
    Where,
    check_error,
    error_from_payload,
    loads_object,
)

__all__ = [
    "Accumulator",
    "ResponsesAccumulator",
    "parse_embeddings",
    "parse_response",
]


class Accumulator(Protocol):
    """What an attempt needs of a stream reader (chat or Responses)."""

    position: int
    progress_events: int

    @property
    def complete(self) -> bool: ...

    @property
    def completion_mark(self) -> str: ...

    def feed(self, event: SSEEvent) -> bool: ...

    def answer(self) -> Answer: ...


# -- embeddings ---------------------------------------------------------------


def _vector(value: object, field: str, where: Where) -> tuple[float, ...]:
    if isinstance(value, str):
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            where.fail(f"{field} is not base64: {value[:40]!r}", cause=exc)
        if len(raw) % 4:
            where.fail(f"{field} decodes to {len(raw)} bytes, not a whole number of float32s")
        floats = array("f")
        floats.frombytes(raw)
        if sys.byteorder != "little":  # pragma: no cover - big-endian hosts
            floats.byteswap()
        vector = tuple(floats)
    elif isinstance(value, list):
        for k, x in enumerate(value):
            if type(x) is not float and (type(x) is not int):
                where.wrong(f"{field}[{k}]", "a number", x)
        vector = tuple(float(x) for x in value)
    else:
        where.wrong(field, "a list of numbers or a base64 string", value)
    if not all(map(math.isfinite, vector)):  # NaN and Infinity are not JSON numbers
        k = next(k for k, x in enumerate(vector) if not math.isfinite(x))
        where.wrong(f"{field}[{k}]", "a finite number", vector[k])
    return vector


def parse_embeddings(
    raw: bytes,
    *,
    status_code: int,
    expected: int | None = None,
    loads: Callable[[Any], Any] = json.loads,
) -> Answer:
    """Check and read an embeddings body: the vectors in input order, and the usage.

    Args:
        expected: How many vectors the request asked for (``None``: any number).

    Raises:
        ProtocolError: a field of the wrong type, a vector missing or twice.
        Truncated: only the first vectors came (fewer than ``expected``).
        ServerError | RateLimited | ClientError: the body is an ``error`` object.
    """
    where = Where("response body", partial=False, status_code=status_code)
    body = loads_object(loads, utf8(raw, where), where)
    check_error(body, where)
    usage = _embedding_usage(body, where)
    data = where.array(body, "data", "data")
    if data is None:
        where.fail("has no data")
    vectors: dict[int, tuple[float, ...]] = {}
    for i, item in enumerate(data):
        field = f"data[{i}]"
        if not isinstance(item, dict):
            where.wrong(field, "an object", item)
        index = where.count(item, "index", f"{field}.index")
        index = i if index is None else index
        if index in vectors:
            where.fail(f"{field}.index {index} appears twice")
        vectors[index] = _vector(item.get("embedding"), f"{field}.embedding", where)
    count = len(vectors) if expected is None else expected
    if len(vectors) < count and sorted(vectors) == list(range(len(vectors))):
        raise Truncated(
            f"response body has {len(vectors)} of the {count} embeddings asked for",
            status_code=status_code,
            partial=bool(vectors),
        )
    if sorted(vectors) != list(range(count)):
        where.fail(
            f"has {len(vectors)} embeddings (indexes {sorted(vectors)[:8]}), expected {count}"
        )
    return Answer("", None, usage, embeddings=tuple(vectors[k] for k in range(count)))


def _embedding_usage(body: dict[str, Any], where: Where) -> Usage | None:
    usage = where.object(body, "usage", "usage")
    if usage is None:
        return None
    prompt = where.count(usage, "prompt_tokens", "usage.prompt_tokens")
    total = where.count(usage, "total_tokens", "usage.total_tokens")
    if prompt is None:
        prompt = total
    return None if prompt is None else Usage(prompt_tokens=prompt, completion_tokens=0)


# -- Responses ----------------------------------------------------------------

_INCOMPLETE = {"max_output_tokens": "length", "content_filter": "content_filter"}

#: Delta events that are progress, and the part of the answer they add to.
_DELTAS = {
    "response.output_text.delta": "text",
    "response.reasoning_text.delta": "reasoning",
    "response.reasoning_summary_text.delta": "reasoning",
    "response.refusal.delta": "refusal",
    "response.function_call_arguments.delta": "arguments",
}


def _response_usage(response: dict[str, Any], where: Where) -> Usage | None:
    usage = where.object(response, "usage", "response.usage")
    if usage is None:
        return None
    prompt = where.count(usage, "input_tokens", "response.usage.input_tokens")
    output = where.count(usage, "output_tokens", "response.usage.output_tokens")
    total = where.count(usage, "total_tokens", "response.usage.total_tokens")
    if prompt is None:
        return None
    if output is None:
        output = max(0, (total or prompt) - prompt)
    return Usage(prompt_tokens=prompt, completion_tokens=output)


def _read_output(response: dict[str, Any], where: Where, parts: Parts) -> int:
    """Add the ``output`` items of a response object to ``parts``; return how many there were."""
    output = where.array(response, "output", "response.output") or []
    for i, item in enumerate(output):
        field = f"response.output[{i}]"
        if not isinstance(item, dict):
            where.wrong(field, "an object", item)
        kind = where.string(item, "type", f"{field}.type")
        if kind == "message":
            content = where.array(item, "content", f"{field}.content") or []
            for j, part in enumerate(content):
                at = f"{field}.content[{j}]"
                if not isinstance(part, dict):
                    where.wrong(at, "an object", part)
                part_type = where.string(part, "type", f"{at}.type")
                if part_type == "output_text":
                    parts.text.append(where.string(part, "text", f"{at}.text") or "")
                elif part_type == "refusal":
                    _append(parts, "refusal", where.string(part, "refusal", f"{at}.refusal"))
        elif kind == "function_call":
            parts.add_call(
                i,
                where.string(item, "call_id", f"{field}.call_id"),
                "function",
                where.string(item, "name", f"{field}.name"),
                where.string(item, "arguments", f"{field}.arguments"),
            )
        elif kind == "reasoning":
            for key in ("content", "summary"):
                for j, part in enumerate(where.array(item, key, f"{field}.{key}") or []):
                    at = f"{field}.{key}[{j}]"
                    if not isinstance(part, dict):
                        where.wrong(at, "an object", part)
                    _append(parts, "reasoning", where.string(part, "text", f"{at}.text"))
    return len(output)


def _append(parts: Parts, key: str, text: str | None) -> None:
    if not text:
        return
    if key == "text":
        parts.text.append(text)
        return
    pieces = getattr(parts, key)
    if pieces is None:
        pieces = []
        setattr(parts, key, pieces)
    pieces.append(text)


def _finish_reason(response: dict[str, Any], where: Where, parts: Parts) -> str | None:
    """The chat-style finish reason of a response object; raises the error of a failed one."""
    status = where.string(response, "status", "response.status")
    if status == "failed":
        error = where.object(response, "error", "response.error")
        raise error_from_payload(
            {"error": error or {"message": "response.failed"}},
            status_code=where.status_code,
            partial=where.partial,
        )
    if status == "completed":
        return "tool_calls" if parts.calls else "stop"
    if status == "incomplete":
        details = where.object(response, "incomplete_details", "response.incomplete_details")
        reason = where.string(details or {}, "reason", "response.incomplete_details.reason")
        return _INCOMPLETE.get(reason or "", reason or "incomplete")
    return None  # queued / in_progress / cancelled: not an answer


def parse_response(
    raw: bytes, *, status_code: int, loads: Callable[[Any], Any] = json.loads
) -> Answer:
    """Check and read a whole (non-streamed) Responses API body.

    Raises:
        ProtocolError: a field of the wrong type (named).
        ServerError | RateLimited | ClientError: the body is an ``error``
            object, or a response whose ``status`` is ``failed``.
    """
    where = Where("response body", partial=False, status_code=status_code)
    body = loads_object(loads, utf8(raw, where), where)
    check_error(body, where)
    parts = Parts()
    _read_output(body, where, parts)
    reason = _finish_reason(body, where, parts)
    return parts.answer(reason, _response_usage(body, where), where)


class ResponsesAccumulator:
    """Reads a Responses API event stream, checking every field it uses (see the module doc).

    Args:
        loads: The JSON decoder to use.

    Raises (from :meth:`feed`):
        ProtocolError: malformed data, a field of the wrong type, data after
            the terminal event.
        ServerError | RateLimited | ClientError: ``response.failed`` or ``error``.
    """

    __slots__ = (
        "_final",
        "_items",
        "_loads",
        "_parts",
        "done",
        "finish_reason",
        "position",
        "progress_events",
        "usage",
    )

    completion_mark = "response.completed"

    def __init__(self, *, loads: Callable[[str], Any] = json.loads) -> None:
        self._loads = loads
        self._parts = Parts()
        self._final: Answer | None = None
        #: output_index -> (call_id, name) of function calls announced by output_item.added.
        self._items: dict[int, tuple[str | None, str | None]] = {}
        self.done = False
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.position = 0
        self.progress_events = 0

    @property
    def complete(self) -> bool:
        """Whether ``response.completed`` (or ``response.incomplete``) arrived."""
        return self.finish_reason is not None

    def answer(self) -> Answer:
        """What the stream said (call once it is complete)."""
        if self._final is not None:
            return self._final
        where = Where(self.position, partial=True)
        return self._parts.answer(self.finish_reason, self.usage, where)

    def feed(self, event: SSEEvent) -> bool:
        """Account for one event; return ``True`` when it was progress."""
        self.position += 1
        where = Where(self.position, partial=self.progress_events > 0)
        data = event.data
        if data == DONE:
            self.done = True
            return False
        if self.done or self.complete:
            where.fail(
                f"data after {'[DONE]' if self.done else 'the terminal event'}: {data[:80]!r}"
            )
        chunk = loads_object(self._loads, data, where)
        kind = where.string(chunk, "type", "type") or event.event
        if kind == "error":  # {"type": "error", "code": ..., "message": ...}
            error = {key: chunk.get(key) for key in ("code", "message")}
            raise error_from_payload(
                {"error": error}, status_code=where.status_code, partial=where.partial
            )
        check_error(chunk, where)  # a chat-style {"error": {...}} from a proxy
        progress = False
        part = _DELTAS.get(kind)
        if part is not None:
            delta = where.string(chunk, "delta", "delta")
            if delta:
                progress = True
                if part == "arguments":
                    self._arguments(chunk, delta, where)
                else:
                    _append(self._parts, part, delta)
        elif kind == "response.output_item.added":
            item = where.object(chunk, "item", "item") or {}
            index = where.count(chunk, "output_index", "output_index")
            if where.string(item, "type", "item.type") == "function_call" and index is not None:
                call_id = where.string(item, "call_id", "item.call_id")
                name = where.string(item, "name", "item.name")
                self._parts.add_call(index, call_id, "function", name, None)
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            progress = self._terminal(chunk, where)
        if progress:
            self.progress_events += 1
        return progress

    def _arguments(self, chunk: dict[str, Any], delta: str, where: Where) -> None:
        index = where.count(chunk, "output_index", "output_index")
        if index is None:
            where.fail("a function_call_arguments.delta has no output_index")
        self._parts.add_call(index, None, None, None, delta)

    def _terminal(self, chunk: dict[str, Any], where: Where) -> bool:
        response = where.object(chunk, "response", "response")
        if response is None:
            where.fail(f"{chunk.get('type')} has no response object")
        final = Parts()
        items = _read_output(response, where, final)
        reason = _finish_reason(response, where, final if items else self._parts)
        self.usage = _response_usage(response, where)
        self.finish_reason = reason
        if items:
            self._final = final.answer(reason, self.usage, where)
        return reason is not None
