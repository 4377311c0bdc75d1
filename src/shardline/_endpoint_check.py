"""Telling a wrong endpoint from a hard run: the watch on a run's first attempts, and the probe.

A run pointed at the wrong place (nothing listening, a bad key, a wrong path)
would otherwise spend every item's attempts and write a failed line for each.
This module owns the two ways the batch runner finds out early:

* :class:`FirstAttemptsWatch`, an event sink that passes every event on and
  watches the attempt ends at the start of a run. When the run's first
  attempt ends (:data:`FIRST_ATTEMPTS` of them, or fewer once every item of
  a smaller run has had one) all failed with the same cause that no retry fixes
  (``connect_error``, or ``client_error`` with status 401, 403 or 404) and
  none succeeded, it calls back with a :class:`DeadEndpoint`. One success or
  one other failure first, and it stays silent for the rest of the run.
* :func:`check_endpoint`, one tiny request (``max_tokens`` 1, one attempt)
  before a run, and :func:`check_endpoints`, the same for every endpoint of a
  run at once: ``shardline run --check`` and ``shardline check``. The probe
  speaks the run's API (chat, completions, embeddings or responses), so an
  embeddings-only server is not judged by a chat request it cannot serve.

Messages name the base URL (without any user:password part) and the cause;
they never contain the API key (attempt messages are scrubbed of it where
they are made).
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import httpx
import trio

from ._config import Endpoint, PipelineConfig
from ._events import AttemptEnd, Event, ItemAdmitted
from ._exceptions import AttemptError, Cause
from ._models import ChatRequest, ItemId
from ._pipeline import open_pipeline
from ._requests import CompletionRequest, EmbeddingRequest, Request, ResponsesRequest
from ._sinks import EventSink

__all__ = [
    "FIRST_ATTEMPTS",
    "PROBES",
    "CheckResult",
    "DeadEndpoint",
    "FirstAttemptsWatch",
    "check_endpoint",
    "check_endpoints",
    "public_url",
]

#: How many attempt ends at the start of a run decide whether its endpoint is dead.
FIRST_ATTEMPTS = 8

#: HTTP statuses of a ``client_error`` that every request would get again.
_DEAD_STATUS = {401: "unauthorized", 403: "forbidden", 404: "not found"}

_HINT = {
    None: "Check --base-url (OPENAI_BASE_URL) and that the server is running.",
    401: "Check OPENAI_API_KEY.",
    403: "Check OPENAI_API_KEY and its access to the model.",
    404: "Check --base-url (OPENAI_BASE_URL; it usually ends in /v1) and --model.",
}

#: Causes whose hint (above) is worth printing with a failed check.
_DEAD_CAUSES = (Cause.CONNECT_ERROR, Cause.CLIENT_ERROR)


def public_url(url: str) -> str:
    """``url`` without a ``user:password@`` part, for messages."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return url
    if not parsed.userinfo:
        return url
    return str(parsed.copy_with(username=None, password=None))


def _what(cause: str, status_code: int | None) -> str:
    if cause == Cause.CONNECT_ERROR:
        return f"{cause} (could not connect)"
    if status_code is not None:
        reason = _DEAD_STATUS.get(status_code)
        return f"{cause} {status_code}" + (f" ({reason})" if reason else "")
    return cause


def _dead_key(event: AttemptEnd) -> tuple[str, int | None] | None:
    """The non-transient failure an attempt end shows, or ``None``."""
    if event.outcome != "failed" or event.cause is None:
        return None
    if event.cause == Cause.CONNECT_ERROR:
        return (event.cause, None)
    if event.cause == Cause.CLIENT_ERROR and event.status_code in _DEAD_STATUS:
        return (event.cause, event.status_code)
    return None


