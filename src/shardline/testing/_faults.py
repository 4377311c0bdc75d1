"""Fault kinds, fault plans and the ``--faults`` text spec.

A `Fault` says *how* one response misbehaves; a `FaultPlan` says
*which* requests get which fault: scripted per item and attempt (from the
``x-shardline-item-id`` / ``x-shardline-attempt`` request headers), scripted per
request sequence number (for clients that send no such headers), or drawn at a
rate from a seeded, order-independent hash.
"""

from __future__ import annotations

import enum
import hashlib
import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, TypeAlias

import attrs

from ._shapes import SHAPE_VARIANTS, ShapeVariant

__all__ = [
    "FAULT_KINDS",
    "Fault",
    "FaultKind",
    "FaultPlan",
    "FaultSpecError",
]


class FaultKind(enum.StrEnum):
    """The ways the fake server can misbehave on one response.

    Each member's value is the name used in ``--faults`` specs, in
    `faults` and in the ``x-shardline-fault``
    response header.
    """

    STALL_HEADERS = "stall_headers"
    """Read the request, then send nothing at all: no status line, no headers."""
    STALL_AFTER_HEADERS = "stall_after_headers"
    """Send ``200`` and the response headers, then nothing (no body bytes)."""
    STALL_MID = "stall_mid"
    """Stream ``after_events`` content events, then go silent."""
    DRIP = "drip"
    """After ``after_events`` content events, send only keep-alive traffic forever.

    The drip alternates an SSE comment (``: keep-alive``) with a chunk whose
    delta content is the empty string: bytes and even ``data:`` events keep
    arriving, but none of them is progress.
    """
    RATE_LIMIT = "rate_limit"
    """Answer ``429`` with ``retry-after`` (seconds) and ``retry-after-ms`` headers."""
    HTTP_500 = "http_500"
    """Answer ``500 Internal Server Error`` with an OpenAI-style error body."""
    HTTP_502 = "http_502"
    """Answer ``502 Bad Gateway``."""
    HTTP_503 = "http_503"
    """Answer ``503 Service Unavailable``."""
    RESET = "reset"
    """After ``after_events`` content events, abort the TCP connection (RST)."""
    TRUNCATE = "truncate"
    """After ``after_events`` content events, end the body cleanly: no finish reason, no
    ``[DONE]``."""
    MALFORMED = "malformed"
    """After ``after_events`` content events, send a ``data:`` line with broken JSON,
    then carry on as if nothing happened (a lenient client would "succeed")."""
    ERROR_EVENT = "error_event"
    """After ``after_events`` content events, send ``data: {"error": {...}}`` then
    ``data: [DONE]`` (no finish reason)."""
    MALFORMED_SHAPE = "malformed_shape"
    """Well-framed JSON of the wrong shape (a `ShapeVariant`: ``{"choices": 1}``, content a
    number, usage counts negative, bytes that are not UTF-8, a line over 1 MiB, ...).

    Choose the variant with ``variant=``; without one, each request draws a variant
    (seeded, order-independent). Like ``malformed``, a response that carries on after
    the bad chunk would let a lenient client "succeed" with text missing.
    """
    HTML_PAGE = "html_page"
    """Answer ``200`` with ``content-type: text/html`` and an HTML page, as a gateway,
    proxy or captive portal does, whether or not the request asked for a stream."""


FAULT_KINDS: tuple[str, ...] = tuple(kind.value for kind in FaultKind)
"""Every fault kind name, in a stable order."""

#: Kinds that happen before any response header is sent.
_BEFORE_HEADERS = frozenset(
    {
        FaultKind.STALL_HEADERS,
        FaultKind.RATE_LIMIT,
        FaultKind.HTTP_500,
        FaultKind.HTTP_502,
        FaultKind.HTTP_503,
        FaultKind.HTML_PAGE,
    }
)

_DEFAULT_AFTER_EVENTS: Mapping[FaultKind, int] = MappingProxyType(
    {
        kind: 0
        if kind in _BEFORE_HEADERS or kind in (FaultKind.DRIP, FaultKind.STALL_AFTER_HEADERS)
        else 1
        for kind in FaultKind
    }
)

DEFAULT_RETRY_AFTER = 1.0
"""Seconds a ``rate_limit`` fault asks the client to wait."""
DEFAULT_DRIP_INTERVAL = 0.25
"""Seconds between two keep-alive sends of a ``drip`` fault."""


