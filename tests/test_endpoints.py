"""Several endpoints: spread by weight, health per endpoint, failover (virtual time)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import httpx
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import shardline
import shardline.events as ev
from shardline import ChatRequest, ConfigError, Endpoint, PipelineConfig, open_pipeline
from shardline._breaker import CircuitBreaker
from shardline._exceptions import Cause
from shardline._report_builder import compute_report
from shardline.testing import FakeTransport
from test_flow_properties import run_virtual

A = Endpoint(base_url="http://a.test/v1", model="m")
B = Endpoint(base_url="http://b.test/v1", model="m", weight=3)


def _config(endpoints: tuple[Endpoint, ...], **overrides: object) -> PipelineConfig:
    values: dict[str, object] = {
        "endpoints": endpoints,
        "shard_count": 4,
        "concurrency": 4,
        "retry": shardline.RetryPolicy(max_attempts=8, backoff=shardline.Backoff(initial=0.1)),
        "deadlines": shardline.Deadlines(ttft=2.0, stall=1.0, attempt=10.0),
        "flow": shardline.FlowControl(breaker_threshold=3, breaker_cooldown=2.0),
        "seed": 1,
    }
    values.update(overrides)
    return PipelineConfig(**values)  # type: ignore[arg-type]


class Recorder(FakeTransport):
    """A FakeTransport that notes when each request arrived (trio's clock)."""

    def __init__(self, plan: Callable[[str, int], str | None], sent: list[float]) -> None:
        super().__init__(plan=plan)
        self.sent = sent

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(trio.current_time())
        return await super().handle_async_request(request)


def test_shards_are_spread_over_endpoints_by_weight() -> None:
    config = _config((A, B), shard_count=8)
    assert config.shard_endpoints().count(0) == 2
    assert config.shard_endpoints().count(1) == 6
    assert config.shard_endpoints()[:2] == [0, 1]  # interleaved
    # At least one shard each, however small the weight.
    tiny = attrs_evolve(A, weight=0.01)
    assert _config((tiny, B), shard_count=2).shard_endpoints() == [0, 1]
    assert _config((A,), shard_count=3).shard_endpoints() == [0, 0, 0]


def attrs_evolve(endpoint: Endpoint, **changes: object) -> Endpoint:
    import attrs

    return attrs.evolve(endpoint, **changes)  # type: ignore[misc]


def test_bad_endpoint_lists_are_refused_with_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"^shard_count must be >= the number of endpoints"):
        _config((A, B), shard_count=1)
    with pytest.raises(ConfigError, match=r"^give endpoint or endpoints, not both$"):
        PipelineConfig(endpoint=Endpoint(base_url="http://c.test/v1"), endpoints=(A, B))
    with pytest.raises(ConfigError, match=r"^endpoints\[1\] must be an Endpoint"):
        PipelineConfig(endpoints=(A, "http://b.test/v1"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^weight must be > 0, got 0"):
        Endpoint(weight=0)


def test_the_environment_names_several_replicas() -> None:
    env = {
        "SHARDLINE_BASE_URLS": "http://a.test/v1, http://b.test/v1",
        "OPENAI_MODEL": "m",
        "OPENAI_API_KEY": "sk-secret",
    }
    config = PipelineConfig.from_env(env)
    assert [e.base_url for e in config.all_endpoints()] == ["http://a.test/v1", "http://b.test/v1"]
    assert all(e.model == "m" and e.api_key == "sk-secret" for e in config.endpoints)
    assert "sk-secret" not in repr(config)
    assert "sk-secret" not in str(config.safe_dict())


async def _run(
    config: PipelineConfig,
    plans: dict[int, Callable[[str, int], str | None]],
    n: int,
) -> tuple[list[shardline.Outcome], list[ev.Event], dict[int, list[float]], float]:
    """Run ``n`` items; ``plans[endpoint]`` picks the faults of that endpoint's requests."""
    owner = config.shard_endpoints()
    sent: dict[int, list[float]] = {i: [] for i in range(len(config.all_endpoints()))}

    def transport(shard: int) -> httpx.AsyncBaseTransport:
        endpoint = owner[shard]
        return Recorder(plans.get(endpoint, lambda _i, _a: None), sent[endpoint])

    sink = shardline.MemoryEventSink()
    t0 = trio.current_time()
    outcomes: list[shardline.Outcome] = []
    async with open_pipeline(config, sink=sink, transport=transport) as pipeline:
        send, receive = trio.open_memory_channel[shardline.Outcome](n)
        requests = [ChatRequest(messages=[{"role": "user", "content": f"q{i}"}]) for i in range(n)]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pipeline.map, requests, send)
            async with receive:
                async for outcome in receive:
                    outcomes.append(outcome)
    return outcomes, list(sink.events), sent, t0


def _health(events: list[ev.Event], endpoint: int) -> list[ev.EndpointState]:
    return [e for e in events if isinstance(e, ev.EndpointState) and e.endpoint == endpoint]


def _open_spells(events: list[ev.Event], endpoint: int, end: float) -> list[tuple[float, float]]:
    """Times (run clock) the endpoint was ``open`` (not half-open: the probe may go then)."""
    spells: list[tuple[float, float]] = []
    opened: float | None = None
    for change in _health(events, endpoint):
        if change.new == "open":
            opened = change.t
        elif opened is not None:
            spells.append((opened, change.t))
            opened = None
    if opened is not None:
        spells.append((opened, end))
    return spells


def _sent_while_open(
    events: list[ev.Event], sent: dict[int, list[float]], t0: float, end: float
) -> int:
    bad = 0
    for endpoint, times in sent.items():
        for start, stop in _open_spells(events, endpoint, end):
            bad += sum(1 for t in times if start < t - t0 < stop)
    return bad


def test_a_replica_that_answers_503_is_opened_and_the_run_completes_on_the_other() -> None:
    async def main() -> None:
        outcomes, events, sent, t0 = await _run(
            _config((A, B)), {0: lambda _i, _a: "http_503"}, 200
        )
        end = trio.current_time() - t0
        assert len(outcomes) == 200
        assert Counter(o.status.value for o in outcomes) == {"ok": 200}
        assert len({o.id for o in outcomes}) == 200
        changes = _health(events, 0)
        assert changes[0].new == "open"
        assert "server_error" in changes[0].reason
        assert changes[0].t < 1.0  # within the first round trips
        assert not _health(events, 1)
        assert _sent_while_open(events, sent, t0, end) == 0
        report = compute_report(events, events_sha256=None)
        dead, live = report.endpoints
        assert dead.base_url == "http://a.test/v1"
        assert dead.shards == (0,)
        assert live.shards == (1, 2, 3)
        assert dead.opened >= 1
        assert dead.open_s > 0
        assert dead.failed_attempts["server_error"] == len(sent[0])
        assert dead.ok_attempts == 0
        assert live.ok_attempts == 200
        assert live.ttft_s.p50 is not None
        assert report.to_json()["endpoints"][0]["base_url"] == "http://a.test/v1"
        assert type(report).from_json(report.to_json()) == report
        # The dead replica saw its first failures, then only probes.
        probes = sum(1 for c in changes if c.new == "half_open")
        assert len(sent[0]) <= 3 * 4 + probes + 16  # threshold, in flight, probes

    run_virtual(main)


def test_a_replica_whose_streams_stall_is_opened_by_the_stall_signal() -> None:
    async def main() -> None:
        outcomes, events, _, _ = await _run(_config((A, B)), {1: lambda _i, _a: "stall_mid"}, 120)
        assert Counter(o.status.value for o in outcomes) == {"ok": 120}
        opened = [c for c in _health(events, 1) if c.new == "open"]
        assert opened
        assert "stall_timeout" in opened[0].reason

    run_virtual(main)


def test_when_every_endpoint_is_down_items_fail_within_their_attempts_no_hang() -> None:
    async def main() -> None:
        config = _config((A, B), retry=shardline.RetryPolicy(max_attempts=4))
        with trio.fail_after(600):
            outcomes, events, sent, t0 = await _run(
                config, {0: lambda _i, _a: "http_502", 1: lambda _i, _a: "reset"}, 40
            )
        end = trio.current_time() - t0
        assert len(outcomes) == 40
        assert all(o.status.value == "failed" and o.attempts == 4 for o in outcomes)
        assert _sent_while_open(events, sent, t0, end) == 0
        messages = [str(o.error) for o in outcomes]
        assert any("every endpoint's circuit is open" in m for m in messages)

    run_virtual(main)


def test_a_retry_prefers_another_endpoint() -> None:
    """One failure on A (not enough to open it): the retry goes to B."""

    async def main() -> None:
        # Equal weights, items spread evenly: some start on A.
        config = _config((A, attrs_evolve(B, weight=1)), shard_count=2, routing="least_loaded")
        owner = config.shard_endpoints()
        outcomes, events, _, _ = await _run(
            config, {0: lambda _i, attempt: "http_500" if attempt == 1 else None}, 2
        )
        assert all(o.status.value == "ok" for o in outcomes)
        retried = 0
        for item in {o.id for o in outcomes}:
            starts = [e for e in events if isinstance(e, ev.AttemptStart) and e.item_id == item]
            if owner[starts[0].shard] == 0:  # its first attempt went to A and failed
                assert [owner[e.shard] for e in starts] == [0, 1]
                retried += 1
        assert retried >= 1

    run_virtual(main)


@settings(max_examples=12, deadline=None)
@given(
    outages=st.lists(
        st.tuples(st.integers(0, 1), st.floats(0.0, 20.0), st.floats(0.5, 15.0)),
        max_size=4,
    ),
    fault=st.sampled_from(["http_503", "reset", "stall_headers"]),
    n=st.integers(1, 80),
)
def test_random_outages_every_item_one_outcome_nothing_sent_to_an_open_endpoint(
    outages: list[tuple[int, float, float]], fault: str, n: int
) -> None:
    async def main() -> None:
        start = trio.current_time()

        def plan(endpoint: int) -> Callable[[str, int], str | None]:
            def pick(_item: str, _attempt: int) -> str | None:
                now = trio.current_time() - start
                for which, begin, length in outages:
                    if which == endpoint and begin <= now < begin + length:
                        return fault
                return None

            return pick

        config = _config((A, B), retry=shardline.RetryPolicy(max_attempts=6))
        outcomes, events, sent, t0 = await _run(config, {0: plan(0), 1: plan(1)}, n)
        end = trio.current_time() - t0
        assert sorted(str(o.id) for o in outcomes) == sorted({str(o.id) for o in outcomes})
        assert len(outcomes) == n
        ends = [e for e in events if isinstance(e, ev.ItemEnd)]
        assert len(ends) == n
        assert _sent_while_open(events, sent, t0, end) == 0

    run_virtual(main)


async def test_breaker_states_and_probe(autojump_clock: trio.testing.MockClock) -> None:
    changes: list[tuple[str, str, str]] = []
    breaker = CircuitBreaker(
        threshold=2, cooldown=1.0, on_change=lambda o, n, r: changes.append((o, n, r))
    )
    breaker.on_failure(Cause.RATE_LIMITED)  # flow control, not health
    breaker.on_failure(Cause.CONNECT_ERROR)
    assert breaker.closed
    breaker.on_failure(Cause.CONNECT_ERROR)
    assert breaker.state.value == "open"
    assert not breaker.claim_probe()  # cooling down
    await trio.sleep(1.0)
    assert breaker.claim_probe()
    assert not breaker.claim_probe()  # one probe at a time
    breaker.on_failure(Cause.STALL_TIMEOUT, probe=True)
    assert breaker.state.value == "open"
    await trio.sleep(1.5)
    assert not breaker.claim_probe()  # the cooldown doubled to 2 s
    await trio.sleep(0.5)
    assert breaker.claim_probe()
    breaker.on_success(probe=True)
    assert breaker.closed
    assert [c[1] for c in changes] == ["open", "half_open", "open", "half_open", "closed"]
    assert breaker.open_for(trio.current_time()) == pytest.approx(3.0)
    with pytest.raises(ValueError, match=r"^threshold must be >= 1, got 0$"):
        CircuitBreaker(threshold=0)


def test_a_replica_that_recovers_is_probed_and_takes_work_again() -> None:
    async def main() -> None:
        start = trio.current_time()

        def down_for_three_seconds(_item: str, _attempt: int) -> str | None:
            return "http_503" if trio.current_time() - start < 3.0 else None

        outcomes, events, sent, t0 = await _run(_config((A, B)), {0: down_for_three_seconds}, 2000)
        assert Counter(o.status.value for o in outcomes) == {"ok": 2000}
        states = [c.new for c in _health(events, 0)]
        assert states[0] == "open"
        assert states[-1] == "closed"
        closed_at = [c.t for c in _health(events, 0) if c.new == "closed"][-1]
        assert sum(1 for t in sent[0] if t - t0 > closed_at) > 50  # it carries load again

    run_virtual(main)
