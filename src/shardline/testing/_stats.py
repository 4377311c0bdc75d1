"""The fake server's counters: the live tallies and their public snapshot.

It owns `Counters` (mutable, bumped by the connection code),
`FakeServerStatistics` (the frozen snapshot `FakeServer.statistics` returns and
``GET /_shardline/stats`` serves as JSON) and `fetch_statistics`, which reads
that endpoint from another process.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

import attrs


@attrs.frozen(kw_only=True)
class FakeServerStatistics:
    """A snapshot of a fake server's counters; see `statistics`.

    Attributes:
        connections_accepted: TCP connections accepted since start.
        connections_open: Connections open now.
        requests: HTTP requests received (all endpoints, including bad ones).
        requests_by_endpoint: ``"chat.completions"``, ``"completions"``,
            ``"embeddings"``, ``"responses"``, ``"models"`` or ``"other"`` to a count.
        in_flight: Requests being answered now (all endpoints; queued and refused
            completion requests included).
        max_in_flight: The most requests ever answered at once.
        faults: Fault kind name to the number of times it struck.
        malformed_shapes: ``malformed_shape`` variant name to the number of times it
            was sent (each is also counted under ``faults["malformed_shape"]``).
        completed: Completion responses served successfully to the end (a
            response that carried a malformed event is not counted).
        prompt_tokens: Prompt tokens of the completed responses.
        completion_tokens: Completion tokens of the completed responses.
        internal_errors: Connections dropped because of a bug in the fake server
            itself (logged on the ``shardline`` logger); 0 unless something is wrong.
        capacity_refusals: Requests refused (``429`` or ``503``) because the server was at
            its `LoadModel` capacity.
        queued: Requests waiting for a slot now (``overload="queue"``).
        max_queued: The most requests ever waiting for a slot at once.
        rate_limit_refusals: Requests refused with ``429`` by the RPM/TPM limit.
        preempted: Requests cut mid-response by a newer one (``preempt=True``).
        slow_first_tokens: First attempts made slow before their first token.
        generating: Completion requests admitted and being answered now (not queued,
            not refused): what a `LoadModel` capacity bounds.
        max_generating: The most completion requests ever answered at once.
        usage_withheld: Streamed requests that asked for usage and got none (``no_usage``).
        abandoned: Completion requests whose client disconnected before their first
            token (a cancelled hedge, a client deadline); the server stopped them there.
    """

    connections_accepted: int
    connections_open: int
    requests: int
    requests_by_endpoint: Mapping[str, int]
    in_flight: int
    max_in_flight: int
    faults: Mapping[str, int]
    malformed_shapes: Mapping[str, int]
    completed: int
    prompt_tokens: int
    completion_tokens: int
    internal_errors: int
    capacity_refusals: int
    queued: int
    max_queued: int
    rate_limit_refusals: int
    preempted: int
    slow_first_tokens: int
    generating: int
    max_generating: int
    usage_withheld: int
    abandoned: int

    @property
    def faults_total(self) -> int:
        """All faults served, of every kind."""
        return sum(self.faults.values())

    def to_json(self) -> dict[str, Any]:
        """The counters as a JSON object (what ``GET /_shardline/stats`` returns)."""
        out = attrs.asdict(self)
        out["requests_by_endpoint"] = dict(self.requests_by_endpoint)
        out["faults"] = dict(self.faults)
        out["malformed_shapes"] = dict(self.malformed_shapes)
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
class Counters:
    """The live tallies of one server; only the event loop thread touches them."""

    connections_accepted: int = 0
    connections_open: int = 0
    requests: int = 0
    by_endpoint: Counter[str] = attrs.Factory(Counter)
    in_flight: int = 0
    max_in_flight: int = 0
    faults: Counter[str] = attrs.Factory(Counter)
    shapes: Counter[str] = attrs.Factory(Counter)
    completed: int = 0
    completion_requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    internal_errors: int = 0
    capacity_refusals: int = 0
    queued: int = 0
    max_queued: int = 0
    rate_limit_refusals: int = 0
    preempted: int = 0
    slow_first_tokens: int = 0
    generating: int = 0
    max_generating: int = 0
    usage_withheld: int = 0
    abandoned: int = 0

    def snapshot(self) -> FakeServerStatistics:
        """A frozen copy of the counters."""
        return FakeServerStatistics(
            connections_accepted=self.connections_accepted,
            connections_open=self.connections_open,
            requests=self.requests,
            requests_by_endpoint=MappingProxyType(dict(self.by_endpoint)),
            in_flight=self.in_flight,
            max_in_flight=self.max_in_flight,
            faults=MappingProxyType(dict(self.faults)),
            malformed_shapes=MappingProxyType(dict(self.shapes)),
            completed=self.completed,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            internal_errors=self.internal_errors,
            capacity_refusals=self.capacity_refusals,
            queued=self.queued,
            max_queued=self.max_queued,
            rate_limit_refusals=self.rate_limit_refusals,
            preempted=self.preempted,
            slow_first_tokens=self.slow_first_tokens,
            generating=self.generating,
            max_generating=self.max_generating,
            usage_withheld=self.usage_withheld,
            abandoned=self.abandoned,
        )
