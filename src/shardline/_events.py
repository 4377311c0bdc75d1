"""Event records: what a run writes down, and everything its report is computed from.

Every record is a frozen attrs class with a ``kind`` and ``t``, the seconds
since the run started on trio's clock. ``RunStart.started_at`` anchors ``t``
to UTC wall time, so the report can bucket tokens by UTC minute. The JSONL
form of each record is ``{"v": SCHEMA_VERSION, "kind": ..., **fields}``.

The schema, one JSON object per line::

    {"v":1,"kind":"run_start","t":0.0,"run_id":"r1","started_at":1764403200.0,...}
    {"v":1,"kind":"item_admitted","t":0.001,"item_id":"q1","shard":3}
    {"v":1,"kind":"attempt_start","t":0.002,"item_id":"q1","shard":3,"attempt":1}

Keys come in a fixed order (``v``, ``kind``, then the record's fields in the
order they are declared here), separators are compact, text is UTF-8 (not
ASCII-escaped) and every line ends with ``\n``. Every field is always
written, ``null`` included, so a line is self-describing. Floats are written
with Python's shortest round-tripping ``repr``, so decoding gives back the
exact same float; integer and string item ids keep their JSON type. Readers
ignore keys they do not know (new fields with defaults may appear within a
version); a change that breaks readers bumps ``v``.

Fields with a fixed vocabulary hold enums (:class:`AttemptOutcome`,
:class:`~shardline.Status`, :class:`~shardline.Cause`, :class:`ShardCondition`,
:class:`RunEndReason`), all :class:`enum.StrEnum`: they are written as their
string values, accept those strings on construction, and decode back to the
enum, so ``AttemptEnd(outcome="ok", ...).outcome is AttemptOutcome.OK``.

:func:`encode_event` / :func:`decode_event` convert one record to and from a
line; :class:`EventFileReader` reads a whole file lazily while hashing it,
so its digest equals ``sha256sum`` of the file.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
from collections.abc import Iterator
from os import PathLike
from typing import IO, Any, ClassVar

import attrs

from ._exceptions import Cause, ShardlineError, located
from ._jsonfields import FieldSpec, Mismatch, field_specs, json_type
from ._models import ItemId, Status

__all__ = [
    "EVENT_TYPES",
    "SCHEMA_VERSION",
    "AttemptEnd",
    "AttemptOutcome",
    "AttemptStart",
    "EndpointState",
    "Event",
    "EventDecodeError",
    "EventFileReader",
    "FirstToken",
    "HedgeSent",
    "HedgeWon",
    "ItemAdmitted",
    "ItemEnd",
    "LimitChange",
    "RetryScheduled",
    "RunEnd",
    "RunEndReason",
    "RunStart",
    "ShardCondition",
    "ShardState",
    "decode_event",
    "encode_event",
    "event_from_json",
    "event_to_json",
]

SCHEMA_VERSION = 1


class AttemptOutcome(enum.StrEnum):
    """How one attempt ended (``attempt_end.outcome``)."""

    OK = "ok"
    FAILED = "failed"
    CANCELLED = "cancelled"


class ShardCondition(enum.StrEnum):
    """What happened to a shard (``shard_state.state``)."""

    COOLING = "cooling"
    """It stopped sending for a while after a 429 (``cooldown_s`` says how long)."""
    RESUMED = "resumed"
    """Its cooldown is over; it sends again."""


class RunEndReason(enum.StrEnum):
    """Why a run ended (``run_end.reason``)."""

    COMPLETED = "completed"
    """Every admitted item reached its terminal status."""
    CANCELLED = "cancelled"
    """The run was cancelled (an interrupt or the caller's cancel scope)."""
    ERROR = "error"
    """The run stopped on an exception."""


# Converters: the fields hold enums, and accept their string values too, so
# ``AttemptEnd(outcome="ok")`` and an event decoded from JSON both give
# ``AttemptOutcome.OK``. An unknown string raises ValueError.


def _to_outcome(value: AttemptOutcome | str) -> AttemptOutcome:
    return AttemptOutcome(value)


def _to_status(value: Status | str) -> Status:
    return Status(value)


def _to_cause(value: Cause | str) -> Cause:
    return Cause(value)


def _to_optional_cause(value: Cause | str | None) -> Cause | None:
    return None if value is None else Cause(value)


def _to_condition(value: ShardCondition | str) -> ShardCondition:
    return ShardCondition(value)


def _to_reason(value: RunEndReason | str) -> RunEndReason:
    return RunEndReason(value)


@attrs.frozen(kw_only=True)
class RunStart:
    """The run began. ``config`` is the pipeline config without secrets."""

    kind: ClassVar[str] = "run_start"
    t: float
    run_id: str
    started_at: float  # UTC epoch seconds at t == 0
    shard_count: int
    config: dict[str, Any]


@attrs.frozen(kw_only=True)
class ItemAdmitted:
    """An item passed admission and was put on its shard's queue."""

    kind: ClassVar[str] = "item_admitted"
    t: float
    item_id: ItemId
    shard: int


@attrs.frozen(kw_only=True)
class AttemptStart:
    """An attempt left the shard's queue and is about to send."""

    kind: ClassVar[str] = "attempt_start"
    t: float
    item_id: ItemId
    shard: int
    attempt: int


@attrs.frozen(kw_only=True)
class FirstToken:
    """The first content event of an attempt arrived."""

    kind: ClassVar[str] = "first_token"
    t: float
    item_id: ItemId
    shard: int
    attempt: int
    ttft_s: float


@attrs.frozen(kw_only=True)
class AttemptEnd:
    """An attempt ended: ``outcome`` is ``ok``, ``failed`` or ``cancelled``.

    ``api`` names the request's API (``chat``, ``completions``, ``embeddings``,
    ``responses``); an ``ok`` attempt also counts what its answer held: tool
    calls (and how many had arguments that are not a JSON object), whether it
    carried reasoning or a refusal, and embedding vectors.
    """

    kind: ClassVar[str] = "attempt_end"
    t: float
    item_id: ItemId
    shard: int
    attempt: int
    outcome: AttemptOutcome = attrs.field(converter=_to_outcome)
    cause: Cause | None = attrs.field(default=None, converter=_to_optional_cause)
    status_code: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    usage_estimated: bool = False
    ttft_s: float | None = None
    duration_s: float = 0.0
    retry_after_s: float | None = None
    message: str | None = None
    api: str | None = None
    tool_calls: int = 0
    tool_arguments_invalid: int = 0
    reasoning: bool = False
    refusal: bool = False
    embeddings: int = 0


@attrs.frozen(kw_only=True)
class RetryScheduled:
    """A failed attempt will be retried after ``delay_s``; ``attempt`` is the next one."""

    kind: ClassVar[str] = "retry_scheduled"
    t: float
    item_id: ItemId
    shard: int
    attempt: int
    delay_s: float
    cause: Cause = attrs.field(converter=_to_cause)


@attrs.frozen(kw_only=True)
class HedgeSent:
    """Attempt ``attempt`` on ``shard`` had no content after ``after_s`` seconds: a
    second leg of it was sent on ``hedge_shard`` (its own ``attempt_start`` follows)."""

    kind: ClassVar[str] = "hedge_sent"
    t: float
    item_id: ItemId
    shard: int
    attempt: int
    hedge_shard: int
    after_s: float


@attrs.frozen(kw_only=True)
class HedgeWon:
    """A leg of a hedged attempt produced content first: ``leg`` is ``first`` or
    ``hedge``, ``shard`` the winner's; the other leg is cancelled at once.
    ``ttft_s`` counts from the first leg's send."""

    kind: ClassVar[str] = "hedge_won"
    t: float
    item_id: ItemId
    shard: int
    attempt: int
    leg: str
    ttft_s: float


@attrs.frozen(kw_only=True)
class ItemEnd:
    """An item reached its one terminal status: ``ok``, ``failed`` or ``cancelled``.

    ``message`` says why an item that is not ``ok`` ended (for ``internal_error``:
    the traceback).
    """

    kind: ClassVar[str] = "item_end"
    t: float
    item_id: ItemId
    shard: int | None
    status: Status = attrs.field(converter=_to_status)
    attempts: int
    latency_s: float
    cause: Cause | None = attrs.field(default=None, converter=_to_optional_cause)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    ttft_s: float | None = None
    usage_estimated: bool = False
    message: str | None = None


@attrs.frozen(kw_only=True)
class ShardState:
    """A shard started cooling down after a 429 (``cooling``) or resumed (``resumed``)."""

    kind: ClassVar[str] = "shard_state"
    t: float
    shard: int
    state: ShardCondition = attrs.field(converter=_to_condition)
    cooldown_s: float | None = None


@attrs.frozen(kw_only=True)
class LimitChange:
    """An endpoint's live in-flight limit moved from ``old`` to ``new``.

    The limit belongs to the endpoint (a server's capacity is the server's) and
    is shared by its shards. ``reason`` is the overload cause that lowered it
    (``rate_limited``, ``server_error``, ``connection_lost``, a timeout), or
    ``increase``, ``probe``, ``latency`` (TTFT rose over its no-load floor),
    ``measure`` / ``restore`` (a periodic no-load TTFT measurement).
    """

    kind: ClassVar[str] = "limit_change"
    t: float
    endpoint: int
    old: int
    new: int
    reason: str


@attrs.frozen(kw_only=True)
class EndpointState:
    """An endpoint's circuit moved from ``old`` to ``new`` (``closed``, ``open``,
    ``half_open``); only in runs with several endpoints.

    ``reason`` says why: ``5 failures in a row (connect_error)``, ``cooldown
    passed: one probe``, ``the probe failed (stall_timeout)``, ``an attempt
    succeeded``.
    """

    kind: ClassVar[str] = "endpoint_state"
    t: float
    endpoint: int
    old: str
    new: str
    reason: str


@attrs.frozen(kw_only=True)
class RunEnd:
    """The run ended; ``reason`` is ``completed``, ``cancelled`` or ``error``."""

    kind: ClassVar[str] = "run_end"
    t: float
    reason: RunEndReason = attrs.field(converter=_to_reason)


Event = (
    RunStart
    | ItemAdmitted
    | AttemptStart
    | FirstToken
    | AttemptEnd
    | RetryScheduled
    | HedgeSent
    | HedgeWon
    | ItemEnd
    | ShardState
    | LimitChange
    | EndpointState
    | RunEnd
)


EVENT_TYPES: dict[str, type[Event]] = {
    cls.kind: cls
    for cls in (
        RunStart,
        ItemAdmitted,
        AttemptStart,
        FirstToken,
        AttemptEnd,
        RetryScheduled,
        HedgeSent,
        HedgeWon,
        ItemEnd,
        ShardState,
        LimitChange,
        EndpointState,
        RunEnd,
    )
}
"""Every record class, by its ``kind``."""


class EventDecodeError(ShardlineError, ValueError):
    """A line of an events file is not a valid event record.

    The message names the file and the 1-based line when they are known,
    for example ``"events.jsonl:12: unknown event kind 'attempt_begin'"``.

    Args:
        reason: What is wrong with the line.
        source: The file the line came from, if any.
        line: The 1-based line number, if any.
    """

    def __init__(self, reason: str, *, source: str | None = None, line: int | None = None):
        self.reason = reason
        self.source = source
        self.line = line
        super().__init__(located(reason, source=source, line=line))


# --- encoding -------------------------------------------------------------------------

_FIELD_NAMES: dict[type[Any], tuple[str, ...]] = {
    cls: tuple(f.name for f in attrs.fields(cls)) for cls in EVENT_TYPES.values()
}
# The fields that hold enums: written as their plain string values.
_ENUM_FIELDS: dict[type[Any], frozenset[str]] = {
    cls: frozenset(f.name for f in attrs.fields(cls) if f.converter is not None)
    for cls in EVENT_TYPES.values()
}


def event_to_json(event: Event) -> dict[str, Any]:
    """The JSON object of one event: ``{"v": 1, "kind": ..., **fields}`` in a fixed order.

    Example::

        >>> event_to_json(RunEnd(t=12.5, reason="completed"))
        {'v': 1, 'kind': 'run_end', 't': 12.5, 'reason': 'completed'}
    """
    out: dict[str, Any] = {"v": SCHEMA_VERSION, "kind": event.kind}
    enums = _ENUM_FIELDS[type(event)]
    for name in _FIELD_NAMES[type(event)]:
        value = getattr(event, name)
        out[name] = value.value if name in enums and value is not None else value
    return out


# One encoder for every line: json.dumps with options builds a new one per call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def encode_event(event: Event) -> bytes:
    """One JSONL line for ``event``: compact UTF-8 JSON terminated by ``\\n``.

    Raises:
        ValueError: if a float field is NaN or infinite (not valid JSON), naming the kind.
    """
    try:
        text = _ENCODER.encode(event_to_json(event))
    except ValueError as exc:
        raise ValueError(f"cannot encode {event.kind} event: {exc}") from exc
    return (text + "\n").encode("utf-8")


# --- decoding -------------------------------------------------------------------------


@functools.cache
def _specs() -> dict[str, tuple[type[Any], tuple[FieldSpec, ...]]]:
    """Each kind's class and decoding specs, built at the first decode, not at import
    (from the type hints, a few ms; a run decodes no event unless it resumes)."""
    return {kind: (cls, field_specs(cls)) for kind, cls in EVENT_TYPES.items()}


def event_from_json(obj: Any) -> Event:
    """Build an event from its JSON object; the inverse of :func:`event_to_json`.

    Numbers in float fields come back as ``float``; item ids keep their type
    (a JSON string stays ``str``, a JSON integer stays ``int``). Unknown keys
    are ignored.

    Raises:
        EventDecodeError: naming the problem (``v``, ``kind``, or the field and the
            type it must have). It carries no file or line; readers add them.
    """
    if not isinstance(obj, dict):
        raise EventDecodeError(f"expected a JSON object, got {json_type(obj)}")
    if "v" not in obj:
        raise EventDecodeError("missing schema version 'v'")
    version = obj["v"]
    if type(version) is not int or version != SCHEMA_VERSION:
        raise EventDecodeError(
            f"unsupported schema version {version!r} (this shardline reads v={SCHEMA_VERSION})"
        )
    kind = obj.get("kind")
    entry = _specs().get(kind) if isinstance(kind, str) else None
    if entry is None:
        if "kind" not in obj:
            raise EventDecodeError("missing event 'kind'")
        raise EventDecodeError(f"unknown event kind {kind!r}")
    cls, specs = entry
    kwargs: dict[str, Any] = {}
    for spec in specs:
        if spec.name not in obj:
            if spec.required:
                raise EventDecodeError(f"{kind} event: missing field {spec.name!r}")
            continue
        value = obj[spec.name]
        try:
            kwargs[spec.name] = spec.coerce(value)
        except Mismatch:
            raise EventDecodeError(
                f"{kind} event: field {spec.name!r} must be {spec.expected}, got {json_type(value)}"
            ) from None
    event: Event = cls(**kwargs)
    return event


def decode_event(
    line: bytes | str, *, source: str | None = None, lineno: int | None = None
) -> Event:
    """Decode one JSONL line (with or without its ``\\n``) into an event.

    Raises:
        EventDecodeError: naming ``source`` and ``lineno`` when given.
    """
    try:
        obj = json.loads(line.decode("utf-8") if isinstance(line, bytes) else line)
    except UnicodeDecodeError as exc:
        raise EventDecodeError(f"not UTF-8: {exc.reason}", source=source, line=lineno) from None
    except ValueError as exc:
        raise EventDecodeError(f"invalid JSON: {exc}", source=source, line=lineno) from None
    try:
        return event_from_json(obj)
    except EventDecodeError as exc:
        raise EventDecodeError(exc.reason, source=source, line=lineno) from None


class EventFileReader:
    """Read an events JSONL file lazily, hashing exactly the bytes it reads.

    The file is read one line at a time, so memory does not grow with the file.
    After a complete iteration :meth:`hexdigest` equals ``sha256sum`` of the
    file. Blank lines are skipped (but hashed). Use it as a context manager, or
    call :meth:`close`::

        with EventFileReader("events.jsonl") as reader:
            report = compute_report(reader, events_sha256=None)
            digest = reader.hexdigest()

    Args:
        path: The events file.

    Raises:
        OSError: if the file cannot be opened (on construction).
        EventDecodeError: during iteration, naming the file and the 1-based line.
    """

    def __init__(self, path: str | PathLike[str]):
        self.path = path
        self._source = str(path)
        self._file: IO[bytes] = open(path, "rb")  # noqa: SIM115 - closed by close()
        self._hash = hashlib.sha256()
        self._lines = 0
        self._done = False
        self._started = False

    @property
    def lines(self) -> int:
        """Lines read so far."""
        return self._lines

    def __iter__(self) -> Iterator[Event]:
        if self._started:
            raise RuntimeError("an EventFileReader can be iterated only once")
        self._started = True
        for raw in self._file:
            self._hash.update(raw)
            self._lines += 1
            if not raw.strip():
                continue
            yield decode_event(raw, source=self._source, lineno=self._lines)
        self._done = True

    def hexdigest(self) -> str:
        """The sha256 of the bytes read so far (the whole file once iteration finished)."""
        return self._hash.hexdigest()

    @property
    def complete(self) -> bool:
        """Whether the whole file has been read."""
        return self._done

    def close(self) -> None:
        """Close the file."""
        self._file.close()

    def __enter__(self) -> EventFileReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
