"""The fake OpenAI-compatible server: trio for I/O and time, h11 for HTTP/1.1 parsing.

Hot path notes: request parsing and response headers go through h11; the body
of a streamed response is written as raw chunked-encoding frames built from
pre-encoded per-request templates, and every event that is already due is
coalesced into one frame, so with ``itl=0`` a whole stream costs a handful of
``send_all`` calls.
"""

from __future__ import annotations

import heapq
import http
import itertools
import json
import logging
import math
import os
import socket
import struct
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import unquote

import attrs
import h11
import trio

from ._faults import Fault, FaultKind, FaultPlan

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_MODEL",
    "STATS_PATH",
    "FakeServer",
    "FakeServerStatistics",
    "TimingModel",
    "count_prompt_tokens",
    "fake_text",
    "fetch_statistics",
    "open_fake_server",
    "serve_fake_server",
]

DEFAULT_MODEL: Final = "shardline-fake"
"""The model ``GET /v1/models`` lists, and the one echoed when a request names none."""
DEFAULT_MAX_TOKENS: Final = 16
"""Completion tokens of a response whose request sets no ``max_tokens``."""
MAX_COMPLETION_TOKENS: Final = 1_000_000
"""Largest ``max_tokens`` the server accepts (``400`` above it): keeps memory bounded."""
DEFAULT_MAX_CONNECTIONS: Final = 4096
"""Connections served at once; the next ``accept`` waits for one to close."""
MAX_BODY_BYTES: Final = 8 * 1024 * 1024
"""Largest request body accepted (``413`` above it)."""
_FLUSH_BYTES: Final = 64 * 1024
_RECEIVE_BYTES: Final = 64 * 1024

# Deterministic "text": token i is _WORDS[i % len(_WORDS)], with a leading space
# except for the very first token. All ASCII, so no JSON escaping is needed.
_WORDS: Final[tuple[str, ...]] = (
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "shards",
    "of",
    "light",
    "stream",
    "through",
    "every",
    "open",
    "line",
    "and",
    "nothing",
    "hangs",
)
_TOKENS: Final[tuple[bytes, ...]] = tuple((" " + w).encode() for w in _WORDS)
_FIRST_TOKEN: Final = _WORDS[0].encode()


def fake_text(n_tokens: int, *, start: int = 0) -> str:
    """The deterministic completion text of ``n_tokens`` tokens.

    Every response of ``n`` tokens carries exactly ``fake_text(n)``, so a test
    can assert on content. Token ``i`` is a word from a fixed vocabulary, with a
    leading space except for token 0.

    Args:
        n_tokens: Number of tokens.
        start: Index of the first token (to reproduce part of a stream).
    """
    return _token_bytes(start, n_tokens).decode()


def _token_bytes(start: int, count: int) -> bytes:
    if count <= 0:
        return b""
    n = len(_TOKENS)
    if start == 0:
        return _FIRST_TOKEN + b"".join(_TOKENS[i % n] for i in range(1, count))
    return b"".join(_TOKENS[i % n] for i in range(start, start + count))


