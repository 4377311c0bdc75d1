"""Where shardline's CPU per request goes, without sockets: layer by layer, in one process.

Not a timed test: it prints a table. Run it from the repository root::

    uv run python tests/benchmarks/bench_overhead.py            # ~30 s
    uv run python tests/benchmarks/bench_overhead.py --quick    # ~10 s

Every row sends the same requests through an ``httpx.MockTransport`` that answers
each one with the same pre-built SSE body (the fake server's bytes for a
150-token chat completion: role chunk, 150 one-token content events, finish
chunk, usage chunk, ``[DONE]``), so no socket, no server and no scheduling noise
is involved: what is left is the client's own Python work. Rows add one layer at
a time (64 requests in flight):

1. ``httpx`` ``client.stream`` + ``aiter_bytes`` only (the transport floor);
2. + the floor's SSE handling (``aiter_lines`` + ``json.loads``), the raw-httpx loop;
3. ``send_attempt`` (shardline's attempt: SSE decoder, accumulator, deadlines);
4. the pipeline (``open_pipeline`` + ``map``) with a sink that drops events;
5. the pipeline + ``JsonlEventSink`` (the events file, sha256, flush per line);
6. the pipeline + JSONL + the live ``ReportBuilder`` (what ``shardline run`` adds);
7. and, apart, the same 150-token body cut into one chunk per event (as a paced
   server sends it, so every event costs a read): the httpx floor, then
   ``send_attempt``; the difference divided by the events is shardline's own
   cost per event on the paced benchmark's hot path, without sockets;
8. and each candidate patch of ``_experiments.py`` on row 5.

Measured: process CPU time per request (best of ``--repeats`` runs, rows
interleaved round-robin so background load spreads over all rows alike).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import PROMPT, machine, table

from shardline._attempt import send_attempt
from shardline._config import Deadlines, Endpoint, PipelineConfig
from shardline._models import ChatRequest, Outcome
from shardline._pipeline import open_pipeline
from shardline._sinks import JsonlEventSink, TeeSink
from shardline.report import ReportBuilder

TOKENS = 150
CONCURRENCY = 64


def sse_body(tokens: int = TOKENS) -> bytes:
    """The fake server's streamed body for one chat completion, byte for byte."""
    from shardline.testing._wire import ResponseTemplate as _Response

    resp = _Response(
        chat=True,
        id="chatcmpl-shardline1",
        created=1_700_000_000,
        model="shardline-fake",
        prompt_tokens=200,
        completion_tokens=tokens,
        finish_reason="length",
        include_usage=True,
    )
    parts = [resp.role_event()]
    parts += [resp.content_event(i, 1) for i in range(tokens)]
    parts += [resp.finish_event(), resp.usage_event(), b"data: [DONE]\n\n"]
    return b"".join(parts)


BODY = sse_body()
#: The same body cut after each event: one event per read, as a paced server sends it.
EVENTS = [part + b"\n\n" for part in BODY.split(b"\n\n")[:-1]]


def handler(request: httpx.Request) -> httpx.Response:
    return httpx.Response(
        200, headers={"content-type": "text/event-stream"}, content=BODY, request=request
    )


class _Paced(httpx.AsyncByteStream):
    async def __aiter__(self) -> Any:
        for event in EVENTS:
            yield event


def paced_handler(request: httpx.Request) -> httpx.Response:
    return httpx.Response(
        200, headers={"content-type": "text/event-stream"}, stream=_Paced(), request=request
    )


def transport(_shard: int = 0) -> httpx.AsyncBaseTransport:
    return httpx.MockTransport(handler)


def paced_transport(_shard: int = 0) -> httpx.AsyncBaseTransport:
    return httpx.MockTransport(paced_handler)


ENDPOINT = Endpoint(base_url="http://127.0.0.1:9/v1", api_key="sk-bench", model="shardline-fake")


def requests(n: int) -> list[ChatRequest]:
    return [
        ChatRequest(
            messages=[{"role": "user", "content": PROMPT}], id=i, params={"max_tokens": TOKENS}
        )
        for i in range(n)
    ]


async def _bounded(n: int, one: Callable[[int], Any]) -> None:
    limiter = trio.CapacityLimiter(CONCURRENCY)

    async def run(i: int) -> None:
        try:
            await one(i)
        finally:
            limiter.release_on_behalf_of(i)

    async with trio.open_nursery() as nursery:
        for i in range(n):
            await limiter.acquire_on_behalf_of(i)
            nursery.start_soon(run, i)


async def row_httpx_bytes(n: int, _tmp: Path) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": PROMPT}], "stream": True}
    async with httpx.AsyncClient(transport=transport()) as client:

        async def one(_i: int) -> None:
            async with client.stream("POST", ENDPOINT.url_for("chat/completions"), json=body) as r:
                async for _ in r.aiter_bytes():
                    pass

        await _bounded(n, one)


async def row_httpx_bytes_paced(n: int, _tmp: Path) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": PROMPT}], "stream": True}
    async with httpx.AsyncClient(transport=paced_transport()) as client:

        async def one(_i: int) -> None:
            async with client.stream("POST", ENDPOINT.url_for("chat/completions"), json=body) as r:
                async for _ in r.aiter_bytes():
                    pass

        await _bounded(n, one)


async def row_httpx_lines(n: int, _tmp: Path) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": PROMPT}], "stream": True}
    loads = json.loads
    async with httpx.AsyncClient(transport=transport()) as client:

        async def one(_i: int) -> None:
            parts = []
            async with client.stream("POST", ENDPOINT.url_for("chat/completions"), json=body) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        obj = loads(line[6:])
                        ch = obj.get("choices")
                        if ch:
                            c = ch[0].get("delta", {}).get("content")
                            if c:
                                parts.append(c)

        await _bounded(n, one)


