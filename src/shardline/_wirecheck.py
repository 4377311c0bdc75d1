"""Checking server JSON field by field: the tools every parser of :mod:`shardline._openai` uses.

:class:`Where` names the place of a value in error messages and checks a
field's type; :class:`Parts` collects what choice 0 (or a Responses answer)
said, piece by piece, and :class:`Answer` is what it said in the end. No I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from ._answers import ToolCall
from ._exceptions import AttemptError, ClientError, ProtocolError, RateLimited, ServerError
from ._models import Usage

__all__ = [
    "Answer",
    "Output",
    "Parts",
    "Where",
    "check_error",
    "describe",
    "error_from_payload",
    "loads_object",
    "read_output",
    "read_usage",
]

_JSON_TYPES = {
    dict: "object",
    list: "array",
    str: "string",
    bool: "boolean",
    int: "integer",
    float: "number",
    type(None): "null",
}


def describe(value: object) -> str:
    kind = _JSON_TYPES.get(type(value), type(value).__name__)
    shown = repr(value)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return f"{kind} {shown}"


class Where:
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
        self.fail(f"{field} must be {expected}, got {describe(value)}")

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


def loads_object(loads: Callable[[Any], Any], data: str | bytes, where: Where) -> dict[str, Any]:
    try:
        obj = loads(data)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, orjson's, deep nesting
        shown = data[:80]
        where.fail(f"not JSON: {shown!r}", cause=exc)
    if not isinstance(obj, dict):
        where.fail(f"not a JSON object, got {describe(obj)}")
    return obj


def check_error(chunk: dict[str, Any], where: Where) -> None:
    """Raise the in-band error the chunk carries, if it carries one."""
    if "error" in chunk and chunk["error"] is not None:
        where.object(chunk, "error", "error")
        raise error_from_payload(chunk, status_code=where.status_code, partial=where.partial)
    if chunk.get("object") == "error":  # vLLM's and others' top-level error object
        raise error_from_payload(chunk, status_code=where.status_code, partial=where.partial)


def read_usage(chunk: dict[str, Any], where: Where) -> Usage | None:
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


class Output:
    """The output keys of one delta or message, checked (``None`` where absent)."""

    __slots__ = ("calls", "content", "reasoning", "refusal")

    def __init__(self) -> None:
        self.content: str | None = None
        self.reasoning: str | None = None
        self.refusal: str | None = None
        #: (index, id, type, name, arguments) of each tool-call piece.
        self.calls: list[tuple[int, str | None, str | None, str | None, str | None]] = []

    def __bool__(self) -> bool:
        return bool(self.content or self.reasoning or self.refusal or self.calls)


def read_output(obj: dict[str, Any], field: str, where: Where) -> Output:
    """Check the output keys of a streamed ``delta`` or a whole ``message``.

    ``reasoning_content`` (vLLM, SGLang, DeepSeek) wins over ``reasoning``
    (OpenRouter) when a server sends both, so the same thought is not kept twice.
    A legacy ``function_call`` becomes tool call 0.
    """
    out = Output()
    out.content = where.string(obj, "content", f"{field}.content")
    reasoning_content = where.string(obj, "reasoning_content", f"{field}.reasoning_content")
    reasoning = where.string(obj, "reasoning", f"{field}.reasoning")
    out.reasoning = reasoning_content if reasoning_content is not None else reasoning
    out.refusal = where.string(obj, "refusal", f"{field}.refusal")
    calls = where.array(obj, "tool_calls", f"{field}.tool_calls")
    for j, call in enumerate(calls or ()):
        at = f"{field}.tool_calls[{j}]"
        if not isinstance(call, dict):
            where.wrong(at, "an object", call)
        index = where.count(call, "index", f"{at}.index")
        function = where.object(call, "function", f"{at}.function") or {}
        out.calls.append(
            (
                j if index is None else index,
                where.string(call, "id", f"{at}.id"),
                where.string(call, "type", f"{at}.type"),
                where.string(function, "name", f"{at}.function.name"),
                where.string(function, "arguments", f"{at}.function.arguments"),
            )
        )
    legacy = where.object(obj, "function_call", f"{field}.function_call")
    if legacy is not None and not out.calls:
        name = where.string(legacy, "name", f"{field}.function_call.name")
        arguments = where.string(legacy, "arguments", f"{field}.function_call.arguments")
        if name or arguments:
            out.calls.append((0, None, "function", name, arguments))
    return out


def _finite(value: object) -> bool:
    """Whether every float in a decoded JSON value is finite."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return True


class _Call:
    __slots__ = ("arguments", "id", "name", "type")

    def __init__(self) -> None:
        self.id: str | None = None
        self.type: str | None = None
        self.name: str | None = None
        self.arguments: list[str] = []


