"""The malformed_shape and html_page faults, observed as raw bytes with a plain httpx client."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import trio

from shardline._exceptions import Cause
from shardline.testing import (
    SHAPE_VARIANTS,
    FakeServer,
    Fault,
    FaultPlan,
    FaultSpecError,
    ShapeVariant,
    expected_cause,
    fetch_statistics,
    open_fake_server,
)

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 6}
STREAM = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
ONE_MIB = 1 << 20


def client(server: FakeServer) -> httpx.AsyncClient:
    """An httpx client for ``server``; a bounded timeout, the server answers at once."""
    return httpx.AsyncClient(base_url=server.base_url, timeout=10.0)


def item(name: str, attempt: int = 1) -> dict[str, str]:
    """The shardline request headers of one attempt of item ``name``."""
    return {"x-shardline-item-id": name, "x-shardline-attempt": str(attempt)}


def data_lines(raw: bytes) -> list[bytes]:
    """The payloads of the ``data:`` lines of an SSE body, as bytes."""
    return [line[6:] for line in raw.split(b"\n") if line.startswith(b"data: ")]


def loads(payload: bytes) -> Any:
    """JSON-decode ``payload``, or return ``None`` if it is not JSON."""
    try:
        return json.loads(payload)
    except ValueError:
        return None


def choices_of(events: list[Any]) -> list[Any]:
    """The ``choices`` values of the object events."""
    return [e.get("choices") for e in events if isinstance(e, dict) and "choices" in e]


def first_choice_values(events: list[Any], key: str) -> list[Any]:
    """Values of ``key`` in the first choice of every well-shaped choice list."""
    out = []
    for choices in choices_of(events):
        if (
            isinstance(choices, list)
            and choices
            and isinstance(choices[0], dict)
            and key in choices[0]
        ):
            out.append(choices[0][key])
    return out


def usages(events: list[Any]) -> list[Any]:
    """The non-null ``usage`` values of the object events."""
    return [e["usage"] for e in events if isinstance(e, dict) and e.get("usage") is not None]


# What each variant looks like in a streamed response: a check over the ``data:``
# payloads (raw bytes) and their decoded JSON (None where not JSON).
StreamCheck = Callable[[list[bytes], list[Any]], bool]
STREAMED: dict[str, StreamCheck] = {
    "choices_not_list": lambda raw, ev: 1 in choices_of(ev),
    "choice_not_object": lambda raw, ev: [1] in choices_of(ev),
    "delta_not_object": lambda raw, ev: any(
        isinstance(d, str) for d in first_choice_values(ev, "delta")
    ),
    "message_not_object": lambda raw, ev: any(
        isinstance(d, str) for d in first_choice_values(ev, "delta")
    ),
    "content_not_string": lambda raw, ev: (
        any(
            isinstance(c, list)
            and c[0]["delta"] == {"content": 5}
            and c[0]["finish_reason"] == "length"
            for c in choices_of(ev)
        )
        and raw[-1] == b"[DONE]"
    ),
    "finish_reason_not_string": lambda raw, ev: 1 in first_choice_values(ev, "finish_reason"),
    "usage_negative": lambda raw, ev: any(u["prompt_tokens"] < 0 for u in usages(ev)),
    "usage_not_integer": lambda raw, ev: any(
        isinstance(u["prompt_tokens"], str) for u in usages(ev)
    ),
    "error_not_object": lambda raw, ev: {"error": "overloaded"} in ev and raw[-1] == b"[DONE]",
    "json_array": lambda raw, ev: any(isinstance(e, list) for e in ev),
    "json_scalar": lambda raw, ev: 42 in ev,
    "not_utf8": lambda raw, ev: any(b"\xff" in r for r in raw),
    "garbage_after_finish": lambda raw, ev: (
        raw[-1] == b"[DONE]"
        and loads(raw[-2]) is None
        and "length" in first_choice_values(ev, "finish_reason")
    ),
    "line_too_long": lambda raw, ev: max(len(r) for r in raw) > ONE_MIB,
}


def test_every_variant_has_a_streamed_check() -> None:
    """The table above covers every variant (so the next test checks them all)."""
    assert set(STREAMED) == set(SHAPE_VARIANTS) == {v.value for v in ShapeVariant}


@pytest.mark.parametrize("variant", SHAPE_VARIANTS)
async def test_streamed_shape_variants(variant: str) -> None:
    """Each variant sends its defect in a streamed chat answer, is counted, and is no success."""
    fault = Fault(kind="malformed_shape", variant=variant)
    async with open_fake_server(faults=FaultPlan(items={"a": fault})) as server:
        async with client(server) as c:
            response = await c.post("/chat/completions", json=STREAM, headers=item("a"))
            raw = data_lines(response.content)
            # A good request on the same server is unaffected.
            ok = await c.post("/chat/completions", json=STREAM, headers=item("b"))
        stats = server.statistics()
    assert response.status_code == 200
    assert response.headers["x-shardline-fault"] == "malformed_shape"
    assert response.headers["x-shardline-shape"] == variant
    events = [loads(r) for r in raw]
    assert STREAMED[variant](raw, events), raw[:8]
    assert ok.status_code == 200
    assert data_lines(ok.content)[-1] == b"[DONE]"
    assert stats.faults == {"malformed_shape": 1}
    assert stats.malformed_shapes == {variant: 1}
    assert stats.completed == 1  # only the good one


def whole_body_check(variant: str, body: bytes) -> bool:
    """Whether a non-streamed ``body`` has ``variant``'s defect."""
    value = loads(body)
    if variant == "not_utf8":
        return b"\xff" in body
    if variant == "garbage_after_finish":
        head, _, tail = body.partition(b"\n")
        return value is None and isinstance(loads(head), dict) and tail.startswith(b"}{")
    if variant == "line_too_long":
        return value is None and len(body) > ONE_MIB
    if variant == "json_array":
        return isinstance(value, list) and value[0]["object"] == "chat.completion"
    if variant == "json_scalar":
        return value == 42
    if variant == "error_not_object":
        return value == {"error": "overloaded"}
    assert isinstance(value, dict)
    choices, usage = value["choices"], value["usage"]
    return {
        "choices_not_list": lambda: choices == 1,
        "choice_not_object": lambda: choices == [1],
        "delta_not_object": lambda: isinstance(choices[0]["message"], str),
        "message_not_object": lambda: isinstance(choices[0]["message"], str),
        "content_not_string": lambda: choices[0]["message"]["content"] == 5,
        "finish_reason_not_string": lambda: choices[0]["finish_reason"] == 1,
        "usage_negative": lambda: usage["completion_tokens"] < 0,
        "usage_not_integer": lambda: usage["completion_tokens"] == "6",
    }[variant]()