def count_prompt_tokens(text_chars: int) -> int:
    """The fake tokenizer: one prompt token per 4 characters, rounded up, at least 1.

    Chat prompts count the characters of every message's text content (string
    contents, and the ``text`` of list-of-parts contents); legacy prompts count
    the prompt string, or the length of a token-id list. This is the same
    estimate `estimate_tokens` uses.
    """
    return max(1, (text_chars + 3) // 4)


def _check_delay(name: str) -> Any:
    def check(_inst: object, _attr: object, value: float) -> None:
        if not (value >= 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")

    return check


def _check_tokens_per_event(_inst: object, _attr: object, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"tokens_per_event must be an integer >= 1, got {value!r}")


@attrs.frozen(kw_only=True)
class TimingModel:
    """How fast the fake model "generates".

    A streamed response sends its headers and the role-only first chunk at once,
    the first content event ``ttft`` seconds after the request was read, and
    each later event ``itl * tokens_in_that_event`` seconds after the previous
    one, so tokens per second do not change with ``tokens_per_event``. A
    non-streamed response is sent whole when the last token is "generated".
    All times are trio time: under ``MockClock(autojump_threshold=0)`` a
    10-second TTFT costs no real time.

    Example::

        TimingModel(ttft=0.2, itl=0.02, tokens_per_event=4)   # 50 tok/s, 12.5 events/s

    Args:
        ttft: Seconds to the first content event.
        itl: Inter-token latency: seconds per token after the first event.
        tokens_per_event: Tokens carried by one SSE content event.
    """

    ttft: float = attrs.field(default=0.0, validator=_check_delay("ttft"))
    itl: float = attrs.field(default=0.0, validator=_check_delay("itl"))
    tokens_per_event: int = attrs.field(default=1, validator=_check_tokens_per_event)


@attrs.frozen(kw_only=True)
class FakeServerStatistics:
    """A snapshot of a fake server's counters; see `statistics`.

    Attributes:
        connections_accepted: TCP connections accepted since start.
        connections_open: Connections open now.
        requests: HTTP requests received (all endpoints, including bad ones).
        requests_by_endpoint: ``"chat.completions"``, ``"completions"``, ``"models"``
            or ``"other"`` to a count.
        in_flight: Requests being answered now.
        max_in_flight: The most requests ever answered at once.
        faults: Fault kind name to the number of times it struck.
        completed: Completion responses served successfully to the end (a
            response that carried a malformed event is not counted).
        prompt_tokens: Prompt tokens of the completed responses.
        completion_tokens: Completion tokens of the completed responses.
        internal_errors: Connections dropped because of a bug in the fake server
            itself (logged on the ``shardline`` logger); 0 unless something is wrong.
    """

    connections_accepted: int
    connections_open: int
    requests: int
    requests_by_endpoint: Mapping[str, int]
    in_flight: int
    max_in_flight: int
    faults: Mapping[str, int]
    completed: int
    prompt_tokens: int
    completion_tokens: int
    internal_errors: int

    @property
    def faults_total(self) -> int:
        """All faults served, of every kind."""
        return sum(self.faults.values())

    def to_json(self) -> dict[str, Any]:
        """The counters as a JSON object (what ``GET /_shardline/stats`` returns)."""
        out = attrs.asdict(self)
        out["requests_by_endpoint"] = dict(self.requests_by_endpoint)
        out["faults"] = dict(self.faults)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FakeServerStatistics:
        """The inverse of :meth:`to_json`."""
        return cls(**{a.name: data[a.name] for a in attrs.fields(cls)})


STATS_PATH: Final = "/_shardline/stats"
"""``GET {host}/_shardline/stats`` returns the counters of a server running in
another process (for example ``shardline fake-server``) as JSON; it is not
counted as a request. :func:`fetch_statistics` reads it."""


def fetch_statistics(base_url: str) -> FakeServerStatistics:
    """Read the counters of a fake server running in another process.

    Example::

        stats = fetch_statistics("http://127.0.0.1:8123/v1")
        assert stats.max_in_flight <= shards * concurrency

    A blocking call (it uses :func:`httpx.get`): call it from tests or scripts,
    or from trio through :func:`trio.to_thread.run_sync`.
    """
    import httpx

    root = base_url.rstrip("/")
    if root.endswith("/v1"):
        root = root[: -len("/v1")]
    response = httpx.get(root + STATS_PATH, timeout=10.0)
    response.raise_for_status()
    return FakeServerStatistics.from_json(response.json())


@attrs.define(eq=False)
class _Counters:
    connections_accepted: int = 0
    connections_open: int = 0
    requests: int = 0
    by_endpoint: Counter[str] = attrs.Factory(Counter)
    in_flight: int = 0
    max_in_flight: int = 0
    faults: Counter[str] = attrs.Factory(Counter)
    completed: int = 0
    completion_requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    internal_errors: int = 0


class _Ticker:
    """One timer task for every paced stream of a server.

    ``trio.sleep_until`` builds a cancel scope and registers a deadline per call
    (about 18 us of CPU each); a paced stream sleeps once per event, so with
    hundreds of streams that dominates. Here streams park on a heap and a single
    task wakes the due ones in one pass (about 4 us per sleep). Cancellation
    works as for any trio sleep: a cancelled sleeper is removed (lazily) and
    raises ``trio.Cancelled``.
    """

    __slots__ = ("_heap", "_next_due", "_seq", "_wake")

    def __init__(self) -> None:
        self._heap: list[list[Any]] = []
        self._seq = itertools.count()
        self._wake = trio.Event()
        self._next_due = math.inf

    async def sleep_until(self, due: float) -> None:
        entry: list[Any] = [due, next(self._seq), trio.lowlevel.current_task()]
        heapq.heappush(self._heap, entry)
        if due < self._next_due:
            self._next_due = due
            self._wake.set()

        def abort(_: Any) -> trio.lowlevel.Abort:
            entry[2] = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    async def run(self) -> None:
        heap = self._heap
        while True:
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                task = heapq.heappop(heap)[2]
                if task is not None:
                    trio.lowlevel.reschedule(task)
            self._next_due = heap[0][0] if heap else math.inf
            self._wake = trio.Event()
            with trio.move_on_at(self._next_due):
                await self._wake.wait()


@attrs.define(eq=False, kw_only=True)
class FakeServer:
    """A running fake OpenAI-compatible server; get one from `open_fake_server`.

    Point any OpenAI-compatible client at `base_url`. The server answers
    ``POST {base_url}/chat/completions``, ``POST {base_url}/completions`` and
    ``GET {base_url}/models`` (any path ending in ``/chat/completions`` or
    ``/completions`` works, so Azure-style deployment URLs do too), with
    deterministic text and usage, at the speed of its `TimingModel`,
    misbehaving as its `FaultPlan` says.

    It is not a model: the text is a fixed word sequence (`fake_text`),
    and tools, logprobs and ``n > 1`` are not simulated.

    Example::

        async with open_fake_server(faults="http_503=0.2", seed=1) as server:
            await run_my_pipeline(base_url=server.base_url)
            stats = server.statistics()
            print(stats.faults["http_503"], "failures injected,", stats.completed, "answered")

    Attributes:
        host: The address it listens on.
        port: The TCP port it listens on.
        base_url: ``http://HOST:PORT/v1``, ready for ``base_url=`` of a client.
        timing: Its timing model.
        seed: The seed of rate-drawn faults.
        default_max_tokens: Completion tokens when a request sets no limit.
        models: Model names `GET /v1/models` lists; the first is echoed when a request
            names no model.
    """

    host: str
    port: int
    timing: TimingModel
    seed: int
    default_max_tokens: int
    models: tuple[str, ...]
    _faults: FaultPlan
    _counters: _Counters = attrs.field(factory=_Counters, init=False)
    _ticker: _Ticker = attrs.field(factory=_Ticker, init=False)
    _created: int = attrs.field(factory=lambda: int(time.time()), init=False)

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT/v1``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    @property
    def faults(self) -> FaultPlan:
        """The fault plan in force."""
        return self._faults

    def set_faults(self, plan: FaultPlan | None) -> None:
        """Replace the fault plan; requests that arrive from now on use the new one.

        Example: heal a server mid-test with ``server.set_faults(None)``.
        """
        self._faults = plan if plan is not None else FaultPlan()

    def statistics(self) -> FakeServerStatistics:
        """Return a frozen snapshot of the server's counters."""
        c = self._counters
        return FakeServerStatistics(
            connections_accepted=c.connections_accepted,
            connections_open=c.connections_open,
            requests=c.requests,
            requests_by_endpoint=MappingProxyType(dict(c.by_endpoint)),
            in_flight=c.in_flight,
            max_in_flight=c.max_in_flight,
            faults=MappingProxyType(dict(c.faults)),
            completed=c.completed,
            prompt_tokens=c.prompt_tokens,
            completion_tokens=c.completion_tokens,
            internal_errors=c.internal_errors,
        )

    def __repr__(self) -> str:
        c = self._counters
        return (
            f"<FakeServer {self.base_url}: {c.in_flight} in flight, {c.requests} requests, "
            f"{sum(c.faults.values())} faults>"
        )

    # -- connection handling -------------------------------------------------

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        c = self._counters
        c.connections_accepted += 1
        c.connections_open += 1
        conn = _Connection(self, stream)
        try:
            await conn.run()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away; nothing to answer
        except Exception:
            # One bad exchange must not take the whole server (and the user's test
            # nursery) down: log it, count it, drop this connection.
            c.internal_errors += 1
            _logger.exception("fake server: internal error on a connection; closing it")
        finally:
            c.connections_open -= 1
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)


class _ClientGone(Exception):
    """The client closed or reset the connection (raised while stalling)."""


class _Closed(Exception):
    """We aborted the connection on purpose (``reset`` fault)."""


_logger = logging.getLogger("shardline")
_STATS_PATH_BYTES: Final = STATS_PATH.encode()

_REASONS: Final = {s.value: s.phrase.encode() for s in http.HTTPStatus}
_JSON_HEADERS: Final = [(b"content-type", b"application/json")]


class _Connection:
    """One HTTP/1.1 connection: a request loop over h11."""

    __slots__ = ("conn", "fd", "server", "stream")

    def __init__(self, server: FakeServer, stream: trio.SocketStream) -> None:
        self.server = server
        self.stream = stream
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        # Hot path: on POSIX, write to the (non-blocking) socket directly and only
        # fall back to trio's send_all when the kernel buffer is full.
        self.fd = stream.socket.fileno() if os.name == "posix" else -1

    async def _write(self, data: bytearray, *, checkpoint: bool) -> None:
        """Send ``data``; a checkpoint only if ``checkpoint`` or the kernel buffer is full.

        Only for call sites that reach a checkpoint soon anyway (the next
        ``sleep_until``, or the next request's receive), or that pass
        ``checkpoint=True``. ``send_all`` costs two scheduler passes per call,
        which is most of the cost of a paced event.
        """
        if self.fd >= 0:
            try:
                sent = os.write(self.fd, data)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                raise trio.BrokenResourceError(f"client connection failed: {exc}") from exc
            if sent == len(data):
                if checkpoint:
                    await trio.lowlevel.checkpoint()
                return
            del data[:sent]
        await self.stream.send_all(data)

    async def _next_event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                data = await self.stream.receive_some(_RECEIVE_BYTES)
                self.conn.receive_data(data)
                continue
            return event

    async def run(self) -> None:
        while True:
            try:
                event = await self._next_event()
            except h11.RemoteProtocolError:
                await self._send_simple(400, "invalid_request_error", "malformed HTTP request")
                return
            if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return
            if not isinstance(event, h11.Request):  # pragma: no cover - h11 guarantees
                return
            body = bytearray()
            too_big = False
            while True:
                try:
                    part = await self._next_event()
                except h11.RemoteProtocolError:
                    return
                if isinstance(part, h11.Data):
                    if len(body) + len(part.data) > MAX_BODY_BYTES:
                        too_big = True
                    else:
                        body += part.data
                elif isinstance(part, h11.EndOfMessage):
                    break
                else:
                    return  # connection closed mid-request
            try:
                await self._dispatch(event, bytes(body), too_big)
            except _ClientGone:
                return
            except _Closed:
                return
            if self.conn.our_state is not h11.DONE or self.conn.their_state is not h11.DONE:
                return
            self.conn.start_next_cycle()

    async def _dispatch(self, request: h11.Request, body: bytes, too_big: bool) -> None:
        server = self.server
        c = server._counters
        c.requests += 1
        path = request.target.split(b"?", 1)[0].rstrip(b"/")
        if path == _STATS_PATH_BYTES and request.method == b"GET":
            c.requests -= 1  # reading the counters is not traffic
            payload = json.dumps(server.statistics().to_json()).encode()
            await self._send_json(200, payload)
            return
        if path.endswith(b"/chat/completions"):
            endpoint = "chat.completions"
        elif path.endswith(b"/completions"):
            endpoint = "completions"
        elif path.endswith(b"/models"):
            endpoint = "models"
        else:
            endpoint = "other"
        c.by_endpoint[endpoint] += 1
        c.in_flight += 1
        if c.in_flight > c.max_in_flight:
            c.max_in_flight = c.in_flight
        try:
            if endpoint == "other":
                await self._send_simple(404, "invalid_request_error", "unknown path")
            elif endpoint == "models":
                if request.method != b"GET":
                    await self._send_simple(405, "invalid_request_error", "use GET")
                else:
                    await self._send_json(200, _models_body(server))
            elif request.method != b"POST":
                await self._send_simple(405, "invalid_request_error", "use POST")
            elif too_big:
                await self._send_simple(413, "invalid_request_error", "request body too large")
            else:
                await self._completion(request, body, chat=endpoint == "chat.completions")
        finally:
            c.in_flight -= 1

    # -- simple responses ----------------------------------------------------

    async def _send_json(
        self,
        status: int,
        payload: bytes,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        headers = [*_JSON_HEADERS, (b"content-length", b"%d" % len(payload))]
        if extra:
            headers.extend(extra)
        reason = _REASONS.get(status, b"")
        data = self.conn.send(h11.Response(status_code=status, headers=headers, reason=reason))
        assert data is not None
        data += self.conn.send(h11.Data(data=payload)) or b""
        data += self.conn.send(h11.EndOfMessage()) or b""
        await self.stream.send_all(data)

    async def _send_simple(
        self,
        status: int,
        error_type: str,
        message: str,
        *,
        code: str | None = None,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        if self.conn.our_state is not h11.SEND_RESPONSE:
            return
        payload = _error_body(message, error_type, code)
        await self._send_json(status, payload, extra)

    # -- completions ---------------------------------------------------------

    async def _completion(self, request: h11.Request, body: bytes, *, chat: bool) -> None:
        server = self.server
        c = server._counters
        arrived = trio.current_time()
        try:
            params = json.loads(body)
            if not isinstance(params, dict):
                raise TypeError("body must be a JSON object")
        except (ValueError, TypeError):
            await self._send_simple(400, "invalid_request_error", "body is not a JSON object")
            return
        parsed = _parse_params(params, chat=chat, default_max_tokens=server.default_max_tokens)
        if isinstance(parsed, str):
            await self._send_simple(400, "invalid_request_error", parsed)
            return
        prompt_tokens, completion_tokens, finish_reason, stream, include_usage = parsed
        c.completion_requests += 1
        sequence = c.completion_requests
        item_id: str | None = None
        attempt: int | None = None
        for name, value in request.headers:
            if name == b"x-shardline-item-id":
                # shardline percent-encodes ids (headers are ASCII); plain ids pass as they are.
                item_id = unquote(value.decode("ascii", "replace"))
            elif name == b"x-shardline-attempt":
                try:
                    attempt = int(value)
                except ValueError:
                    attempt = None
        fault = server._faults.choose(
            seed=server.seed, sequence=sequence, item_id=item_id, attempt=attempt
        )
        model = params.get("model")
        if not isinstance(model, str) or not model:
            model = server.models[0]
        resp = _Response(
            chat=chat,
            id=f"{'chatcmpl' if chat else 'cmpl'}-shardline{sequence}",
            created=server._created,
            model=model,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            finish_reason=finish_reason,
            include_usage=include_usage,
        )
        if fault is not None and fault.kind in _STATUS_FAULTS:
            self._count_fault(fault)
            status, error_type, message, code = _STATUS_FAULTS[fault.kind]
            extra = [(b"x-shardline-fault", fault.kind.value.encode())]
            if fault.kind is FaultKind.RATE_LIMIT:
                extra.append((b"retry-after", b"%d" % math.ceil(fault.retry_after)))
                extra.append((b"retry-after-ms", b"%d" % round(fault.retry_after * 1000)))
            await self._send_simple(status, error_type, message, code=code, extra=extra)
            return
        if fault is not None and fault.kind is FaultKind.STALL_HEADERS:
            self._count_fault(fault)
            await self._stall(fault.duration)
            fault = None  # a finite stall: carry on as a slow server
        if stream:
            await self._stream(resp, fault, arrived)
        else:
            await self._whole(resp, fault, arrived)

    def _count_fault(self, fault: Fault) -> None:
        self.server._counters.faults[fault.kind.value] += 1

    def _complete(self, resp: _Response) -> None:
        c = self.server._counters
        c.completed += 1
        c.prompt_tokens += resp.prompt_tokens
        c.completion_tokens += resp.completion_tokens

    # -- streamed ------------------------------------------------------------

    async def _stream(self, resp: _Response, fault: Fault | None, arrived: float) -> None:
        timing = self.server.timing
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"transfer-encoding", b"chunked"),
        ]
        if fault is not None:
            headers.append((b"x-shardline-fault", fault.kind.value.encode()))
        head = self.conn.send(h11.Response(status_code=200, headers=headers, reason=b"OK"))
        assert head is not None
        if fault is not None and fault.kind is FaultKind.STALL_AFTER_HEADERS:
            await self.stream.send_all(head)
            self._count_fault(fault)
            await self._stall(fault.duration)
            fault = None
            out = bytearray()
        else:
            out = bytearray(head)
        if resp.chat:
            _frame(out, resp.role_event())

        total = resp.completion_tokens
        per_event = timing.tokens_per_event
        n_events = (total + per_event - 1) // per_event
        strike = min(fault.after_events, n_events) if fault is not None else -1
        due = arrived + timing.ttft
        itl = timing.itl
        now = trio.current_time()
        pending = bytearray()  # events not yet framed
        sent = 0
        spoiled = False
        for index in range(n_events + 1):
            if index == strike:
                assert fault is not None
                if pending:
                    _frame(out, pending)
                    pending.clear()
                outcome = await self._strike_stream(resp, fault, out, sent)
                out = bytearray()
                if outcome == "end":
                    return
                # After a malformed event the rest is sent, but no correct client
                # counts the response as a success, so neither does the server.
                spoiled = fault.kind is FaultKind.MALFORMED
                # a finite stall or drip: the rest arrives late, keep pacing from now
                now = trio.current_time()
                due = max(due, now)
            if index == n_events:
                break
            count = min(per_event, total - sent)
            if due > now:
                if pending:
                    _frame(out, pending)
                    pending.clear()
                if out:
                    await self._write(out, checkpoint=False)  # sleep_until checkpoints
                    out = bytearray()
                await self.server._ticker.sleep_until(due)
                now = trio.current_time()
            pending += resp.content_event(sent, count)
            sent += count
            due += itl * count
            if len(pending) >= _FLUSH_BYTES:
                _frame(out, pending)
                pending.clear()
                await self._write(out, checkpoint=True)
                out = bytearray()
        pending += resp.finish_event()
        if resp.include_usage:
            pending += resp.usage_event()
        pending += b"data: [DONE]\n\n"
        _frame(out, pending)
        out += self.conn.send(h11.EndOfMessage()) or b""
        await self._write(out, checkpoint=True)
        if not spoiled:
            self._complete(resp)

    async def _strike_stream(self, resp: _Response, fault: Fault, out: bytearray, sent: int) -> str:
        """Apply a mid-stream fault. Returns ``"end"`` or ``"continue"``."""
        kind = fault.kind
        self._count_fault(fault)
        if kind is FaultKind.STALL_MID:
            if out:
                await self.stream.send_all(out)
            await self._stall(fault.duration)
            return "continue"
        if kind is FaultKind.DRIP:
            if out:
                await self.stream.send_all(out)
            await self._drip(fault, resp.empty_event() if resp.chat else resp.content_event(0, 0))
            return "continue"
        if kind is FaultKind.RESET:
            if out:
                await self.stream.send_all(out)
            await self._reset()
        if kind is FaultKind.TRUNCATE:
            out += self.conn.send(h11.EndOfMessage()) or b""
            await self.stream.send_all(out)
            return "end"
        if kind is FaultKind.MALFORMED:
            _frame(out, resp.malformed_event(sent))
            await self.stream.send_all(out)
            return "continue"
        if kind is FaultKind.ERROR_EVENT:
            _frame(out, _error_event() + b"data: [DONE]\n\n")
            out += self.conn.send(h11.EndOfMessage()) or b""
            await self.stream.send_all(out)
            return "end"
        raise AssertionError(f"unexpected mid-stream fault {kind}")  # pragma: no cover

    # -- non-streamed ----------------------------------------------------------

    async def _whole(self, resp: _Response, fault: Fault | None, arrived: float) -> None:
        timing = self.server.timing
        n = resp.completion_tokens
        due = arrived + timing.ttft + timing.itl * max(0, n - 1)
        if due > trio.current_time():
            await self.server._ticker.sleep_until(due)
        else:
            await trio.lowlevel.checkpoint()
        kind = fault.kind if fault is not None else None
        if kind is FaultKind.TRUNCATE:
            payload = resp.whole_body(text_tokens=n // 2, finish_reason=None)
        elif kind is FaultKind.MALFORMED:
            payload = resp.whole_body()[:-7] + b'"}]}}{'
        elif kind is FaultKind.ERROR_EVENT:
            payload = _error_body(
                "The server had an error while processing your request.", "server_error", None
            )
        else:
            payload = resp.whole_body()
        headers = [*_JSON_HEADERS]
        if fault is not None:
            headers.append((b"x-shardline-fault", fault.kind.value.encode()))
        if kind is FaultKind.DRIP:
            headers.append((b"transfer-encoding", b"chunked"))
        else:
            headers.append((b"content-length", b"%d" % len(payload)))
        head = self.conn.send(h11.Response(status_code=200, headers=headers, reason=b"OK"))
        assert head is not None
        if fault is None or kind in (
            FaultKind.TRUNCATE,
            FaultKind.MALFORMED,
            FaultKind.ERROR_EVENT,
        ):
            if fault is not None:
                self._count_fault(fault)
            data = head + (self.conn.send(h11.Data(data=payload)) or b"")
            data += self.conn.send(h11.EndOfMessage()) or b""
            await self.stream.send_all(data)
            if fault is None:
                self._complete(resp)
            return
        assert fault is not None
        self._count_fault(fault)
        half = len(payload) // 2
        if kind is FaultKind.STALL_AFTER_HEADERS:
            await self.stream.send_all(head)
            await self._stall(fault.duration)
            rest = payload
        elif kind is FaultKind.STALL_MID:
            await self.stream.send_all(
                head + (self.conn.send(h11.Data(data=payload[:half])) or b"")
            )
            await self._stall(fault.duration)
            rest = payload[half:]
        elif kind is FaultKind.DRIP:
            await self.stream.send_all(head)
            await self._drip(fault, b" ")
            rest = payload
        elif kind is FaultKind.RESET:
            await self.stream.send_all(
                head + (self.conn.send(h11.Data(data=payload[:half])) or b"")
            )
            await self._reset()
            raise AssertionError("unreachable")  # pragma: no cover
        else:  # pragma: no cover - every kind is handled above
            raise AssertionError(f"unexpected fault {kind}")
        data = (self.conn.send(h11.Data(data=rest)) or b"") + (
            self.conn.send(h11.EndOfMessage()) or b""
        )
        await self.stream.send_all(data)
        self._complete(resp)

    # -- stalls, drips and resets ------------------------------------------------

    async def _wait_client_gone(self) -> None:
        """Return when the client closes or resets the connection.

        Bytes the client sends meanwhile are handed to h11 (up to a bound) so a
        pipelined request is not lost.
        """
        received = 0
        while True:
            try:
                data = await self.stream.receive_some(_RECEIVE_BYTES)
            except trio.BrokenResourceError:
                return
            if not data:
                return
            received += len(data)
            if received > MAX_BODY_BYTES:
                return
            self.conn.receive_data(data)

    async def _stall(self, duration: float | None) -> None:
        """Send nothing for ``duration`` seconds (``None``: forever).

        Raises:
            _ClientGone: if the client disconnects first; the connection is done.
        """
        with trio.move_on_after(math.inf if duration is None else duration):
            await self._wait_client_gone()
            raise _ClientGone

    async def _drip(self, fault: Fault, data_event: bytes) -> None:
        """Send keep-alive traffic (no content) every ``fault.interval`` seconds.

        Alternates an SSE comment with ``data_event`` (an empty delta; for a
        non-streamed body, a space). Runs for ``fault.duration`` (``None``:
        forever) or until the client disconnects (raises `_ClientGone`).
        """
        comment = data_event if data_event == b" " else b": keep-alive\n\n"
        gone = False
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                nonlocal gone
                await self._wait_client_gone()
                gone = True
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            with trio.move_on_after(math.inf if fault.duration is None else fault.duration):
                beat = 0
                try:
                    while True:
                        out = bytearray()
                        _frame(out, comment if beat % 2 == 0 else data_event)
                        await self.stream.send_all(out)
                        beat += 1
                        await trio.sleep(fault.interval)
                except trio.BrokenResourceError:
                    gone = True
            nursery.cancel_scope.cancel()
        if gone:
            raise _ClientGone

    async def _reset(self) -> None:
        """Abort the connection: ``SO_LINGER`` 0 then close sends a TCP RST."""
        sock = self.stream.socket
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        raise _Closed


def _frame(out: bytearray, payload: bytes | bytearray) -> None:
    """Append ``payload`` to ``out`` as one HTTP/1.1 chunk."""
    out += b"%x\r\n" % len(payload)
    out += payload
    out += b"\r\n"


_STATUS_FAULTS: Final[Mapping[FaultKind, tuple[int, str, str, str | None]]] = {
    FaultKind.RATE_LIMIT: (
        429,
        "requests",
        "Rate limit reached (injected by the shardline fake server).",
        "rate_limit_exceeded",
    ),
    FaultKind.HTTP_500: (
        500,
        "server_error",
        "The server had an error while processing your request.",
        None,
    ),
    FaultKind.HTTP_502: (502, "server_error", "Bad gateway.", None),
    FaultKind.HTTP_503: (503, "server_error", "The engine is currently overloaded.", None),
}


def _error_body(message: str, error_type: str, code: str | None) -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": error_type, "param": None, "code": code}}
    ).encode()


def _error_event() -> bytes:
    body = _error_body(
        "The server had an error while processing your request.", "server_error", None
    )
    return b"data: " + body + b"\n\n"


def _models_body(server: FakeServer) -> bytes:
    return json.dumps(
        {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": server._created, "owned_by": "shardline"}
                for m in server.models
            ],
        }
    ).encode()