async def row_attempt(n: int, _tmp: Path, *, paced: bool = False) -> None:
    reqs = requests(n)
    deadlines = Deadlines()
    # What open_pipeline builds for a shard when given a transport.
    client = httpx.AsyncClient(transport=paced_transport() if paced else transport(), timeout=None)
    async with client:

        async def one(i: int) -> None:
            await send_attempt(
                client,
                ENDPOINT,
                reqs[i],
                deadlines,
                headers={"x-shardline-item-id": str(i), "x-shardline-attempt": "1"},
            )

        await _bounded(n, one)


async def row_attempt_paced(n: int, tmp: Path) -> None:
    await row_attempt(n, tmp, paced=True)


class _Null:
    def emit(self, event: Any) -> None:
        pass

    def close(self) -> None:
        pass


async def _pipeline(n: int, sink: Any) -> None:
    config = PipelineConfig(endpoint=ENDPOINT, shard_count=8, concurrency=CONCURRENCY // 8, seed=1)
    send, recv = trio.open_memory_channel[Outcome](64)
    async with open_pipeline(config, sink=sink, transport=transport) as pipeline:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pipeline.map, requests(n), send)
            async for outcome in recv:
                assert outcome.ok, outcome


async def row_pipeline_null(n: int, _tmp: Path) -> None:
    await _pipeline(n, _Null())


async def row_pipeline_jsonl(n: int, tmp: Path) -> None:
    sink = JsonlEventSink(tmp / "events.jsonl")
    try:
        await _pipeline(n, sink)
    finally:
        sink.close()


async def row_pipeline_jsonl_report(n: int, tmp: Path) -> None:
    sink = JsonlEventSink(tmp / "events.jsonl")
    try:
        await _pipeline(n, TeeSink(sink, ReportBuilder()))
    finally:
        sink.close()


ROWS: list[tuple[str, Callable[[int, Path], Any], list[str]]] = [
    ("httpx client.stream + aiter_bytes (floor)", row_httpx_bytes, []),
    ("+ aiter_lines + json.loads (raw httpx loop)", row_httpx_lines, []),
    ("send_attempt (decoder, accumulator, deadlines)", row_attempt, []),
    ("pipeline, events dropped", row_pipeline_null, []),
    ("pipeline + JsonlEventSink", row_pipeline_jsonl, []),
    ("pipeline + JSONL + live ReportBuilder (CLI)", row_pipeline_jsonl_report, []),
    ("one event per read: httpx client.stream + aiter_bytes", row_httpx_bytes_paced, []),
    ("one event per read: send_attempt", row_attempt_paced, []),
]
#: Rows 7 and 8 are compared with each other, not with the rows above.
PACED_ROWS = 2


def run_row(fn: Callable[[int, Path], Any], n: int, patches: list[str]) -> float:
    import subprocess

    # Each measurement in a fresh process, so monkeypatches and warm caches do not leak.
    code = (
        "import sys, time, trio, tempfile, pathlib\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n"
        "import bench_overhead as B, _experiments as E\n"
        f"E.apply({patches!r})\n"
        f"fn = getattr(B, {fn.__name__!r})\n"
        "with tempfile.TemporaryDirectory() as d:\n"
        "    trio.run(fn, 50, pathlib.Path(d))\n"  # warm up
        "    c = time.process_time()\n"
        f"    trio.run(fn, {n}, pathlib.Path(d))\n"
        "    print(time.process_time() - c)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, text=True)
    return float(out.stdout.strip().splitlines()[-1]) / n


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--requests", type=int, default=None, help="requests per run (1500; quick 500)")
    ap.add_argument("--repeats", type=int, default=None, help="runs per row, best (3; quick 2)")
    args = ap.parse_args()
    n = args.requests or (500 if args.quick else 1500)
    repeats = args.repeats or (2 if args.quick else 3)
    from _experiments import PATCHES

    rows = list(ROWS)
    for name in PATCHES:
        rows.append((f"pipeline + JSONL, patch {name}", row_pipeline_jsonl, [name]))
    print(f"# bench_overhead: {machine()}")
    print(
        f"# {n} requests per run, {TOKENS}-token streamed responses ({len(BODY):,} bytes, one "
        f"chunk) from httpx.MockTransport, {CONCURRENCY} in flight; best of {repeats}\n"
    )
    t0 = time.monotonic()
    best: dict[int, float] = {}
    for _ in range(repeats):
        for idx, (_label, fn, patches) in enumerate(rows):
            v = run_row(fn, n, patches)
            best[idx] = min(best.get(idx, v), v)
    floor = best[1]
    out = []
    prev = None
    for idx, (label, _fn, _p) in enumerate(rows):
        us = best[idx] * 1e6
        delta = "" if prev is None or idx >= len(ROWS) else f"{us - prev:+.0f}"
        ratio = f"{best[idx] / floor:.2f}x"
        if idx == len(ROWS) - PACED_ROWS:
            delta, ratio = "", "-"
        elif idx == len(ROWS) - PACED_ROWS + 1:
            per_event = (best[idx] - best[idx - 1]) * 1e6 / len(EVENTS)
            ratio = f"{best[idx] / best[idx - 1]:.2f}x row {idx}"
            delta += f" ({per_event:.1f} per event)"
        if idx >= len(ROWS):
            delta = f"{us - best[4] * 1e6:+.0f} vs row 5"
        out.append([str(idx + 1), label, f"{us:.0f}", delta, ratio])
        if idx < len(ROWS):
            prev = us
    print(table(["#", "layer", "CPU us/request", "added", "vs raw httpx loop"], out))
    print(f"\n(total {time.monotonic() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
