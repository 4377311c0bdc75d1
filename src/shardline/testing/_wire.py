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


def text_chars(content: object) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                total += len(part["text"])
            elif isinstance(part, str):
                total += len(part)
        return total
    return 0


def parse_params(
    params: dict[str, Any], *, chat: bool, default_max_tokens: int
) -> tuple[int, int, str, bool, bool] | str:
    """Validate a request body. Returns the response parameters or an error message."""
    if chat:
        messages = params.get("messages")
        if not isinstance(messages, list) or not messages:
            return "'messages' must be a non-empty list"
        chars = 0
        for message in messages:
            if not isinstance(message, dict):
                return "each message must be an object"
            chars += text_chars(message.get("content"))
        prompt_tokens = count_prompt_tokens(chars)
    else:
        prompt = params.get("prompt")
        if isinstance(prompt, str):
            prompt_tokens = count_prompt_tokens(len(prompt))
        elif isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt_tokens = count_prompt_tokens(len(prompt[0]))
        elif isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            prompt_tokens = len(prompt)
        else:
            return "'prompt' must be a string or a list of token ids (one prompt per request)"
    n = params.get("n", 1)
    if n not in (1, None):
        return "the fake server supports only n=1"
    limit = params.get("max_completion_tokens", params.get("max_tokens"))
    if limit is None:
        completion_tokens, finish_reason = default_max_tokens, "stop"
    elif isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        return "'max_tokens' must be an integer >= 1"
    elif limit > MAX_COMPLETION_TOKENS:
        return f"'max_tokens' must be <= {MAX_COMPLETION_TOKENS}"
    else:
        completion_tokens, finish_reason = limit, "length"
    stream = params.get("stream") is True
    options = params.get("stream_options")
    include_usage = stream and isinstance(options, dict) and options.get("include_usage") is True
    return prompt_tokens, completion_tokens, finish_reason, stream, include_usage


class ResponseTemplate:
    """Pre-encoded templates for one completion response."""

    __slots__ = (
        "_content_prefix",
        "_content_suffix",
        "_events",
        "_head",
        "chat",
        "completion_tokens",
        "created",
        "finish_reason",
        "id",
        "include_usage",
        "model",
        "prompt_tokens",
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
    ) -> None:
        self.chat = chat
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
        if chat:
            self._content_prefix = self._head + b'[{"index":0,"delta":{"content":"'
            self._content_suffix = b'"},"logprobs":null,"finish_reason":null}]' + tail
        else:
            self._content_prefix = self._head + b'[{"index":0,"text":"'
            self._content_suffix = b'","logprobs":null,"finish_reason":null}]' + tail

    def content_event(self, start: int, count: int) -> bytes:
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

    def empty_event(self) -> bytes:
        return self.content_event(0, 0)

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
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": reason,
            }
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


def encode(value: object) -> bytes:
    """Compact JSON, as the server sends it."""
    return json.dumps(value, separators=(",", ":")).encode()
