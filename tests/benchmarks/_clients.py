"""The clients the benchmarks compare, one per process: ``python _clients.py KIND < params.json``.

KIND is one of:

* ``shardline`` -- ``open_pipeline`` + ``Pipeline.map``, events to a JSONL sink, report
  computed from the events file with ``compute_report`` (our own TPM).
  On the default transport, shardline's own HTTP/1.1 transport (``"lean"``).
* ``shardline-lean`` -- the same with ``Endpoint(transport="lean")`` named explicitly.
* ``shardline-httpx`` -- the same with ``Endpoint(transport="httpx")``: httpcore's pool
  under httpx, the default before the lean transport.
* ``semaphore`` -- the pattern common in production pipelines: asyncio + the official
  ``openai.AsyncOpenAI`` client (one per shard, default timeouts and retries) + one
  ``asyncio.Semaphore`` per shard + doubling backoff capped at 30 s, all items
  started at once with ``asyncio.gather``.
* ``httpx`` -- a raw httpx-on-trio loop: one ``httpx.AsyncClient``, one
  ``trio.CapacityLimiter``, ``aiter_lines`` + ``json.loads`` per SSE event. No
  pipeline: shardline's overhead floor.
* ``httpx-sharded`` -- the same loop with one ``AsyncClient`` + ``CapacityLimiter`` per
  shard (pools of ``concurrency`` connections): the floor with shardline's pool layout.
* ``raw`` -- the ceiling: asyncio ``Protocol`` over raw sockets, a hand-rolled HTTP/1.1
  keep-alive client with a chunked-body parser that counts SSE events and parses
  only the usage event. One connection per concurrency slot.

Params (JSON on stdin): ``urls`` (base URLs; shard k uses ``urls[k % len(urls)]``),
``shards``, ``concurrency`` (per shard), ``tokens`` (``max_tokens`` of each request),
``prompt``, ``model``, plus per-kind extras (``events`` path, ``flow`` keyword
arguments of ``FlowControl`` for shardline, ``max_attempts``).

Output (stdout, JSON lines): ``{"ready": true}`` once imports are done and the load
starts; one ``{"r": {...}}`` per finished request (ok, ct = completion tokens,
ttft, lat, att = attempts, cause) flushed at least every 0.2 s; a final
``{"summary": {...}}`` with wall time and ``resource.getrusage`` CPU of the load
phase.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from typing import Any


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class Out:
    """Buffered JSON-lines writer to stdout, flushed at most every 0.2 s (and by a ticker)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.last = time.monotonic()

    def send(self, obj: dict[str, Any]) -> None:
        self.lines.append(json.dumps(obj, separators=(",", ":")))
        if time.monotonic() - self.last > 0.2:
            self.flush()

    def flush(self) -> None:
        if self.lines:
            sys.stdout.write("\n".join(self.lines) + "\n")
            self.lines.clear()
        sys.stdout.flush()
        self.last = time.monotonic()


def record(
    out: Out, ok: bool, ct: int, ttft: float | None, lat: float, att: int, cause: str = ""
) -> None:
    out.send({"r": {"ok": ok, "ct": ct, "ttft": ttft, "lat": lat, "att": att, "cause": cause}})