def _text_chars(content: object) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                total += len(part["text"])
            elif isinstance(part, str):
                total += len(part)
        return total
    return 0


def _parse_params(
    params: dict[str, Any], *, chat: bool, default_max_tokens: int
) -> tuple[int, int, str, bool, bool] | str:
    """Validate a request body. Returns the response parameters or an error message."""
    if chat:
        messages = params.get("messages")
        if not isinstance(messages, list) or not messages:
            return "'messages' must be a non-empty list"
        chars = 0
        for message in messages:
            if not isinstance(message, dict):
                return "each message must be an object"
            chars += _text_chars(message.get("content"))
        prompt_tokens = count_prompt_tokens(chars)
    else:
        prompt = params.get("prompt")
        if isinstance(prompt, str):
            prompt_tokens = count_prompt_tokens(len(prompt))
        elif isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt_tokens = count_prompt_tokens(len(prompt[0]))
        elif isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            prompt_tokens = len(prompt)
        else:
            return "'prompt' must be a string or a list of token ids (one prompt per request)"
    n = params.get("n", 1)
    if n not in (1, None):
        return "the fake server supports only n=1"
    limit = params.get("max_completion_tokens", params.get("max_tokens"))
    if limit is None:
        completion_tokens, finish_reason = default_max_tokens, "stop"
    elif isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        return "'max_tokens' must be an integer >= 1"
    elif limit > MAX_COMPLETION_TOKENS:
        return f"'max_tokens' must be <= {MAX_COMPLETION_TOKENS}"
    else:
        completion_tokens, finish_reason = limit, "length"
    stream = params.get("stream") is True
    options = params.get("stream_options")
    include_usage = stream and isinstance(options, dict) and options.get("include_usage") is True
    return prompt_tokens, completion_tokens, finish_reason, stream, include_usage


