"""Profile a client's hot path under the throughput benchmark's load, with py-spy.

Not a timed test. It starts a fake server in its own process, runs one client of
``_clients.py`` under ``py-spy record`` (sampling, so the client runs at full
speed), and prints where the client's CPU goes: by area (SSE decoding, JSON,
event writing, httpx/httpcore/h11, trio, shardline's pipeline, ...), then the
top functions by self time and by inclusive time. Run it from the repository root::

    uv run --with py-spy python tests/benchmarks/profile_hotpath.py            # shardline
    uv run --with py-spy python tests/benchmarks/profile_hotpath.py --kind httpx
    uv run --with py-spy python tests/benchmarks/profile_hotpath.py --ttft 0.05 --itl 0.002  # paced

py-spy needs ptrace permission (root, or ``kernel.yama.ptrace_scope=0``).
Samples taken while importing modules are left out.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import CLIENTS, PROMPT, fake_servers, machine, table, workload

# (area, regex on "function (path:line)") -- first match wins, tested on the leaf frame.
AREAS: list[tuple[str, str]] = [
    ("SSE decoding + accumulator (shardline._sse, _openai)", r"[(/]shardline/(_sse|_openai)\.py"),
    ("JSON decode/encode (stdlib json)", r"[(/]json/"),
    ("event records + JSONL sink", r"[(/]shardline/(_sinks|_events)\.py"),
    ("attempt (shardline._attempt, _http, _send)", r"[(/]shardline/(_attempt|_http|_send)\.py"),
    (
        "shard/pipeline/models/backoff",
        r"[(/]shardline/(_shard|_pipeline|_models|_backoff|_ratelimit|_config|_exceptions)\.py",
    ),
    ("metrics/report", r"[(/]shardline/(_report|_report_builder|_report_text|_live)\.py"),
    ("h11 (HTTP/1.1 parsing)", r"[(/]h11/"),
    ("lean transport (shardline._transport*)", r"[(/]shardline/_transport(_body)?\.py"),
    ("httpcore (pool, connection)", r"[(/]httpcore/"),
    ("httpx (client, models, decoders)", r"[(/]httpx/"),
    ("trio socket send/recv (syscalls)", r"_nonblocking_helper \(trio/"),
    ("trio (scheduler, scopes, deadlines)", r"[(/]trio/"),
    ("anyio/sniffio", r"[(/](anyio|sniffio)/"),
    ("contextlib (context managers)", r"\(contextlib\.py"),
    ("namedtuple/attrs generated code", r"\(<string>|\(<attrs generated"),
    ("openai + pydantic + httpx2", r"[(/](openai|pydantic|pydantic_core|httpx2)/"),
    ("asyncio", r"[(/]asyncio/"),
    ("benchmark client harness", r"\(_clients\.py"),
]
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<path>[^()]*?)(?::(?P<line>\d+))?\)$")


def short(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    path = m.group("path")
    for marker in ("site-packages/", "src/", "python3.11/", "lib/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{m.group('func')} ({path})"


def area_of(frame: str) -> str:
    for name, pattern in AREAS:
        if re.search(pattern, frame):
            return name
    return "other"


def analyse(raw_path: Path, top: int) -> str:
    stacks: list[tuple[list[str], int]] = []
    for line in raw_path.read_text().splitlines():
        if not line.strip():
            continue
        stack_text, _, count = line.rpartition(" ")
        frames = stack_text.split(";")
        if any("_find_and_load" in f for f in frames):
            continue  # imports
        stacks.append((frames, int(count)))
    total = sum(c for _, c in stacks) or 1
    by_area: collections.Counter[str] = collections.Counter()
    self_time: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    for frames, count in stacks:
        leaf = frames[-1]
        by_area[area_of(leaf)] += count
        self_time[short(leaf)] += count
        for f in {short(f) for f in frames}:
            incl[f] += count
    out = [f"{total} samples (CPU only; imports excluded)\n"]
    out.append(
        table(
            ["area (by leaf frame)", "share of client CPU"],
            [[a, f"{100 * c / total:.1f} %"] for a, c in by_area.most_common()],
        )
    )
    out.append("")
    out.append(
        table(
            ["top functions, self time", "self"],
            [[f, f"{100 * c / total:.1f} %"] for f, c in self_time.most_common(top)],
        )
    )
    out.append("")
    skip = ("<module>", "run (", "main (", "_run_code", "unrolled_run", "run_shardline")
    rows = [(f, c) for f, c in incl.most_common(top * 3) if not f.startswith(skip)][:top]
    out.append(
        table(
            ["top functions, inclusive time", "inclusive"],
            [[f, f"{100 * c / total:.1f} %"] for f, c in rows],
        )
    )
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--kind", default="shardline", help="a _clients.py kind (shardline, httpx...)")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    ap.add_argument("--itl", type=float, default=0.0, help="fake server seconds per token")
    ap.add_argument("--ttft", type=float, default=0.0, help="fake server time to first token")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--keep", metavar="FILE", help="also keep the raw collapsed stacks here")
    args = ap.parse_args()
    pyspy = shutil.which("py-spy")
    if pyspy is None:
        print("py-spy not found: run with `uv run --with py-spy ...`", file=sys.stderr)
        return 2
    print(f"# profile_hotpath: {args.kind}, {machine()}")
    with tempfile.TemporaryDirectory(prefix="shardline-prof-") as tmpdir:
        tmp = Path(tmpdir)
        with fake_servers(1, ttft=args.ttft, itl=args.itl) as servers:
            params = {
                "urls": [s.base_url for s in servers],
                "shards": args.shards,
                "concurrency": args.concurrency,
                "tokens": workload(args.requests),
                "prompt": PROMPT,
                "model": "shardline-fake",
                "events": str(tmp / "events.jsonl"),
                "no_report": True,
            }
            stacks = tmp / "stacks.txt"
            cmd = [
                pyspy, "record", "--format", "raw", "--rate", str(args.rate), "--nonblocking",
                "-o", str(stacks), "--", sys.executable, str(CLIENTS), args.kind,
            ]  # fmt: skip
            proc = subprocess.run(
                cmd, input=json.dumps(params).encode(), capture_output=True, timeout=300
            )
            if proc.returncode != 0:
                print(proc.stderr.decode()[-2000:], file=sys.stderr)
                return 1
            summary = [json.loads(x) for x in proc.stdout.splitlines() if b'"summary"' in x]
            if summary:
                s = summary[-1]["summary"]
                print(
                    f"# {args.requests} requests in {s['wall_s']:.2f} s, client CPU "
                    f"{1000 * s['cpu_s'] / args.requests:.2f} ms/request (under py-spy)\n"
                )
        if args.keep:
            shutil.copy(stacks, args.keep)
        print(analyse(stacks, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
