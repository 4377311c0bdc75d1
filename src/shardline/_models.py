"""Requests, usage, results and outcomes: the values that flow through a pipeline."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeAlias

import attrs

from ._exceptions import AttemptError, Cause, InputError, ItemCancelled, ShardlineError

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


def _frozen_params(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return dict(value)


def _message_list(value: Iterable[Mapping[str, Any]]) -> Sequence[Mapping[str, Any]]:
    # A typed converter: with a bare ``converter=list`` mypy's attrs plugin infers
    # ``messages: _T`` and rejects every call site under --strict.
    return list(value)


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


@attrs.frozen(kw_only=True)
class ChatRequest:
    """A ``POST /chat/completions`` request.

    Example::

        ChatRequest(messages=[{"role": "user", "content": "Hi"}], params={"max_tokens": 16})

    Args:
        messages: The OpenAI ``messages`` list.
        model: The model name; ``None`` uses the pipeline's default model.
        id: The item id, used for routing, events and results. The pipeline
            numbers items that have none.
        params: Every other OpenAI parameter (``max_tokens``, ``temperature``,
            ``response_format`` …), passed through unchanged.
    """

    messages: Sequence[Mapping[str, Any]] = attrs.field(converter=_message_list)
    model: str | None = None
    id: ItemId | None = None
    params: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_params)

    path: str = attrs.field(default="chat/completions", init=False)

    def prompt_text(self) -> str:
        """The text of every message, joined: what prompt-token estimates count."""
        parts: list[str] = []
        for m in self.messages:
            content = m.get("content")
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts.extend(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
        return "\n".join(parts)

    def max_tokens(self) -> int | None:
        """The completion-token limit the request sets (``max_completion_tokens`` or
        ``max_tokens``), or ``None``."""
        value = self.params.get("max_completion_tokens", self.params.get("max_tokens"))
        return value if isinstance(value, int) else None

    def body(self, *, model: str | None, stream: bool) -> dict[str, Any]:
        """The JSON body to send."""
        body: dict[str, Any] = dict(self.params)
        body["model"] = self.model or model
        body["messages"] = list(self.messages)
        if stream:
            body["stream"] = True
            opts = dict(body.get("stream_options") or {})
            opts.setdefault("include_usage", True)
            body["stream_options"] = opts
        else:
            body.pop("stream_options", None)
        return body


@attrs.frozen(kw_only=True)
class CompletionRequest:
    """A legacy ``POST /completions`` request with a text ``prompt``.

    Args are as for :class:`ChatRequest`, with ``prompt`` instead of ``messages``.
    """

    prompt: str
    model: str | None = None
    id: ItemId | None = None
    params: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_params)

    path: str = attrs.field(default="completions", init=False)

    def prompt_text(self) -> str:
        """The prompt: what prompt-token estimates count."""
        return self.prompt

    def max_tokens(self) -> int | None:
        """The ``max_tokens`` the request sets, or ``None``."""
        value = self.params.get("max_tokens")
        return value if isinstance(value, int) else None

    def body(self, *, model: str | None, stream: bool) -> dict[str, Any]:
        """The JSON body to send."""
        body: dict[str, Any] = dict(self.params)
        body["model"] = self.model or model
        body["prompt"] = self.prompt
        if stream:
            body["stream"] = True
            opts = dict(body.get("stream_options") or {})
            opts.setdefault("include_usage", True)
            body["stream_options"] = opts
        else:
            body.pop("stream_options", None)
        return body


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
        return ChatRequest(messages=messages, model=model, id=item_id, params=params)
    if "prompt" in obj:
        prompt = obj["prompt"]
        if not isinstance(prompt, str):
            raise bad(f"field 'prompt' must be a string, got {type(prompt).__name__}")
        return CompletionRequest(prompt=prompt, model=model, id=item_id, params=params)
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
        if isinstance(err, AttemptError | InputError | ItemCancelled):
            return err.cause
        return None
