"""The wire format of the fake server's other APIs: embeddings bodies and Responses API events.

`EmbeddingTemplate` and `ResponsesTemplate` have the interface `_respond`
uses for a chat `ResponseTemplate` (content events, the finish, whole
bodies, the bytes of each fault), so the same pacing and faults apply. A
``malformed_shape`` fault sends, whatever its variant, a well-framed answer
whose main field has the wrong type (``data[0].embedding`` a number, a
Responses ``delta`` a number), since the variants name chat fields; no variant
is drawn for them (none is named in ``x-shardline-shape`` or counted in
``malformed_shapes``). No I/O.
"""

from __future__ import annotations

import base64
import hashlib
import random
import struct
from typing import Any, Final

from ._wire import encode, fake_text, token_bytes

__all__ = ["EmbeddingTemplate", "ResponsesTemplate", "fake_embedding"]


def fake_embedding(text: str, dimensions: int = 8) -> list[float]:
    """The deterministic vector the fake server returns for ``text``.

    Each component is in ``[-1, 1]`` with four decimals, drawn from a seed
    that is a hash of ``text`` (so the same text gives the same vector in any
    run, and a test can assert on it). Token-id inputs use their ids joined
    with spaces as ``text``.
    """
    seed = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    rng = random.Random(int.from_bytes(seed, "big"))
    return [round(rng.uniform(-1.0, 1.0), 4) for _ in range(dimensions)]


class EmbeddingTemplate:
    """One ``POST /embeddings`` answer (never streamed)."""

    __slots__ = ("base64", "dimensions", "model", "prompt_tokens", "texts")

    chat: Final = False
    include_usage: Final = False
    completion_tokens: Final = 0

    def __init__(
        self, *, texts: list[str], prompt_tokens: int, model: str, dimensions: int, base64: bool
    ) -> None:
        self.texts = texts
        self.prompt_tokens = prompt_tokens
        self.model = model
        self.dimensions = dimensions
        self.base64 = base64

    def _vector(self, text: str) -> list[float] | str:
        vector = fake_embedding(text, self.dimensions)
        if self.base64:
            return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        return vector

    def whole_dict(self, *, vectors: int | None = None) -> dict[str, Any]:
        """The body as a JSON-ready dict; ``vectors`` keeps only the first ones."""
        texts = self.texts if vectors is None else self.texts[:vectors]
        return {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": self._vector(text)}
                for i, text in enumerate(texts)
            ],
            "model": self.model,
            "usage": {"prompt_tokens": self.prompt_tokens, "total_tokens": self.prompt_tokens},
        }

    def whole_body(
        self, *, text_tokens: int | None = None, finish_reason: str | None = "default"
    ) -> bytes:
        """The body; a truncated one (``text_tokens`` given) holds half the vectors."""
        cut = None if text_tokens is None else len(self.texts) // 2
        return encode(self.whole_dict(vectors=cut))

    def shape_body(self) -> bytes:
        """A ``malformed_shape`` body: the first vector is a number."""
        body = self.whole_dict()
        body["data"][0]["embedding"] = 5
        return encode(body)


_EVENT_HEAD: Final = b"event: %s\ndata: "


