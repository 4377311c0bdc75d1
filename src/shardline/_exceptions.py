"""shardline's exceptions, and the causes that name why an attempt failed.

Every failure that reaches a caller is a :class:`ShardlineError`. Foreign
exceptions (httpx, h11, json) are translated where they occur and chained with
``raise ... from exc``, so ``__cause__`` keeps the original for debugging while
``except`` clauses only need to know this tree, drawn once in the docstring of
the public :mod:`shardline.errors` (``EventDecodeError`` and ``ReportError``
live with the events and the report). Each :class:`AttemptError` subclass has
exactly one :class:`Cause`.

:meth:`Pipeline.complete` raises the :class:`AttemptError` of the item's last
attempt, with the item id, shard and attempt count filled in, or
:class:`ItemCancelled`. Messages never contain API keys.
"""

from __future__ import annotations

import enum
from typing import ClassVar

__all__ = [
    "AttemptError",
    "AttemptTimeout",
    "Cause",
    "ClientError",
    "ConfigError",
    "ConnectError",
    "ConnectTimeout",
    "ConnectionLost",
    "DeadlineExceeded",
    "HTTPStatusError",
    "InputError",
    "InternalError",
    "ItemCancelled",
    "PoolTimeout",
    "ProtocolError",
    "RateLimited",
    "ServerError",
    "ShardlineError",
    "StallTimeout",
    "TTFTTimeout",
    "ToolArgumentsError",
    "TransportError",
    "Truncated",
]


class Cause(enum.StrEnum):
    """Why an attempt or an item failed: the vocabulary of events and reports."""

    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    CLIENT_ERROR = "client_error"
    CONNECT_ERROR = "connect_error"
    CONNECT_TIMEOUT = "connect_timeout"
    TTFT_TIMEOUT = "ttft_timeout"
    STALL_TIMEOUT = "stall_timeout"
    ATTEMPT_TIMEOUT = "attempt_timeout"
    CONNECTION_LOST = "connection_lost"
    TRUNCATED = "truncated"
    PROTOCOL_ERROR = "protocol_error"
    POOL_TIMEOUT = "pool_timeout"
    INVALID_INPUT = "invalid_input"
    CANCELLED = "cancelled"
    INTERNAL_ERROR = "internal_error"


def located(message: str, *, source: str | None, line: int | None) -> str:
    """Prefix ``message`` with where it happened: ``file:line: ``, ``file: `` or ``line N: ``."""
    if source is not None and line is not None:
        return f"{source}:{line}: {message}"
    if source is not None:
        return f"{source}: {message}"
    if line is not None:
        return f"line {line}: {message}"
    return message


class ShardlineError(Exception):
    """Root of every exception shardline raises on purpose."""


class ConfigError(ShardlineError, ValueError):
    """An option, environment variable or config value is invalid.

    The message names the option and the bound, for example
    ``"concurrency must be >= 1, got 0"``.
    """


class InputError(ShardlineError, ValueError):
    """One input item is unusable; it ends with cause ``invalid_input``.

    Args:
        message: What is wrong, naming the field.
        source: The file the item came from, if any.
        line: The 1-based line number in ``source``, if any.
    """

    cause: ClassVar[Cause] = Cause.INVALID_INPUT

    def __init__(self, message: str, *, source: str | None = None, line: int | None = None):
        self.source = source
        self.line = line
        self.reason = message
        super().__init__(located(message, source=source, line=line))


class ToolArgumentsError(ShardlineError, ValueError):
    """A tool call's ``arguments`` string is not the JSON it should be.

    Raised by :meth:`ToolCall.arguments_json`, never while a run is going: a
    server that sends arguments that do not parse still answered, and the
    result keeps them as it sent them (``ToolCall.arguments_valid`` says so).

    Attributes:
        name: The function's name.
        call_id: The tool call's id (``None`` if the server sent none).
        arguments: The arguments string as the server sent it.
    """

    def __init__(self, message: str, *, name: str, call_id: str | None, arguments: str) -> None:
        self.name = name
        self.call_id = call_id
        self.arguments = arguments
        super().__init__(message)


class ItemCancelled(ShardlineError):
    """The item was accepted but the pipeline was cancelled or drained before it ended."""

    cause: ClassVar[Cause] = Cause.CANCELLED

    def __init__(self, message: str = "cancelled before completion", *, item_id: object = None):
        self.item_id = item_id
        super().__init__(message)