def body(p: dict[str, Any], max_tokens: int) -> dict[str, Any]:
    return {
        "model": p["model"],
        "messages": [{"role": "user", "content": p["prompt"]}],
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


# --------------------------------------------------------------------------- shardline


def run_shardline(p: dict[str, Any], out: Out) -> dict[str, Any]:
    import trio

    from shardline._config import Deadlines, Endpoint, PipelineConfig
    from shardline._events import EventFileReader
    from shardline._models import ChatRequest, Outcome
    from shardline._pipeline import open_pipeline
    from shardline._sinks import JsonlEventSink, MemoryEventSink, TeeSink
    from shardline.report import compute_report

    if p.get("opt"):
        from _experiments import apply

        apply(p["opt"])
    urls: list[str] = p["urls"]
    shards: int = p["shards"]
    transport = None
    if len(urls) > 1:
        import httpx

        # Shard k talks to urls[k % len(urls)]: a transport that rewrites the port.
        ports = [httpx.URL(u).port for u in urls]

        class _Rewrite(httpx.AsyncBaseTransport):
            def __init__(self, port: int, limit: int) -> None:
                self.port = port
                self.inner: httpx.AsyncBaseTransport
                if p.get("transport", "lean") == "lean":
                    from shardline._http import DEFAULT_KEEPALIVE_EXPIRY, _no_tls_context
                    from shardline._transport import LeanTransport

                    self.inner = LeanTransport(
                        ssl_context=_no_tls_context(),
                        max_connections=limit,
                        keepalive_expiry=DEFAULT_KEEPALIVE_EXPIRY,
                    )
                else:
                    self.inner = httpx.AsyncHTTPTransport(
                        limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit)
                    )

            async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
                request.url = request.url.copy_with(port=self.port)
                return await self.inner.handle_async_request(request)

            async def aclose(self) -> None:
                await self.inner.aclose()

        def transport(k: int) -> httpx.AsyncBaseTransport:
            return _Rewrite(ports[k % len(ports)], p["concurrency"])

    from shardline._backoff import RetryPolicy
    from shardline._config import FlowControl

    deadlines = Deadlines(**p.get("deadlines", {}))
    config = PipelineConfig(
        endpoint=Endpoint(
            base_url=urls[0],
            api_key="sk-bench",
            model=p["model"],
            **({"transport": p["transport"]} if "transport" in p else {}),
        ),
        shard_count=shards,
        concurrency=p["concurrency"],
        deadlines=deadlines,
        retry=RetryPolicy(**p.get("retry", {})),
        flow=FlowControl(**p.get("flow", {})),  # bench_flow: {"adaptive": false}
        routing=p.get("routing", "hash"),
        seed=1,
    )
    events_path = p.get("events")
    prompt = p["prompt"]
    tokens = p["tokens"]

    duration = p.get("duration")

    def requests():  # type: ignore[no-untyped-def]
        if duration is None:
            for i, mt in enumerate(tokens):
                yield ChatRequest(
                    messages=[{"role": "user", "content": prompt}], id=i, params={"max_tokens": mt}
                )
            return
        # Time-bounded: cycle through the workload until `duration` seconds have passed.
        end = time.monotonic() + duration
        i = 0
        while time.monotonic() < end:
            mt = tokens[i % len(tokens)]
            yield ChatRequest(
                messages=[{"role": "user", "content": prompt}], id=i, params={"max_tokens": mt}
            )
            i += 1

    stats: dict[str, Any] = {}

    # Item-level timing (bench_faults): from the item's first attempt to the first
    # token of its last attempt, retries included -- what a user waits.
    first_start: dict[Any, float] = {}
    first_token: dict[Any, float] = {}
    last_end: dict[Any, float] = {}
    item_timing = bool(p.get("item_timing"))

    class _NullSink:
        def emit(self, event: Any) -> None:
            pass

        def close(self) -> None:
            pass

    class _Timing:
        def emit(self, event: Any) -> None:
            kind = event.kind
            if kind == "attempt_start":
                first_start.setdefault(event.item_id, event.t)
            elif kind == "first_token":
                first_token[event.item_id] = event.t
            elif kind == "attempt_end":
                last_end[event.item_id] = event.t

        def close(self) -> None:
            pass

    async def main() -> None:
        sink: Any
        if p.get("sink") == "null":
            sink = _NullSink()
        elif events_path:
            sink = JsonlEventSink(events_path)
        else:
            sink = MemoryEventSink()
        if item_timing:
            sink = TeeSink(sink, _Timing())
        send, recv = trio.open_memory_channel[Outcome](64)
        async with trio.open_nursery() as ticker:
            ticker.start_soon(_trio_ticker, out)
            t0 = time.monotonic()
            c0 = _cpu()
            async with open_pipeline(config, sink=sink) as pipeline, trio.open_nursery() as n:
                n.start_soon(pipeline.map, requests(), send)
                async for o in recv:
                    if item_timing:
                        t_first = first_start.pop(o.id, None)
                        t_tok = first_token.pop(o.id, None)
                        t_end = last_end.pop(o.id, None)
                        if t_first is not None:
                            # First send to the end of the last attempt (not to our
                            # receipt of the outcome, which waits for this loop's turn).
                            lat = (t_end if t_end is not None else pipeline.now()) - t_first
                            if o.result is not None and t_tok is not None:
                                ttft_item = t_tok - t_first
                            else:
                                ttft_item = None
                        else:
                            lat, ttft_item = o.latency_s, None
                    if o.result is not None:
                        r = o.result
                        if item_timing:
                            record(out, True, r.usage.completion_tokens, ttft_item, lat, o.attempts)
                        else:
                            record(
                                out,
                                True,
                                r.usage.completion_tokens,
                                r.ttft_s,
                                o.latency_s,
                                o.attempts,
                            )
                    else:
                        cause = o.cause.value if o.cause is not None else ""
                        record(out, False, 0, None, o.latency_s, o.attempts, cause)
            stats["wall_s"] = time.monotonic() - t0
            stats["cpu_s"] = _cpu() - c0
            ticker.cancel_scope.cancel()
        sink.close()
        c1 = _cpu()
        if p.get("no_report") or p.get("sink") == "null":
            return
        if events_path:
            with EventFileReader(events_path) as reader:
                report = compute_report(reader, events_sha256=None)
        else:
            report = compute_report(iter(sink), events_sha256=None)
        stats["report_cpu_s"] = _cpu() - c1
        stats["report"] = {
            k: report.to_json()[k]
            for k in (
                "peak_aggregate_tpm_total",
                "peak_completion_tpm_out",
                "peak_prompt_tpm_in",
                "proof_minute_utc",
                "items",
                "tokens_out_total",
                "tokens_in_total",
                "succeeded",
                "failed",
                "retries",
                "duration_s",
                "ttft_s",
                "latency_s",
            )
        }

    out.send({"ready": True})
    out.flush()
    trio.run(main)
    return stats


