"""The request types: chat, legacy completion, embeddings and Responses, and the JSONL form.

Each is a frozen value checked when it is built; :func:`request_from_json`
builds the right one from an input line (``messages``, ``prompt``, or
``input`` with an ``api`` key).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, TypeAlias

import attrs

from ._exceptions import InputError
from ._request_base import (
    ItemId,
    RequestBase,
    canonical,
    checked_params,
    item_id,
    json_value,
    model_name,
    thaw,
    thawed_repr,
)

__all__ = [
    "API_NAMES",
    "REQUEST_TYPES",
    "ChatRequest",
    "CompletionRequest",
    "EmbeddingRequest",
    "Request",
    "ResponsesRequest",
    "request_from_json",
]

#: Keys of a JSON request object that shardline owns; everything else is passed
#: through to the server untouched.
_RESERVED = frozenset({"id", "api", "messages", "prompt", "input", "stream", "model"})


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
    frozen: Sequence[Mapping[str, Any]] = json_value(value, "messages")
    return frozen


def _prompt(value: object) -> str:
    if not isinstance(value, str):
        raise InputError(f"prompt must be a string, got {type(value).__name__}: {value!r:.80}")
    return value


_check_completion_params = checked_params(frozenset({"messages", "prompt", "model", "stream"}))
_check_input_params = checked_params(frozenset({"input", "model", "stream"}))


def _completion_params(value: object) -> Mapping[str, Any]:
    return _check_completion_params(value)


def _input_params(value: object) -> Mapping[str, Any]:
    return _check_input_params(value)


def _int_list(value: object) -> bool:
    return (
        isinstance(value, list | tuple)
        and bool(value)
        and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value)
    )


def _embedding_input(value: object) -> str | tuple[Any, ...]:
    """A string, or a non-empty list of strings, of token ids, or of token-id lists."""
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple) and value:
        if all(isinstance(v, str) for v in value) or _int_list(value):
            return tuple(value)
        if all(_int_list(v) for v in value):
            return tuple(tuple(v) for v in value)
    raise InputError(
        "input must be a string, or a non-empty list of strings, of token ids or of"
        f" token-id lists, got {type(value).__name__}: {value!r:.80}"
    )


def _responses_input(value: object) -> str | tuple[Mapping[str, Any], ...]:
    """A string, or a non-empty list of input items (objects)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple) and value:
        for i, item in enumerate(value):
            if not isinstance(item, Mapping):
                raise InputError(
                    f"input[{i}] must be an input item object, got"
                    f" {type(item).__name__}: {item!r:.80}"
                )
        frozen: tuple[Mapping[str, Any], ...] = json_value(value, "input")
        return frozen
    raise InputError(
        "input must be a string or a non-empty list of input items,"
        f" got {type(value).__name__}: {value!r:.80}"
    )


def _content_text(content: object) -> list[str]:
    """The text of a message ``content``: a string, or the ``text`` of its parts."""
    if isinstance(content, str):
        return [content]
    if isinstance(content, tuple):
        return [str(p.get("text", "")) for p in content if isinstance(p, Mapping)]
    return []


def _limit(params: Mapping[str, Any], *keys: str) -> int | None:
    for key in keys:
        value = params.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


