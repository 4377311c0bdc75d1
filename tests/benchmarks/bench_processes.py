"""Several local processes: ``shardline run --ray`` on one machine vs one process.

Not a timed test: it prints a table of medians and ratios measured in one run.
Run it from the repository root (it needs the ``ray`` extra)::

    uv run python tests/benchmarks/bench_processes.py              # 3,000 items, 2 rounds, ~3 min
    uv run python tests/benchmarks/bench_processes.py --quick      # 1,200 items, 1 round, ~1 min
    uv run python tests/benchmarks/bench_processes.py --actors 2,3 # ~5 min
    uv run python tests/benchmarks/bench_processes.py --servers 2  # two fake servers (replicas)

Issue 17's question: when one client core is the ceiling, does spreading the
client over several local processes help? The workload is paced streams, where
the client's cost per SSE event matters: fake server(s) with TTFT 0.05 s and
0.002 s per token, one token per event, 100-150 completion tokens per request,
a 200-token prompt, ``--shards 8 --concurrency 16``. The same input file goes
through ``shardline run`` (one process) and ``shardline run --ray --ray-actors
K`` (Ray Data on a local instance the command starts and stops: K actors, each
a full shard group), interleaved round after round.

Each client is a fresh ``shardline run`` process, timed **from spawning it to
its exit**. From its events file the script also takes the *active span*, from
the first request sent to the last one finished, so Ray's fixed cost (starting
the instance and the actors, merging the events) is separated: *start* is spawn
to first request, *tail* is last request to exit. Measured per client:

* client CPU: the whole process tree (driver, Ray's GCS, raylet, workers and
  actors), sampled from ``/proc`` every 0.25 s (each process's own time at its
  last sample, so processes that exit still count). The total is the larger of
  that and ``os.wait4``'s rusage of the driver (every descendant it reaped) plus
  that of descendants orphaned to this script (it makes itself a child
  subreaper); CPU *during the active span* is interpolated from the samples;
* server CPU during the run, from ``/proc``;
* mean requests in flight (sum of attempt durations / active span): shardline's
  adaptive flow control keeps one live limit per endpoint *per process*, so K
  actors may keep more requests in flight than one process; this column shows
  whether a gain came from more cores or from more concurrency.

Ray's temp files go to a fresh ``RAY_TMPDIR`` per run, removed at the end; any
process whose command line names it after the run (a raylet, a worker) is
reported and killed. Every client is killed (its whole tree) if it overruns
``--cap`` seconds or the script is interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import itertools
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    CLK_TCK,
    PROMPT,
    Server,
    fake_servers,
    fmt,
    machine,
    table,
    workload,
)

PR_SET_CHILD_SUBREAPER = 36
SAMPLE_S = 0.25


def become_subreaper() -> bool:
    """Make orphaned descendants (Ray's workers after their raylet exits) our children."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def _stat(pid: int) -> list[bytes] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None


def _parents() -> dict[int, int]:
    """pid -> parent pid of every live process."""
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _stat(int(name))
            if fields is not None:
                out[int(name)] = int(fields[1])
    return out


def descendants(root: int, parents: dict[int, int] | None = None) -> list[int]:
    parents = _parents() if parents is None else parents
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class TreeCPU:
    """CPU seconds of a process tree, from ``/proc`` samples.

    Each process's own user + system time is remembered at its last sample, so a
    process that exits (or leaves the tree when orphaned) still counts, up to the
    time of its last sample; children's times are not added, so nothing counts twice.
    """

    def __init__(self) -> None:
        self.seen: dict[int, float] = {}

    def sample(self, root: int) -> float:
        for pid in [root, *descendants(root)]:
            fields = _stat(pid)
            if fields is not None:
                own = (int(fields[11]) + int(fields[12])) / CLK_TCK
                self.seen[pid] = max(own, self.seen.get(pid, 0.0))
        return sum(self.seen.values())


def kill_tree(root: int) -> None:
    for pid in [root, *descendants(root)]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _rusage_cpu(ru: resource.struct_rusage) -> float:
    return ru.ru_utime + ru.ru_stime


@dataclass
class Run:
    label: str
    finished: bool = False
    process_s: float = 0.0
    cpu_s: float = 0.0  # the whole tree, spawn to exit
    active_cpu_s: float = float("nan")  # the tree, first request to last
    server_cpu_s: float = 0.0
    start_s: float = float("nan")
    active_s: float = float("nan")
    tail_s: float = float("nan")
    inflight: float = float("nan")
    ok: int = 0
    orphans: int = 0
    leftovers: list[str] = field(default_factory=list)
    load: float = 0.0
    stderr_tail: str = ""


def _interp(samples: Sequence[tuple[float, float]], t: float) -> float:
    """CPU at wall time ``t`` from (time, cpu) samples, linearly interpolated."""
    if not samples:
        return float("nan")
    if t <= samples[0][0]:
        return samples[0][1]
    for (t0, c0), (t1, c1) in itertools.pairwise(samples):
        if t0 <= t <= t1:
            return c0 + (c1 - c0) * (t - t0) / (t1 - t0) if t1 > t0 else c1
    return samples[-1][1]


def read_events(path: Path) -> tuple[float, float, float, int] | None:
    """First attempt start, last attempt end (wall clock), sum of attempt durations, ok items."""
    start_at = 0.0
    first = last = None
    busy = 0.0
    ok = 0
    with open(path) as f:
        for line in f:
            e = json.loads(line)
            kind = e["kind"]
            if kind == "run_start":
                start_at = e["started_at"]
            elif kind == "attempt_start":
                t = start_at + e["t"]
                first = t if first is None else min(first, t)
            elif kind == "attempt_end":
                t = start_at + e["t"]
                last = t if last is None else max(last, t)
                busy += e["duration_s"] or 0.0
            elif kind == "item_end" and e["status"] == "ok":
                ok += 1
    if first is None or last is None:
        return None
    return first, last, busy, ok


def run_one(
    label: str,
    cmd: list[str],
    *,
    tmp: Path,
    servers: Sequence[Server],
    cap_s: float,
    ray_tmp: Path | None,
) -> Run:
    run = Run(label=label, load=os.getloadavg()[0])
    events = tmp / f"{label}.events.jsonl"
    output = tmp / f"{label}.out.jsonl"
    for p in (events, output):
        p.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(OPENAI_API_KEY="bench", RAY_USAGE_STATS_ENABLED="0")
    if ray_tmp is not None:
        ray_tmp.mkdir(parents=True, exist_ok=True)
        env["RAY_TMPDIR"] = str(ray_tmp)
    full = [*cmd, "--output", str(output), "--events", str(events), "--no-progress"]
    server0 = [s.cpu() for s in servers]
    samples: list[tuple[float, float]] = []
    tree = TreeCPU()
    with open(tmp / f"{label}.stderr", "w+b") as err:
        spawned = time.time()
        proc = subprocess.Popen(
            full, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=env
        )
        try:
            while True:
                pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                now = time.time()
                if now - spawned > cap_s:
                    kill_tree(proc.pid)
                    pid, status, ru = os.wait4(proc.pid, 0)
                    break
                samples.append((now, tree.sample(proc.pid)))
                time.sleep(SAMPLE_S)
        except BaseException:
            kill_tree(proc.pid)
            proc.wait()
            raise
        exited = time.time()
        proc.returncode = os.waitstatus_to_exitcode(status)
        # Reaped descendants (rusage) or sampled ones, whichever saw more: each misses some.
        run.cpu_s = _rusage_cpu(ru)
        sampled = samples[-1][1] if samples else 0.0
        run.process_s = exited - spawned
        run.server_cpu_s = sum(s.cpu() - c0 for s, c0 in zip(servers, server0, strict=True))
        run.cpu_s = max(run.cpu_s + reap_orphans(run, {s.pid for s in servers}), sampled)
        err.seek(0)
        run.stderr_tail = err.read().decode(errors="replace")[-2000:]
    if ray_tmp is not None:
        run.leftovers = kill_named(str(ray_tmp))
    run.finished = proc.returncode == 0 and events.exists()
    found = read_events(events) if events.exists() else None
    if found is not None:
        first, last, busy, run.ok = found
        run.start_s = first - spawned
        run.active_s = last - first
        run.tail_s = exited - last
        run.inflight = busy / run.active_s
        run.active_cpu_s = _interp(samples, last) - _interp(samples, first)
    return run


def reap_orphans(run: Run, keep: set[int], wait_s: float = 15.0) -> float:
    """Wait for (then kill) descendants reparented to us; their CPU seconds."""
    cpu = 0.0
    deadline = time.monotonic() + wait_s
    me = os.getpid()
    while True:
        # Only our direct children can be reaped; grandchildren follow when their parent goes.
        orphans = [p for p, ppid in _parents().items() if ppid == me and p not in keep]
        if not orphans:
            return cpu
        for pid in orphans:
            with contextlib.suppress(ChildProcessError):
                got, _, ru = os.wait4(pid, os.WNOHANG)
                if got:
                    cpu += _rusage_cpu(ru)
                    run.orphans += 1
        if time.monotonic() > deadline:
            for pid in orphans:
                kill_tree(pid)
            deadline = time.monotonic() + 5.0
        time.sleep(0.1)


def kill_named(text: str) -> list[str]:
    """Kill (and name) live processes whose command line contains ``text``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{name} {cmdline[:80]}")
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(name), signal.SIGKILL)
    return found


def write_input(path: Path, n: int, min_tokens: int, max_tokens: int) -> None:
    with open(path, "w") as f:
        for i, tokens in enumerate(workload(n, min_tokens=min_tokens, max_tokens=max_tokens)):
            line = {
                "id": i,
                "messages": [{"role": "user", "content": PROMPT}],
                "max_tokens": tokens,
            }
            f.write(json.dumps(line) + "\n")


def median(runs: Sequence[Run], attr: str) -> float:
    values = [getattr(r, attr) for r in runs]
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--items", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--actors", default="2", help="comma-separated --ray-actors values (2)")
    ap.add_argument("--servers", type=int, default=1, help="fake-server processes (1)")
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--concurrency", type=int, default=16, help="per shard (16)")
    ap.add_argument("--ttft", type=float, default=0.05, help="server TTFT, s (0.05)")
    ap.add_argument("--itl", type=float, default=0.002, help="server s per token (0.002)")
    ap.add_argument("--min-tokens", type=int, default=100)
    ap.add_argument("--max-tokens", type=int, default=150)
    ap.add_argument("--cap", type=float, default=240.0, help="seconds per client run (240)")
    ap.add_argument("--quick", action="store_true", help="1,200 items, 1 round")
    args = ap.parse_args()
    if args.quick:
        args.items, args.rounds = 1200, 1
    try:
        import ray  # noqa: F401
    except ImportError:
        print("bench_processes needs the ray extra: uv sync --extra ray", file=sys.stderr)
        return 2
    actors = [int(x) for x in args.actors.split(",") if x]
    signal.signal(signal.SIGTERM, _interrupt)  # a killed benchmark kills its clients and servers
    subreaper = become_subreaper()
    print(f"# bench_processes: {machine()}")
    print(
        f"# {args.items} items x {args.min_tokens}-{args.max_tokens} tokens (1 per event), "
        f"{args.servers} fake server(s) TTFT {args.ttft} s, {args.itl} s/token; "
        f"--shards {args.shards} --concurrency {args.concurrency}; whole process timed, "
        f"{args.rounds} interleaved round(s), medians"
    )
    if not subreaper:
        print("# (not a child subreaper: CPU of orphaned Ray processes is not counted)")
    print()
    shardline = [sys.executable, "-m", "shardline", "run"]
    t0 = time.monotonic()
    configs: list[tuple[str, list[str]]] = [("1 process", [])]
    configs += [(f"--ray-actors {k}", ["--ray", "--ray-actors", str(k)]) for k in actors]
    runs: dict[str, list[Run]] = {label: [] for label, _ in configs}
    with (
        tempfile.TemporaryDirectory(prefix="sl-procs-") as tmpdir,
        fake_servers(args.servers, ttft=args.ttft, itl=args.itl) as servers,
    ):
        tmp = Path(tmpdir)
        src = tmp / "in.jsonl"
        write_input(src, args.items, args.min_tokens, args.max_tokens)
        base = [*shardline, str(src), "--model", "m", "--overwrite"]
        for s in servers:
            base += ["--base-url", s.base_url]
        base += ["--shards", str(args.shards), "--concurrency", str(args.concurrency)]
        for rnd in range(args.rounds):
            for i, (label, extra) in enumerate(configs):
                ray_tmp = tmp / f"r{rnd}{i}" if extra else None
                run = run_one(
                    label.replace(" ", "_"),
                    [*base, *extra],
                    tmp=tmp,
                    servers=servers,
                    cap_s=args.cap,
                    ray_tmp=ray_tmp,
                )
                run.label = label
                runs[label].append(run)
                if ray_tmp is not None:
                    shutil.rmtree(ray_tmp, ignore_errors=True)
                state = "ok" if run.finished else "NOT FINISHED"
                print(
                    f"  {label}: {run.process_s:.1f} s (start {fmt(run.start_s, '.1f')}, active "
                    f"{fmt(run.active_s, '.1f')}, tail {fmt(run.tail_s, '.1f')}), "
                    f"{run.ok}/{args.items} ok, client CPU {run.cpu_s:.1f} s, "
                    f"server CPU {run.server_cpu_s:.1f} s, load {run.load:.2f}, {state}"
                    + (f", {run.orphans} orphan(s) reaped" if run.orphans else "")
                    + (f", LEFT OVER: {run.leftovers}" if run.leftovers else ""),
                    flush=True,
                )
                if not run.finished:
                    print(run.stderr_tail, file=sys.stderr)
        leftover = kill_named(tmpdir)  # a raylet or GCS of ours would name RAY_TMPDIR
    rows = []
    one = [r for r in runs["1 process"] if r.finished]
    ref_process = median(one, "process_s")
    ref_active = median(one, "active_s")
    for label, done in runs.items():
        done = [r for r in done if r.finished]
        if not done:
            rows.append([label, "not finished", *["-"] * 10])
            continue
        process_s, active_s = median(done, "process_s"), median(done, "active_s")
        rows.append(
            [
                label,
                fmt(process_s, ".1f"),
                f"{fmt(median(done, 'start_s'), '.1f')} / {fmt(active_s, '.1f')} / "
                f"{fmt(median(done, 'tail_s'), '.1f')}",
                fmt(args.items / process_s, ".0f"),
                fmt(args.items / active_s, ".0f"),
                fmt(median(done, "inflight"), ".0f"),
                fmt(median(done, "cpu_s"), ".1f"),
                fmt(median(done, "active_cpu_s") / active_s, ".2f"),
                fmt(median(done, "server_cpu_s") / active_s, ".2f"),
                fmt(ref_process / process_s, ".2f") + "x",
                fmt(ref_active / active_s, ".2f") + "x",
                f"{min(r.ok for r in done)}/{args.items}",
            ]
        )
    print()
    print(
        table(
            [
                "client",
                "whole process s",
                "start / active / tail s",
                "items/s (whole)",
                "items/s (active)",
                "mean in flight",
                "client CPU s (tree)",
                "client CPU cores (active)",
                "server CPU cores (active)",
                "speed vs 1 process (whole)",
                "speed vs 1 process (active)",
                "ok (worst round)",
            ],
            rows,
        )
    )
    print(
        f"\n(load average now {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs shared with the "
        f"server(s) and anything else running; total {time.monotonic() - t0:.0f} s; "
        f"Ray processes left over: {len(leftover) or 'none'})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