async def _trio_ticker(out: Out) -> None:
    import trio

    while True:
        await trio.sleep(0.2)
        out.flush()


# --------------------------------------------------------------------------- semaphore


def run_semaphore(p: dict[str, Any], out: Out) -> dict[str, Any]:
    import asyncio

    import openai

    urls: list[str] = p["urls"]
    shards: int = p["shards"]
    max_attempts: int = p.get("max_attempts", 5)
    prompt = p["prompt"]
    stats: dict[str, Any] = {}

    async def main() -> None:
        # One client and one semaphore per shard; the openai client's defaults
        # (timeouts: connect 5 s, read 600 s; max_retries 2) are left as they are.
        clients = [
            openai.AsyncOpenAI(base_url=urls[k % len(urls)], api_key="sk-bench")
            for k in range(shards)
        ]
        sems = [asyncio.Semaphore(p["concurrency"]) for _ in range(shards)]

        async def one(i: int, max_tokens: int) -> None:
            k = i % shards
            delay = 1.0
            async with sems[k]:
                # Item-level times, from the first send: retries (the openai
                # client's own and ours) and backoff sleeps are included.
                start = time.monotonic()
                for attempt in range(1, max_attempts + 1):
                    ttft = None
                    try:
                        stream = await clients[k].chat.completions.create(
                            model=p["model"],
                            messages=[{"role": "user", "content": prompt}],
                            max_tokens=max_tokens,
                            stream=True,
                            stream_options={"include_usage": True},
                            # No x-shardline-* headers: the fake server then draws a
                            # fresh fault for every HTTP request, including the openai
                            # client's own internal retries (as a real server would).
                        )
                        parts: list[str] = []
                        usage = None
                        async for chunk in stream:
                            if chunk.choices:
                                c = chunk.choices[0].delta.content
                                if c:
                                    if ttft is None:
                                        ttft = time.monotonic() - start
                                    parts.append(c)
                            if chunk.usage is not None:
                                usage = chunk.usage
                        # The pattern accepts whatever the stream gave: a stream cut
                        # short without [DONE] or usage still "succeeds" (flagged here).
                        ct = usage.completion_tokens if usage is not None else 0
                        cause = "" if usage is not None else "silently_truncated"
                        record(out, True, ct, ttft, time.monotonic() - start, attempt, cause)
                        return
                    except (openai.APIError, ValueError) as exc:
                        if attempt == max_attempts:
                            record(
                                out,
                                False,
                                0,
                                None,
                                time.monotonic() - start,
                                attempt,
                                type(exc).__name__,
                            )
                            return
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, 30.0)

        async def ticker() -> None:
            while True:
                await asyncio.sleep(0.2)
                out.flush()

        tick = asyncio.create_task(ticker())
        t0 = time.monotonic()
        c0 = _cpu()
        await asyncio.gather(*(one(i, mt) for i, mt in enumerate(p["tokens"])))
        stats["wall_s"] = time.monotonic() - t0
        stats["cpu_s"] = _cpu() - c0
        tick.cancel()
        for c in clients:
            await c.close()

    out.send({"ready": True})
    out.flush()
    asyncio.run(main())
    return stats