@attrs.frozen(kw_only=True, eq=False)
class ChatRequest(RequestBase):
    """A ``POST /chat/completions`` request.

    Example::

        ChatRequest(messages=[{"role": "user", "content": "Hi"}], params={"max_tokens": 16})

    It is checked when it is built, and immutable: ``messages`` and ``params``
    are deep, read-only copies of what was given (so a request can be hashed,
    compared, and sent many times unchanged).

    Tools go in ``params`` as the API takes them (``tools``, ``tool_choice``,
    ``parallel_tool_calls``); the answer's calls are in :attr:`Result.tool_calls`.

    Args:
        messages: The OpenAI ``messages`` list: a non-empty list of objects,
            each with a string ``role``.
        model: The model name; ``None`` uses the pipeline's default model.
        id: The item id, used for routing, events and results. The pipeline
            gives requests that have none an id of its own that cannot collide
            with yours.
        params: Every other OpenAI parameter (``max_tokens``, ``temperature``,
            ``response_format``, ``tools`` …), passed through unchanged. Must be
            JSON, and must not set ``messages``, ``model`` or ``stream``.

    Raises:
        InputError: naming the field that is not what the API takes (for
            example ``messages="hello"``, or a value that is not JSON).
    """

    api: ClassVar[str] = "chat"

    messages: Sequence[Mapping[str, Any]] = attrs.field(converter=_messages, repr=thawed_repr)
    model: str | None = attrs.field(default=None, converter=model_name)
    id: ItemId | None = attrs.field(default=None, converter=item_id)
    params: Mapping[str, Any] = attrs.field(
        factory=dict,
        converter=_completion_params,
        repr=thawed_repr,
    )

    path: str = attrs.field(default="chat/completions", init=False)

    def _identity(self) -> tuple[Any, ...]:
        return ("chat", self.id, self.model, canonical(self.messages), canonical(self.params))

    def prompt_text(self) -> str:
        """The text of every message, joined: what prompt-token estimates count."""
        parts: list[str] = []
        for m in self.messages:
            parts.extend(_content_text(m.get("content")))
        return "\n".join(parts)

    def max_tokens(self) -> int | None:
        """The completion-token limit the request sets (``max_completion_tokens`` or
        ``max_tokens``), or ``None``."""
        return _limit(self.params, "max_completion_tokens", "max_tokens")

    def body(self, *, model: str | None, stream: bool) -> dict[str, Any]:
        """The JSON body to send (a new, plain ``dict`` each time)."""
        return self._body("messages", thaw(self.messages), model=model, stream=stream)

    def to_json(self) -> dict[str, Any]:
        """The JSONL input form (``id``, ``messages``, ``model``, params) that
        :func:`request_from_json` reads back."""
        return self._json("messages", thaw(self.messages))


@attrs.frozen(kw_only=True, eq=False)
class CompletionRequest(RequestBase):
    """A legacy ``POST /completions`` request with a text ``prompt``.

    Args are as for :class:`ChatRequest`, with ``prompt`` (a string) instead
    of ``messages``; it is checked and frozen the same way.
    """

    api: ClassVar[str] = "completions"

    prompt: str = attrs.field(converter=_prompt)
    model: str | None = attrs.field(default=None, converter=model_name)
    id: ItemId | None = attrs.field(default=None, converter=item_id)
    params: Mapping[str, Any] = attrs.field(
        factory=dict,
        converter=_completion_params,
        repr=thawed_repr,
    )

    path: str = attrs.field(default="completions", init=False)

    def _identity(self) -> tuple[Any, ...]:
        return ("completion", self.id, self.model, self.prompt, canonical(self.params))

    def prompt_text(self) -> str:
        """The prompt: what prompt-token estimates count."""
        return self.prompt

    def max_tokens(self) -> int | None:
        """The ``max_tokens`` the request sets, or ``None``."""
        return _limit(self.params, "max_tokens")

    def body(self, *, model: str | None, stream: bool) -> dict[str, Any]:
        """The JSON body to send (a new, plain ``dict`` each time)."""
        return self._body("prompt", self.prompt, model=model, stream=stream)

    def to_json(self) -> dict[str, Any]:
        """The JSONL input form that :func:`request_from_json` reads back."""
        return self._json("prompt", self.prompt)


