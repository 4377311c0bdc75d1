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
``tool_calls``              absent, ``null``, or a list of objects whose
                            ``index`` is an integer >= 0 (or absent),
                            ``id``, ``type``, ``function.name`` and
                            ``function.arguments`` strings (or absent/null)
``function_call``           absent, ``null``, or an object (legacy: it
                            becomes tool call 0)
``logprobs``                absent, ``null``, or an object whose
                            ``content`` is absent, ``null``, or a list of
                            objects (kept as sent)
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
from typing import Any

from ._models import Usage
from ._sse import DONE, SSEEvent
from ._wirecheck import (
    Answer,
    Output,
    Parts,
    Where,
    check_error,
    error_from_payload,
    loads_object,
    read_output,
    read_usage,
)

__all__ = [
    "StreamAccumulator",
    "WholeResponse",
    "error_from_payload",
    "parse_whole",
    "usage_from_json",
]

#: Delta keys that carry nothing but text: such a delta skips the full check of
#: :func:`~shardline._wirecheck.read_output` (the hot path of a stream).
_PLAIN_DELTA = frozenset({"content", "role"})

#: A whole response, checked: an :class:`~shardline._wirecheck.Answer`.
WholeResponse = Answer


def _choice_index(choice: dict[str, Any], field: str, where: Where) -> int:
    index = where.count(choice, "index", f"{field}.index")
    return 0 if index is None else index