# --------------------------------------------------------------------------- httpx on trio


def run_httpx(p: dict[str, Any], out: Out, *, per_shard: bool = False) -> dict[str, Any]:
    """The raw httpx-on-trio loop; ``per_shard``: one client + limiter per shard."""
    import httpx
    import trio

    urls = [u.rstrip("/") + "/chat/completions" for u in p["urls"]]
    shards: int = p["shards"]
    conc: int = p["concurrency"]
    pools = shards if per_shard else 1
    size = conc if per_shard else shards * conc
    stats: dict[str, Any] = {}
    loads = json.loads

    async def main() -> None:
        limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
        headers = {"authorization": "Bearer sk-bench"}
        clients = [
            httpx.AsyncClient(limits=limits, timeout=None, headers=headers) for _ in range(pools)
        ]
        limiters = [trio.CapacityLimiter(size) for _ in range(pools)]

        async def one(i: int, max_tokens: int) -> None:
            k = i % shards
            pool = k % pools
            try:
                start = time.monotonic()
                ttft = None
                parts: list[str] = []
                ct = 0
                async with clients[pool].stream(
                    "POST", urls[k % len(urls)], json=body(p, max_tokens)
                ) as r:
                    if r.status_code != 200:
                        await r.aread()
                        record(out, False, 0, None, time.monotonic() - start, 1, str(r.status_code))
                        return
                    async for line in r.aiter_lines():
                        if not line.startswith("data: "):
                            continue
                        data = line[6:]
                        if data == "[DONE]":
                            # No break: read to the end of the body so the
                            # connection goes back to the pool (a break here
                            # closes it and costs a reconnect per request).
                            continue
                        obj = loads(data)
                        choices = obj.get("choices")
                        if choices:
                            c = choices[0].get("delta", {}).get("content")
                            if c:
                                if ttft is None:
                                    ttft = time.monotonic() - start
                                parts.append(c)
                        u = obj.get("usage")
                        if u:
                            ct = u["completion_tokens"]
                record(out, True, ct, ttft, time.monotonic() - start, 1)
            finally:
                limiters[pool].release_on_behalf_of(i)

        async with trio.open_nursery() as ticker:
            ticker.start_soon(_trio_ticker, out)
            t0 = time.monotonic()
            c0 = _cpu()
            async with trio.open_nursery() as n:
                for i, mt in enumerate(p["tokens"]):
                    await limiters[(i % shards) % pools].acquire_on_behalf_of(i)
                    n.start_soon(one, i, mt)
            stats["wall_s"] = time.monotonic() - t0
            stats["cpu_s"] = _cpu() - c0
            ticker.cancel_scope.cancel()
        for c in clients:
            await c.aclose()

    out.send({"ready": True})
    out.flush()
    trio.run(main)
    return stats


def run_shardline_opt(p: dict[str, Any], out: Out) -> dict[str, Any]:
    """shardline with every candidate optimisation of ``_experiments.py`` applied."""
    from _experiments import PATCHES

    return run_shardline({**p, "opt": p.get("opt") or list(PATCHES)}, out)


def run_shardline_lean(p: dict[str, Any], out: Out) -> dict[str, Any]:
    """shardline on its lean transport (``Endpoint(transport="lean")``)."""
    return run_shardline({**p, "transport": "lean"}, out)


def run_shardline_httpx(p: dict[str, Any], out: Out) -> dict[str, Any]:
    """shardline on httpx's own transport (``Endpoint(transport="httpx")``)."""
    return run_shardline({**p, "transport": "httpx"}, out)


def run_shardline_nosink(p: dict[str, Any], out: Out) -> dict[str, Any]:
    """shardline with a sink that drops every event (what the JSONL events cost)."""
    return run_shardline({**p, "sink": "null"}, out)


def run_httpx_sharded(p: dict[str, Any], out: Out) -> dict[str, Any]:
    return run_httpx(p, out, per_shard=True)


# --------------------------------------------------------------------------- raw sockets