class Answer:
    """What an answer said, after every field was checked.

    Attributes:
        text: The content of choice 0 (``""`` when it had none).
        finish_reason: Choice 0's finish reason (``None``: the answer is truncated).
        usage: The server's usage, or ``None`` when it sent none.
        tool_calls, reasoning, refusal, logprobs, embeddings: as in
            :class:`~shardline.Result`.
    """

    __slots__ = (
        "embeddings",
        "finish_reason",
        "logprobs",
        "reasoning",
        "refusal",
        "text",
        "tool_calls",
        "usage",
    )

    def __init__(
        self,
        text: str,
        finish_reason: str | None,
        usage: Usage | None,
        *,
        tool_calls: tuple[ToolCall, ...] = (),
        reasoning: str | None = None,
        refusal: str | None = None,
        logprobs: tuple[Mapping[str, Any], ...] | None = None,
        embeddings: tuple[tuple[float, ...], ...] | None = None,
    ) -> None:
        self.text = text
        self.finish_reason = finish_reason
        self.usage = usage
        self.tool_calls = tool_calls
        self.reasoning = reasoning
        self.refusal = refusal
        self.logprobs = logprobs
        self.embeddings = embeddings


class Parts:
    """Choice 0's output so far: text, reasoning, refusal, tool calls (by index), logprobs.

    Tool calls are assembled the way the API streams them: the pieces of one
    call share an ``index``; the first ``id``, ``type`` and ``name`` sent for
    it are kept (servers that repeat them in every piece are not doubled),
    and the ``arguments`` pieces are joined in order.
    """

    __slots__ = ("calls", "logprobs", "reasoning", "refusal", "text")

    def __init__(self) -> None:
        self.text: list[str] = []
        self.reasoning: list[str] | None = None
        self.refusal: list[str] | None = None
        self.calls: dict[int, _Call] = {}
        self.logprobs: list[Mapping[str, Any]] | None = None

    def add(self, out: Output) -> None:
        """Keep the pieces of one checked delta or message."""
        if out.content:
            self.text.append(out.content)
        if out.reasoning:
            if self.reasoning is None:
                self.reasoning = []
            self.reasoning.append(out.reasoning)
        if out.refusal:
            if self.refusal is None:
                self.refusal = []
            self.refusal.append(out.refusal)
        for index, call_id, call_type, name, arguments in out.calls:
            self.add_call(index, call_id, call_type, name, arguments)

    def add_call(
        self,
        index: int,
        call_id: str | None,
        call_type: str | None,
        name: str | None,
        arguments: str | None,
    ) -> None:
        """Add one piece of tool call ``index``."""
        call = self.calls.get(index)
        if call is None:
            call = self.calls[index] = _Call()
        if call_id and call.id is None:
            call.id = call_id
        if call_type and call.type is None:
            call.type = call_type
        if name and call.name is None:
            call.name = name
        if arguments:
            call.arguments.append(arguments)

    def add_logprobs(self, choice: dict[str, Any], field: str, where: Where) -> None:
        """Keep the ``logprobs.content`` entries of a choice, checking each is an object."""
        logprobs = where.object(choice, "logprobs", f"{field}.logprobs")
        if logprobs is None:
            return
        content = where.array(logprobs, "content", f"{field}.logprobs.content")
        if content is None:
            return
        for k, entry in enumerate(content):
            if not isinstance(entry, dict):
                where.wrong(f"{field}.logprobs.content[{k}]", "an object", entry)
            if not _finite(entry):  # json.loads takes NaN and Infinity; JSON does not
                where.fail(f"{field}.logprobs.content[{k}] holds a number that is not finite")
        if self.logprobs is None:
            self.logprobs = []
        self.logprobs.extend(content)

    def tool_calls(self, where: Where) -> tuple[ToolCall, ...]:
        """The assembled calls, in index order.

        Pieces that never carried an id, a name or arguments are no call.

        Raises:
            ProtocolError: a call never got a function name.
        """
        calls = []
        for index in sorted(self.calls):
            call = self.calls[index]
            if not (call.name or call.id or call.arguments):
                continue  # only empty pieces: nothing was called
            if not call.name:
                where.fail(f"tool call {index} has no function name")
            calls.append(
                ToolCall(
                    index=index,
                    id=call.id,
                    type=call.type or "function",
                    name=call.name,
                    arguments="".join(call.arguments),
                )
            )
        return tuple(calls)

    def answer(self, finish_reason: str | None, usage: Usage | None, where: Where) -> Answer:
        """The :class:`Answer` these parts make."""
        return Answer(
            "".join(self.text),
            finish_reason,
            usage,
            tool_calls=self.tool_calls(where),
            reasoning=None if self.reasoning is None else "".join(self.reasoning),
            refusal=None if self.refusal is None else "".join(self.refusal),
            logprobs=None if self.logprobs is None else tuple(self.logprobs),
        )
