"""One attempt of one item on a shard, with everything it records.

:func:`send_one` sends the attempt through :func:`~shardline._attempt.send_attempt`
while the shard holds its in-flight slot and the endpoint's flow permit, and
settles what the attempt owes: the permit (success, overload or neither), the
TPM charge (reconciled with the usage), the ``attempt_start`` /
``first_token`` / ``attempt_end`` events. :func:`defect` turns an exception
that is a bug in shardline into the item's :class:`InternalError`, loudly.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any, Protocol
from urllib.parse import quote

import httpx
import trio

from ._attempt import AttemptResult, send_attempt
from ._events import AttemptEnd, AttemptStart, FirstToken
from ._exceptions import AttemptError, Cause, InternalError, RateLimited
from ._flow import FlowPermit
from ._models import Outcome, Result, Status
from ._ratelimit import Charge
from ._state import RunState, Upstream, WorkItem

__all__ = ["RaceLeg", "Sending", "defect", "not_sent", "send_one"]

log = logging.getLogger("shardline")


class Sending(Protocol):
    """What :func:`send_one` needs of its shard."""

    index: int
    state: RunState
    upstream: Upstream
    client: httpx.AsyncClient
    in_flight: int


class RaceLeg(Protocol):
    """One leg of a hedged attempt (:mod:`shardline._hedge`), as :func:`send_one` sees it."""

    @property
    def hedge(self) -> bool:
        """Whether this leg is the hedge (sent with ``x-shardline-hedge: 1``)."""

    @property
    def lost(self) -> bool:
        """Whether the other leg won (then this one is being cancelled)."""

    def on_content(self, ttft_s: float) -> None:
        """Called at the leg's first content event, right after ``first_token``."""


async def send_one(
    shard: Sending,
    item: WorkItem,
    attempt: int,
    charge: Charge | None,
    estimate_in: int,
    permit: FlowPermit | None,
    ticket: int | None = None,
    *,
    race: RaceLeg | None = None,
) -> Outcome | AttemptError:
    """Send attempt ``attempt`` of ``item`` (holding a slot and ``permit``): its
    outcome, or its error. Settles ``permit`` however the attempt ends, and
    gives the header pacer the answer to send ``ticket`` (or says there was none).

    ``race``: the hedged-attempt leg this send is, told of its first content;
    a leg cancelled because it lost is charged its prompt (the server may
    have processed it)."""
    state = shard.state
    upstream = shard.upstream
    flow = upstream.flow if permit is not None else None
    started = state.now()
    item.attempts = attempt
    state.emit(AttemptStart(t=started, item_id=item.id, shard=shard.index, attempt=attempt))

    def first_token(ttft_s: float) -> None:
        state.emit(
            FirstToken(
                t=state.now(),
                item_id=item.id,
                shard=shard.index,
                attempt=attempt,
                ttft_s=ttft_s,
            )
        )
        if race is not None:
            race.on_content(ttft_s)

    pacer = upstream.pacer
    got_response = False

    def answered(headers: httpx.Headers) -> None:
        nonlocal got_response
        got_response = True
        if pacer is not None:
            pacer.observe_headers(headers, ticket=ticket)

    headers = {
        "x-shardline-item-id": quote(str(item.id), safe=""),
        "x-shardline-attempt": str(attempt),
    }
    if race is not None and race.hedge:
        headers["x-shardline-hedge"] = "1"
    shard.in_flight += 1
    try:
        result: AttemptResult = await send_attempt(
            shard.client,
            upstream.endpoint,
            item.request,
            state.deadlines,
            headers=headers,
            on_first_token=first_token,
            on_response=None if pacer is None else answered,
        )
    except AttemptError as err:
        if flow is not None and permit is not None:
            if isinstance(err, RateLimited) and err.retry_after is not None:
                # The server said when to come back: the shard's cooldown paces
                # that (it is a rate, not a concurrency, limit); the in-flight
                # limit learns from refusals that carry no such answer.
                flow.on_ignore(permit)
            else:
                flow.on_failure(permit, err.cause, status_code=err.status_code)
        # A server that answered 200 has processed the prompt; one that
        # refused (429, 5xx) or never answered has not.
        accepted = err.status_code is not None and err.status_code < 300
        _reconcile(state, charge, estimate_in if accepted else 0)
        err.item_id, err.shard, err.attempt = item.id, shard.index, attempt
        _attempt_ended(
            state,
            shard.index,
            item,
            attempt,
            "failed",
            cause=err.cause.value,
            status_code=err.status_code,
            duration_s=state.now() - started,
            retry_after_s=err.retry_after,
            message=err.message,
        )
        return err
    except trio.Cancelled:
        lost = race is not None and race.lost
        if flow is not None and permit is not None:
            flow.on_ignore(permit)
        _reconcile(state, charge, estimate_in if lost else 0)
        _attempt_ended(
            state,
            shard.index,
            item,
            attempt,
            "cancelled",
            cause=Cause.CANCELLED.value,
            duration_s=state.now() - started,
            message="lost the hedge race" if lost else None,
        )
        raise
    except Exception as exc:
        if flow is not None and permit is not None:
            flow.on_ignore(permit)
        _reconcile(state, charge, 0)
        error = defect(state, shard.index, item, exc)
        _attempt_ended(
            state,
            shard.index,
            item,
            attempt,
            "failed",
            cause=Cause.INTERNAL_ERROR.value,
            duration_s=state.now() - started,
            message=error.traceback,
        )
        raise error from exc
    finally:
        shard.in_flight -= 1
        if pacer is not None and ticket is not None and not got_response:
            pacer.unanswered(ticket)
    if flow is not None and permit is not None:
        flow.on_success(permit, ttft_s=result.ttft_s)
    _reconcile(state, charge, result.usage.total_tokens)
    _attempt_ended(
        state,
        shard.index,
        item,
        attempt,
        "ok",
        status_code=result.status_code,
        prompt_tokens=result.usage.prompt_tokens,
        completion_tokens=result.usage.completion_tokens,
        usage_estimated=result.usage.estimated,
        ttft_s=result.ttft_s,
        duration_s=result.duration_s,
        tool_calls=len(result.tool_calls),
        tool_arguments_invalid=sum(not call.arguments_valid for call in result.tool_calls),
        reasoning=bool(result.reasoning),
        refusal=bool(result.refusal),
        embeddings=0 if result.embeddings is None else len(result.embeddings),
    )
    latency = state.now() - item.admitted_at
    return Outcome(
        id=item.id,
        status=Status.OK,
        result=Result(
            id=item.id,
            text=result.text,
            finish_reason=result.finish_reason,
            usage=result.usage,
            attempts=attempt,
            shard=shard.index,
            ttft_s=result.ttft_s,
            latency_s=latency,
            tool_calls=result.tool_calls,
            reasoning=result.reasoning,
            refusal=result.refusal,
            logprobs=result.logprobs,
            embeddings=result.embeddings,
        ),
        attempts=attempt,
        shard=shard.index,
        latency_s=latency,
    )


