"""The one boundary where server data enters: OpenAI-compatible JSON, checked field by field.

Everything shardline reads from a stream chunk or a whole response goes
through this module, and every field it reads is checked for its type before
it is used:

==========================  =============================================
field                       accepted
==========================  =============================================
the chunk / body            a JSON object
``choices``                 absent, ``null``, or a list of objects
``choices[i].index``        absent, ``null``, or an integer >= 0
``delta`` / ``message``     absent, ``null``, or an object
``content`` / ``text``      absent, ``null``, or a string
``reasoning_content``,
``reasoning``, ``refusal``  absent, ``null``, or a string
``tool_calls``              absent, ``null``, or a list
``function_call``           absent, ``null``, or an object
``finish_reason``           absent, ``null``, or a string
``usage``                   absent, ``null``, or an object whose counts are
                            absent, ``null``, or integers >= 0
``error``                   absent, ``null``, or an object
==========================  =============================================

Anything else is a :class:`~shardline.ProtocolError` that names the field
and where it was (``stream event 3: choices[0].delta.content must be a
string or null, got int 5``); it is retried like any protocol error, and a
value of the wrong type never becomes text. So are data after ``[DONE]`` and
content for a choice after its finish reason.

It is sans-I/O: feed it decoded JSON text, it never reads a socket.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, NoReturn

from ._exceptions import AttemptError, ClientError, ProtocolError, RateLimited, ServerError
from ._models import Usage
from ._sse import DONE, SSEEvent

__all__ = [
    "StreamAccumulator",
    "WholeResponse",
    "error_from_payload",
    "parse_whole",
    "usage_from_json",
]

#: Delta keys that carry generated output besides ``content``: a chunk with any
#: of them non-empty is progress (reasoning models think aloud for a long time
#: before the first ``content``; tool calls stream as ``tool_calls``).
_TEXT_KEYS = ("reasoning_content", "reasoning", "refusal")

_JSON_TYPES = {
    dict: "object",
    list: "array",
    str: "string",
    bool: "boolean",
    int: "integer",
    float: "number",
    type(None): "null",
}


def _describe(value: object) -> str:
    kind = _JSON_TYPES.get(type(value), type(value).__name__)
    shown = repr(value)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return f"{kind} {shown}"


class _Where:
    """Names the place of a value in messages: ``stream event 3`` or ``response body``.

    A stream event's place is its position (an ``int``), turned into words only
    when a message needs it: a healthy stream builds no message at all.
    """

    __slots__ = ("partial", "place", "status_code")

    def __init__(self, place: str | int, *, partial: bool, status_code: int | None = None) -> None:
        self.place = place
        self.partial = partial
        self.status_code = status_code

    def fail(self, message: str, *, cause: BaseException | None = None) -> NoReturn:
        place = self.place
        if isinstance(place, int):
            place = f"stream event {place}"
        raise ProtocolError(
            f"{place}: {message}", partial=self.partial, status_code=self.status_code
        ) from cause

    def wrong(self, field: str, expected: str, value: object) -> NoReturn:
        self.fail(f"{field} must be {expected}, got {_describe(value)}")

    def string(self, obj: dict[str, Any], key: str, field: str) -> str | None:
        value = obj.get(key)
        if value is None or isinstance(value, str):
            return value
        self.wrong(field, "a string or null", value)

    def object(self, obj: dict[str, Any], key: str, field: str) -> dict[str, Any] | None:
        value = obj.get(key)
        if value is None or isinstance(value, dict):
            return value
        self.wrong(field, "an object or null", value)

    def array(self, obj: dict[str, Any], key: str, field: str) -> list[Any] | None:
        value = obj.get(key)
        if value is None or isinstance(value, list):
            return value
        self.wrong(field, "an array or null", value)

    def count(self, obj: dict[str, Any], key: str, field: str) -> int | None:
        value = obj.get(key)
        if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            return value
        self.wrong(field, "an integer >= 0 or null", value)


def _loads(loads: Callable[[Any], Any], data: str | bytes, where: _Where) -> dict[str, Any]:
    try:
        obj = loads(data)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, orjson's, deep nesting
        shown = data[:80]
        where.fail(f"not JSON: {shown!r}", cause=exc)
    if not isinstance(obj, dict):
        where.fail(f"not a JSON object, got {_describe(obj)}")
    return obj


def _check_error(chunk: dict[str, Any], where: _Where) -> None:
    """Raise the in-band error the chunk carries, if it carries one."""
    if "error" in chunk and chunk["error"] is not None:
        where.object(chunk, "error", "error")
        raise error_from_payload(chunk, status_code=where.status_code, partial=where.partial)
    if chunk.get("object") == "error":  # vLLM's and others' top-level error object
        raise error_from_payload(chunk, status_code=where.status_code, partial=where.partial)


def _usage(chunk: dict[str, Any], where: _Where) -> Usage | None:
    usage = where.object(chunk, "usage", "usage")
    if usage is None:
        return None
    prompt = where.count(usage, "prompt_tokens", "usage.prompt_tokens")
    completion = where.count(usage, "completion_tokens", "usage.completion_tokens")
    total = where.count(usage, "total_tokens", "usage.total_tokens")
    if prompt is None:
        return None
    if completion is None:
        completion = max(0, (total or prompt) - prompt)
    return Usage(prompt_tokens=prompt, completion_tokens=completion)


def _choice_index(choice: dict[str, Any], field: str, where: _Where) -> int:
    index = where.count(choice, "index", f"{field}.index")
    return 0 if index is None else index


#: Delta keys :func:`_other_output` never reads: a delta with no other key
#: carries no output but its content (``StreamAccumulator._plain_choice``).
_PLAIN_DELTA_KEYS = frozenset({"content", "role"})


def _other_output(delta: dict[str, Any], field: str, where: _Where) -> bool:
    """Check the non-content output keys of a delta/message; ``True`` if any carries output."""
    found = False
    for key in _TEXT_KEYS:
        if where.string(delta, key, f"{field}.{key}"):
            found = True
    if where.array(delta, "tool_calls", f"{field}.tool_calls"):
        found = True
    if where.object(delta, "function_call", f"{field}.function_call"):
        found = True
    return found


class StreamAccumulator:
    """Reads an OpenAI-compatible completion stream, event by event, checking every field.

    It collects the text of choice 0, the finish reason, the server's usage
    and whether ``[DONE]`` arrived, and answers the one question deadlines
    need: *was this event progress?* Progress is a non-empty text (or tool
    call / reasoning / refusal) delta, or a finish reason. Role-only chunks,
    empty deltas, usage-only chunks and ``[DONE]`` are not.

    It is not a decoder (feed it :class:`SSEEvent` records) and it does no I/O.

    Args:
        loads: The JSON decoder to use (``json.loads`` by default).

    Raises (from :meth:`feed`):
        ProtocolError: the data is not JSON, not an object, or a field has the
            wrong type (the message names the field and the event's position);
            data after ``[DONE]``; content for a choice after its finish reason.
        ServerError | RateLimited | ClientError: an in-band ``error`` object.
    """

    __slots__ = (
        "_finished",
        "_loads",
        "_parts",
        "done",
        "finish_reason",
        "position",
        "progress_events",
        "usage",
    )

    def __init__(self, *, loads: Callable[[str], Any] = json.loads) -> None:
        self._loads = loads
        self._parts: list[str] = []
        self._finished: set[int] = set()
        self.done = False
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.progress_events = 0
        #: Events fed so far: the 1-based position of the last one.
        self.position = 0

    @property
    def text(self) -> str:
        """The content of choice 0 so far."""
        return "".join(self._parts)

    @property
    def complete(self) -> bool:
        """Whether the stream ended properly: ``[DONE]`` or a finish reason arrived."""
        return self.done or self.finish_reason is not None

    def feed(self, event: SSEEvent) -> bool:
        """Account for one event; return ``True`` when it was progress."""
        self.position += 1
        where = _Where(self.position, partial=self.progress_events > 0)
        data = event.data
        if self.done:
            where.fail(f"data after [DONE]: {data[:80]!r}")
        if data == DONE:
            self.done = True
            return False
        if event.event == "error":
            try:
                payload: object = self._loads(data)
            except (ValueError, RecursionError):  # `event: error` with a plain-text message
                payload = data
            raise error_from_payload(payload, partial=where.partial)
        chunk = _loads(self._loads, data, where)
        _check_error(chunk, where)
        usage = _usage(chunk, where)
        if usage is not None:
            self.usage = usage
        choices = where.array(chunk, "choices", "choices")
        progress = False
        if choices:
            for i, choice in enumerate(choices):
                plain = self._plain_choice(choice)
                if plain is None:
                    plain = self._choice(choice, f"choices[{i}]", where)
                if plain:
                    progress = True
        if progress:
            self.progress_events += 1
        return progress

    def _plain_choice(self, choice: object) -> bool | None:
        """:meth:`_choice` for the shape of almost every chunk, without naming fields.

        A choice whose fields all have their expected types and whose delta
        holds only ``content`` and ``role`` (keys :func:`_other_output` never
        reads) is accounted for here, exactly as :meth:`_choice` would; for
        anything else (a wrong type, another key, content after the finish
        reason) it returns ``None`` and :meth:`_choice` checks it field by
        field and names what is wrong.
        """
        if type(choice) is not dict:
            return None
        delta = choice.get("delta")
        if type(delta) is not dict or not _PLAIN_DELTA_KEYS.issuperset(delta):
            return None
        index = choice.get("index")
        if index is None:
            index = 0
        elif type(index) is not int or index < 0:
            return None
        content = delta.get("content")
        reason = choice.get("finish_reason")
        if (content is not None and type(content) is not str) or (
            reason is not None and type(reason) is not str
        ):
            return None
        progress = False
        if content:
            if index in self._finished:
                return None
            progress = True
            if index == 0:
                self._parts.append(content)
        if reason:
            progress = True
            self._finished.add(index)
            if index == 0 or self.finish_reason is None:
                self.finish_reason = reason
        return progress

    def _choice(self, choice: object, field: str, where: _Where) -> bool:
        if not isinstance(choice, dict):
            where.wrong(field, "an object", choice)
        index = _choice_index(choice, field, where)
        progress = False
        if "delta" in choice and choice["delta"] is not None:
            delta = where.object(choice, "delta", f"{field}.delta")
            assert delta is not None
            content = where.string(delta, "content", f"{field}.delta.content")
            if _other_output(delta, f"{field}.delta", where):
                progress = True
        else:
            content = where.string(choice, "text", f"{field}.text")  # legacy /completions
        reason = where.string(choice, "finish_reason", f"{field}.finish_reason")
        if content or progress:
            if index in self._finished:
                where.fail(f"{field} has content after its finish reason")
            progress = True
            if content and index == 0:
                self._parts.append(content)
        if reason:
            progress = True
            self._finished.add(index)
            if index == 0 or self.finish_reason is None:
                self.finish_reason = reason
        return progress


class WholeResponse:
    """What a non-streamed completion said (choice 0), after every field was checked.

    Attributes:
        text: The content of choice 0 (``""`` when it had none).
        finish_reason: Choice 0's finish reason (``None``: the answer is truncated).
        usage: The server's usage, or ``None`` when it sent none.
    """

    __slots__ = ("finish_reason", "text", "usage")

    def __init__(self, text: str, finish_reason: str | None, usage: Usage | None) -> None:
        self.text = text
        self.finish_reason = finish_reason
        self.usage = usage


def parse_whole(
    raw: bytes, *, status_code: int, loads: Callable[[Any], Any] = json.loads
) -> WholeResponse:
    """Check and read a whole (non-streamed) chat or legacy completion body.

    Raises:
        ProtocolError: not UTF-8, not JSON, not an object, no choices, or a
            field of the wrong type (named).
        ServerError | RateLimited | ClientError: the body is an ``error`` object.
    """
    where = _Where("response body", partial=False, status_code=status_code)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        where.fail(f"not valid UTF-8: {exc.reason}", cause=exc)
    body = _loads(loads, raw, where)
    _check_error(body, where)
    usage = _usage(body, where)
    choices = where.array(body, "choices", "choices")
    if not choices:
        where.fail("has no choices")
    text = ""
    reason: str | None = None
    for i, choice in enumerate(choices):
        field = f"choices[{i}]"
        if not isinstance(choice, dict):
            where.wrong(field, "an object", choice)
        index = _choice_index(choice, field, where)
        if "message" in choice and choice["message"] is not None:
            message = where.object(choice, "message", f"{field}.message")
            assert message is not None
            content = where.string(message, "content", f"{field}.message.content")
            _other_output(message, f"{field}.message", where)
        else:
            content = where.string(choice, "text", f"{field}.text")
        finish = where.string(choice, "finish_reason", f"{field}.finish_reason")
        if index == 0:
            text = content or ""
            reason = finish
    return WholeResponse(text, reason, usage)


def error_from_payload(
    payload: object, *, status_code: int | None = None, partial: bool = False
) -> AttemptError:
    """The typed error for an OpenAI-style ``{"error": {...}}`` object.

    The code decides the class: ``429``/``rate_limit_exceeded`` is
    :class:`RateLimited`, another 4xx code :class:`ClientError`, anything else
    :class:`ServerError` (a stream that reports an error mid-way is the
    server's failure). The message is the server's, shortened to 500 characters.
    """
    err: Any = payload.get("error", payload) if isinstance(payload, dict) else payload
    message = ""
    code: object = None
    etype: object = None
    if isinstance(err, dict):
        message = str(err.get("message") or "")
        code = err.get("code")
        etype = err.get("type")
    elif err is not None:
        message = str(err)
    label = ", ".join(f"{k}={v}" for k, v in (("type", etype), ("code", code)) if v is not None)
    text = (message[:500] or "error event") + (f" ({label[:200]})" if label else "")
    numeric: int | None = None
    if isinstance(code, int) and not isinstance(code, bool):
        numeric = code
    elif isinstance(code, str) and code.isdigit() and len(code) <= 3:
        numeric = int(code)
    if numeric == 429 or code == "rate_limit_exceeded" or etype == "rate_limit_exceeded":
        return RateLimited(f"in-band error: {text}", status_code=status_code, partial=partial)
    if numeric is not None and 400 <= numeric < 500:
        return ClientError(f"in-band error: {text}", status_code=status_code, partial=partial)
    return ServerError(f"in-band error: {text}", status_code=status_code, partial=partial)


def usage_from_json(obj: object) -> Usage | None:
    """A :class:`Usage` from an OpenAI ``usage`` object.

    Returns ``None`` when there is none (``obj`` is ``None`` or has no
    ``prompt_tokens``).

    Raises:
        ProtocolError: ``obj`` is not an object, or a count is not an integer >= 0.
    """
    return _usage({"usage": obj}, _Where("usage", partial=False))
