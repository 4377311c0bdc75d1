"""Attempts against shardline.testing.FakeTransport, the in-memory fake server, in virtual time.

The pipeline's property tests drive many attempts through this transport; here
each of its faults is checked once to end in its cause at the exact virtual
deadline, to leave nothing in flight, and to let the next attempt succeed.
"""

from __future__ import annotations

import httpx
import pytest
import trio
import trio.testing

from shardline._attempt import send_attempt
from shardline._config import Deadlines, Endpoint
from shardline._exceptions import AttemptError, Cause
from shardline._models import ChatRequest
from shardline.testing._transport import TRANSPORT_FAULTS, FakeTransport

DEADLINES = Deadlines(connect=1.0, ttft=1.0, stall=0.5, attempt=10.0)
ENDPOINT = Endpoint(base_url="http://fake.test/v1", api_key="sk-transport-test", model="m")
REQUEST = ChatRequest(messages=[{"role": "user", "content": "hi"}], params={"max_tokens": 5})

EXPECTED: dict[str, tuple[Cause, float | None]] = {
    # fault: (cause, virtual seconds to the failure, None = immediate)
    "stall_headers": (Cause.TTFT_TIMEOUT, 1.0),
    "stall_after_headers": (Cause.TTFT_TIMEOUT, 1.0),
    "stall_mid": (Cause.STALL_TIMEOUT, 0.06 + 0.5),  # last content at ttft + itl
    "drip": (Cause.STALL_TIMEOUT, 0.06 + 0.5),
    "rate_limit": (Cause.RATE_LIMITED, None),
    "http_500": (Cause.SERVER_ERROR, None),
    "http_502": (Cause.SERVER_ERROR, None),
    "http_503": (Cause.SERVER_ERROR, None),
    "reset": (Cause.CONNECTION_LOST, None),
    "truncate": (Cause.TRUNCATED, None),
    "malformed": (Cause.PROTOCOL_ERROR, None),
    "error_event": (Cause.SERVER_ERROR, None),
    "http_400": (Cause.CLIENT_ERROR, None),
}


def test_every_transport_fault_has_an_expectation() -> None:
    """The table below covers exactly the faults the transport can serve."""
    assert set(EXPECTED) == set(TRANSPORT_FAULTS)


@pytest.mark.parametrize("fault", TRANSPORT_FAULTS)
async def test_fault_then_success_in_virtual_time(
    autojump_clock: trio.testing.MockClock, fault: str
) -> None:
    """Each fault ends in its cause at its exact deadline; nothing stays in flight."""
    transport = FakeTransport(plan=lambda _item, attempt: fault if attempt == 1 else None)
    cause, at = EXPECTED[fault]
    async with httpx.AsyncClient(transport=transport) as client:
        start = trio.current_time()
        with pytest.raises(AttemptError) as info:
            await send_attempt(
                client,
                ENDPOINT,
                REQUEST,
                DEADLINES,
                headers={"x-shardline-item-id": "a", "x-shardline-attempt": "1"},
            )
        elapsed = trio.current_time() - start
        assert info.value.cause is cause, repr(info.value)
        if at is not None and cause is Cause.STALL_TIMEOUT:
            # A stall is detected at most the slack (5 % of stall) late, never early.
            assert at - 1e-9 <= elapsed <= at + 0.05 * 0.5 + 1e-9
        elif at is not None:
            assert elapsed == pytest.approx(at)
        else:
            assert elapsed <= 0.1
        assert transport.in_flight == 0
        result = await send_attempt(
            client,
            ENDPOINT,
            REQUEST,
            DEADLINES,
            headers={"x-shardline-item-id": "a", "x-shardline-attempt": "2"},
        )
        assert result.text == "tok0 tok1 tok2 tok3 tok4 "
        assert result.usage.completion_tokens == 5
        assert not result.usage.estimated
        assert transport.in_flight == 0