@pytest.mark.parametrize("variant", SHAPE_VARIANTS)
async def test_non_streamed_shape_variants(variant: str) -> None:
    """Each variant has a non-streamed form, sent as a 200 JSON response, never completed."""
    plan = FaultPlan(items={("a", 2): Fault(kind="malformed_shape", variant=variant)})
    async with open_fake_server(faults=plan) as server, client(server) as c:
        first = await c.post("/chat/completions", json=CHAT, headers=item("a", 1))
        response = await c.post("/chat/completions", json=CHAT, headers=item("a", 2))
        stats = server.statistics()
    assert first.json()["choices"][0]["finish_reason"] == "length"
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert whole_body_check(variant, response.content), response.content[:200]
    assert stats.malformed_shapes == {variant: 1}
    assert stats.completed == 1


@pytest.mark.parametrize(
    ("variant", "check"),
    [
        ("content_not_string", lambda c: c["text"] == 5),
        ("delta_not_object", lambda c: isinstance(c["text"], list)),
        ("finish_reason_not_string", lambda c: c["finish_reason"] == 1),
    ],
)
async def test_legacy_completions_shapes(variant: str, check: Callable[[Any], bool]) -> None:
    """On /completions a choice's text (not a delta) carries the defect, streamed and not."""
    plan = FaultPlan(rates={Fault(kind="malformed_shape", variant=variant): 1.0})
    body = {"model": "m", "prompt": "hi", "max_tokens": 3}
    async with open_fake_server(faults=plan) as server, client(server) as c:
        whole = (await c.post("/completions", json=body)).json()
        streamed = await c.post("/completions", json={**body, "stream": True})
    assert check(whole["choices"][0])
    events = [loads(r) for r in data_lines(streamed.content)]
    assert any(isinstance(ch, list) and ch and check(ch[0]) for ch in choices_of(events))