class InternalError(ShardlineError):
    """A defect in shardline itself hit this item (please report it).

    Only that item pays: it ends ``failed`` with cause ``internal_error``, the
    other items go on, and the defect stays loud: the traceback is logged on
    the ``shardline`` logger and written to the events (``message``), the
    pipeline counts it (``PipelineStatistics.internal_errors``) and
    ``shardline run`` exits 70 at the end. ``__cause__`` is the original exception.

    Attributes:
        item_id: The item it hit.
        traceback: The formatted traceback of the original exception.
    """

    cause: ClassVar[Cause] = Cause.INTERNAL_ERROR

    def __init__(self, message: str, *, item_id: object = None, traceback: str = "") -> None:
        self.item_id = item_id
        self.traceback = traceback
        super().__init__(message)


class AttemptError(ShardlineError):
    """One HTTP exchange failed. ``cause`` names why, in the DESIGN vocabulary.

    Attributes:
        cause: The :class:`Cause` of this failure.
        status_code: The HTTP status, when a response arrived.
        retry_after: Seconds the server asked us to wait (Retry-After), if any.
        partial: True when content had already arrived before the failure.
        item_id: The item's id, filled in by the pipeline when the error reaches a caller.
        shard: The shard that sent the attempt, filled in by the pipeline.
        attempt: The 1-based attempt number, filled in by the pipeline.
    """

    cause: ClassVar[Cause]

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        retry_after: float | None = None,
        partial: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.retry_after = retry_after
        self.partial = partial
        self.item_id: object = None
        self.shard: int | None = None
        self.attempt: int | None = None

    def __str__(self) -> str:
        ctx = []
        if self.item_id is not None:
            ctx.append(f"item {self.item_id!r}")
        if self.shard is not None:
            ctx.append(f"shard {self.shard}")
        if self.attempt is not None:
            ctx.append(f"attempt {self.attempt}")
        prefix = f"[{', '.join(ctx)}] " if ctx else ""
        return f"{prefix}{self.cause.value}: {self.message}"


class HTTPStatusError(AttemptError):
    """The server answered with an error status."""


class RateLimited(HTTPStatusError):
    """HTTP 429: the server (or a proxy) is rate limiting us."""

    cause = Cause.RATE_LIMITED


class ServerError(HTTPStatusError):
    """HTTP 5xx, or an in-band ``error`` event in a stream."""

    cause = Cause.SERVER_ERROR


class ClientError(HTTPStatusError):
    """HTTP 4xx other than 429: the request itself is wrong. Not retried by default."""

    cause = Cause.CLIENT_ERROR


class TransportError(AttemptError):
    """The connection failed below HTTP."""


class ConnectError(TransportError):
    """The TCP/TLS connection could not be opened."""

    cause = Cause.CONNECT_ERROR


class ConnectionLost(TransportError):
    """The connection was reset or closed in the middle of a response."""

    cause = Cause.CONNECTION_LOST


class DeadlineExceeded(AttemptError, TimeoutError):
    """A deadline of :class:`Deadlines` expired."""


class ConnectTimeout(DeadlineExceeded):
    """Opening the connection took longer than ``Deadlines.connect``."""

    cause = Cause.CONNECT_TIMEOUT


class PoolTimeout(DeadlineExceeded):
    """No connection of the shard's pool became free in time."""

    cause = Cause.POOL_TIMEOUT


class TTFTTimeout(DeadlineExceeded):
    """No content event arrived within ``Deadlines.ttft`` of sending."""

    cause = Cause.TTFT_TIMEOUT


class StallTimeout(DeadlineExceeded):
    """No content event arrived within ``Deadlines.stall`` of the previous one.

    Keep-alive bytes, SSE comments, empty deltas and role-only chunks are not
    progress: a stream that only drips them ends here.
    """

    cause = Cause.STALL_TIMEOUT


class AttemptTimeout(DeadlineExceeded):
    """The whole exchange took longer than ``Deadlines.attempt``."""

    cause = Cause.ATTEMPT_TIMEOUT


class Truncated(AttemptError):
    """The stream ended cleanly without a finish reason or ``[DONE]``. Never a success."""

    cause = Cause.TRUNCATED


class ProtocolError(AttemptError):
    """Malformed HTTP, SSE or JSON from the server."""

    cause = Cause.PROTOCOL_ERROR


ERROR_FOR_CAUSE: dict[Cause, type[AttemptError]] = {
    cls.cause: cls
    for cls in (
        RateLimited,
        ServerError,
        ClientError,
        ConnectError,
        ConnectionLost,
        ConnectTimeout,
        PoolTimeout,
        TTFTTimeout,
        StallTimeout,
        AttemptTimeout,
        Truncated,
        ProtocolError,
    )
}