@attrs.frozen(kw_only=True)
class DeadEndpoint:
    """Why a run was stopped: its first attempts all failed the same way, none succeeded.

    Attributes:
        base_url: The endpoint's base URL (without credentials).
        cause: ``connect_error`` or ``client_error``.
        status_code: 401, 403 or 404 for a ``client_error``; ``None`` otherwise.
        attempts: How many attempts failed that way (all the run had made).
        detail: The first failure's message (scrubbed of the API key), if any.
    """

    base_url: str
    cause: str
    status_code: int | None
    attempts: int
    detail: str | None = None

    def describe(self) -> str:
        """One line: ``the first 8 attempts all failed with connect_error (...) at URL; ...``."""
        return (
            f"the first {self.attempts} attempts all failed with "
            f"{_what(self.cause, self.status_code)} at {self.base_url}; nothing was sent "
            f"successfully. {_HINT.get(self.status_code, _HINT[None])}"
        )


class FirstAttemptsWatch:
    """An event sink that passes events on and stops a run whose endpoint cannot work.

    Wrap the run's sink with it; call :meth:`input_done` when every item has
    been submitted (so a run too small to reach ``window`` attempt ends is
    decided once each of its items has had one). ``on_dead`` is called once,
    from the task that emitted the deciding event, with the
    :class:`DeadEndpoint`; it must not block (cancel scopes,
    :meth:`Pipeline.cancel`, setting a flag).

    Memory: the ids of at most ``window`` items.

    Args:
        downstream: Gets every event first, unchanged.
        base_url: The endpoint named in the verdict.
        on_dead: Called once when the verdict is "dead".
        window: How many attempt ends decide (at least 1).
    """

    def __init__(
        self,
        downstream: EventSink,
        *,
        base_url: str,
        on_dead: Callable[[DeadEndpoint], None],
        window: int = FIRST_ATTEMPTS,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self._down = downstream
        self._base_url = public_url(base_url)
        self._on_dead = on_dead
        self._window = window
        self._admitted = 0
        self._items: set[ItemId] = set()
        self._ends = 0
        self._key: tuple[str, int | None] | None = None
        self._detail: str | None = None
        self._input_done = False
        self.verdict: DeadEndpoint | None = None
        self.decided = False

    def __repr__(self) -> str:
        state = "dead" if self.verdict else ("healthy" if self.decided else "watching")
        return f"<FirstAttemptsWatch {state}: {self._ends}/{self._window} attempts failed>"

    def emit(self, event: Event) -> None:
        self._down.emit(event)
        if self.decided:
            return
        if isinstance(event, ItemAdmitted):
            self._admitted += 1
        elif isinstance(event, AttemptEnd) and event.outcome != "cancelled":
            key = _dead_key(event)
            if key is None or (self._key is not None and key != self._key):
                self.decided = True  # it answers, or fails in a way a retry may fix
                return
            if self._key is None:
                self._key, self._detail = key, event.message
            self._ends += 1
            if len(self._items) < self._window:
                self._items.add(event.item_id)
            self._decide()

    def input_done(self) -> None:
        """Every item has been submitted: fewer than ``window`` items can decide."""
        self._input_done = True
        if not self.decided:
            self._decide()

    def _decide(self) -> None:
        if self._key is None:
            return
        every_item = self._input_done and len(self._items) >= self._admitted
        if self._ends < self._window and not every_item:
            return
        self.decided = True
        cause, status = self._key
        self.verdict = DeadEndpoint(
            base_url=self._base_url,
            cause=cause,
            status_code=status,
            attempts=self._ends,
            detail=self._detail,
        )
        self._on_dead(self.verdict)

    def close(self) -> None:
        self._down.close()


@attrs.frozen(kw_only=True)
class CheckResult:
    """What :func:`check_endpoint` found.

    Attributes:
        base_url: The endpoint's base URL (without credentials).
        model: The model asked for (``None``: the server's default).
        api: The API probed: ``chat``, ``completions``, ``embeddings`` or ``responses``.
        ok: The request succeeded.
        latency_s: Seconds from sending to the end of the answer (or the failure).
        cause: The failure's cause (``None`` when ok).
        status_code: The HTTP status of a failure, when a response arrived.
        detail: The failure's message (scrubbed of the API key).
    """

    base_url: str
    model: str | None
    ok: bool
    latency_s: float
    api: str = "chat"
    cause: str | None = None
    status_code: int | None = None
    detail: str | None = None

    def describe(self) -> str:
        """One line: ``ok: URL (model m) answered in 0.12 s`` or the cause and a hint."""
        model = f"model {self.model}" if self.model else "no model set"
        api = "" if self.api == "chat" else f", {self.api}"
        where = f"{self.base_url} ({model}{api})"
        if self.ok:
            return f"ok: {where} answered in {self.latency_s:.2f} s"
        assert self.cause is not None
        detail = f": {self.detail}" if self.detail else ""
        hint = _HINT.get(self.status_code) if self.cause in _DEAD_CAUSES else None
        return f"failed: {where}: {_what(self.cause, self.status_code)}{detail}" + (
            f". {hint}" if hint else ""
        )


#: The probe of each API: as small as a request to it gets.
PROBES: dict[str, Request] = {
    "chat": ChatRequest(
        messages=[{"role": "user", "content": "Say ok."}], params={"max_tokens": 1}
    ),
    "completions": CompletionRequest(prompt="Say ok.", params={"max_tokens": 1}),
    "embeddings": EmbeddingRequest(input="ok"),
    # 16 is the least max_output_tokens OpenAI's Responses API accepts.
    "responses": ResponsesRequest(input="Say ok.", params={"max_output_tokens": 16}),
}


async def check_endpoint(
    config: PipelineConfig,
    *,
    api: str = "chat",
    transport: Callable[[int], httpx.AsyncBaseTransport] | None = None,
) -> CheckResult:
    """Send one tiny request (one attempt) to ``config``'s endpoint and model.

    Not a health check of the server's capacity: one answer says the URL, the
    key and the model work, nothing more. Rate limits and the retry budget do
    not apply; the config's deadlines do. With several endpoints, this probes
    the first; :func:`check_endpoints` probes them all.

    Args:
        config: The run's config; only its endpoint and deadlines are used.
        api: Which API to probe (a key of :data:`PROBES`): the run's own, so a
            server that only embeds is not asked for a chat completion.
        transport: As for :func:`~shardline.open_pipeline` (tests).

    Returns:
        A :class:`CheckResult`; a failed request is a result, not an exception.

    Raises:
        ValueError: ``api`` is not one of :data:`PROBES`.
    """
    return await _probe(config, config.all_endpoints()[0], api, transport)


async def check_endpoints(
    config: PipelineConfig,
    *,
    api: str = "chat",
    transport: Callable[[int], httpx.AsyncBaseTransport] | None = None,
) -> list[CheckResult]:
    """:func:`check_endpoint` for every endpoint of ``config`` at once, in their order."""
    endpoints = config.all_endpoints()
    results: list[CheckResult | None] = [None] * len(endpoints)

    async def one(i: int, endpoint: Endpoint) -> None:
        results[i] = await _probe(config, endpoint, api, transport)

    async with trio.open_nursery() as nursery:
        for i, endpoint in enumerate(endpoints):
            nursery.start_soon(one, i, endpoint)
    return [r for r in results if r is not None]


async def _probe(
    config: PipelineConfig,
    endpoint: Endpoint,
    api: str,
    transport: Callable[[int], httpx.AsyncBaseTransport] | None,
) -> CheckResult:
    if api not in PROBES:
        raise ValueError(f"api must be one of {', '.join(PROBES)}, got {api!r}")
    probe = attrs.evolve(
        config,
        endpoint=endpoint,
        endpoints=(),
        shard_count=1,
        concurrency=1,
        rpm=None,
        tpm=None,
        hedging=None,
        retry=attrs.evolve(config.retry, max_attempts=1),
    )
    base_url = public_url(endpoint.base_url)
    started = trio.current_time()
    async with open_pipeline(probe, run_id="check", transport=transport) as pipeline:
        try:
            await pipeline.complete(PROBES[api])
        except AttemptError as exc:
            return CheckResult(
                base_url=base_url,
                model=endpoint.model,
                api=api,
                ok=False,
                latency_s=trio.current_time() - started,
                cause=str(exc.cause),
                status_code=exc.status_code,
                detail=exc.message,
            )
    return CheckResult(
        base_url=base_url,
        model=endpoint.model,
        api=api,
        ok=True,
        latency_s=trio.current_time() - started,
    )
