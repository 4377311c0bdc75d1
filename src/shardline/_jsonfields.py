"""Type-driven checks of decoded JSON values against the fields of attrs records.

This module owns the rules that turn a JSON value into a field's Python value:
which JSON types a field type accepts (an integer widens to a float field, a
bool is never a number, an enum takes one of its string values, a union tries
each member), and how the mismatch is named in an error message. It knows
nothing of events; :mod:`shardline._events` builds its decoder from it.
"""

from __future__ import annotations

import enum
import math
import types
import typing
from collections.abc import Callable
from typing import Any

import attrs

__all__ = ["Coerce", "FieldSpec", "Mismatch", "coercer", "field_specs", "json_type"]

Coerce = Callable[[Any], Any]


class Mismatch(Exception):
    """A JSON value does not have the type its field needs (internal: never escapes)."""


def coercer(tp: Any) -> tuple[Coerce, str]:
    """A function that checks (and for floats, widens) one decoded JSON value."""
    if tp is Any:
        return (lambda v: v), "any value"
    if tp is type(None):

        def none(v: Any) -> Any:
            if v is not None:
                raise Mismatch
            return None

        return none, "null"
    if tp is float:

        def to_float(v: Any) -> Any:
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise Mismatch
            f = float(v)
            if not math.isfinite(f):
                raise Mismatch
            return f

        return to_float, "a number"
    if tp is int:

        def to_int(v: Any) -> Any:
            if isinstance(v, bool) or not isinstance(v, int):
                raise Mismatch
            return v

        return to_int, "an integer"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        members = {m.value: m for m in tp}

        def to_enum(v: Any) -> Any:
            if type(v) is not str or v not in members:
                raise Mismatch
            return members[v]

        return to_enum, "one of " + ", ".join(repr(value) for value in members)
    if tp is str or tp is bool:

        def exact(v: Any) -> Any:
            if type(v) is not tp:
                raise Mismatch
            return v

        return exact, ("a string" if tp is str else "true or false")
    origin = typing.get_origin(tp)
    if origin is dict:

        def to_dict(v: Any) -> Any:
            if not isinstance(v, dict):
                raise Mismatch
            return v

        return to_dict, "an object"
    if origin is types.UnionType or origin is typing.Union:
        parts = [coercer(arg) for arg in typing.get_args(tp)]

        def union(v: Any) -> Any:
            for fn, _ in parts:
                try:
                    return fn(v)
                except Mismatch:
                    continue
            raise Mismatch

        return union, " or ".join(desc for _, desc in parts)
    raise TypeError(f"no JSON decoder for field type {tp!r}")  # pragma: no cover


@attrs.frozen
class FieldSpec:
    """How to decode one field: its name, the check, what it expects, whether it is required."""

    name: str
    coerce: Coerce
    expected: str
    required: bool


def field_specs(cls: type[Any]) -> tuple[FieldSpec, ...]:
    """The decoding spec of every field of an attrs class, from its type hints."""
    hints = typing.get_type_hints(cls)
    return tuple(
        FieldSpec(
            name=f.name,
            coerce=coercer(hints[f.name])[0],
            expected=coercer(hints[f.name])[1],
            required=f.default is attrs.NOTHING,
        )
        for f in attrs.fields(cls)
    )


def json_type(v: Any) -> str:
    """The JSON type name of a decoded value, for error messages."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int | float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"
