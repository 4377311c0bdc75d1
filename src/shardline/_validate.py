"""The one family of attrs validators every config record uses.

Each validator's message names the parameter, the bound and the unit, and
shows the value it got, as trio's do: ``"concurrency must be >= 1, got 0"``.
Numbers must be real (``bool`` is refused), finite (NaN and infinities are
refused everywhere: "no limit" is spelled ``None``), and integers where a
count is meant (``shard_count=2.5`` is an error, not a surprise).
"""

from __future__ import annotations

import math
from typing import Any

from ._exceptions import ConfigError

__all__ = ["integer", "number"]


def _unit(unit: str | None) -> str:
    return f" {unit}" if unit else ""


def number(
    name: str,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    unit: str | None = None,
    optional: bool = False,
) -> Any:
    """A finite real number with a lower bound; ``None`` too when ``optional``.

    Args:
        name: The parameter, as the user spells it.
        ge: Inclusive lower bound.
        gt: Exclusive lower bound.
        le: Inclusive upper bound.
        lt: Exclusive upper bound.
        unit: Named in messages (``"seconds"``, ``"requests per minute"``).
        optional: Accept ``None`` (which means "disabled").
    """
    kind = f"a number of {unit}" if unit else "a number"
    expected = f"{kind} or None" if optional else kind

    def check(_inst: object, _attr: object, value: object) -> None:
        if value is None and optional:
            return
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{name} must be {expected}, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{name} must be finite, got {value!r}")
        if ge is not None and value < ge:
            raise ConfigError(f"{name} must be >= {ge:g}{_unit(unit)}, got {value!r}")
        if gt is not None and not value > gt:
            raise ConfigError(f"{name} must be > {gt:g}{_unit(unit)}, got {value!r}")
        if le is not None and not value <= le:
            raise ConfigError(f"{name} must be <= {le:g}{_unit(unit)}, got {value!r}")
        if lt is not None and not value < lt:
            raise ConfigError(f"{name} must be < {lt:g}{_unit(unit)}, got {value!r}")

    return check


def integer(name: str, *, ge: int, optional: bool = False) -> Any:
    """An ``int`` (not ``bool``, not ``2.5``) >= ``ge``; ``None`` too when ``optional``."""

    def check(_inst: object, _attr: object, value: object) -> None:
        if value is None and optional:
            return
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        if value < ge:
            raise ConfigError(f"{name} must be >= {ge}, got {value!r}")

    return check