class ResponsesTemplate:
    """One ``POST /responses`` answer: a message, or a function call, maybe after reasoning.

    Streamed, it is the Responses API's event sequence (``response.created``,
    ``response.in_progress``, ``response.output_item.added`` …, the deltas,
    the ``.done`` events and ``response.completed``, or
    ``response.incomplete`` when ``max_output_tokens`` cut it); not streamed,
    the response object. Usage is always in the final response.
    """

    __slots__ = (
        "_seq",
        "completion_tokens",
        "created",
        "id",
        "incomplete",
        "model",
        "prompt_tokens",
        "reasoning",
        "tool_name",
    )

    chat: Final = True  # it has head events (created, in_progress, items added)
    include_usage: Final = False  # usage comes in response.completed

    def __init__(
        self,
        *,
        id: str,
        created: int,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        incomplete: bool,
        tool_name: str | None,
        reasoning: bool,
    ) -> None:
        self.id = id
        self.created = created
        self.model = model
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self.incomplete = incomplete
        self.tool_name = tool_name
        self.reasoning = reasoning
        self._seq = 0

    # -- the parts of the answer

    @property
    def _n(self) -> str:
        return self.id.rpartition("_")[2]

    @property
    def reasoning_tokens(self) -> int:
        return max(1, self.completion_tokens // 2) if self.reasoning else 0

    @property
    def _out_index(self) -> int:
        """The output index of the message or function call (after the reasoning item)."""
        return 1 if self.reasoning else 0

    def _arguments(self, n: int) -> str:
        return '{"text": "' + fake_text(n) + ('"}' if n == self.completion_tokens else "")

    def _items(self, n: int, *, done: bool) -> list[dict[str, Any]]:
        """The output items after ``n`` tokens (empty text while ``done`` is false)."""
        status = "completed" if done else "in_progress"
        r = min(n, self.reasoning_tokens)
        items: list[dict[str, Any]] = []
        if self.reasoning:
            text = fake_text(r) if done else ""
            content = [{"type": "reasoning_text", "text": text}] if done else []
            items.append(
                {"id": f"rs_{self._n}", "type": "reasoning", "summary": [], "content": content}
            )
        if self.tool_name is not None:
            items.append(
                {
                    "id": f"fc_{self._n}",
                    "type": "function_call",
                    "call_id": f"call_{self._n}",
                    "name": self.tool_name,
                    "arguments": self._arguments(n) if done else "",
                    "status": status,
                }
            )
        else:
            content = [self._text_part(fake_text(n - r))] if done else []
            items.append(
                {
                    "id": f"msg_{self._n}",
                    "type": "message",
                    "role": "assistant",
                    "status": status,
                    "content": content,
                }
            )
        return items

    @staticmethod
    def _text_part(text: str) -> dict[str, Any]:
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

    def whole_dict(
        self, *, text_tokens: int | None = None, status: str | None = None
    ) -> dict[str, Any]:
        """The response object; ``status`` defaults to completed (or incomplete when cut)."""
        n = self.completion_tokens if text_tokens is None else text_tokens
        if status is None:
            status = "incomplete" if self.incomplete else "completed"
        done = status != "in_progress"
        usage = None
        if done:
            usage = {
                "input_tokens": self.prompt_tokens,
                "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                "output_tokens": n,
                "output_tokens_details": {"reasoning_tokens": min(n, self.reasoning_tokens)},
                "total_tokens": self.prompt_tokens + n,
            }
        body: dict[str, Any] = {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "model": self.model,
            "output": self._items(n, done=done) if done or text_tokens is not None else [],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "error": None,
            "incomplete_details": (
                {"reason": "max_output_tokens"} if status == "incomplete" else None
            ),
            "usage": usage,
        }
        return body

    def whole_body(
        self, *, text_tokens: int | None = None, finish_reason: str | None = "default"
    ) -> bytes:
        """The body; a truncated one (``finish_reason=None``) is still ``in_progress``."""
        status = "in_progress" if finish_reason is None else None
        return encode(self.whole_dict(text_tokens=text_tokens, status=status))

    def shape_body(self) -> bytes:
        """A ``malformed_shape`` body: ``output`` is a number."""
        body = self.whole_dict()
        body["output"] = 5
        return encode(body)

    # -- streamed events

    def _event(self, kind: str, **fields: Any) -> bytes:
        self._seq += 1
        data = encode({"type": kind, "sequence_number": self._seq, **fields})
        return _EVENT_HEAD % kind.encode() + data + b"\n\n"

    def role_event(self) -> bytes:
        """The head: created, in_progress, and each output item (and text part) added."""
        self._seq = -1
        shell = self.whole_dict(status="in_progress")
        out = self._event("response.created", response=shell)
        out += self._event("response.in_progress", response=shell)
        for index, item in enumerate(self._items(0, done=False)):
            out += self._event("response.output_item.added", output_index=index, item=item)
            if item["type"] == "message":
                out += self._event(
                    "response.content_part.added",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    part=self._text_part(""),
                )
        return out

    def content_event(self, start: int, count: int) -> bytes:
        end = start + count
        r = self.reasoning_tokens
        out = b""
        if start < r:
            out += self._event(
                "response.reasoning_text.delta",
                item_id=f"rs_{self._n}",
                output_index=0,
                content_index=0,
                delta=token_bytes(start, min(end, r) - start).decode(),
            )
        if end > r:
            first = max(start, r)
            piece = token_bytes(first - r, end - first).decode()
            out += self._delta(piece, first == r, end == self.completion_tokens)
        return out

    def _delta(self, piece: str, first: bool, last: bool) -> bytes:
        if self.tool_name is not None:
            piece = ('{"text": "' if first else "") + piece + ('"}' if last else "")
            return self._event(
                "response.function_call_arguments.delta",
                item_id=f"fc_{self._n}",
                output_index=self._out_index,
                delta=piece,
            )
        return self._event(
            "response.output_text.delta",
            item_id=f"msg_{self._n}",
            output_index=self._out_index,
            content_index=0,
            delta=piece,
            logprobs=[],
        )

    def empty_event(self) -> bytes:
        """A delta with nothing in it: not progress."""
        return self._delta("", False, False)

    def finish_event(self) -> bytes:
        """The .done events of every item, then response.completed (or .incomplete)."""
        final = self.whole_dict()
        out = b""
        for index, item in enumerate(final["output"]):
            if item["type"] == "message":
                part = item["content"][0]
                ids = {"item_id": item["id"], "output_index": index, "content_index": 0}
                out += self._event(
                    "response.output_text.done", **ids, text=part["text"], logprobs=[]
                )
                out += self._event("response.content_part.done", **ids, part=part)
            elif item["type"] == "function_call":
                out += self._event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=index,
                    name=item["name"],
                    arguments=item["arguments"],
                )
            out += self._event("response.output_item.done", output_index=index, item=item)
        return out + self._event(f"response.{final['status']}", response=final)

    def usage_event(self) -> bytes:
        return b""

    done_marker: Final = b""

    def malformed_event(self, start: int) -> bytes:
        """A delta whose JSON breaks off."""
        return (
            _EVENT_HEAD % b"response.output_text.delta"
            + b'{"type":"response.output_text.delta","delta":"'
            + token_bytes(start, 1)
            + b'", "sequence_number": nul\n\n'
        )

    def shape_event(self) -> bytes:
        """A ``malformed_shape`` event: a delta that is a number."""
        self._seq += 1
        kind = "response.output_text.delta"
        data = encode({"type": kind, "sequence_number": self._seq, "delta": 5})
        return _EVENT_HEAD % kind.encode() + data + b"\n\n"

    def error_event(self) -> bytes:
        """``response.failed``, with a server error."""
        failed = self.whole_dict(status="failed")
        failed["error"] = {
            "code": "server_error",
            "message": "The server had an error while processing your request.",
        }
        return self._event("response.failed", response=failed)
