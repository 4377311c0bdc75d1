"""SSE decoding and JSON parsing: side-by-side ratios measured in one run.

Not a timed test: it prints a table. Run it with the candidates installed in a
throwaway environment (nothing is added to the project)::

    uv run --with httpx-sse --with orjson --with msgspec python tests/benchmarks/bench_sse.py

Missing candidates are skipped. What it measures, per SSE event of a realistic
OpenAI chat stream (role chunk, content chunks, keep-alive comments, finish
chunk, usage chunk, ``[DONE]``):

1. bytes -> events: shardline's ``SSEDecoder`` vs httpx-sse's pipeline
   (httpx's incremental text decoder + ``SSELineDecoder`` + ``SSEDecoder``,
   exactly what ``EventSource.aiter_sse`` runs), with one read per event
   (token streaming) and 64 KiB reads (bulk);
2. event data -> dict: ``json.loads`` vs ``orjson.loads`` vs ``msgspec.json.decode``;
3. end to end: decode + JSON + ``StreamAccumulator`` (the attempt's hot loop);
4. an endless line: how much each decoder buffers before giving up.

Ratios are against the first row of each section; lower is faster.
"""

from __future__ import annotations

import gc
import json
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import trio

from shardline._exceptions import ProtocolError
from shardline._openai import StreamAccumulator
from shardline._sse import SSEDecoder

REPEATS = 15


