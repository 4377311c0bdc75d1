"""Requests, usage, results and outcomes: the values that flow through a pipeline."""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, TypeAlias

import attrs

from ._exceptions import (
    AttemptError,
    Cause,
    InputError,
    InternalError,
    ItemCancelled,
    ShardlineError,
)

__all__ = [
    "ChatRequest",
    "CompletionRequest",
    "ItemId",
    "Outcome",
    "Request",
    "Result",
    "Status",
    "Usage",
    "request_from_json",
]

ItemId: TypeAlias = str | int
"""An item's id: a string, or a number (the input line number when absent)."""

#: Keys of a JSON request object that shardline owns; everything else is passed
#: through to the server untouched.
_RESERVED = frozenset({"id", "messages", "prompt", "stream"})
#: Keys that ``params`` may not set: the request's own fields (and ``stream``,
#: which the pipeline decides).
_RESERVED_PARAMS = frozenset({"messages", "prompt", "model", "stream"})


def _json_value(value: object, where: str) -> Any:
    """A deep, read-only copy of a JSON value; :class:`TypeError` naming ``where`` if it is not one.

    Objects become read-only mappings and arrays tuples, so a frozen request
    cannot be changed after it was built (nor by whoever holds the dict it was
    built from). Floats must be finite: NaN is not JSON.
    """
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InputError(f"{where} must be JSON: {value!r} is not a finite number")
        return value
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise InputError(f"{where} must be JSON: key {key!r} is not a string")
            out[key] = _json_value(item, f"{where}.{key}")
        return MappingProxyType(out)
    if isinstance(value, list | tuple):
        return tuple(_json_value(item, f"{where}[{i}]") for i, item in enumerate(value))
    raise InputError(f"{where} must be JSON, got {type(value).__name__}: {value!r:.80}")


