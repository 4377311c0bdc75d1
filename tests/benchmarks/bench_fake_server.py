"""How many streamed SSE events per second one fake-server process sustains.

The server runs as its own process (``shardline fake-server``); the client is a lean
raw-socket HTTP/1.1 client (``selectors``, keep-alive, no parsing beyond finding the
end of each chunked response) in this process, so the figure measures the server.
Every run is bounded by ``--duration``.

Scenarios:

* ``firehose``: ``itl=0``: each stream is generated as fast as the server can write;
  due events are coalesced into few ``send_all`` calls. The server's ceiling.
* ``paced``: ``itl > 0``: every event is its own timed write (``sleep_until`` +
  ``send_all``), like a real model streaming to many clients. Compare the achieved
  rate with the ideal ``concurrency * events_per_stream / stream_duration``.

Usage::

    uv run python tests/benchmarks/bench_fake_server.py                  # both scenarios
    uv run python tests/benchmarks/bench_fake_server.py --scenario paced --concurrency 400
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import statistics
import time
from dataclasses import dataclass

from shardline.testing import TimingModel, fake_server_process

END = b"0\r\n\r\n"


@dataclass
class Scenario:
    name: str
    concurrency: int
    max_tokens: int
    itl: float
    tokens_per_event: int


PRESETS = {
    "firehose": Scenario("firehose", concurrency=16, max_tokens=2000, itl=0.0, tokens_per_event=1),
    "paced": Scenario("paced", concurrency=256, max_tokens=100, itl=0.005, tokens_per_event=1),
}


def request_bytes(max_tokens: int, host: str, port: int) -> bytes:
    body = json.dumps(
        {
            "model": "bench",
            "messages": [{"role": "user", "content": "benchmark the fake server"}],
            "max_tokens": max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


def run_client(host: str, port: int, sc: Scenario, duration: float) -> tuple[int, int, float]:
    """Keep ``concurrency`` streams busy for ``duration`` s. Returns (responses, bytes, s)."""
    request = request_bytes(sc.max_tokens, host, port)
    sel = selectors.DefaultSelector()
    tails: dict[socket.socket, bytes] = {}
    for _ in range(sc.concurrency):
        sock = socket.create_connection((host, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        sock.send(request)
        tails[sock] = b""
        sel.register(sock, selectors.EVENT_READ)
    responses = 0
    received = 0
    start = time.perf_counter()
    stop = start + duration
    open_socks = len(tails)
    while open_socks:
        now = time.perf_counter()
        for key, _ in sel.select(timeout=1.0):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            data = sock.recv(262144)
            if not data:
                raise RuntimeError("server closed a connection")
            received += len(data)
            tail = (tails[sock] + data[-8:])[-8:]
            if tail.endswith(END):
                responses += 1
                tail = b""
                if now < stop:
                    sock.send(request)
                else:
                    sel.unregister(sock)
                    sock.close()
                    open_socks -= 1
            tails[sock] = tail
        if now > stop + 60:
            raise RuntimeError("streams did not finish within 60 s of the deadline")
    return responses, received, time.perf_counter() - start


def measure(sc: Scenario, duration: float) -> dict[str, float]:
    timing = TimingModel(itl=sc.itl, tokens_per_event=sc.tokens_per_event)
    with fake_server_process(timing=timing, stop_timeout=30) as server:
        hostport = server.base_url.split("//", 1)[1].split("/", 1)[0]
        host, port = hostport.rsplit(":", 1)
        responses, received, elapsed = run_client(host, int(port), sc, duration)
    content_events = -(-sc.max_tokens // sc.tokens_per_event)
    events_per_response = 1 + content_events + 1 + 1 + 1  # role, content, finish, usage, DONE
    events = responses * events_per_response
    result = {
        "events_per_s": events / elapsed,
        "content_events_per_s": responses * content_events / elapsed,
        "tokens_per_s": responses * sc.max_tokens / elapsed,
        "responses_per_s": responses / elapsed,
        "mb_per_s": received / elapsed / 1e6,
        "seconds": elapsed,
    }
    if sc.itl > 0:
        stream_s = sc.itl * sc.max_tokens
        result["ideal_events_per_s"] = sc.concurrency * events_per_response / stream_s
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=[*PRESETS, "all"], default="all")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per scenario")
    parser.add_argument("--concurrency", type=int, default=None)
    parser.add_argument("--max-tokens", type=int, default=None)
    parser.add_argument("--itl", type=float, default=None)
    parser.add_argument("--tokens-per-event", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=1, help="runs per scenario (best wins)")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)
    names = list(PRESETS) if args.scenario == "all" else [args.scenario]
    for name in names:
        sc = PRESETS[name]
        for field in ("concurrency", "max_tokens", "itl", "tokens_per_event"):
            value = getattr(args, field)
            if value is not None:
                setattr(sc, field, value)
        rates = []
        for run in range(1, max(1, args.repeat) + 1):
            result = measure(sc, args.duration)
            rates.append(result["events_per_s"])
            detail = ", ".join(f"{k}={v:,.1f}" for k, v in result.items())
            print(
                f"{sc.name} #{run}: concurrency={sc.concurrency} max_tokens={sc.max_tokens} "
                f"itl={sc.itl} tokens_per_event={sc.tokens_per_event}: {detail}",
                flush=True,
            )
        print(
            f"{sc.name}: best {max(rates):,.0f} events/s, median {statistics.median(rates):,.0f} "
            f"over {len(rates)} run(s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
