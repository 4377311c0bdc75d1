"""What a correct client reports for each fault: the causes the fake server's faults imply.

It owns `EXPECTED_CAUSE`, `EXPECTED_CAUSE_NON_STREAMING` and `expected_cause`,
the contract between a fault (`_faults`) and shardline's `Cause` vocabulary:
tests assert that a client under a fault reports this cause.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from .._exceptions import Cause
from ._faults import FaultKind, FaultLike, to_fault

__all__ = ["EXPECTED_CAUSE", "EXPECTED_CAUSE_NON_STREAMING", "expected_cause"]


EXPECTED_CAUSE: Mapping[FaultKind, Cause] = MappingProxyType(
    {
        FaultKind.STALL_HEADERS: Cause.TTFT_TIMEOUT,
        FaultKind.STALL_AFTER_HEADERS: Cause.TTFT_TIMEOUT,
        FaultKind.STALL_MID: Cause.STALL_TIMEOUT,
        FaultKind.DRIP: Cause.TTFT_TIMEOUT,
        FaultKind.RATE_LIMIT: Cause.RATE_LIMITED,
        FaultKind.HTTP_500: Cause.SERVER_ERROR,
        FaultKind.HTTP_502: Cause.SERVER_ERROR,
        FaultKind.HTTP_503: Cause.SERVER_ERROR,
        FaultKind.RESET: Cause.CONNECTION_LOST,
        FaultKind.TRUNCATE: Cause.TRUNCATED,
        FaultKind.MALFORMED: Cause.PROTOCOL_ERROR,
        FaultKind.ERROR_EVENT: Cause.SERVER_ERROR,
        FaultKind.MALFORMED_SHAPE: Cause.PROTOCOL_ERROR,
        FaultKind.HTML_PAGE: Cause.PROTOCOL_ERROR,
    }
)
"""What a correct client reports for each fault kind on a **streamed** request,
with the kind's default parameters (``drip`` defaults to ``after_events=0``, so
no content ever arrives: ``ttft_timeout``). Use `expected_cause` for a
fault with other parameters. Stalls and drips assume they outlast the client's
deadline (the default, ``duration=None``, always does)."""

EXPECTED_CAUSE_NON_STREAMING: Mapping[FaultKind, Cause] = MappingProxyType(
    {
        **EXPECTED_CAUSE,
        # A non-streamed body is the first (and only) content: any stall before it
        # completes is a time-to-first-token failure.
        FaultKind.STALL_MID: Cause.TTFT_TIMEOUT,
        FaultKind.DRIP: Cause.TTFT_TIMEOUT,
    }
)
"""Like `EXPECTED_CAUSE`, for requests with ``"stream": false``.

Non-streamed faults: ``stall_mid`` sends half the body then stalls; ``drip``
sends chunked whitespace forever; ``reset`` aborts after half the body;
``truncate`` sends a complete, valid JSON body whose choice has
``finish_reason: null`` and half the text; ``malformed`` sends a body that is
not JSON; ``error_event`` answers ``200`` with an ``{"error": {...}}`` body;
``malformed_shape`` sends a whole body with its variant's defect; ``html_page``
is the same HTML page as for a streamed request."""


def expected_cause(fault: FaultLike, *, stream: bool = True) -> Cause:
    """The `Cause` a correct client reports for ``fault``.

    Example::

        expected_cause("rate_limit")                              # Cause.RATE_LIMITED
        expected_cause(Fault(kind="drip", after_events=2))        # Cause.STALL_TIMEOUT
        expected_cause(Fault(kind="stall_mid", after_events=0))   # Cause.TTFT_TIMEOUT

    Args:
        fault: The fault, or a kind name meaning its default parameters.
        stream: Whether the request was streamed.

    Returns:
        The cause, assuming a stall or drip outlasts the client's deadlines.
    """
    fault = to_fault(fault)
    if not stream:
        return EXPECTED_CAUSE_NON_STREAMING[fault.kind]
    if fault.kind in (FaultKind.STALL_MID, FaultKind.DRIP):
        return Cause.STALL_TIMEOUT if fault.after_events > 0 else Cause.TTFT_TIMEOUT
    return EXPECTED_CAUSE[fault.kind]
