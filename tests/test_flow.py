"""AdaptiveLimit: acquiring and releasing as trio does it, and the algorithm's moves.

Every test runs on the ``autojump_clock``; ordering uses ``wait_all_tasks_blocked``.
"""

from __future__ import annotations

import random

import pytest
import trio
import trio.lowlevel
import trio.testing

from shardline._exceptions import Cause, ConfigError
from shardline._flow import (
    MAX_PROBE_STRIKES,
    AdaptiveLimit,
    FlowPermit,
    LimitStep,
    Signal,
    classify,
)
from shardline._flow_latency import GradientSignal, NoLoadMin, VegasSignal, make_latency_signal
from test_flow_sim import CapacityServer, CutServer, NoisyServer, run_workload


def test_validation_names_the_parameter_and_bound() -> None:
    """Bad bounds raise ConfigError naming the parameter and the bound."""
    with pytest.raises(ConfigError, match=r"^ceiling must be >= 1, got 0$"):
        AdaptiveLimit(ceiling=0)
    with pytest.raises(ConfigError, match=r"^floor must be <= ceiling \(2\), got 3$"):
        AdaptiveLimit(ceiling=2, floor=3)
    with pytest.raises(ConfigError, match=r"^initial must be between floor \(1\) and ceiling"):
        AdaptiveLimit(ceiling=4, initial=5)
    with pytest.raises(ConfigError, match=r"^backoff_ratio must be < 1, got 1.0$"):
        AdaptiveLimit(ceiling=4, backoff_ratio=1.0)
    with pytest.raises(ConfigError, match=r"^probe_interval must be > 0 seconds, got 0$"):
        AdaptiveLimit(ceiling=4, probe_interval=0)
    with pytest.raises(ConfigError, match=r"^answer_window must be finite, got inf$"):
        AdaptiveLimit(ceiling=4, answer_window=float("inf"))
    with pytest.raises(ConfigError, match="latency signal must be"):
        make_latency_signal("bbr")  # type: ignore[arg-type]


def test_initial_limit_defaults_to_four_within_bounds() -> None:
    """The limit starts at min(ceiling, 4), never below the floor."""
    assert AdaptiveLimit(ceiling=16).limit == 4
    assert AdaptiveLimit(ceiling=2).limit == 2
    assert AdaptiveLimit(ceiling=16, floor=8).limit == 8


async def test_acquire_nowait_raises_wouldblock_at_the_limit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """acquire_nowait grants up to the limit, then raises trio.WouldBlock."""
    flow = AdaptiveLimit(ceiling=8, initial=2, latency=None, loss_tolerance=0)
    permits = [flow.acquire_nowait(), flow.acquire_nowait()]
    with pytest.raises(trio.WouldBlock):
        flow.acquire_nowait()
    assert flow.statistics().in_flight == 2
    flow.on_ignore(permits[0])
    assert flow.acquire_nowait().epoch == 0


async def test_waiters_are_served_fifo_and_a_release_wakes_exactly_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Blocked acquires are granted in arrival order, one per released permit."""
    flow = AdaptiveLimit(ceiling=8, initial=1, latency=None, loss_tolerance=0)
    first = await flow.acquire()
    order: list[int] = []
    permits: list[FlowPermit] = []

    async def waiter(n: int) -> None:
        permit = await flow.acquire()
        order.append(n)
        permits.append(permit)

    async with trio.open_nursery() as nursery:
        for n in range(3):
            nursery.start_soon(waiter, n)
            await trio.testing.wait_all_tasks_blocked()
        assert flow.statistics().waiting == 3
        flow.on_ignore(first)
        await trio.testing.wait_all_tasks_blocked()
        assert order == [0]
        assert flow.statistics().in_flight == 1
        flow.on_ignore(permits[0])
        await trio.testing.wait_all_tasks_blocked()
        flow.on_ignore(permits[1])
    assert order == [0, 1, 2]


async def test_no_barging_past_waiters(autojump_clock: trio.testing.MockClock) -> None:
    """acquire_nowait refuses while others wait, even right after a release frees a slot."""
    flow = AdaptiveLimit(ceiling=4, initial=1, latency=None, loss_tolerance=0)
    held = await flow.acquire()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(flow.acquire)
        await trio.testing.wait_all_tasks_blocked()
        flow.on_ignore(held)  # the slot goes to the waiter at once
        with pytest.raises(trio.WouldBlock):
            flow.acquire_nowait()
    assert flow.in_flight == 1


async def test_cancelled_waiter_holds_nothing_and_loses_no_wakeup(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A waiter cancelled while parked leaves no permit behind; the next waiter gets the slot."""
    flow = AdaptiveLimit(ceiling=4, initial=1, latency=None, loss_tolerance=0)
    held = await flow.acquire()
    got: list[FlowPermit] = []
    doomed = trio.CancelScope()

    async def waiter() -> None:
        got.append(await flow.acquire())

    async def cancelled_waiter() -> None:
        with doomed:
            await flow.acquire()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(cancelled_waiter)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert flow.statistics().waiting == 2
        doomed.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert flow.statistics().waiting == 1
        flow.on_ignore(held)
    assert doomed.cancelled_caught
    assert len(got) == 1
    assert flow.in_flight == 1


