"""What every request type shares: frozen JSON values, field checks, equality, the body.

The request types themselves (chat, legacy completion, embeddings, Responses)
live in :mod:`shardline._requests`; this module holds the pieces they are built
from, so each stays small.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, ClassVar, TypeAlias

from ._exceptions import InputError

__all__ = [
    "ItemId",
    "RequestBase",
    "canonical",
    "checked_params",
    "item_id",
    "json_value",
    "model_name",
    "thaw",
    "thawed_repr",
]

ItemId: TypeAlias = str | int
"""An item's id: a string, or a number (the input line number when absent)."""


def json_value(value: object, where: str) -> Any:
    """A deep, read-only copy of a JSON value; an :class:`InputError` naming ``where`` if not.

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
            out[key] = json_value(item, f"{where}.{key}")
        return MappingProxyType(out)
    if isinstance(value, list | tuple):
        return tuple(json_value(item, f"{where}[{i}]") for i, item in enumerate(value))
    raise InputError(f"{where} must be JSON, got {type(value).__name__}: {value!r:.80}")


def thaw(value: Any) -> Any:
    """The plain ``dict``/``list`` form of a value made by :func:`json_value`."""
    if isinstance(value, MappingProxyType):
        return {key: thaw(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return [thaw(item) for item in value]
    return value


def checked_params(reserved: frozenset[str]) -> Callable[[object], Mapping[str, Any]]:
    """The converter of a request's ``params``: JSON, and none of the ``reserved`` keys."""

    def convert(value: object) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise InputError(
                f"params must be a mapping of OpenAI parameters, got {type(value).__name__}"
            )
        frozen: Mapping[str, Any] = json_value(value, "params")
        found = sorted(reserved & frozen.keys())
        if found:
            raise InputError(
                f"params must not set {', '.join(found)}: use the request's own fields"
            )
        return frozen

    return convert


def item_id(value: object) -> ItemId | None:
    """The converter of a request's ``id``."""
    if value is None or (isinstance(value, str | int) and not isinstance(value, bool)):
        return value
    raise InputError(f"id must be a string or an integer, got {type(value).__name__}")


def model_name(value: object) -> str | None:
    """The converter of a request's ``model``."""
    if value is not None and not isinstance(value, str):
        raise InputError(f"model must be a string, got {type(value).__name__}")
    return value


def thawed_repr(value: Any) -> str:
    return repr(thaw(value))


def canonical(value: Any) -> str:
    """A stable text form of a JSON value (for equality and hashing)."""
    return json.dumps(thaw(value), sort_keys=True, separators=(",", ":"))


def _stream_options(params: Mapping[str, Any]) -> dict[str, Any]:
    opts = params.get("stream_options")
    out = thaw(opts) if isinstance(opts, Mapping) else {}
    out.setdefault("include_usage", True)
    return out


class RequestBase:
    """What every request type shares: equality, hashing, the body and the JSONL form."""

    __slots__ = ()

    #: Which API the request is for: ``chat``, ``completions``, ``embeddings``
    #: or ``responses`` (the ``api`` key of an input line).
    api: ClassVar[str]
    #: Whether the request can be streamed (embeddings cannot).
    streams: ClassVar[bool] = True
    #: Whether a streamed body asks for ``stream_options.include_usage``
    #: (the Responses API always sends usage and takes no such option).
    _stream_usage_option: ClassVar[bool] = True

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
        body: dict[str, Any] = thaw(self.params)
        body["model"] = self.model or model
        body[key] = value
        if stream and self.streams:
            body["stream"] = True
            if self._stream_usage_option:
                body["stream_options"] = _stream_options(self.params)
        elif self._stream_usage_option:
            body.pop("stream_options", None)
        return body

    def _json(self, key: str, value: Any, *, api: bool = False) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        if self.id is not None:
            obj["id"] = self.id
        if api:
            obj["api"] = self.api
        obj[key] = value
        if self.model is not None:
            obj["model"] = self.model
        obj.update(thaw(self.params))
        return obj