class _Response:
    """Pre-encoded templates for one completion response."""

    __slots__ = (
        "_content_prefix",
        "_content_suffix",
        "_events",
        "_head",
        "chat",
        "completion_tokens",
        "created",
        "finish_reason",
        "id",
        "include_usage",
        "model",
        "prompt_tokens",
    )

    def __init__(
        self,
        *,
        chat: bool,
        id: str,
        created: int,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        finish_reason: str,
        include_usage: bool,
    ) -> None:
        self.chat = chat
        self.id = id
        self.created = created
        self.model = model
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self.finish_reason = finish_reason
        self.include_usage = include_usage
        self._events: dict[int, bytes] = {}
        obj = "chat.completion.chunk" if chat else "text_completion"
        self._head = (
            b'data: {"id":"%s","object":"%s","created":%d,"model":%s,'
            b'"system_fingerprint":"fp_shardline","choices":'
            % (id.encode(), obj.encode(), created, json.dumps(model).encode())
        )
        tail = b',"usage":null}\n\n' if include_usage else b"}\n\n"
        if chat:
            self._content_prefix = self._head + b'[{"index":0,"delta":{"content":"'
            self._content_suffix = b'"},"logprobs":null,"finish_reason":null}]' + tail
        else:
            self._content_prefix = self._head + b'[{"index":0,"text":"'
            self._content_suffix = b'","logprobs":null,"finish_reason":null}]' + tail

    def content_event(self, start: int, count: int) -> bytes:
        # Token i's text depends only on i % len(_WORDS) (after token 0), so events
        # repeat: build each distinct one once per response.
        if start == 0:
            return self._content_prefix + _token_bytes(start, count) + self._content_suffix
        key = (start % len(_TOKENS)) * 1_000_003 + count
        event = self._events.get(key)
        if event is None:
            event = self._content_prefix + _token_bytes(start, count) + self._content_suffix
            self._events[key] = event
        return event

    def empty_event(self) -> bytes:
        return self.content_event(0, 0)

    def role_event(self) -> bytes:
        tail = b',"usage":null}\n\n' if self.include_usage else b"}\n\n"
        return (
            self._head
            + b'[{"index":0,"delta":{"role":"assistant","content":""},'
            + b'"logprobs":null,"finish_reason":null}]'
            + tail
        )

    def finish_event(self) -> bytes:
        tail = b',"usage":null}\n\n' if self.include_usage else b"}\n\n"
        reason = self.finish_reason.encode()
        if self.chat:
            choice = b'[{"index":0,"delta":{},"logprobs":null,"finish_reason":"%s"}]' % reason
        else:
            choice = b'[{"index":0,"text":"","logprobs":null,"finish_reason":"%s"}]' % reason
        return self._head + choice + tail

    def usage_event(self) -> bytes:
        return (
            self._head
            + b'[],"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}}\n\n'
            % (
                self.prompt_tokens,
                self.completion_tokens,
                self.prompt_tokens + self.completion_tokens,
            )
        )

    def malformed_event(self, start: int) -> bytes:
        return self._content_prefix + _token_bytes(start, 1) + b'"}, "finish_reason": nul\n\n'

    def usage_json(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }

    def whole_body(
        self, *, text_tokens: int | None = None, finish_reason: str | None = "default"
    ) -> bytes:
        n = self.completion_tokens if text_tokens is None else text_tokens
        text = fake_text(n)
        reason = self.finish_reason if finish_reason == "default" else finish_reason
        if self.chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": reason,
            }
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
            obj = "text_completion"
        return json.dumps(
            {
                "id": self.id,
                "object": obj,
                "created": self.created,
                "model": self.model,
                "system_fingerprint": "fp_shardline",
                "choices": [choice],
                "usage": self.usage_json(),
            },
            separators=(",", ":"),
        ).encode()


