"""Event records, their JSONL form, and the sinks that receive them.

A run writes down what happened as a stream of frozen records, one per
admission, attempt start, first token, attempt end, retry, shard state change
and item end, between one :class:`RunStart` and one :class:`RunEnd`. Each
record's class is named after its ``kind``: ``attempt_end`` is
:class:`AttemptEnd`. Fields with a fixed vocabulary hold enums
(:class:`AttemptOutcome`, :class:`~shardline.Status`, :class:`~shardline.Cause`,
:class:`ShardCondition`, :class:`RunEndReason`) written as their strings.

Reports are computed from these records only (see :mod:`shardline.report`)::

    from shardline.events import AttemptEnd, AttemptOutcome, EventFileReader

    with EventFileReader("events.jsonl") as reader:
        failed = sum(
            isinstance(e, AttemptEnd) and e.outcome is AttemptOutcome.FAILED for e in reader
        )

The sinks are here too (the everyday ones are also in :mod:`shardline`).
"""

from ._events import SCHEMA_VERSION as SCHEMA_VERSION
from ._events import AttemptEnd as AttemptEnd
from ._events import AttemptOutcome as AttemptOutcome
from ._events import AttemptStart as AttemptStart
from ._events import EndpointState as EndpointState
from ._events import Event as Event
from ._events import EventDecodeError as EventDecodeError
from ._events import EventFileReader as EventFileReader
from ._events import FirstToken as FirstToken
from ._events import HedgeSent as HedgeSent
from ._events import HedgeWon as HedgeWon
from ._events import ItemAdmitted as ItemAdmitted
from ._events import ItemEnd as ItemEnd
from ._events import LimitChange as LimitChange
from ._events import RetryScheduled as RetryScheduled
from ._events import RunEnd as RunEnd
from ._events import RunEndReason as RunEndReason
from ._events import RunStart as RunStart
from ._events import ShardCondition as ShardCondition
from ._events import ShardState as ShardState
from ._events import event_from_json as event_from_json
from ._events import event_to_json as event_to_json
from ._models import ItemId as ItemId
from ._sinks import EventSink as EventSink
from ._sinks import JsonlEventSink as JsonlEventSink
from ._sinks import MemoryEventSink as MemoryEventSink
from ._sinks import TeeSink as TeeSink

__all__ = [
    "SCHEMA_VERSION",
    "AttemptEnd",
    "AttemptOutcome",
    "AttemptStart",
    "EndpointState",
    "Event",
    "EventDecodeError",
    "EventFileReader",
    "EventSink",
    "FirstToken",
    "HedgeSent",
    "HedgeWon",
    "ItemAdmitted",
    "ItemEnd",
    "ItemId",
    "JsonlEventSink",
    "LimitChange",
    "MemoryEventSink",
    "RetryScheduled",
    "RunEnd",
    "RunEndReason",
    "RunStart",
    "ShardCondition",
    "ShardState",
    "TeeSink",
    "event_from_json",
    "event_to_json",
]