def make_stream(tokens: int = 400) -> tuple[bytes, list[bytes], int]:
    """An OpenAI-style chat stream: (whole bytes, one-chunk-per-event list, event count)."""
    base = {
        "id": "chatcmpl-0123456789abcdef",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "gpt-4o-mini-2024-07-18",
        "system_fingerprint": "fp_0123456789",
    }

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        obj = dict(
            base,
            choices=[{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            **extra,
        )
        return b"data: " + json.dumps(obj).encode() + b"\n\n"

    events = [chunk({"role": "assistant", "content": ""}, usage=None)]
    words = ["Hello", " world", ",", " this", " is", " a", " streamed", " token", " é", " ✓"]
    for i in range(tokens):
        events.append(chunk({"content": words[i % len(words)]}, usage=None))
        if i % 50 == 0:
            events.append(b": keep-alive\n\n")
    events.append(chunk({}, "stop", usage=None))
    usage = {"prompt_tokens": 20, "completion_tokens": tokens, "total_tokens": 20 + tokens}
    events.append(b"data: " + json.dumps(dict(base, choices=[], usage=usage)).encode() + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    data_events = sum(1 for e in events if e.startswith(b"data"))
    return b"".join(events), events, data_events


def rechunk(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def compare(
    fns: list[tuple[str, Callable[[], object]]], repeats: int = REPEATS
) -> list[tuple[str, float]]:
    """Time the candidates interleaved (round-robin), keeping each one's best run.

    Interleaving spreads any background load over all candidates alike, and
    process CPU time (not wall time) ignores the time the process spends
    descheduled, so the ratios stay meaningful on a busy machine.
    """
    for _, fn in fns:
        fn()  # warm up
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, (_, fn) in enumerate(fns):
            gc.collect()
            start = time.process_time()
            fn()
            best[i] = min(best[i], time.process_time() - start)
    return [(name, t) for (name, _), t in zip(fns, best, strict=True)]


def print_rows(results: list[tuple[str, float]], per: int) -> None:
    base = results[0][1]
    for name, t in results:
        print(row(name, t, per, base))


# Decoders ---------------------------------------------------------------------


def shardline_decode(chunks: list[bytes]) -> list[str]:
    decoder = SSEDecoder()
    out = [e.data for c in chunks for e in decoder.feed(c)]
    out.extend(e.data for e in decoder.end())
    return out


def httpx_sse_decode_factory() -> Callable[[list[bytes]], list[str]] | None:
    try:
        from httpx._decoders import TextDecoder
        from httpx_sse._decoders import SSEDecoder as HxSSEDecoder
        from httpx_sse._decoders import SSELineDecoder
    except ImportError:
        return None

    def decode(chunks: list[bytes]) -> list[str]:
        text = TextDecoder(encoding="utf-8")  # what Response.aiter_text() uses
        lines = SSELineDecoder()
        sse = HxSSEDecoder()
        out: list[str] = []
        for c in chunks:
            for line in lines.decode(text.decode(c)):
                ev = sse.decode(line.rstrip("\n"))
                if ev is not None:
                    out.append(ev.data)
        for line in lines.decode(text.flush()) + lines.flush():
            ev = sse.decode(line.rstrip("\n"))
            if ev is not None:
                out.append(ev.data)
        return out

    return decode


def json_candidates() -> list[tuple[str, Callable[[str], Any]]]:
    out: list[tuple[str, Callable[[str], Any]]] = [("json.loads (stdlib)", json.loads)]
    try:
        import orjson

        out.append((f"orjson.loads {orjson.__version__}", orjson.loads))
    except ImportError:
        pass
    try:
        import msgspec

        out.append((f"msgspec.json.decode {msgspec.__version__}", msgspec.json.decode))
    except ImportError:
        pass
    return out


def typed_msgspec_decoder() -> Callable[[str], Any] | None:
    """msgspec decoding straight into typed structs (its fastest mode)."""
    try:
        import msgspec
    except ImportError:
        return None
    delta = msgspec.defstruct("Delta", [("content", str | None, None), ("role", str | None, None)])
    choice = msgspec.defstruct(
        "Choice",
        [("index", int, 0), ("delta", delta | None, None), ("finish_reason", str | None, None)],
    )
    chunk = msgspec.defstruct(
        "Chunk", [("choices", list[choice], []), ("usage", dict[str, int] | None, None)]
    )
    return msgspec.json.Decoder(chunk).decode


def row(name: str, seconds: float, per: int, base: float) -> str:
    return f"  {name:<44} {seconds / per * 1e6:8.2f} us/event   x{seconds / base:5.2f}"


def main() -> None:
    whole, per_event, n_data = make_stream()
    print(f"python {platform.python_version()} on {platform.machine()}, {sys.platform}")
    print(
        f"stream: {len(whole)} bytes, {n_data} data events "
        f"({len(whole) / n_data:.0f} B/event), best of {REPEATS} interleaved runs"
    )
    hx = httpx_sse_decode_factory()
    reference = shardline_decode([whole])
    if hx is not None:
        assert hx([whole]) == reference, "decoders disagree"

    print("\n1. bytes -> events (decoder only)")
    for label, chunks in (
        ("one read per event", per_event),
        ("64 KiB reads", rechunk(whole, 65536)),
        ("100-byte reads", rechunk(whole, 100)),
    ):
        print(f" {label}:")
        fns: list[tuple[str, Callable[[], object]]] = [
            ("shardline SSEDecoder", lambda c=chunks: shardline_decode(c))
        ]
        if hx is not None:
            fns.append(("httpx-sse (text + line + SSE decoders)", lambda c=chunks: hx(c)))
        print_rows(compare(fns), n_data)

    print("\n2. event data -> dict (JSON only)")
    datas = [d for d in reference if d != "[DONE]"]
    cands = json_candidates()
    fns = [(name, lambda f=loads: [f(d) for d in datas]) for name, loads in cands]
    typed = typed_msgspec_decoder()
    if typed is not None:
        fns.append(("msgspec typed Struct decoder", lambda: [typed(d) for d in datas]))
    print_rows(compare(fns), len(datas))

    print("\n3. end to end: decode + JSON + StreamAccumulator, one read per event")

    def e2e(loads: Callable[[str], Any]) -> Callable[[], object]:
        def run() -> object:
            decoder = SSEDecoder()
            acc = StreamAccumulator(loads=loads)
            for c in per_event:
                for ev in decoder.feed(c):
                    acc.feed(ev)
            assert acc.complete
            return acc.text

        return run

    fns = [(f"shardline + {name}", e2e(loads)) for name, loads in cands]
    if hx is not None:
        from shardline._sse import SSEEvent

        def hx_e2e() -> object:
            acc = StreamAccumulator()
            for d in hx(per_event):
                acc.feed(SSEEvent(d))
            return acc.text

        fns.append(("httpx-sse + json.loads (stdlib)", hx_e2e))
    print_rows(compare(fns), n_data)

    print("\n4. an endless line (no newline ever), fed in 64 KiB reads, 8 MiB offered")
    blob = rechunk(b"data: " + b"x" * (8 << 20), 65536)
    decoder = SSEDecoder()
    fed = 0
    try:
        for c in blob:
            decoder.feed(c)
            fed += len(c)
        print("  shardline: no error?!")
    except ProtocolError as exc:
        print(f"  shardline: ProtocolError after {fed >> 10} KiB buffered: {exc}")
    if hx is not None:
        from httpx._decoders import TextDecoder
        from httpx_sse._decoders import SSELineDecoder

        text, lines = TextDecoder(encoding="utf-8"), SSELineDecoder()
        for c in blob:
            lines.decode(text.decode(c))
        held = sum(len(s) for s in getattr(lines, "buffer", []))
        print(f"  httpx-sse: no error, {held >> 10} KiB held in its line buffer (unbounded)")

    print("\n5. for scale: the same stream through httpx.AsyncClient (MockTransport, no socket)")
    fns = [
        ("httpx client.stream + aiter_raw only", lambda: trio.run(httpx_stream, per_event, None))
    ]
    for name, loads in cands:
        label = f"... + SSEDecoder + {name.split()[0]} + StreamAccumulator"
        fns.append((label, lambda f=loads: trio.run(httpx_stream, per_event, f)))
    print_rows(compare(fns, repeats=9), n_data)

    print("\n6. real loopback: the fake server in this process, one token per event, 2000 events")
    loopback_section()


def loopback_section() -> None:
    """Section 6: real loopback sockets through the in-process fake server."""
    try:
        from shardline._attempt import send_attempt
        from shardline._config import Deadlines, Endpoint
        from shardline._http import make_client
        from shardline._models import ChatRequest
        from shardline.testing import open_fake_server
    except ImportError:
        print("  shardline.testing not available: skipped")
        return
    tokens = 2000
    request = ChatRequest(
        messages=[{"role": "user", "content": "hi"}], params={"max_tokens": tokens}
    )
    deadlines = Deadlines(connect=5, ttft=10, stall=10, attempt=60)
    results: dict[str, float] = {}

    async def run(repeats: int) -> None:
        async with open_fake_server() as server:
            endpoint = Endpoint(base_url=server.base_url, api_key="k", model="m")
            async with make_client(endpoint, max_connections=1, deadlines=deadlines) as client:
                body = request.body(model="m", stream=True)
                url = endpoint.url_for(request.path)

                async def raw() -> None:
                    async with client.stream("POST", url, json=body) as resp:
                        async for _ in resp.aiter_raw():
                            pass

                async def full() -> None:
                    result = await send_attempt(client, endpoint, request, deadlines)
                    assert result.usage.completion_tokens == tokens

                fns = [("httpx client.stream + aiter_raw only", raw), ("send_attempt", full)]
                for _, fn in fns:
                    await fn()
                for _ in range(repeats):
                    for name, fn in fns:
                        start = time.process_time()
                        await fn()
                        took = time.process_time() - start
                        results[name] = min(results.get(name, float("inf")), took)

    trio.run(run, 7)
    print_rows(list(results.items()), tokens)
    print("  (process CPU of client and server together; the difference is the client's parsing)")


async def httpx_stream(events: list[bytes], loads: Callable[[str], Any] | None) -> None:
    """Stream ``events`` (one read each) through httpx, optionally decoding them."""
    import httpx

    class Body(httpx.AsyncByteStream):
        async def __aiter__(self) -> Any:
            for e in events:
                yield e

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=Body())

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    url = "http://bench/v1/chat/completions"
    async with client, client.stream("POST", url, json={}) as resp:
        if loads is None:
            async for _ in resp.aiter_raw():
                pass
            return
        decoder = SSEDecoder()
        acc = StreamAccumulator(loads=loads)
        async for chunk in resp.aiter_raw():
            for ev in decoder.feed(chunk):
                acc.feed(ev)
        assert acc.complete


if __name__ == "__main__":
    main()
