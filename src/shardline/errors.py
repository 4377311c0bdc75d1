"""Every exception shardline raises on purpose, in one namespace.

The tree (the everyday ones, marked ``*``, are also in :mod:`shardline`)::

    ShardlineError *
    ├── ConfigError * (also ValueError)        bad option or environment value
    ├── InputError * (also ValueError)         bad input line; cause invalid_input
    ├── ItemCancelled *                        the pipeline drained before the item ended
    ├── InternalError                          a defect in shardline hit this item
    ├── EventDecodeError (also ValueError)     a line of an events file is not an event
    ├── ReportError (also ValueError)          the events cannot make a report
    ├── ToolArgumentsError (also ValueError)   ToolCall.arguments_json(): not a JSON object
    └── AttemptError *                         one HTTP exchange failed; .cause names why
        ├── HTTPStatusError
        │   ├── RateLimited                    rate_limited (429)
        │   ├── ServerError                    server_error (5xx)
        │   └── ClientError                    client_error (other 4xx)
        ├── TransportError
        │   ├── ConnectError                   connect_error
        │   └── ConnectionLost                 connection_lost
        ├── DeadlineExceeded (also TimeoutError)
        │   ├── ConnectTimeout                 connect_timeout
        │   ├── PoolTimeout                    pool_timeout
        │   ├── TTFTTimeout                    ttft_timeout
        │   ├── StallTimeout                   stall_timeout
        │   └── AttemptTimeout                 attempt_timeout
        ├── Truncated                          truncated
        └── ProtocolError                      protocol_error

Catch :class:`ShardlineError` for "anything shardline refused or could not
do", :class:`AttemptError` for a failed exchange, or a leaf for one cause::

    from shardline.errors import RateLimited

    try:
        result = await pipeline.complete(request)
    except RateLimited as exc:
        log.warning("item %r still rate limited on attempt %s", exc.item_id, exc.attempt)
"""

from ._events import EventDecodeError as EventDecodeError
from ._exceptions import AttemptError as AttemptError
from ._exceptions import AttemptTimeout as AttemptTimeout
from ._exceptions import ClientError as ClientError
from ._exceptions import ConfigError as ConfigError
from ._exceptions import ConnectError as ConnectError
from ._exceptions import ConnectionLost as ConnectionLost
from ._exceptions import ConnectTimeout as ConnectTimeout
from ._exceptions import DeadlineExceeded as DeadlineExceeded
from ._exceptions import HTTPStatusError as HTTPStatusError
from ._exceptions import InputError as InputError
from ._exceptions import InternalError as InternalError
from ._exceptions import ItemCancelled as ItemCancelled
from ._exceptions import PoolTimeout as PoolTimeout
from ._exceptions import ProtocolError as ProtocolError
from ._exceptions import RateLimited as RateLimited
from ._exceptions import ServerError as ServerError
from ._exceptions import ShardlineError as ShardlineError
from ._exceptions import StallTimeout as StallTimeout
from ._exceptions import ToolArgumentsError as ToolArgumentsError
from ._exceptions import TransportError as TransportError
from ._exceptions import Truncated as Truncated
from ._exceptions import TTFTTimeout as TTFTTimeout
from ._report import ReportError as ReportError

__all__ = [
    "AttemptError",
    "AttemptTimeout",
    "ClientError",
    "ConfigError",
    "ConnectError",
    "ConnectTimeout",
    "ConnectionLost",
    "DeadlineExceeded",
    "EventDecodeError",
    "HTTPStatusError",
    "InputError",
    "InternalError",
    "ItemCancelled",
    "PoolTimeout",
    "ProtocolError",
    "RateLimited",
    "ReportError",
    "ServerError",
    "ShardlineError",
    "StallTimeout",
    "TTFTTimeout",
    "ToolArgumentsError",
    "TransportError",
    "Truncated",
]