def run_raw(p: dict[str, Any], out: Out) -> dict[str, Any]:
    import asyncio
    from urllib.parse import urlsplit

    shards: int = p["shards"]
    total = shards * p["concurrency"]
    tokens: list[int] = p["tokens"]
    stats: dict[str, Any] = {}
    targets = []
    for u in p["urls"]:
        s = urlsplit(u)
        targets.append((s.hostname, s.port, s.path.rstrip("/") + "/chat/completions"))

    def request_bytes(host: str, port: int, path: str, max_tokens: int) -> bytes:
        payload = json.dumps(body(p, max_tokens), separators=(",", ":")).encode()
        return (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Content-Type: application/json\r\nAuthorization: Bearer sk-bench\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        ).encode() + payload

    class Conn(asyncio.Protocol):
        def __init__(self) -> None:
            self.buf = bytearray()
            self.fut: asyncio.Future[tuple[int, float | None]] | None = None
            self.transport: asyncio.Transport | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport  # type: ignore[assignment]

        def start(self, req: bytes) -> asyncio.Future[tuple[int, float | None]]:
            self.fut = asyncio.get_running_loop().create_future()
            self.head = True
            self.need = -1  # bytes of the current chunk still expected (-1: a size line)
            self.ct = 0
            self.ttft: float | None = None
            self.t_send = time.monotonic()
            self.buf.clear()
            assert self.transport is not None
            self.transport.write(req)
            return self.fut

        def data_received(self, data: bytes) -> None:
            buf = self.buf
            buf += data
            if self.head:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                if not buf.startswith(b"HTTP/1.1 200"):
                    self._done(-1)
                    return
                del buf[: end + 4]
                self.head = False
            pos = 0
            n = len(buf)
            while True:
                if self.need < 0:
                    eol = buf.find(b"\r\n", pos)
                    if eol < 0:
                        break
                    size = int(buf[pos:eol], 16)
                    if size == 0:
                        if n - eol >= 4:
                            self._done(self.ct)
                            return
                        break
                    self.need = size
                    pos = eol + 2
                if n - pos < self.need + 2:
                    break
                chunk = bytes(buf[pos : pos + self.need])
                pos += self.need + 2
                self.need = -1
                self._chunk(chunk)
            del buf[:pos]

        def _chunk(self, chunk: bytes) -> None:
            if self.ttft is None:
                i = chunk.find(b'"content":"')
                while i >= 0:
                    if chunk[i + 11 : i + 12] != b'"':
                        self.ttft = time.monotonic() - self.t_send
                        break
                    i = chunk.find(b'"content":"', i + 11)
            u = chunk.find(b'"usage":{')
            if u >= 0:
                start = chunk.rfind(b"data: ", 0, u) + 6
                end = chunk.find(b"\n", u)
                self.ct = json.loads(chunk[start:end])["usage"]["completion_tokens"]

        def _done(self, ct: int) -> None:
            if self.fut is not None and not self.fut.done():
                self.fut.set_result((ct, self.ttft))

        def connection_lost(self, exc: Exception | None) -> None:
            if self.fut is not None and not self.fut.done():
                self.fut.set_exception(ConnectionError("connection lost"))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        it = iter(enumerate(tokens))

        async def slot(k: int) -> None:
            host, port, path = targets[(k % shards) % len(targets)]
            _, conn = await loop.create_connection(Conn, host, port)
            for i, mt in it:
                start = time.monotonic()
                ct, ttft = await conn.start(request_bytes(host, port, path, mt))
                record(out, ct >= 0, max(ct, 0), ttft, time.monotonic() - start, 1)
                del i
            assert conn.transport is not None
            conn.transport.close()

        async def ticker() -> None:
            while True:
                await asyncio.sleep(0.2)
                out.flush()

        tick = asyncio.create_task(ticker())
        t0 = time.monotonic()
        c0 = _cpu()
        await asyncio.gather(*(slot(k) for k in range(total)))
        stats["wall_s"] = time.monotonic() - t0
        stats["cpu_s"] = _cpu() - c0
        tick.cancel()

    out.send({"ready": True})
    out.flush()
    asyncio.run(main())
    return stats


KINDS = {
    "shardline": run_shardline,
    "shardline-opt": run_shardline_opt,
    "shardline-lean": run_shardline_lean,
    "shardline-httpx": run_shardline_httpx,
    "shardline-nosink": run_shardline_nosink,
    "semaphore": run_semaphore,
    "httpx": run_httpx,
    "httpx-sharded": run_httpx_sharded,
    "raw": run_raw,
}


def main() -> int:
    kind = sys.argv[1]
    params = json.loads(sys.stdin.read())
    out = Out()
    if len(sys.argv) > 2 and sys.argv[2] == "--profile":
        pass  # profiling is done from outside (py-spy record --pid)
    stats = KINDS[kind](params, out)
    stats["maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.send({"summary": stats})
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