async def test_acquire_is_a_checkpoint(autojump_clock: trio.testing.MockClock) -> None:
    """acquire raises Cancelled in a cancelled scope even when a permit is free."""
    flow = AdaptiveLimit(ceiling=4, latency=None, loss_tolerance=0)
    with trio.CancelScope() as scope:
        scope.cancel()
        with pytest.raises(trio.Cancelled):
            await flow.acquire()
    assert flow.in_flight == 0


async def test_double_release_raises(autojump_clock: trio.testing.MockClock) -> None:
    """A permit is given back exactly once."""
    flow = AdaptiveLimit(ceiling=4, latency=None, loss_tolerance=0)
    permit = await flow.acquire()
    flow.on_success(permit)
    with pytest.raises(RuntimeError, match="already released"):
        flow.on_ignore(permit)


async def test_success_in_use_raises_by_one_and_reports_the_change(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A success with at least half the limit in flight adds one; the change is returned and
    passed to on_change."""
    seen: list[LimitStep] = []
    flow = AdaptiveLimit(
        ceiling=8, initial=2, latency=None, loss_tolerance=0, on_change=seen.append
    )
    a, b = await flow.acquire(), await flow.acquire()
    change = flow.on_success(a)
    assert change == LimitStep(t=trio.current_time(), old=2, new=3, reason="increase")
    assert seen == [change]
    assert flow.statistics().last_reason == "increase"
    flow.on_success(b)  # held 1 of 3: not in use, no increase
    assert flow.limit == 3


async def test_success_while_idle_does_not_raise(autojump_clock: trio.testing.MockClock) -> None:
    """Successes with less than half the limit in flight prove nothing about more."""
    flow = AdaptiveLimit(ceiling=16, initial=8, latency=None, loss_tolerance=0)
    for _ in range(10):
        assert flow.on_success(await flow.acquire()) is None
    assert flow.limit == 8


async def test_overload_drops_multiplicatively_with_at_least_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An overload sets max(floor, min(limit - 1, int(limit * 0.9)))."""
    flow = AdaptiveLimit(ceiling=64, initial=40, latency=None, loss_tolerance=0)
    permit = await flow.acquire()
    change = flow.on_overload(permit, Cause.RATE_LIMITED)
    assert change is not None
    assert (change.old, change.new, change.reason) == (40, 36, "rate_limited")
    small = AdaptiveLimit(ceiling=8, initial=3, latency=None, loss_tolerance=0)
    small.on_overload(await small.acquire(), Cause.CONNECTION_LOST)
    assert small.limit == 2
    floor = AdaptiveLimit(ceiling=8, floor=2, initial=2, latency=None, loss_tolerance=0)
    assert floor.on_overload(await floor.acquire(), Cause.RATE_LIMITED) is None
    assert floor.limit == 2


async def test_a_burst_of_refusals_lands_on_the_survivors(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Refusals of requests sent under the old limit lower it to what survived, not to the floor."""
    flow = AdaptiveLimit(ceiling=64, initial=30, latency=None, loss_tolerance=0)
    permits = [await flow.acquire() for _ in range(30)]
    for permit in permits[:6]:  # a server of capacity 24 refuses six of thirty
        flow.on_overload(permit, Cause.RATE_LIMITED)
    assert flow.limit == 24
    assert flow.statistics().refused_at == 25


async def test_dropping_the_limit_cancels_nothing(autojump_clock: trio.testing.MockClock) -> None:
    """In-flight permits stay valid when the limit drops; new acquires wait below it."""
    flow = AdaptiveLimit(ceiling=8, initial=4, latency=None, loss_tolerance=0)
    permits = [await flow.acquire() for _ in range(4)]
    flow.on_overload(permits[0], Cause.SERVER_ERROR)
    assert flow.limit == 3
    assert flow.in_flight == 3
    with pytest.raises(trio.WouldBlock):
        flow.acquire_nowait()
    flow.on_ignore(permits[1])
    flow.acquire_nowait()


async def test_probes_at_a_refused_level_get_rarer(autojump_clock: trio.testing.MockClock) -> None:
    """Each failed probe at the refused level doubles the successes the next probe costs."""
    flow = AdaptiveLimit(ceiling=8, initial=2, latency=None, loss_tolerance=0)
    costs: list[int] = []
    for _ in range(4):
        a, b = await flow.acquire(), await flow.acquire()
        flow.on_overload(b, Cause.CONNECTION_LOST)  # refused at 2 (again): limit 1
        flow.on_success(a)
        successes = 1
        while flow.limit == 1:
            flow.on_success(await flow.acquire())
            successes += 1
        costs.append(successes)
    assert costs == [1, 2, 4, 8]
    assert flow.statistics().strikes == 3 <= MAX_PROBE_STRIKES  # the first refusal is no probe


async def test_a_raising_callback_loses_no_wakeup(autojump_clock: trio.testing.MockClock) -> None:
    """If on_change raises, the error propagates but the freed slot still goes to a waiter."""

    def explode(change: LimitStep) -> None:
        raise ValueError(change.reason)

    flow = AdaptiveLimit(ceiling=8, initial=2, latency=None, loss_tolerance=0, on_change=explode)
    a, b = await flow.acquire(), await flow.acquire()
    got: list[FlowPermit] = []

    async def waiter() -> None:
        got.append(await flow.acquire())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(ValueError, match="rate_limited"):
            flow.on_overload(a, Cause.RATE_LIMITED)  # 2 -> 1: no room yet
        with pytest.raises(ValueError, match="probe"):
            flow.on_success(b)  # 1 -> 2 (a probe of the refused level): room for the waiter
    assert len(got) == 1


def test_classify_maps_causes_to_signals() -> None:
    """429/503/529 and cut streams are overload; timeouts only while the server answers."""
    assert classify(None, 200, answering=False) is Signal.SUCCESS
    assert classify(Cause.RATE_LIMITED, 429, answering=False) is Signal.OVERLOAD
    assert classify(Cause.SERVER_ERROR, 503, answering=False) is Signal.OVERLOAD
    assert classify(Cause.SERVER_ERROR, 529, answering=False) is Signal.OVERLOAD
    assert classify(Cause.SERVER_ERROR, 500, answering=True) is Signal.IGNORE
    assert classify(Cause.CONNECTION_LOST, None, answering=False) is Signal.OVERLOAD
    assert classify(Cause.TTFT_TIMEOUT, None, answering=True) is Signal.OVERLOAD
    assert classify(Cause.TTFT_TIMEOUT, None, answering=False) is Signal.IGNORE
    assert classify(Cause.CONNECT_ERROR, None, answering=True) is Signal.IGNORE
    assert classify(Cause.CLIENT_ERROR, 400, answering=True) is Signal.IGNORE


async def test_timeouts_count_only_while_the_server_answers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A TTFT timeout lowers the limit within answer_window of an answer, not after it."""
    flow = AdaptiveLimit(ceiling=8, initial=6, latency=None, loss_tolerance=0, answer_window=10.0)
    assert flow.on_failure(await flow.acquire(), Cause.TTFT_TIMEOUT) is None  # never answered
    flow.on_success(await flow.acquire())
    change = flow.on_failure(await flow.acquire(), Cause.TTFT_TIMEOUT)
    assert change is not None
    assert change.reason == "ttft_timeout"
    await trio.sleep(11.0)
    before = flow.limit
    assert flow.on_failure(await flow.acquire(), Cause.STALL_TIMEOUT) is None
    assert flow.limit == before


async def test_latency_brakes_a_queueing_server(autojump_clock: trio.testing.MockClock) -> None:
    """TTFT well above its no-load floor caps the limit (reason "latency")."""
    flow = AdaptiveLimit(ceiling=32, initial=16, latency=GradientSignal())
    for _ in range(8):
        permits = [await flow.acquire() for _ in range(16)]
        for permit in permits:
            flow.on_success(permit, ttft_s=0.2)
        if flow.limit != 16:
            break
    before = flow.limit
    # A standing queue: every request waits, the fastest included, for a round trip.
    changes = [flow.on_success(await flow.acquire(), ttft_s=2.0) for _ in range(2 * before)]
    reasons = {c.reason for c in changes if c is not None}
    assert reasons == {"latency"}
    assert flow.limit < before


async def test_periodic_measurement_halves_then_restores(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """After TTFT rose, every probe_interval the limit halves until a few no-load TTFTs are in,
    then returns, and the measured floor replaces the old one."""
    flow = AdaptiveLimit(ceiling=8, initial=8, latency=GradientSignal(), probe_interval=30.0)
    flow.on_success(await flow.acquire(), ttft_s=0.2)
    for _ in range(12):  # a standing queue: the signal objects
        flow.on_success(await flow.acquire(), ttft_s=0.5)
    await trio.sleep(31.0)
    old = flow.limit
    change = flow.on_success(await flow.acquire(), ttft_s=0.5)
    assert change is not None
    assert (change.old, change.new, change.reason) == (old, old // 2, "measure")
    reasons = [flow.on_success(await flow.acquire(), ttft_s=0.3) for _ in range(5)]
    last = reasons[-1]
    assert last is not None
    assert (last.new, last.reason) == (old, "restore")
    assert flow.latency is not None
    assert flow.latency.baseline == 0.3


async def test_no_measurement_while_ttft_stays_at_its_floor(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With no objection from the latency signal, the periodic dip is skipped."""
    flow = AdaptiveLimit(ceiling=8, initial=8, latency=GradientSignal(), probe_interval=30.0)
    for _ in range(4):
        for _ in range(8):
            assert flow.on_success(await flow.acquire(), ttft_s=0.2) is None
        await trio.sleep(31.0)
    assert flow.limit == 8


def test_no_load_min_falls_alone_and_rises_only_by_rebase() -> None:
    """The floor follows faster samples, ignores slower ones, and takes a measured value."""
    base = NoLoadMin()
    assert base.value is None
    base.add(0.4)
    base.add(0.6)
    assert base.value == 0.4
    base.rebase(0.5)
    assert base.value == 0.5


def test_vegas_holds_then_cuts_as_the_queue_grows() -> None:
    """Vegas: no objection near the floor, a cap once the estimated queue passes beta."""
    vegas = VegasSignal(current="ewma", sample_weight=1.0)
    assert vegas.propose(0.2, 20.0, 0.0) is None
    assert vegas.propose(0.21, 20.0, 1.0) is None
    cap = vegas.propose(1.0, 20.0, 2.0)  # queue = 20 * (1 - 0.2) = 16 > beta
    assert cap is not None
    assert cap < 20.0


def test_latency_signals_ignore_unusable_samples() -> None:
    """Zero, negative, NaN and infinite TTFTs are ignored."""
    for signal in (GradientSignal(), VegasSignal()):
        for bad in (0.0, -1.0, float("nan"), float("inf")):
            assert signal.propose(bad, 10.0, 0.0) is None
        assert signal.baseline is None


async def test_one_at_a_time_server_limit_reaches_one_and_stays(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Against a server that cuts the stream in flight, the shared limit sits at 1 and cuts
    become rare."""
    rng = random.Random(7)
    flow = AdaptiveLimit(ceiling=8)
    result = await run_workload(CutServer(rng=rng), flow, workers=16, duration=1200.0, rng=rng)
    assert flow.limit <= 2
    assert result.mean_limit(since=600.0) < 1.1
    assert result.overloads / result.attempts < 0.05
    assert result.limit_violations == 0


async def test_random_losses_below_the_tolerance_do_not_lower_the_limit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A few percent of random resets (noise, not overload) leave the limit where it is;
    a share of losses above the tolerance lowers it."""
    flow = AdaptiveLimit(ceiling=32, initial=32, latency=None)
    rng = random.Random(3)
    for _ in range(60):  # rounds of 32 requests in flight, 2 % of them lost at random
        permits = [flow.acquire_nowait() for _ in range(32)]
        for permit in permits:
            if rng.random() < 0.02:
                flow.on_overload(permit, "connection_lost")
            else:
                flow.on_success(permit)
        await trio.lowlevel.checkpoint()
    assert flow.limit == 32
    permits = [flow.acquire_nowait() for _ in range(32)]
    for permit in permits:  # now every request is refused
        flow.on_overload(permit, "rate_limited")
    assert flow.limit < 32


@pytest.mark.parametrize(("capacity", "expected"), [(1000, (28, 32)), (16, (9, 20))])
async def test_background_loss_is_learned_and_does_not_hold_the_limit_down(
    autojump_clock: trio.testing.MockClock, capacity: int, expected: tuple[int, int]
) -> None:
    """15 % of requests fail at random whatever the load: the limit learns it from
    requests that were alone in flight, then climbs to the ceiling (or to the
    server's capacity, still found by its refusals) instead of sitting near 1."""
    rng = random.Random(5)
    server = NoisyServer(inner=CapacityServer(capacity=capacity, rng=rng), loss=0.15, rng=rng)
    flow = AdaptiveLimit(ceiling=32, latency=None)
    result = await run_workload(server, flow, workers=48, duration=600.0, rng=rng)
    assert flow.statistics().noise == pytest.approx(0.15, abs=0.1)
    low, high = expected
    assert low <= result.mean_limit(since=300.0) <= high
    assert server.peak <= max(capacity, 32) + 1
    assert result.limit_violations == 0


async def test_a_server_without_background_loss_learns_none(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Refusals beyond capacity and cut streams never reach a request alone in flight."""
    rng = random.Random(2)
    flow = AdaptiveLimit(ceiling=8)
    await run_workload(CutServer(rng=rng), flow, workers=16, duration=600.0, rng=rng)
    assert flow.statistics().noise == 0.0