class StreamAccumulator:
    """Reads an OpenAI-compatible completion stream, event by event, checking every field.

    It collects what choice 0 said (text, reasoning, refusal, tool calls
    assembled by index, logprobs; see :meth:`answer`), the finish reason, the
    server's usage and whether ``[DONE]`` arrived, and answers the one question deadlines
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

    #: What a complete stream ends with (for the ``Truncated`` message).
    completion_mark = "a finish reason or [DONE]"

    def __init__(self, *, loads: Callable[[str], Any] = json.loads) -> None:
        self._loads = loads
        self._parts = Parts()
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
        return "".join(self._parts.text)

    @property
    def complete(self) -> bool:
        """Whether the stream ended properly: ``[DONE]`` or a finish reason arrived."""
        return self.done or self.finish_reason is not None

    def answer(self) -> Answer:
        """What the stream said (call once it is complete).

        Raises:
            ProtocolError: a tool call never got a function name.
        """
        where = Where(self.position, partial=True)
        return self._parts.answer(self.finish_reason, self.usage, where)

    def feed(self, event: SSEEvent) -> bool:
        """Account for one event; return ``True`` when it was progress."""
        self.position += 1
        data = event.data
        chunk: dict[str, Any] | None = None
        if not self.done and data != DONE and event.event != "error":
            # The usual chunk is parsed and accounted for without building a Where.
            try:
                parsed: object = self._loads(data)
            except (ValueError, RecursionError):
                parsed = None  # loads_object, below, names the problem
            if type(parsed) is dict:
                chunk = parsed
                plain = self._plain(chunk)
                if plain is not None:
                    if plain:
                        self.progress_events += 1
                    return plain
        where = Where(self.position, partial=self.progress_events > 0)
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
        if chunk is None:
            chunk = loads_object(self._loads, data, where)
        check_error(chunk, where)
        usage = read_usage(chunk, where)
        if usage is not None:
            self.usage = usage
        choices = where.array(chunk, "choices", "choices")
        progress = False
        if choices:
            for i, choice in enumerate(choices):
                if self._choice(choice, f"choices[{i}]", where):
                    progress = True
        if progress:
            self.progress_events += 1
        return progress

    def _plain(self, chunk: dict[str, Any]) -> bool | None:
        """Account for the usual chunk without naming a field: whether it was progress.

        The usual chunk has no error and no usage, and one choice of index 0
        whose delta holds only ``content`` and ``role``, whose content and
        finish reason are strings or null, and which carries no logprobs. For
        anything else this returns ``None`` and :meth:`feed` takes the checked
        path, which names the field at fault; both paths account for a chunk
        alike (a hypothesis property in ``tests/test_sse.py`` compares them).
        """
        if chunk.get("error") is not None or chunk.get("usage") is not None:
            return None
        choices = chunk.get("choices")
        if type(choices) is not list or len(choices) != 1 or chunk.get("object") == "error":
            return None
        choice = choices[0]
        if type(choice) is not dict or 0 in self._finished:
            return None
        index = choice.get("index")
        delta = choice.get("delta")
        if (
            (index is not None and (type(index) is not int or index != 0))
            or type(delta) is not dict
            or not delta.keys() <= _PLAIN_DELTA
            or choice.get("logprobs") is not None
        ):
            return None
        content = delta.get("content")
        reason = choice.get("finish_reason")
        if (content is not None and type(content) is not str) or (
            reason is not None and type(reason) is not str
        ):
            return None
        if content:
            self._parts.text.append(content)
        if reason:
            self._finished.add(0)
            self.finish_reason = reason
            return True
        return bool(content)

    def _choice(self, choice: object, field: str, where: Where) -> bool:
        if not isinstance(choice, dict):
            where.wrong(field, "an object", choice)
        index = _choice_index(choice, field, where)
        delta = choice.get("delta")
        out: Output | None = None
        if delta is None:
            content = where.string(choice, "text", f"{field}.text")  # legacy /completions
        elif type(delta) is dict and delta.keys() <= _PLAIN_DELTA:
            # The hot path: a text delta, nothing else to collect.
            content = delta.get("content")
            if content is not None and not isinstance(content, str):
                where.wrong(f"{field}.delta.content", "a string or null", content)
        else:
            checked = where.object(choice, "delta", f"{field}.delta")
            assert checked is not None
            out = read_output(checked, f"{field}.delta", where)
            content = out.content
        reason = where.string(choice, "finish_reason", f"{field}.finish_reason")
        progress = False
        if out if out is not None else content:
            if index in self._finished:
                where.fail(f"{field} has content after its finish reason")
            progress = True
        if index == 0:
            if out is not None:
                self._parts.add(out)
            elif content:
                self._parts.text.append(content)
            if choice.get("logprobs") is not None:
                self._parts.add_logprobs(choice, field, where)
        if reason:
            progress = True
            self._finished.add(index)
            if index == 0 or self.finish_reason is None:
                self.finish_reason = reason
        return progress


def parse_whole(
    raw: bytes, *, status_code: int, loads: Callable[[Any], Any] = json.loads
) -> WholeResponse:
    """Check and read a whole (non-streamed) chat or legacy completion body.

    Raises:
        ProtocolError: not UTF-8, not JSON, not an object, no choices, or a
            field of the wrong type (named).
        ServerError | RateLimited | ClientError: the body is an ``error`` object.
    """
    where = Where("response body", partial=False, status_code=status_code)
    body = loads_object(loads, utf8(raw, where), where)
    check_error(body, where)
    usage = read_usage(body, where)
    choices = where.array(body, "choices", "choices")
    if not choices:
        where.fail("has no choices")
    parts = Parts()
    reason: str | None = None
    for i, choice in enumerate(choices):
        field = f"choices[{i}]"
        if not isinstance(choice, dict):
            where.wrong(field, "an object", choice)
        index = _choice_index(choice, field, where)
        if "message" in choice and choice["message"] is not None:
            message = where.object(choice, "message", f"{field}.message")
            assert message is not None
            out = read_output(message, f"{field}.message", where)
        else:
            out = read_output({}, field, where)
            out.content = where.string(choice, "text", f"{field}.text")
        finish = where.string(choice, "finish_reason", f"{field}.finish_reason")
        if index == 0:
            parts.add(out)
            parts.add_logprobs(choice, field, where)
            reason = finish
    return parts.answer(reason, usage, where)


def utf8(raw: bytes, where: Where) -> bytes:
    """``raw``, once it proved to be UTF-8 (a :class:`ProtocolError` naming ``where`` if not)."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        where.fail(f"not valid UTF-8: {exc.reason}", cause=exc)
    return raw


def usage_from_json(obj: object) -> Usage | None:
    """A :class:`Usage` from an OpenAI ``usage`` object.

    Returns ``None`` when there is none (``obj`` is ``None`` or has no
    ``prompt_tokens``).

    Raises:
        ProtocolError: ``obj`` is not an object, or a count is not an integer >= 0.
    """
    return read_usage({"usage": obj}, Where("usage", partial=False))