@attrs.frozen(kw_only=True, eq=False)
class EmbeddingRequest(RequestBase):
    """A ``POST /embeddings`` request: one vector per input.

    Example::

        EmbeddingRequest(input=["first passage", "second passage"], model="bge-m3")

    It is never streamed (the attempt deadline and the TTFT deadline bound
    the wait for the whole body); the vectors are in
    :attr:`Result.embeddings`, in input order, and the server's
    ``usage.prompt_tokens`` counts as tokens in.

    Args:
        input: A string, or a non-empty list of strings (a batch: one vector
            each), of token ids, or of token-id lists.
        model: The model name; ``None`` uses the pipeline's default model.
        id: The item id, as for :class:`ChatRequest`.
        params: Every other parameter (``dimensions``, ``encoding_format`` …),
            passed through; must not set ``input``, ``model`` or ``stream``.
            ``encoding_format: "base64"`` answers are decoded (little-endian
            float32), so vectors look the same either way.

    Raises:
        InputError: naming the field that is not what the API takes.
    """

    api: ClassVar[str] = "embeddings"
    streams: ClassVar[bool] = False

    input: str | tuple[Any, ...] = attrs.field(converter=_embedding_input, repr=thawed_repr)
    model: str | None = attrs.field(default=None, converter=model_name)
    id: ItemId | None = attrs.field(default=None, converter=item_id)
    params: Mapping[str, Any] = attrs.field(
        factory=dict,
        converter=_input_params,
        repr=thawed_repr,
    )

    path: str = attrs.field(default="embeddings", init=False)

    @property
    def inputs(self) -> int:
        """How many vectors the answer must hold."""
        if isinstance(self.input, str) or (self.input and isinstance(self.input[0], int)):
            return 1
        return len(self.input)

    def _identity(self) -> tuple[Any, ...]:
        return ("embeddings", self.id, self.model, canonical(self.input), canonical(self.params))

    def prompt_text(self) -> str:
        """The input text, joined (token ids as numbers): what prompt-token estimates count."""
        if isinstance(self.input, str):
            return self.input
        return "\n".join(
            " ".join(map(str, v)) if isinstance(v, tuple) else str(v) for v in self.input
        )

    def max_tokens(self) -> int | None:
        """``None``: an embedding has no completion tokens."""
        return None

    def body(self, *, model: str | None, stream: bool) -> dict[str, Any]:
        """The JSON body to send; ``stream`` is ignored (embeddings never stream)."""
        return self._body("input", thaw(self.input), model=model, stream=False)

    def to_json(self) -> dict[str, Any]:
        """The JSONL input form (with ``"api": "embeddings"``)."""
        return self._json("input", thaw(self.input), api=True)


@attrs.frozen(kw_only=True, eq=False)
class ResponsesRequest(RequestBase):
    """A ``POST /responses`` request (OpenAI's Responses API, served by vLLM too).

    Example::

        ResponsesRequest(input="Name three primes.", params={"max_output_tokens": 64})

    Streamed when the endpoint streams; the deadlines count output-text,
    reasoning and function-call-argument deltas as progress, and a stream
    without ``response.completed`` (or ``response.incomplete``) is
    :class:`~shardline.errors.Truncated`.

    Args:
        input: A string, or a non-empty list of input items (objects, such as
            ``{"role": "user", "content": "..."}``).
        model: The model name; ``None`` uses the pipeline's default model.
        id: The item id, as for :class:`ChatRequest`.
        params: Every other parameter (``instructions``, ``tools``,
            ``reasoning``, ``max_output_tokens`` …), passed through; must not
            set ``input``, ``model`` or ``stream``.

    Raises:
        InputError: naming the field that is not what the API takes.
    """

    api: ClassVar[str] = "responses"
    _stream_usage_option: ClassVar[bool] = False

    input: str | tuple[Mapping[str, Any], ...] = attrs.field(
        converter=_responses_input, repr=thawed_repr
    )
    model: str | None = attrs.field(default=None, converter=model_name)
    id: ItemId | None = attrs.field(default=None, converter=item_id)
    params: Mapping[str, Any] = attrs.field(
        factory=dict,
        converter=_input_params,
        repr=thawed_repr,
    )

    path: str = attrs.field(default="responses", init=False)

    def _identity(self) -> tuple[Any, ...]:
        return ("responses", self.id, self.model, canonical(self.input), canonical(self.params))

    def prompt_text(self) -> str:
        """The input's text (and ``instructions``), joined: what prompt-token estimates count."""
        parts: list[str] = []
        instructions = self.params.get("instructions")
        if isinstance(instructions, str):
            parts.append(instructions)
        if isinstance(self.input, str):
            parts.append(self.input)
        else:
            for item in self.input:
                parts.extend(_content_text(item.get("content")))
        return "\n".join(parts)

    def max_tokens(self) -> int | None:
        """The ``max_output_tokens`` the request sets, or ``None``."""
        return _limit(self.params, "max_output_tokens")

    def body(self, *, model: str | None, stream: bool) -> dict[str, Any]:
        """The JSON body to send (a new, plain ``dict`` each time)."""
        return self._body("input", thaw(self.input), model=model, stream=stream)

    def to_json(self) -> dict[str, Any]:
        """The JSONL input form (with ``"api": "responses"``)."""
        return self._json("input", thaw(self.input), api=True)


