"""The httpx boundary: a shard's pooled client, httpx's exceptions, bodies read safely.

:func:`make_client` builds the one :class:`httpx.AsyncClient` a shard reuses
for all its requests; :func:`map_exceptions` is the table that turns httpx's
exceptions into shardline's :class:`~shardline.AttemptError` tree, in the
shape of httpcore's ``map_exceptions``, so nothing above this layer knows
httpx; :func:`consume`, :func:`read_bounded` and :func:`raise_for_status`
read a response body in bounded memory and time.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NoReturn

import httpx
import trio

from ._backoff import parse_retry_after
from ._config import Deadlines, Endpoint
from ._exceptions import (
    AttemptError,
    ClientError,
    ConfigError,
    ConnectError,
    ConnectionLost,
    ConnectTimeout,
    PoolTimeout,
    ProtocolError,
    RateLimited,
    ServerError,
    StallTimeout,
    TTFTTimeout,
)
from ._transport import LeanTransport, direct_body
from ._validate import integer

__all__ = [
    "DEFAULT_KEEPALIVE_EXPIRY",
    "ERROR_BODY_GRACE",
    "MAX_ERROR_BODY_BYTES",
    "MAX_RESPONSE_BYTES",
    "StopReading",
    "consume",
    "make_client",
    "map_exceptions",
    "raise_for_status",
    "read_bounded",
    "scrub",
]

#: Seconds an idle pooled connection is kept (httpx's default is 5 s; LLM
#: endpoints behind load balancers usually keep idle connections 60 s or more,
#: and a batch run reuses them within milliseconds).
DEFAULT_KEEPALIVE_EXPIRY = 30.0

_USER_AGENT = "shardline (httpx; trio)"

log = logging.getLogger("shardline")


def make_client(
    endpoint: Endpoint, *, max_connections: int, deadlines: Deadlines
) -> httpx.AsyncClient:
    """A pooled :class:`httpx.AsyncClient` for one shard.

    The pool holds at most ``max_connections`` sockets, all of which may stay
    alive between requests (``max_keepalive_connections`` is the same number),
    so a shard whose in-flight cap equals ``max_connections`` never waits for
    the pool and never opens a socket per request. Use it with
    ``async with client:`` and close it when the shard ends.

    ``endpoint.transport`` picks what is under the client: httpx's own
    transport (httpcore's pool), or ``"lean"``, shardline's
    :class:`~shardline._transport.LeanTransport` (HTTP/1.1, one LIFO stack of
    idle sockets, less CPU per event). With a proxy variable in the
    environment, ``"lean"`` falls back to httpx's transport, which applies the
    proxy (and ``NO_PROXY``); a log line says so.

    Timeouts: ``connect`` and ``pool`` come from ``deadlines.connect``;
    ``read`` is ``None`` on purpose. A read timeout restarts at every byte, so a
    server that drips keep-alive comments never trips it (openai-python's
    600 s read timeout lets such a stream live forever), and on a healthy
    stream it only races :func:`send_attempt`'s stall deadline and reports the
    wrong cause. ``write`` is ``None`` too: sending the request is covered by
    the TTFT deadline, which runs from the moment the request is sent.

    Args:
        endpoint: Where to connect; ``endpoint.http2`` selects HTTP/2 (needs
            the ``shardline[http2]`` extra), ``endpoint.transport`` the transport.
        max_connections: The shard's in-flight cap (>= 1).
        deadlines: Supplies the connect/pool timeout.

    Raises:
        ConfigError: for a bad ``max_connections``, or HTTP/2 without ``h2``.
    """
    integer("max_connections", ge=1)(None, None, max_connections)
    timeout = httpx.Timeout(
        connect=deadlines.connect, read=None, write=None, pool=deadlines.connect
    )
    # httpcore sets ALPN protocols on the context it is given ("h2" too for
    # HTTP/2): an HTTP/2 endpoint gets a context of its own, not the shared one.
    verify = _default_ssl_context(http2=True) if endpoint.http2 else _ssl_context(endpoint.base_url)
    if endpoint.transport == "lean":
        if not _proxy_in_environment():
            return httpx.AsyncClient(
                transport=LeanTransport(
                    ssl_context=verify,
                    max_connections=max_connections,
                    keepalive_expiry=DEFAULT_KEEPALIVE_EXPIRY,
                ),
                timeout=timeout,
                follow_redirects=False,
                headers={"user-agent": _USER_AGENT},
            )
        _log_proxy_fallback(endpoint.base_url)
    limits = httpx.Limits(
        max_connections=max_connections,
        max_keepalive_connections=max_connections,
        keepalive_expiry=DEFAULT_KEEPALIVE_EXPIRY,
    )
    try:
        return httpx.AsyncClient(
            limits=limits,
            timeout=timeout,
            verify=verify,
            http2=endpoint.http2,
            follow_redirects=False,
            headers={"user-agent": _USER_AGENT},
        )
    except ImportError as exc:  # http2=True without the h2 package
        raise ConfigError("http2=True needs the h2 package: install shardline[http2]") from exc


@functools.cache
def _log_proxy_fallback(base_url: str) -> None:
    """Say once per endpoint that ``transport="lean"`` gave way to a proxy.

    At INFO: the lean transport is the default, and a proxy is a normal setup.
    """
    log.info(
        "transport='lean' for %s: a proxy is set in the environment, so httpx's own"
        " transport is used (the lean transport speaks to servers directly)",
        base_url,
    )


#: Environment variables that can send a plain-http endpoint's traffic through a
#: (possibly TLS) proxy; httpx reads them with ``trust_env``.
_PROXY_VARIABLES = frozenset({"http_proxy", "https_proxy", "all_proxy"})


def _ssl_context(base_url: str) -> ssl.SSLContext:
    """The TLS context of a client for ``base_url``.

    An ``http://`` endpoint with no proxy in the environment never does TLS,
    so it gets a verifying context without a CA bundle (building one costs
    nothing; one that ever met a TLS peer would refuse it, never trust it),
    and start-up does not load the bundle. Everything else gets
    :func:`_default_ssl_context`.
    """
    if base_url.startswith("http://") and not _proxy_in_environment():
        return _no_tls_context()
    return _default_ssl_context()


def _proxy_in_environment() -> bool:
    """Whether a proxy variable is set (httpx would read it with ``trust_env``)."""
    return any(name.lower() in _PROXY_VARIABLES for name in os.environ)


@functools.cache
def _no_tls_context() -> ssl.SSLContext:
    """A verifying client context that trusts no certificate (see :func:`_ssl_context`)."""
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


@functools.cache
def _default_ssl_context(*, http2: bool = False) -> ssl.SSLContext:
    """httpx's default verifying context, built once per process (and kind).

    Building one loads the CA bundle (about 80 ms here); every shard's client
    shares it instead of paying that per client. Contexts are safe to share,
    except for their ALPN protocols: httpcore offers ``h2`` on the context of
    an HTTP/2 pool, which the lean transport must not, so HTTP/2 clients
    share a context of their own (``http2=True``).
    """
    return httpx.create_ssl_context()


@contextmanager
def map_exceptions(
    *, partial: Callable[[], bool] = lambda: False, secret: str | None = None
) -> Iterator[None]:
    """Translate httpx's exceptions into shardline's, chained with ``raise ... from``.

    The shape of httpcore's ``map_exceptions``: a small table at the boundary,
    so everything above it only knows :class:`~shardline.AttemptError`.
    ``trio.Cancelled`` passes through untouched; shardline's own errors pass
    through with ``partial`` filled in and the secret scrubbed.

    ============================================  ====================
    httpx                                         shardline
    ============================================  ====================
    ``PoolTimeout``                               ``PoolTimeout``
    ``ConnectTimeout``                            ``ConnectTimeout``
    ``ConnectError``                              ``ConnectError``
    ``ReadError``, ``WriteError``, ``CloseError``  ``ConnectionLost``
    ``RemoteProtocolError``, peer closed          ``ConnectionLost``
    ``RemoteProtocolError``, other                ``ProtocolError``
    ``DecodingError``, other ``HTTPError``         ``ProtocolError``
    ``ReadTimeout``, ``WriteTimeout``             ``StallTimeout`` / ``TTFTTimeout``
    ============================================  ====================

    Args:
        partial: Called at translation time: did content arrive already?
        secret: A string (the API key) to scrub from messages, just in case.
    """
    try:
        yield
    except AttemptError as exc:  # ours (SSE/JSON/status): fill in partial, scrub
        if partial():
            exc.partial = True
        scrubbed = scrub(exc.message, secret)
        if scrubbed != exc.message:
            exc.message = scrubbed
            exc.args = (scrubbed,)
        raise
    except httpx.HTTPError as exc:
        error = _translate(exc, partial=partial(), secret=secret)
        raise error from exc
    except BaseExceptionGroup as group:
        # A cancellation that lands while httpcore's trio backend connects
        # (happy eyeballs runs a nursery) arrives as a group of Cancelled;
        # above this boundary it is plain cancellation, as callers expect.
        _, rest = group.split(trio.Cancelled)
        if rest is None:
            raise _first_leaf(group) from None
        raise


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def _translate(exc: httpx.HTTPError, *, partial: bool, secret: str | None) -> AttemptError:
    detail = scrub(str(exc) or type(exc).__name__, secret)
    if isinstance(exc, httpx.PoolTimeout):
        return PoolTimeout(f"no pooled connection became free in time: {detail}")
    if isinstance(exc, httpx.ConnectTimeout):
        return ConnectTimeout(f"connecting took too long: {detail}")
    if isinstance(exc, httpx.ConnectError):
        return ConnectError(f"could not connect: {detail}")
    if isinstance(exc, httpx.TimeoutException):  # only with a client not made by make_client
        if partial:
            return StallTimeout(f"httpx timeout mid-stream: {detail}", partial=True)
        return TTFTTimeout(f"httpx timeout before the first token: {detail}")
    if isinstance(exc, httpx.RemoteProtocolError):
        lowered = detail.lower()
        if "peer closed" in lowered or "disconnected" in lowered or "incomplete" in lowered:
            return ConnectionLost(f"connection closed mid-response: {detail}", partial=partial)
        return ProtocolError(f"malformed HTTP from server: {detail}", partial=partial)
    if isinstance(exc, httpx.ReadError | httpx.WriteError | httpx.CloseError):
        return ConnectionLost(f"connection lost: {detail}", partial=partial)
    if isinstance(exc, httpx.TransportError):
        return ConnectionLost(f"transport error: {detail}", partial=partial)
    return ProtocolError(f"{type(exc).__name__}: {detail}", partial=partial)


def scrub(message: str, secret: str | None) -> str:
    """``message`` with ``secret`` (an API key) replaced by ``***``."""
    if secret and len(secret) >= 4 and secret in message:
        return message.replace(secret, "***")
    return message


#: How much of an error response's body is read for its message.
MAX_ERROR_BODY_BYTES = 64 * 1024
#: Seconds spent reading an error response's body before raising without it.
ERROR_BODY_GRACE = 2.0
#: Largest non-streamed response body accepted.
MAX_RESPONSE_BYTES = 32 * 1024 * 1024


class StopReading(Exception):
    """Raised by a chunk handler of :func:`_consume`: enough was read, stop quietly."""


async def consume(response: httpx.Response, handle: Callable[[bytes], None]) -> None:
    """Feed each body chunk to ``handle`` until the body ends or ``handle`` raises.

    A lean transport's body is read directly (:func:`~shardline._transport.direct_body`);
    any other goes through httpx's iterators, as follows. Why not simply raise
    out of an ``async for`` loop: httpx's body iterators are a chain of nested
    async generators (httpx, then httpcore) that nobody can close from the
    outside; leaving them suspended makes trio warn about each one when it is
    garbage collected. So a handler's exception is parked, a cancel scope is
    cancelled, and the loop carries on discarding chunks until the next read, a
    checkpoint deep inside the chain, raises ``Cancelled`` there and unwinds
    every generator properly. Then the parked exception is raised. The response
    is closed by ``client.stream``'s exit, and a connection with unread bytes is
    not put back into the pool.
    """
    if "content-encoding" not in response.headers:
        direct = direct_body(response)
        if direct is not None:
            # The lean transport's body is an iterator object, not a chain of
            # generators: a handler's exception can leave the loop at once.
            try:
                async for chunk in direct:
                    handle(chunk)
            except StopReading:
                pass
            return
    failure: Exception | None = None
    # Without a Content-Encoding the raw bytes are the body: ``aiter_raw`` skips
    # ``aiter_bytes``'s identity decoder and one more async generator per read.
    # (A response built with its content, as by a mock transport, is read already.)
    if "content-encoding" in response.headers or response.is_stream_consumed:
        chunks = response.aiter_bytes()
    else:
        chunks = response.aiter_raw()
    with trio.CancelScope() as abort:
        async for chunk in chunks:
            if failure is not None:
                continue  # buffered bytes; the next real read raises Cancelled
            try:
                handle(chunk)
            except Exception as exc:
                failure = exc
                abort.cancel()
    if failure is not None and not isinstance(failure, StopReading):
        raise failure


async def read_bounded(response: httpx.Response, limit: int, *, what: str) -> bytes:
    parts: list[bytes] = []
    size = 0

    def handle(chunk: bytes) -> None:
        nonlocal size
        size += len(chunk)
        if size > limit:
            raise ProtocolError(f"{what} larger than {limit} bytes")
        parts.append(chunk)

    await consume(response, handle)
    return b"".join(parts)


async def raise_for_status(
    response: httpx.Response, endpoint: Endpoint, *, body_deadline: float
) -> NoReturn:
    status = response.status_code
    # Read a bounded part of the body for the message, but never let a slow
    # error body turn a clear status into a timeout: give up on the body first
    # (this inner scope expires no later than ours, so it catches first).
    parts: list[bytes] = []
    size = 0

    def handle(chunk: bytes) -> None:
        nonlocal size
        parts.append(chunk)
        size += len(chunk)
        if size >= MAX_ERROR_BODY_BYTES:
            raise StopReading

    give_up = min(body_deadline, trio.current_time() + ERROR_BODY_GRACE)
    with trio.move_on_at(give_up):
        await consume(response, handle)
    raw = b"".join(parts)[:MAX_ERROR_BODY_BYTES]
    message = scrub(_error_message(raw), endpoint.api_key)
    text = f"HTTP {status} {response.reason_phrase}".rstrip() + (f": {message}" if message else "")
    retry_after = parse_retry_after(response.headers)
    if status == 429:
        raise RateLimited(text, status_code=status, retry_after=retry_after)
    if status >= 500:
        raise ServerError(text, status_code=status, retry_after=retry_after)
    if status >= 400:
        raise ClientError(text, status_code=status, retry_after=retry_after)
    raise ProtocolError(
        f"unexpected HTTP {status} (redirects are not followed)", status_code=status
    )


def _error_message(raw: bytes) -> str:
    if not raw:
        return ""
    try:
        obj = json.loads(raw)
    except ValueError:
        return raw[:300].decode("utf-8", "replace").strip()
    if isinstance(obj, dict):
        err = obj.get("error", obj)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:500]
        if isinstance(err, str):
            return err[:500]
    return raw[:300].decode("utf-8", "replace").strip()