def defect(state: RunState, shard: int, item: WorkItem, exc: Exception) -> InternalError:
    """The :class:`InternalError` for a defect that hit ``item``, logged and counted."""
    if isinstance(exc, InternalError):
        return exc
    text = "".join(traceback.format_exception(exc))
    state.internal_errors += 1
    log.error(
        "internal error (a shardline bug) on item %r, shard %d; the item failed, the run goes on",
        item.id,
        shard,
        exc_info=exc,
    )
    error = InternalError(
        f"internal error: {type(exc).__name__}: {exc}", item_id=item.id, traceback=text
    )
    error.__cause__ = exc
    return error


def _reconcile(state: RunState, charge: Charge | None, actual: int) -> None:
    if charge is not None and state.tpm is not None:
        state.tpm.reconcile(charge, actual)


def _attempt_ended(
    state: RunState, shard: int, item: WorkItem, attempt: int, outcome: str, **fields: Any
) -> None:
    state.emit(
        AttemptEnd(
            t=state.now(),
            item_id=item.id,
            shard=shard,
            attempt=attempt,
            outcome=outcome,
            api=item.request.api,
            **fields,
        )
    )


def not_sent(shard: Sending, item: WorkItem, attempt: int, error: AttemptError) -> AttemptError:
    """Record attempt ``attempt`` of ``item`` as failed before it was sent (every
    endpoint's circuit open): it counts against the item's attempts like any other."""
    state = shard.state
    item.attempts = attempt
    error.item_id, error.shard, error.attempt = item.id, shard.index, attempt
    state.emit(AttemptStart(t=state.now(), item_id=item.id, shard=shard.index, attempt=attempt))
    _attempt_ended(
        state,
        shard.index,
        item,
        attempt,
        "failed",
        cause=error.cause.value,
        duration_s=0.0,
        message=error.message,
    )
    return error