Request: TypeAlias = ChatRequest | CompletionRequest | EmbeddingRequest | ResponsesRequest
"""A request a pipeline sends: chat, legacy completion, embeddings or Responses."""

#: Every request class, for ``isinstance`` checks.
REQUEST_TYPES: tuple[type[Request], ...] = (
    ChatRequest,
    CompletionRequest,
    EmbeddingRequest,
    ResponsesRequest,
)

#: The values of an input line's ``api`` key.
API_NAMES: tuple[str, ...] = tuple(t.api for t in REQUEST_TYPES)

#: The key that names each API's main field.
_MAIN_KEY = {
    "chat": "messages",
    "completions": "prompt",
    "embeddings": "input",
    "responses": "input",
}


def request_from_json(
    obj: object, *, source: str | None = None, line: int | None = None
) -> Request:
    """Build a request from one decoded JSON object (one line of a JSONL file).

    ``messages`` makes a :class:`ChatRequest`, ``prompt`` a
    :class:`CompletionRequest`; ``input`` needs ``"api": "embeddings"``
    (:class:`EmbeddingRequest`) or ``"api": "responses"``
    (:class:`ResponsesRequest`). ``api`` may be given with the others too
    (``"chat"``, ``"completions"``) and must then match. ``id`` and ``model``
    are picked out, ``stream`` is decided by the pipeline, and every other key
    is passed through.

    Raises:
        InputError: naming the field (and ``source``/``line`` when given).
    """

    def bad(msg: str) -> InputError:
        return InputError(msg, source=source, line=line)

    if not isinstance(obj, dict):
        raise bad(f"expected a JSON object, got {type(obj).__name__}")
    item = obj.get("id")
    if item is not None and (isinstance(item, bool) or not isinstance(item, str | int)):
        raise bad(f"field 'id' must be a string or an integer, got {type(item).__name__}")
    model = obj.get("model")
    if model is not None and not isinstance(model, str):
        raise bad(f"field 'model' must be a string, got {type(model).__name__}")
    api = obj.get("api")
    if api is not None and api not in API_NAMES:
        raise bad(f"field 'api' must be one of {', '.join(API_NAMES)}, got {api!r:.40}")
    mains = [key for key in ("messages", "prompt", "input") if key in obj]
    if len(mains) > 1:
        raise bad(f"give one of 'messages', 'prompt' or 'input', not {' and '.join(mains)}")
    if not mains:
        raise bad(
            "missing field 'messages' (chat) or 'prompt' (completion), or 'input' with an 'api'"
        )
    main = mains[0]
    if api is None:
        if main == "input":
            raise bad("field 'input' needs 'api': 'embeddings' or 'responses'")
        api = "chat" if main == "messages" else "completions"
    elif _MAIN_KEY[api] != main:
        raise bad(f"'api': {api!r} takes field {_MAIN_KEY[api]!r}, not {main!r}")
    params = {k: v for k, v in obj.items() if k not in _RESERVED}
    value = obj[main]
    if api == "chat":
        if not isinstance(value, list) or not value:
            raise bad("field 'messages' must be a non-empty list")
        for i, m in enumerate(value):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise bad(f"field 'messages[{i}]' must be an object with a string 'role'")
    elif api == "completions" and not isinstance(value, str):
        raise bad(f"field 'prompt' must be a string, got {type(value).__name__}")
    kind = next(t for t in REQUEST_TYPES if t.api == api)
    try:
        if kind is ChatRequest:
            return ChatRequest(messages=value, model=model, id=item, params=params)
        if kind is CompletionRequest:
            return CompletionRequest(prompt=value, model=model, id=item, params=params)
        if kind is EmbeddingRequest:
            return EmbeddingRequest(input=value, model=model, id=item, params=params)
        return ResponsesRequest(input=value, model=model, id=item, params=params)
    except InputError as exc:
        raise bad(exc.reason) from None
