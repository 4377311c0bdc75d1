"""Requests, usage, results and outcomes: the values that flow through a pipeline.

The request types live in :mod:`shardline._requests` and are re-exported here.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import attrs

from ._answers import ToolCall
from ._exceptions import (
    AttemptError,
    Cause,
    InputError,
    InternalError,
    ItemCancelled,
    ShardlineError,
)
from ._request_base import ItemId
from ._requests import (
    REQUEST_TYPES,
    ChatRequest,
    CompletionRequest,
    EmbeddingRequest,
    Request,
    ResponsesRequest,
    request_from_json,
)

__all__ = [
    "REQUEST_TYPES",
    "ChatRequest",
    "CompletionRequest",
    "EmbeddingRequest",
    "ItemId",
    "Outcome",
    "Request",
    "ResponsesRequest",
    "Result",
    "Status",
    "ToolCall",
    "Usage",
    "estimate_tokens",
    "request_from_json",
]


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
class Result:
    """A successful answer: a completion, a Responses answer or embeddings.

    Attributes:
        id: The item id.
        text: The completion text (content deltas joined).
        finish_reason: The server's finish reason (``stop``, ``length`` …).
        usage: Token counts, from the server's ``usage`` when it sent one.
        attempts: How many attempts it took (1 = no retry).
        shard: The shard that served it.
        ttft_s: Seconds from sending the successful attempt to its first content event.
        latency_s: Seconds from admission to the end of the item.
        tool_calls: The tool calls of choice 0 (or the Responses API's function
            calls), in index order; empty when there were none.
        reasoning: The reasoning text (``reasoning_content`` from vLLM,
            SGLang and DeepSeek, ``reasoning`` from OpenRouter, reasoning
            deltas of the Responses API), or ``None`` when none was sent.
        refusal: The model's refusal text, or ``None``.
        logprobs: Choice 0's per-token ``logprobs.content`` entries as the
            server sent them (when the request asked for ``logprobs``), or ``None``.
        embeddings: For an embeddings request, one vector per input, in input
            order; ``None`` otherwise.
    """

    id: ItemId
    text: str
    finish_reason: str | None
    usage: Usage
    attempts: int
    shard: int
    ttft_s: float | None
    latency_s: float
    tool_calls: tuple[ToolCall, ...] = ()
    reasoning: str | None = None
    refusal: str | None = None
    logprobs: tuple[Mapping[str, Any], ...] | None = None
    embeddings: tuple[tuple[float, ...], ...] | None = None


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
