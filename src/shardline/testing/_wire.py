"""The OpenAI wire format of the fake server: request parsing and response encoders.

It owns what goes over the wire and nothing about when or why: the
deterministic text (`fake_text`) and prompt tokenizer (`count_prompt_tokens`),
validation of a completion request body, the pre-encoded chunk and body
templates of one response (`ResponseTemplate`), error bodies and events, the models
list, and HTTP/1.1 chunk framing. No I/O and no clock here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from ._faults import FaultKind

DEFAULT_MODEL: Final = "shardline-fake"
"""The model ``GET /v1/models`` lists, and the one echoed when a request names none."""
DEFAULT_MAX_TOKENS: Final = 16
"""Completion tokens of a response whose request sets no ``max_tokens``."""
MAX_COMPLETION_TOKENS: Final = 1_000_000
"""Largest ``max_tokens`` the server accepts (``400`` above it): keeps memory bounded."""

# Deterministic "text": token i is _WORDS[i % len(_WORDS)], with a leading space
# except for the very first token. All ASCII, so no JSON escaping is needed.
_WORDS: Final[tuple[str, ...]] = (
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "shards",
    "of",
    "light",
    "stream",
    "through",
    "every",
    "open",
    "line",
    "and",
    "nothing",
    "hangs",
)
_TOKENS: Final[tuple[bytes, ...]] = tuple((" " + w).encode() for w in _WORDS)
_FIRST_TOKEN: Final = _WORDS[0].encode()


def fake_text(n_tokens: int, *, start: int = 0) -> str:
    """The deterministic completion text of ``n_tokens`` tokens.

    Every response of ``n`` tokens carries exactly ``fake_text(n)``, so a test
    can assert on content. Token ``i`` is a word from a fixed vocabulary, with a
    leading space except for token 0.

    Args:
        n_tokens: Number of tokens.
        start: Index of the first token (to reproduce part of a stream).
    """
    return token_bytes(start, n_tokens).decode()


def token_bytes(start: int, count: int) -> bytes:
    if count <= 0:
        return b""
    n = len(_TOKENS)
    if start == 0:
        return _FIRST_TOKEN + b"".join(_TOKENS[i % n] for i in range(1, count))
    return b"".join(_TOKENS[i % n] for i in range(start, start + count))


def count_prompt_tokens(text_chars: int) -> int:
    """The fake tokenizer: one prompt token per 4 characters, rounded up, at least 1.

    Chat prompts count the characters of every message's text content (string
    contents, and the ``text`` of list-of-parts contents); legacy prompts count
    the prompt string, or the length of a token-id list. This is the same
    estimate `estimate_tokens` uses.
    """
    return max(1, (text_chars + 3) // 4)


def frame(out: bytearray, payload: bytes | bytearray) -> None:
    """Append ``payload`` to ``out`` as one HTTP/1.1 chunk."""
    out += b"%x\r\n" % len(payload)
    out += payload
    out += b"\r\n"


STATUS_FAULTS: Final[Mapping[FaultKind, tuple[int, str, str, str | None]]] = {
    FaultKind.RATE_LIMIT: (
        429,
        "requests",
        "Rate limit reached (injected by the shardline fake server).",
        "rate_limit_exceeded",
    ),
    FaultKind.HTTP_500: (
        500,
        "server_error",
        "The server had an error while processing your request.",
        None,
    ),
    FaultKind.HTTP_502: (502, "server_error", "Bad gateway.", None),
    FaultKind.HTTP_503: (503, "server_error", "The engine is currently overloaded.", None),
}


def error_body(message: str, error_type: str, code: str | None) -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": error_type, "param": None, "code": code}}
    ).encode()


def error_event() -> bytes:
    body = error_body(
        "The server had an error while processing your request.", "server_error", None
    )
    return b"data: " + body + b"\n\n"


def models_body(models: tuple[str, ...], created: int) -> bytes:
    return json.dumps(
        {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": created, "owned_by": "shardline"}
                for m in models
            ],
        }
    ).encode()


class ResponseTemplate:
    """Pre-encoded templates for one completion response."""

    __slots__ = (
        "_content_prefix",
        "_content_suffix",
        "_events",
        "_head",
        "_tail",
        "chat",
        "completion_tokens",
        "created",
        "finish_reason",
        "id",
        "include_usage",
        "logprobs",
        "model",
        "prompt_tokens",
        "reasoning_key",
        "tool_name",
    )

    def __init__(
        self,
        *,
        chat: bool,
        id: str,
        created: int,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        finish_reason: str,
        include_usage: bool,
        tool_name: str | None = None,
        reasoning_key: str | None = None,
        logprobs: bool = False,
    ) -> None:
        self.chat = chat
        self.tool_name = tool_name
        self.reasoning_key = reasoning_key
        self.logprobs = logprobs
        self.id = id
        self.created = created
        self.model = model
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self.finish_reason = finish_reason
        self.include_usage = include_usage
        self._events: dict[int, bytes] = {}
        obj = "chat.completion.chunk" if chat else "text_completion"
        self._head = (
            b'data: {"id":"%s","object":"%s","created":%d,"model":%s,'
            b'"system_fingerprint":"fp_shardline","choices":'
            % (id.encode(), obj.encode(), created, json.dumps(model).encode())
        )
        tail = b',"usage":null}\n\n' if include_usage else b"}\n\n"
        self._tail = tail
        if chat:
            self._content_prefix = self._head + b'[{"index":0,"delta":{"content":"'
            self._content_suffix = b'"},"logprobs":null,"finish_reason":null}]' + tail
        else:
            self._content_prefix = self._head + b'[{"index":0,"text":"'
            self._content_suffix = b'","logprobs":null,"finish_reason":null}]' + tail

    @property
    def reasoning_tokens(self) -> int:
        """Tokens of reasoning before the content (half, at least one), when reasoning."""
        return max(1, self.completion_tokens // 2) if self.reasoning_key else 0

    def tool_arguments(self, n_tokens: int | None = None) -> str:
        """The arguments of the fake tool call: ``{"text": <fake_text(n)>}`` as JSON text."""
        n = self.completion_tokens if n_tokens is None else n_tokens
        return _ARGS_HEAD + fake_text(n) + (_ARGS_TAIL if n == self.completion_tokens else "")

    def _rich_event(self, start: int, count: int) -> bytes:
        """A content event of a tool-call, reasoning or logprobs answer (built as JSON)."""
        delta: dict[str, Any] = {}
        end = start + count
        if self.tool_name is not None:
            piece = token_bytes(start, count).decode()
            if start == 0:
                piece = _ARGS_HEAD + piece
            if end == self.completion_tokens:
                piece += _ARGS_TAIL
            call: dict[str, Any] = {"index": 0}
            if start == 0:
                call.update(id=self.call_id, type="function")
                call["function"] = {"name": self.tool_name, "arguments": piece}
            else:
                call["function"] = {"arguments": piece}
            delta["tool_calls"] = [call]
        else:
            r = self.reasoning_tokens
            if self.reasoning_key is not None and start < r:
                delta[self.reasoning_key] = token_bytes(start, min(end, r) - start).decode()
            if end > r:
                first = max(start, r)
                delta["content"] = token_bytes(first - r, end - first).decode()
        choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None}
        if self.logprobs and "content" in delta:
            choice["logprobs"] = {"content": _logprobs(delta["content"]), "refusal": None}
        choice["finish_reason"] = None
        return b"data: " + encode({**self.chunk_head(), "choices": [choice]})[:-1] + self._tail

    @property
    def call_id(self) -> str:
        """The id of the fake tool call."""
        return "call_" + self.id.rpartition("-")[2]

    def content_event(self, start: int, count: int) -> bytes:
        if self.chat and (self.tool_name or self.reasoning_key or self.logprobs):
            return self._rich_event(start, count)
        # Token i's text depends only on i % len(_WORDS) (after token 0), so events
        # repeat: build each distinct one once per response.
        if start == 0:
            return self._content_prefix + token_bytes(start, count) + self._content_suffix
        key = (start % len(_TOKENS)) * 1_000_003 + count
        event = self._events.get(key)
        if event is None:
            event = self._content_prefix + token_bytes(start, count) + self._content_suffix
            self._events[key] = event
        return event

    #: What ends the stream after the finish (and usage) events.
    done_marker: Final = b"data: [DONE]\n\n"

    def error_event(self) -> bytes:
        """The in-band error event of an ``error_event`` fault."""
        return error_event()

    def empty_event(self) -> bytes:
        """A chunk with an empty content delta: not progress, whatever the answer holds."""
        return self._content_prefix + self._content_suffix

    def role_event(self) -> bytes:
        tail = b',"usage":null}\n\n' if self.include_usage else b"}\n\n"
        return (
            self._head
            + b'[{"index":0,"delta":{"role":"assistant","content":""},'
            + b'"logprobs":null,"finish_reason":null}]'
            + tail
        )

    def finish_event(self) -> bytes:
        tail = b',"usage":null}\n\n' if self.include_usage else b"}\n\n"
        reason = self.finish_reason.encode()
        if self.chat:
            choice = b'[{"index":0,"delta":{},"logprobs":null,"finish_reason":"%s"}]' % reason
        else:
            choice = b'[{"index":0,"text":"","logprobs":null,"finish_reason":"%s"}]' % reason
        return self._head + choice + tail

    def usage_event(self) -> bytes:
        return (
            self._head
            + b'[],"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}}\n\n'
            % (
                self.prompt_tokens,
                self.completion_tokens,
                self.prompt_tokens + self.completion_tokens,
            )
        )

    def malformed_event(self, start: int) -> bytes:
        return self._content_prefix + token_bytes(start, 1) + b'"}, "finish_reason": nul\n\n'

    def usage_json(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }

    def whole_dict(
        self, *, text_tokens: int | None = None, finish_reason: str | None = "default"
    ) -> dict[str, Any]:
        """The non-streamed response body as a JSON-ready dict."""
        n = self.completion_tokens if text_tokens is None else text_tokens
        text = fake_text(n)
        reason = self.finish_reason if finish_reason == "default" else finish_reason
        if self.chat:
            message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
            if self.tool_name is not None:
                message["content"] = None
                function = {"name": self.tool_name, "arguments": self.tool_arguments(n)}
                message["tool_calls"] = [
                    {"id": self.call_id, "type": "function", "function": function}
                ]
            elif self.reasoning_key is not None:
                r = min(n, self.reasoning_tokens)
                message["content"] = fake_text(n - r)
                message[self.reasoning_key] = fake_text(r)
            choice: dict[str, Any] = {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": reason,
            }
            if self.logprobs and message["content"]:
                choice["logprobs"] = {"content": _logprobs(message["content"]), "refusal": None}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
            obj = "text_completion"
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_shardline",
            "choices": [choice],
            "usage": self.usage_json(),
        }

    def whole_body(
        self, *, text_tokens: int | None = None, finish_reason: str | None = "default"
    ) -> bytes:
        """The non-streamed response body."""
        return encode(self.whole_dict(text_tokens=text_tokens, finish_reason=finish_reason))

    def chunk_head(self) -> dict[str, Any]:
        """The fields every streamed chunk of this response carries, before ``choices``."""
        return {
            "id": self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_shardline",
        }


_ARGS_HEAD: Final = '{"text": "'
_ARGS_TAIL: Final = '"}'


def _logprobs(text: str) -> list[dict[str, Any]]:
    """Made-up log probabilities, one entry per word of ``text`` (the fake tokens)."""
    words = [
        w if i == 0 and not text.startswith(" ") else " " + w
        for i, w in enumerate(text.split(" "))
        if w
    ]
    return [
        {"token": w, "logprob": -0.25, "bytes": list(w.encode()), "top_logprobs": []} for w in words
    ]


def encode(value: object) -> bytes:
    """Compact JSON, as the server sends it."""
    return json.dumps(value, separators=(",", ":")).encode()