def _thaw(value: Any) -> Any:
    """The plain ``dict``/``list`` form of a value made by :func:`_json_value`."""
    if isinstance(value, MappingProxyType):
        return {key: _thaw(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return [_thaw(item) for item in value]
    return value


def _params(value: object) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InputError(
            f"params must be a mapping of OpenAI parameters, got {type(value).__name__}"
        )
    frozen: Mapping[str, Any] = _json_value(value, "params")
    reserved = sorted(_RESERVED_PARAMS & frozen.keys())
    if reserved:
        raise InputError(f"params must not set {', '.join(reserved)}: use the request's own fields")
    return frozen


def _messages(value: object) -> Sequence[Mapping[str, Any]]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise InputError(
            f"messages must be a list of message objects, got {type(value).__name__}: {value!r:.80}"
        )
    if not value:
        raise InputError("messages must not be empty")
    for i, message in enumerate(value):
        if not isinstance(message, Mapping):
            raise InputError(
                f"messages[{i}] must be an object with a string 'role', got"
                f" {type(message).__name__}: {message!r:.80}"
            )
        if not isinstance(message.get("role"), str):
            raise InputError(f"messages[{i}] must have a string 'role'")
    frozen: Sequence[Mapping[str, Any]] = _json_value(value, "messages")
    return frozen


def _item_id(value: object) -> ItemId | None:
    if value is None or (isinstance(value, str | int) and not isinstance(value, bool)):
        return value
    raise InputError(f"id must be a string or an integer, got {type(value).__name__}")


def _model(value: object) -> str | None:
    if value is not None and not isinstance(value, str):
        raise InputError(f"model must be a string, got {type(value).__name__}")
    return value


def _thawed_repr(value: Any) -> str:
    return repr(_thaw(value))


def _prompt(value: object) -> str:
    if not isinstance(value, str):
        raise InputError(f"prompt must be a string, got {type(value).__name__}: {value!r:.80}")
    return value


def _stream_options(params: Mapping[str, Any]) -> dict[str, Any]:
    opts = params.get("stream_options")
    out = _thaw(opts) if isinstance(opts, Mapping) else {}
    out.setdefault("include_usage", True)
    return out


@attrs.frozen(kw_only=True)
class Usage:
    """Token counts of one completion.

    ``estimated`` is true when the server sent no ``usage`` and the counts are
    shardline's estimate (about four characters per token; see the metrics page).
    """

    prompt_tokens: int = attrs.field(validator=attrs.validators.ge(0))
    completion_tokens: int = attrs.field(validator=attrs.validators.ge(0))
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens

    def to_json(self) -> dict[str, Any]:
        """The OpenAI ``usage`` object, plus ``estimated: true`` when it is an estimate."""
        out: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }
        if self.estimated:
            out["estimated"] = True
        return out


def estimate_tokens(text: str) -> int:
    """A server-free token estimate: one token per four characters, at least one."""
    return max(1, (len(text) + 3) // 4)


class _RequestBase:
    """What chat and completion requests share: validation, equality, the body."""

    __slots__ = ()

    id: ItemId | None
    model: str | None
    params: Mapping[str, Any]

    def _identity(self) -> tuple[Any, ...]:
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash(self._identity())

    def _body(self, key: str, value: Any, *, model: str | None, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = _thaw(self.params)
        body["model"] = self.model or model
        body[key] = value
        if stream:
            body["stream"] = True
            body["stream_options"] = _stream_options(self.params)
        else:
            body.pop("stream_options", None)
        return body

    def _json(self, key: str, value: Any) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        if self.id is not None:
            obj["id"] = self.id
        obj[key] = value
        if self.model is not None:
            obj["model"] = self.model
        obj.update(_thaw(self.params))
        return obj


@attrs.frozen(kw_only=True, eq=False)
class ChatRequest(_RequestBase):
    """A ``POST /chat/completions`` request.

    Example::

        ChatRequest(messages=[{"role": "user", "content": "Hi"}], params={"max_tokens": 16})

    It is checked when it is built, and immutable: ``messages`` and ``params``
    are deep, read-only copies of what was given (so a request can be hashed,
    compared, and sent many times unchanged).

    Args:
        messages: The OpenAI ``messages`` list: a non-empty list of objects,
            each with a string ``role``.
        model: The model name; ``None`` uses the pipeline's default model.
        id: The item id, used for routing, events and results. The pipeline
            gives requests that have none an id of its own that cannot collide
            with yours.
        params: Every other OpenAI parameter (``max_tokens``, ``temperature``,
            ``response_format`` …), passed through unchanged. Must be JSON,
            and must not set ``messages``, ``model`` or ``stream``.

    Raises:
        InputError: naming the field that is not what the API takes (for
            example ``messages="hello"``, or a value that is not JSON).
    """

    messages: Sequence[Mapping[str, Any]] = attrs.field(converter=_messages, repr=_thawed_repr)
    model: str | None = attrs.field(default=None, converter=_model)
    id: ItemId | None = attrs.field(default=None, converter=_item_id)
    params: Mapping[str, Any] = attrs.field(factory=dict, converter=_params, repr=_thawed_repr)

    path: str = attrs.field(default="chat/completions", init=False)

    def _identity(self) -> tuple[Any, ...]:
        return ("chat", self.id, self.model, _canonical(self.messages), _canonical(self.params))

    def prompt_text(self) -> str:
        """The text of every message, joined: what prompt-token estimates count."""
        parts: list[str] = []
        for m in self.messages:
            content = m.get("content")
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, tuple):
                parts.extend(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
        return "\n".join(parts)

    def max_tokens(self) -> int | None:
        """The completion-token limit the request sets (``max_completion_tokens`` or
        ``max_tokens``), or ``None``."""
        value = self.params.get("max_completion_tokens", self.params.get("max_tokens"))
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def body(self, *, model: str | None, stream: bool) -> dict[str, Any]:
        """The JSON body to send (a new, plain ``dict`` each time)."""
        return self._body("messages", _thaw(self.messages), model=model, stream=stream)

    def to_json(self) -> dict[str, Any]:
        """The JSONL input form (``id``, ``messages``, ``model``, params) that
        :func:`request_from_json` reads back."""
        return self._json("messages", _thaw(self.messages))


@attrs.frozen(kw_only=True, eq=False)
class CompletionRequest(_RequestBase):
    """A legacy ``POST /completions`` request with a text ``prompt``.

    Args are as for :class:`ChatRequest`, with ``prompt`` (a string) instead
    of ``messages``; it is checked and frozen the same way.
    """

    prompt: str = attrs.field(converter=_prompt)
    model: str | None = attrs.field(default=None, converter=_model)
    id: ItemId | None = attrs.field(default=None, converter=_item_id)
    params: Mapping[str, Any] = attrs.field(factory=dict, converter=_params, repr=_thawed_repr)

    path: str = attrs.field(default="completions", init=False)

    def _identity(self) -> tuple[Any, ...]:
        return ("completion", self.id, self.model, self.prompt, _canonical(self.params))

    def prompt_text(self) -> str:
        """The prompt: what prompt-token estimates count."""
        return self.prompt

    def max_tokens(self) -> int | None:
        """The ``max_tokens`` the request sets, or ``None``."""
        value = self.params.get("max_tokens")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def body(self, *, model: str | None, stream: bool) -> dict[str, Any]:
        """The JSON body to send (a new, plain ``dict`` each time)."""
        return self._body("prompt", self.prompt, model=model, stream=stream)

    def to_json(self) -> dict[str, Any]:
        """The JSONL input form that :func:`request_from_json` reads back."""
        return self._json("prompt", self.prompt)


def _canonical(value: Any) -> str:
    return json.dumps(_thaw(value), sort_keys=True, separators=(",", ":"))


Request: TypeAlias = ChatRequest | CompletionRequest
"""A chat or a legacy completion request: what a pipeline sends."""


def request_from_json(
    obj: object, *, source: str | None = None, line: int | None = None
) -> Request:
    """Build a request from one decoded JSON object (one line of a JSONL file).

    ``messages`` makes a :class:`ChatRequest`, ``prompt`` a
    :class:`CompletionRequest`; ``id`` and ``model`` are picked out, ``stream``
    is decided by the pipeline, and every other key is passed through.

    Raises:
        InputError: naming the field (and ``source``/``line`` when given).
    """

    def bad(msg: str) -> InputError:
        return InputError(msg, source=source, line=line)

    if not isinstance(obj, dict):
        raise bad(f"expected a JSON object, got {type(obj).__name__}")
    item_id = obj.get("id")
    if item_id is not None and (isinstance(item_id, bool) or not isinstance(item_id, str | int)):
        raise bad(f"field 'id' must be a string or an integer, got {type(item_id).__name__}")
    model = obj.get("model")
    if model is not None and not isinstance(model, str):
        raise bad(f"field 'model' must be a string, got {type(model).__name__}")
    params = {k: v for k, v in obj.items() if k not in _RESERVED and k != "model"}
    if "messages" in obj and "prompt" in obj:
        raise bad("give either 'messages' or 'prompt', not both")
    if "messages" in obj:
        messages = obj["messages"]
        if not isinstance(messages, list) or not messages:
            raise bad("field 'messages' must be a non-empty list")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise bad(f"field 'messages[{i}]' must be an object with a string 'role'")
        try:
            return ChatRequest(messages=messages, model=model, id=item_id, params=params)
        except InputError as exc:
            raise bad(exc.reason) from None
    if "prompt" in obj:
        prompt = obj["prompt"]
        if not isinstance(prompt, str):
            raise bad(f"field 'prompt' must be a string, got {type(prompt).__name__}")
        try:
            return CompletionRequest(prompt=prompt, model=model, id=item_id, params=params)
        except InputError as exc:
            raise bad(exc.reason) from None
    raise bad("missing field 'messages' (chat) or 'prompt' (completion)")


@attrs.frozen(kw_only=True)
class Result:
    """A successful completion.

    Attributes:
        id: The item id.
        text: The completion text (content deltas joined).
        finish_reason: The server's finish reason (``stop``, ``length`` …).
        usage: Token counts, from the server's ``usage`` when it sent one.
        attempts: How many attempts it took (1 = no retry).
        shard: The shard that served it.
        ttft_s: Seconds from sending the successful attempt to its first content event.
        latency_s: Seconds from admission to the end of the item.
    """

    id: ItemId
    text: str
    finish_reason: str | None
    usage: Usage
    attempts: int
    shard: int
    ttft_s: float | None
    latency_s: float


class Status(enum.StrEnum):
    """The terminal status of an item."""

    OK = "ok"
    FAILED = "failed"
    CANCELLED = "cancelled"


@attrs.frozen(kw_only=True)
class Outcome:
    """The one terminal outcome of an item: ok with a result, or failed/cancelled with an error.

    Attributes:
        id: The item id.
        status: ``ok``, ``failed`` or ``cancelled``.
        result: The :class:`Result` when ``status`` is ``ok``.
        error: The exception when it is not: an :class:`AttemptError`,
            :class:`InputError` or :class:`ItemCancelled`.
        attempts: Attempts made (0 when the item never reached the network).
        shard: The shard it was routed to, if any.
        latency_s: Seconds from admission to the end of the item.
    """

    id: ItemId
    status: Status
    result: Result | None = None
    error: ShardlineError | None = None
    attempts: int = 0
    shard: int | None = None
    latency_s: float = 0.0

    @property
    def ok(self) -> bool:
        """True when the item succeeded (``status`` is ``ok``)."""
        return self.status is Status.OK

    @property
    def cause(self) -> Cause | None:
        """The cause of the failure, or ``None`` for a success."""
        err = self.error
        if isinstance(err, AttemptError | InputError | ItemCancelled | InternalError):
            return err.cause
        return None