def _non_negative(name: str) -> Any:
    def check(_inst: object, _attr: object, value: float | None) -> None:
        if value is not None and not (value >= 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")

    return check


def _positive(name: str) -> Any:
    def check(_inst: object, _attr: object, value: float) -> None:
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")

    return check


def _kind(value: object) -> FaultKind:
    try:
        return FaultKind(str(value) if isinstance(value, str) else value)  # type: ignore[arg-type]
    except ValueError:
        raise ValueError(
            f"unknown fault kind {value!r}; expected one of: {', '.join(FAULT_KINDS)}"
        ) from None


def _variant(value: object) -> ShapeVariant | None:
    if value is None:
        return None
    try:
        return ShapeVariant(value)  # type: ignore[arg-type]
    except ValueError:
        raise ValueError(
            f"unknown malformed_shape variant {value!r}; expected one of: "
            f"{', '.join(SHAPE_VARIANTS)}"
        ) from None


def _default_after(self: Fault) -> int:
    return _DEFAULT_AFTER_EVENTS[self.kind]


@attrs.frozen(kw_only=True)
class Fault:
    """How one response misbehaves.

    A fault is a value: the same ``Fault`` can be scripted for many requests or
    drawn at a rate. Only the parameters that make sense for its kind are used.

    Example::

        Fault(kind="stall_mid", after_events=3)        # three tokens, then silence
        Fault(kind="rate_limit", retry_after=2.5)      # 429, retry-after: 3, retry-after-ms: 2500
        Fault(kind="stall_headers", duration=5.0)      # five seconds late, then a normal answer
        Fault(kind="malformed_shape", variant="content_not_string")   # {"content": 5}

    It is not a client-side error: what a correct client should *report* for it
    is `expected_cause`.

    Args:
        kind: A `FaultKind` or its name (``"reset"``).
        after_events: Content events sent before the fault strikes (``stall_mid``,
            ``drip``, ``reset``, ``truncate``, ``malformed``, ``error_event``). Clamped
            to the number of content events of the response. Defaults to 1, or 0 for
            ``drip`` and the header-stage kinds.
        retry_after: Seconds a ``rate_limit`` fault asks the client to wait; sent as
            ``retry-after`` (rounded up to whole seconds) and ``retry-after-ms``.
        duration: How long a stall or drip lasts; ``None`` (the default) means until
            the client disconnects or the server stops. After a finite stall the
            response carries on normally, so it models a slow server.
        interval: Seconds between keep-alive sends of a ``drip`` fault.
        variant: The `ShapeVariant` (or its name) of a ``malformed_shape`` fault;
            ``None`` (the default) draws one per request. Only for ``malformed_shape``.
    """

    kind: FaultKind = attrs.field(converter=_kind)
    after_events: int = attrs.field(
        default=attrs.Factory(_default_after, takes_self=True),
    )
    retry_after: float = attrs.field(
        default=DEFAULT_RETRY_AFTER, validator=_non_negative("retry_after")
    )
    duration: float | None = attrs.field(default=None, validator=_non_negative("duration"))
    interval: float = attrs.field(default=DEFAULT_DRIP_INTERVAL, validator=_positive("interval"))
    variant: ShapeVariant | None = attrs.field(default=None, converter=_variant)

    @after_events.validator
    def _check_after(self, _attr: object, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"after_events must be an integer >= 0, got {value!r}")

    @variant.validator
    def _check_variant(self, _attr: object, value: ShapeVariant | None) -> None:
        if value is not None and self.kind is not FaultKind.MALFORMED_SHAPE:
            raise ValueError(f"variant is only for malformed_shape faults, not {self.kind}")


FaultLike: TypeAlias = Fault | FaultKind | str
"""A `Fault`, or a kind (name) meaning that kind with default parameters."""

ItemKey: TypeAlias = tuple[str, int | None]


def to_fault(value: FaultLike) -> Fault:
    return value if isinstance(value, Fault) else Fault(kind=value)


def _to_rates(
    value: Mapping[Fault, float] | Mapping[FaultLike, float] | None,
) -> Mapping[Fault, float]:
    rates: dict[Fault, float] = {}
    for key, rate in (value or {}).items():
        fault = to_fault(key)
        if isinstance(rate, bool) or not isinstance(rate, int | float):
            raise TypeError(f"rate of {fault.kind} must be a number, got {rate!r}")
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate of {fault.kind} must be between 0 and 1, got {rate!r}")
        rates[fault] = rates.get(fault, 0.0) + float(rate)
    total = sum(rates.values())
    if total > 1.0 + 1e-9:
        raise ValueError(f"fault rates must add up to <= 1, got {total:g}")
    return MappingProxyType(rates)


def _to_items(value: Mapping[Any, FaultLike] | None) -> Mapping[ItemKey, Fault]:
    items: dict[ItemKey, Fault] = {}
    for key, fault in (value or {}).items():
        if isinstance(key, tuple):
            if len(key) != 2:
                raise ValueError(f"item key must be an item id or (item_id, attempt), got {key!r}")
            item, attempt = key
            if attempt is not None and (
                isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1
            ):
                raise ValueError(f"attempt must be an integer >= 1 or None, got {attempt!r}")
            items[(str(item), attempt)] = to_fault(fault)
        else:
            items[(str(key), None)] = to_fault(fault)
    return MappingProxyType(items)


def _to_requests(value: Mapping[int, FaultLike] | None) -> Mapping[int, Fault]:
    requests: dict[int, Fault] = {}
    for key, fault in (value or {}).items():
        if isinstance(key, bool) or not isinstance(key, int) or key < 1:
            raise ValueError(f"request number must be an integer >= 1, got {key!r}")
        requests[key] = to_fault(fault)
    return MappingProxyType(requests)


class FaultSpecError(ValueError):
    """A ``--faults`` text spec could not be parsed; the message names the bad part."""


@attrs.frozen(kw_only=True)
class FaultPlan:
    """Which requests get which fault.

    A plan is consulted once per completion request (chat or legacy), in this
    order; the first rule that matches wins:

    1. ``items``: keyed by ``(item_id, attempt)`` from the ``x-shardline-item-id``
       and ``x-shardline-attempt`` request headers, or by a bare item id meaning
       every attempt of that item.
    2. ``requests``: keyed by the 1-based sequence number of the completion request
       on this server (valid ``POST .../chat/completions`` and ``.../completions``
       requests count; ``/models`` and rejected requests do not); this works for
       clients that send no shardline headers.
    3. ``rates``: each fault is drawn for that fraction of requests. The draw is a
       hash of the server's seed and the request's ``(item id, attempt)`` (or its
       sequence number when the headers are absent), so it does not depend on the
       order in which concurrent requests arrive: same seed, same items, same faults.

    Example::

        FaultPlan(items={("a", 1): "reset", "b": Fault(kind="http_503")})
        FaultPlan(rates={"rate_limit": 0.05, Fault(kind="stall_mid", after_events=3): 0.01})
        FaultPlan.parse("rate_limit=0.05:retry_after=2,reset@item=a/1")

    The empty plan (the default) never injects anything.

    Args:
        rates: Fault (or kind name) to the fraction of requests that get it, each in
            ``[0, 1]``, adding up to at most 1.
        items: ``item_id`` or ``(item_id, attempt)`` to a fault. Item ids are compared
            as strings; ``attempt`` is 1-based, ``None`` means every attempt.
        requests: 1-based request sequence number to a fault.
    """

    rates: Mapping[Fault, float] = attrs.field(factory=dict, converter=_to_rates)
    items: Mapping[ItemKey, Fault] = attrs.field(factory=dict, converter=_to_items)
    requests: Mapping[int, Fault] = attrs.field(factory=dict, converter=_to_requests)

    def __bool__(self) -> bool:
        return bool(self.rates or self.items or self.requests)

    def choose(
        self, *, seed: int, sequence: int, item_id: str | None, attempt: int | None
    ) -> Fault | None:
        """Return the fault for one request, or ``None`` for a well-behaved answer.

        Args:
            seed: The server's seed for rate draws.
            sequence: The request's 1-based sequence number on the server.
            item_id: The ``x-shardline-item-id`` header, if sent.
            attempt: The ``x-shardline-attempt`` header, if sent and an integer.

        Returns:
            The chosen `Fault`, or ``None``.
        """
        if item_id is not None and self.items:
            fault = self.items.get((item_id, attempt)) or self.items.get((item_id, None))
            if fault is not None:
                return fault
        if self.requests:
            fault = self.requests.get(sequence)
            if fault is not None:
                return fault
        if not self.rates:
            return None
        key = (
            f"{seed}\0item\0{item_id}\0{attempt}"
            if item_id is not None
            else f"{seed}\0seq\0{sequence}"
        )
        digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
        draw = int.from_bytes(digest, "big") / 2.0**64
        cumulative = 0.0
        for fault, rate in self.rates.items():
            cumulative += rate
            if draw < cumulative:
                return fault
        return None

    @classmethod
    def parse(cls, spec: str) -> FaultPlan:
        """Build a plan from the ``--faults`` text spec.

        Grammar (whitespace around entries is ignored; the empty spec is the empty plan)::

            spec   := entry ("," entry)*
            entry  := KIND "=" RATE       [":" param]*    drawn for a fraction RATE of requests
                    | KIND "@" target     [":" param]*    scripted
            target := "item=" ITEM_ID ["/" ATTEMPT]       that item (that attempt only)
                    | "request=" N                        the N-th completion request (1-based)
            param  := "after=" N | "retry_after=" SECONDS
                    | "duration=" SECONDS | "interval=" SECONDS
                    | "variant=" NAME                       (malformed_shape only)

        Example: ``"rate_limit=0.05:retry_after=2,stall_mid=0.01:after=3,reset@item=a/1"``;
        ``"malformed_shape=0.3"`` draws a shape per request,
        ``"malformed_shape@item=a/1:variant=content_not_string"`` scripts one.
        Item ids may not contain ``,`` or ``:``; the last ``/N`` is the attempt.

        Raises:
            FaultSpecError: naming the entry and what is wrong with it.
        """
        rates: dict[Fault, float] = {}
        items: dict[ItemKey, Fault] = {}
        requests: dict[int, Fault] = {}
        for raw in spec.split(","):
            entry = raw.strip()
            if not entry:
                continue
            try:
                _parse_entry(entry, rates, items, requests)
            except FaultSpecError:
                raise
            except (ValueError, TypeError) as exc:
                raise FaultSpecError(f"bad fault entry {entry!r}: {exc}") from None
        try:
            return cls(rates=rates, items=items, requests=requests)
        except (ValueError, TypeError) as exc:
            raise FaultSpecError(f"bad fault spec {spec!r}: {exc}") from None


_PARAMS = {
    "after": "after_events",
    "after_events": "after_events",
    "retry_after": "retry_after",
    "duration": "duration",
    "interval": "interval",
    "variant": "variant",
}


def _parse_entry(
    entry: str,
    rates: dict[Fault, float],
    items: dict[ItemKey, Fault],
    requests: dict[int, Fault],
) -> None:
    head, *params = entry.split(":")
    kwargs: dict[str, Any] = {}
    for param in params:
        name, sep, value = param.partition("=")
        name = name.strip()
        if not sep or name not in _PARAMS:
            raise FaultSpecError(
                f"bad fault entry {entry!r}: unknown parameter {param!r}; "
                f"expected one of after=N, retry_after=S, duration=S, interval=S, variant=NAME"
            )
        field = _PARAMS[name]
        if field == "variant":
            kwargs[field] = value.strip()
        else:
            kwargs[field] = int(value) if field == "after_events" else float(value)
    at = head.find("@")
    eq = head.find("=")
    if at != -1 and (eq == -1 or at < eq):
        kind, target = head[:at].strip(), head[at + 1 :].strip()
        fault = Fault(kind=kind, **kwargs)
        what, sep, value = target.partition("=")
        if what == "item" and sep and value:
            item, slash, attempt = value.rpartition("/")
            if slash and attempt.isdigit() and item:
                items[(item, int(attempt))] = fault
            else:
                items[(value, None)] = fault
        elif what == "request" and sep and value.strip().isdigit():
            requests[int(value)] = fault
        else:
            raise FaultSpecError(
                f"bad fault entry {entry!r}: target must be item=ID[/ATTEMPT] or request=N"
            )
    elif eq != -1:
        kind, rate_text = head[:eq].strip(), head[eq + 1 :].strip()
        fault = Fault(kind=kind, **kwargs)
        try:
            rate = float(rate_text)
        except ValueError:
            raise FaultSpecError(
                f"bad fault entry {entry!r}: rate must be a number in [0, 1], got {rate_text!r}"
            ) from None
        rates[fault] = rates.get(fault, 0.0) + rate
    else:
        raise FaultSpecError(
            f"bad fault entry {entry!r}: expected KIND=RATE or KIND@item=ID[/N] or KIND@request=N"
        )