def _check_models(_inst: object, _attr: object, value: tuple[str, ...]) -> None:
    if not value:
        raise ValueError("models must name at least one model, got ()")


async def serve_fake_server(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    faults: FaultPlan | str | None = None,
    timing: TimingModel | None = None,
    seed: int = 0,
    default_max_tokens: int = DEFAULT_MAX_TOKENS,
    models: tuple[str, ...] = (DEFAULT_MODEL,),
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    task_status: trio.TaskStatus[FakeServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a fake OpenAI-compatible server until cancelled.

    The ``nursery.start`` form of `open_fake_server`: it reports the
    running `FakeServer` once it listens, then serves until its
    nursery is cancelled. Everything it started, including stalled responses,
    ends with it.

    Example::

        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve_fake_server)
            ...  # use server.base_url
            nursery.cancel_scope.cancel()

    Args:
        host: Address to listen on (loopback by default; the server is a test tool).
        port: TCP port; 0 picks a free one (read it back from ``server.port``).
        faults: A `FaultPlan`, or a ``--faults`` text spec, or ``None``.
        timing: The `TimingModel`; ``None`` answers as fast as possible.
        seed: Seed of rate-drawn faults.
        default_max_tokens: Completion tokens when a request sets no ``max_tokens``.
        models: Model names ``GET /v1/models`` lists; the first is echoed when a
            request names no model.
        max_connections: Connections served at once; more wait in the listen backlog.
        task_status: Supplied by ``nursery.start``.

    Raises:
        FaultSpecError: if ``faults`` is a text spec that does not parse.
        ValueError: for an invalid option (the message names it).
        OSError: if the address cannot be bound.
    """
    if isinstance(faults, str):
        faults = FaultPlan.parse(faults)
    if isinstance(default_max_tokens, bool) or not 1 <= default_max_tokens <= MAX_COMPLETION_TOKENS:
        raise ValueError(
            f"default_max_tokens must be between 1 and {MAX_COMPLETION_TOKENS}, "
            f"got {default_max_tokens!r}"
        )
    if max_connections < 1:
        raise ValueError(f"max_connections must be >= 1, got {max_connections!r}")
    models = tuple(models)
    if not models:
        raise ValueError("models must name at least one model, got ()")
    listeners = await trio.open_tcp_listeners(port, host=host)
    try:
        sockname = listeners[0].socket.getsockname()
        server = FakeServer(
            host=host,
            port=int(sockname[1]),
            timing=timing if timing is not None else TimingModel(),
            seed=seed,
            default_max_tokens=default_max_tokens,
            models=models,
            faults=faults if faults is not None else FaultPlan(),
        )
        slots = trio.Semaphore(max_connections)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server._ticker.run)
            for listener in listeners:
                nursery.start_soon(_accept_loop, server, listener, slots, nursery)
            task_status.started(server)
    finally:
        with trio.CancelScope(shield=True):
            for listener in listeners:
                await listener.aclose()


async def _accept_loop(
    server: FakeServer,
    listener: trio.SocketListener,
    slots: trio.Semaphore,
    nursery: trio.Nursery,
) -> None:
    while True:
        await slots.acquire()
        try:
            stream = await listener.accept()
        except BaseException:
            slots.release()
            raise
        nursery.start_soon(_connection_task, server, stream, slots)


async def _connection_task(
    server: FakeServer, stream: trio.SocketStream, slots: trio.Semaphore
) -> None:
    try:
        await server._serve_connection(stream)
    finally:
        slots.release()


@asynccontextmanager
async def open_fake_server(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    faults: FaultPlan | str | None = None,
    timing: TimingModel | None = None,
    seed: int = 0,
    default_max_tokens: int = DEFAULT_MAX_TOKENS,
    models: tuple[str, ...] = (DEFAULT_MODEL,),
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
) -> AsyncIterator[FakeServer]:
    """Run a fake OpenAI-compatible server for the duration of an ``async with`` block.

    Like a flight simulator for your pipeline: it speaks the real protocol, and
    engine failures happen on your schedule. Leaving the block stops the server
    and ends every response it was still sending, stalled ones included.

    Example::

        async with open_fake_server(faults="rate_limit=0.1", seed=7) as server:
            async with httpx.AsyncClient(base_url=server.base_url) as client:
                r = await client.post("/chat/completions", json={
                    "model": "m", "messages": [{"role": "user", "content": "hi"}]})
            print(server.statistics().faults)

    Args:
        host: Address to listen on.
        port: TCP port; 0 picks a free one.
        faults: A `FaultPlan`, a ``--faults`` text spec, or ``None``.
        timing: The `TimingModel`; ``None`` answers as fast as possible.
        seed: Seed of rate-drawn faults.
        default_max_tokens: Completion tokens when a request sets no ``max_tokens``.
        models: Model names ``GET /v1/models`` lists.
        max_connections: Connections served at once.

    Yields:
        The running `FakeServer`.
    """
    async with trio.open_nursery() as nursery:
        server: FakeServer = await nursery.start(
            _serve_partial(
                host=host,
                port=port,
                faults=faults,
                timing=timing,
                seed=seed,
                default_max_tokens=default_max_tokens,
                models=models,
                max_connections=max_connections,
            )
        )
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()


def _serve_partial(**kwargs: Any) -> Any:
    async def run(*, task_status: trio.TaskStatus[FakeServer] = trio.TASK_STATUS_IGNORED) -> None:
        await serve_fake_server(task_status=task_status, **kwargs)

    return run
