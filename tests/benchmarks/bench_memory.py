"""Peak memory of ``shardline run`` for 10 thousand, 100 thousand and 1 million input lines.

Not a timed test: it prints a table. Run it from the repository root::

    uv run python tests/benchmarks/bench_memory.py --quick      # < 40 s: 10k lines, complete
    uv run python tests/benchmarks/bench_memory.py              # < 3 min: 10k; 100k, 1M for 45 s
    uv run python tests/benchmarks/bench_memory.py --complete   # every size to the end (1M: ~1 h)
    uv run python tests/benchmarks/bench_memory.py --complete --max-lines 100000

Input files are generated once under ``/tmp/shardline-bench-mem/`` (one chat request
per line, ``max_tokens`` 4). A fast fake server (no delays) runs in its own process;
``shardline run`` runs as a child process with 8 shards x 32 and the default
queue size, writing its output and events files next to the input.

Measured: the run's peak RSS (``ru_maxrss`` of the child, from ``os.wait4``),
its RSS sampled every 0.25 s together with the number of output lines written so
far, and from those the growth in KiB per 10 000 items between 10 % and 90 % of
the items done (flat memory: close to 0). Without ``--complete``, inputs larger
than 10 000 lines are run for ``--cap`` seconds and then interrupted (SIGINT, as
Ctrl-C: the CLI drains, writes the report and exits 130): the RSS must not depend
on the size of the input file, and must not grow with the items done.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import fake_servers, fmt, machine, proc_rss_mib, table

DIR = Path("/tmp/shardline-bench-mem")
SIZES = (10_000, 100_000, 1_000_000)


def input_file(lines: int) -> Path:
    """Generate (once) an input of ``lines`` chat requests."""
    DIR.mkdir(parents=True, exist_ok=True)
    path = DIR / f"in-{lines}.jsonl"
    if path.exists() and path.stat().st_size > 0:
        return path
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        for i in range(lines):
            f.write(
                json.dumps(
                    {
                        "id": f"item-{i}",
                        "messages": [
                            {"role": "user", "content": f"Write one short line about shard {i}."}
                        ],
                        "max_tokens": 4,
                    }
                )
                + "\n"
            )
    tmp.rename(path)
    return path


def shardline_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("shardline")
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-c", "import sys; from shardline._cli import main; sys.exit(main())"]


def run_one(path: Path, lines: int, base_url: str, cap: float | None) -> dict[str, object]:
    out = path.with_suffix(".out.jsonl")
    events = path.with_suffix(".events.jsonl")
    for p in (out, events):
        p.unlink(missing_ok=True)
    cmd = [
        *shardline_cmd(),
        "run",
        str(path),
        "--base-url",
        base_url,
        "--model",
        "shardline-fake",
        "--shards",
        "8",
        "--concurrency",
        "32",
        "--no-progress",
        "--output",
        str(out),
        "--events",
        str(events),
        "--overwrite",
    ]
    env = {**os.environ, "OPENAI_API_KEY": "sk-bench"}
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    samples: list[tuple[int, float]] = []  # (items done, RSS MiB)
    done = 0
    offset = 0
    interrupted = False
    while True:
        # os.wait4 (not Popen.poll, which would reap the child and lose its rusage).
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        time.sleep(0.25)
        rss = proc_rss_mib(proc.pid)
        try:
            with open(out, "rb") as f:
                f.seek(offset)
                chunk = f.read()
            offset += len(chunk)
            done += chunk.count(b"\n")
        except FileNotFoundError:
            pass
        if rss == rss:  # not NaN (the process may have just exited)
            samples.append((done, rss))
        if cap is not None and not interrupted and time.monotonic() - start > cap:
            proc.send_signal(signal.SIGINT)
            interrupted = True
        if time.monotonic() - start > (cap or 7200) + 120:
            proc.kill()
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - start
    with open(out, "rb") as f:
        done = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    slope = None
    if samples and done >= 1000:
        lo = [s for s in samples if s[0] >= 0.1 * done]
        hi = [s for s in samples if s[0] >= 0.9 * done]
        if lo and hi and hi[0][0] > lo[0][0]:
            slope = (hi[0][1] - lo[0][1]) * 1024 / ((hi[0][0] - lo[0][0]) / 10_000)
    return {
        "lines": lines,
        "input_mib": path.stat().st_size / 2**20,
        "done": done,
        "wall": wall,
        "exit": proc.returncode,
        "interrupted": interrupted,
        "peak_mib": rusage.ru_maxrss / 1024,
        "rss_10": next((r for d, r in samples if d >= 0.1 * done), None),
        "rss_90": next((r for d, r in samples if d >= 0.9 * done), None),
        "slope": slope,
        "err": err[-500:],
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="10k lines only (< 40 s)")
    ap.add_argument("--complete", action="store_true", help="run every size to the end")
    ap.add_argument("--max-lines", type=int, default=1_000_000, help="largest input size to run")
    ap.add_argument("--cap", type=float, default=45.0, help="seconds per capped run (45)")
    ap.add_argument(
        "--sizes", default=None, help="comma-separated input sizes (default 10000,100000,1000000)"
    )
    args = ap.parse_args()
    all_sizes = [int(x) for x in args.sizes.split(",")] if args.sizes else list(SIZES)
    sizes = [s for s in all_sizes if s <= args.max_lines]
    if args.quick:
        sizes = sizes[:1]
    print(f"# bench_memory: {machine()}")
    print("# shardline run, 8 shards x 32, queue 64/shard, max_tokens 4, fake server no delays\n")
    rows = []
    with fake_servers(1) as servers:
        for lines in sizes:
            path = input_file(lines)
            cap = None if args.complete or lines <= 10_000 else args.cap
            r = run_one(path, lines, servers[0].base_url, cap)
            if r["exit"] not in (0, 130):
                print(f"! exit {r['exit']}: {r['err']}", file=sys.stderr)
            state = f"interrupted at {args.cap:.0f} s" if r["interrupted"] else "complete"
            rows.append(
                [
                    f"{lines:,}",
                    f"{r['input_mib']:.1f}",
                    f"{r['done']:,} ({state})",
                    f"{r['wall']:.1f}",
                    f"{r['done'] / r['wall']:.0f}",
                    fmt(r["rss_10"], ".1f"),
                    fmt(r["rss_90"], ".1f"),
                    fmt(r["peak_mib"], ".1f"),
                    fmt(r["slope"], "+.0f"),
                ]
            )
            print(
                f"{lines:,} lines: {r['done']:,} done, peak {r['peak_mib']:.1f} MiB",
                file=sys.stderr,
            )
    print(
        table(
            [
                "input lines",
                "input MiB",
                "items done",
                "wall s",
                "items/s",
                "RSS at 10 % MiB",
                "RSS at 90 % MiB",
                "peak RSS MiB",
                "growth KiB / 10k items",
            ],
            rows,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