async def test_drawn_variants_are_seeded_and_fit_the_mode() -> None:
    """malformed_shape=1 draws a variant per (item, attempt): the same on a repeat, many kinds."""
    async with open_fake_server(faults="malformed_shape=1", seed=3) as server, client(server) as c:
        streamed = {}
        whole = {}
        for i in range(60):
            r = await c.post(
                "/chat/completions", json={**STREAM, "max_tokens": 2}, headers=item(f"s{i}")
            )
            streamed[i] = r.headers["x-shardline-shape"]
            w = await c.post("/chat/completions", json=CHAT, headers=item(f"w{i}"))
            whole[i] = w.headers["x-shardline-shape"]
        again = await c.post("/chat/completions", json=STREAM, headers=item("s7"))
        stats = server.statistics()
    assert again.headers["x-shardline-shape"] == streamed[7]
    assert len(set(streamed.values())) >= 8
    assert "message_not_object" not in streamed.values()
    assert "delta_not_object" not in whole.values()
    assert stats.faults["malformed_shape"] == 121
    assert sum(stats.malformed_shapes.values()) == 121
    assert stats.completed == 0


@pytest.mark.parametrize("stream", [True, False])
async def test_html_page_is_a_200_html_answer(stream: bool) -> None:
    """html_page: 200 with text/html for streamed and non-streamed requests; not completed."""
    body = STREAM if stream else CHAT
    async with open_fake_server(faults="html_page@request=1") as server, client(server) as c:
        response = await c.post("/chat/completions", json=body)
        ok = await c.post("/chat/completions", json=body)
        stats = server.statistics()
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["x-shardline-fault"] == "html_page"
    assert response.content.startswith(b"<!DOCTYPE html>")
    assert ok.status_code == 200
    assert stats.faults == {"html_page": 1}
    assert stats.completed == 1


async def test_shape_counters_reach_the_stats_endpoint() -> None:
    """/_shardline/stats carries malformed_shapes, read back by fetch_statistics."""
    spec = "malformed_shape@item=a:variant=json_scalar"
    async with open_fake_server(faults=spec) as server, client(server) as c:
        await c.post("/chat/completions", json=STREAM, headers=item("a", 1))
        await c.post("/chat/completions", json=STREAM, headers=item("a", 2))
        raw = (await c.get(server.base_url.removesuffix("/v1") + "/_shardline/stats")).json()
        fetched = await trio.to_thread.run_sync(fetch_statistics, server.base_url)
    assert raw["malformed_shapes"] == {"json_scalar": 2}
    assert raw["faults"] == {"malformed_shape": 2}
    assert raw["completed"] == 0
    assert fetched.malformed_shapes == {"json_scalar": 2}


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            "malformed_shape@item=a/1:variant=content_not_string",
            FaultPlan(
                items={("a", 1): Fault(kind="malformed_shape", variant="content_not_string")}
            ),
        ),
        ("malformed_shape=0.3", FaultPlan(rates={Fault(kind="malformed_shape"): 0.3})),
        (
            "malformed_shape=0.2:variant=not_utf8:after=2,html_page=0.1",
            FaultPlan(
                rates={
                    Fault(kind="malformed_shape", variant="not_utf8", after_events=2): 0.2,
                    Fault(kind="html_page"): 0.1,
                }
            ),
        ),
    ],
)
def test_parse_shape_specs(spec: str, expected: FaultPlan) -> None:
    """The --faults grammar takes variant=NAME for malformed_shape."""
    assert FaultPlan.parse(spec) == expected


def test_variant_errors_name_the_problem() -> None:
    """An unknown variant, or a variant on another kind, is an error naming it."""
    with pytest.raises(
        FaultSpecError,
        match="unknown malformed_shape variant 'nope'; expected one of: choices_not_list",
    ):
        FaultPlan.parse("malformed_shape=0.1:variant=nope")
    with pytest.raises(
        ValueError, match=r"^variant is only for malformed_shape faults, not reset$"
    ):
        Fault(kind="reset", variant="json_scalar")


def test_shape_faults_expect_protocol_errors() -> None:
    """A correct client reports protocol_error for every shape and for an HTML page."""
    for stream in (True, False):
        assert expected_cause("html_page", stream=stream) is Cause.PROTOCOL_ERROR
        for variant in SHAPE_VARIANTS:
            fault = Fault(kind="malformed_shape", variant=variant)
            assert expected_cause(fault, stream=stream) is Cause.PROTOCOL_ERROR
