"""Shared plumbing of the benchmarks: fake servers and clients, each in its own process.

Not a benchmark itself. Every benchmark script in this folder uses it to

* start one or more ``shardline fake-server`` processes on 127.0.0.1
  (`shardline.testing.fake_server_process`) and read their CPU time from ``/proc``;
* run one client (``_clients.py KIND``) in a subprocess with a hard wall-clock
  cap, collecting the per-request records it streams as JSON lines and its
  final summary, and killing it (reporting "not finished") when the cap is hit;
* build the workload (the same requests for every client) and format tables.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shardline.testing import TimingModel, fake_server_process

HERE = Path(__file__).resolve().parent
CLIENTS = HERE / "_clients.py"
CLK_TCK = os.sysconf("SC_CLK_TCK")

PROMPT_TOKENS = 200
PROMPT = ("lorem ipsum dolor sit amet " * 40)[: PROMPT_TOKENS * 4]  # 800 chars = 200 fake tokens


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (from ``/proc/PID/stat``)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss_mib(pid: int) -> float:
    """Current resident set size of a live process, MiB."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


@dataclass
class Server:
    pid: int
    base_url: str

    def cpu(self) -> float:
        return proc_cpu_seconds(self.pid)


@contextlib.contextmanager
def fake_servers(
    count: int = 1,
    *,
    ttft: float = 0.0,
    itl: float = 0.0,
    tokens_per_event: int = 1,
    faults: str = "",
    seed: int = 0,
) -> Iterator[list[Server]]:
    """Start ``count`` fake-server processes (``fake_server_process``); yield them; stop them."""
    timing = TimingModel(ttft=ttft, itl=itl, tokens_per_event=tokens_per_event)
    with contextlib.ExitStack() as stack:
        servers = []
        for _ in range(count):
            server = stack.enter_context(
                fake_server_process(faults=faults or None, seed=seed, timing=timing)
            )
            servers.append(Server(pid=server.pid, base_url=server.base_url))
        yield servers


def workload(n: int, *, seed: int = 1, min_tokens: int = 100, max_tokens: int = 200) -> list[int]:
    """``max_tokens`` of each request (the fake server answers exactly that many)."""
    rng = random.Random(seed)
    return [rng.randint(min_tokens, max_tokens) for _ in range(n)]


@dataclass
class ClientRun:
    kind: str
    finished: bool
    wall_s: float
    cap_s: float
    records: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    server_cpu_s: float = 0.0
    client_proc_cpu_s: float = 0.0
    #: From spawning the process to the end of its output: imports and start-up included.
    process_s: float = 0.0
    stderr_tail: str = ""

    @property
    def ok(self) -> int:
        return sum(1 for r in self.records if r.get("ok"))

    @property
    def completion_tokens(self) -> int:
        return sum(r.get("ct", 0) for r in self.records if r.get("ok"))


def run_client(
    kind: str,
    params: dict[str, Any],
    *,
    cap_s: float,
    servers: Sequence[Server] = (),
    extra_args: Sequence[str] = (),
) -> ClientRun:
    """Run ``_clients.py KIND`` with ``params`` (JSON on stdin), bounded by ``cap_s`` seconds.

    The client streams one JSON line per finished request (``{"r": {...}}``) and
    ends with one summary line (``{"summary": {...}}``). The wall time starts
    when the client says it is ready (imports done, ``{"ready": true}``). If the
    cap is hit the client's process group is killed and the run is marked
    unfinished, keeping the records it reported so far.
    """
    cmd = [sys.executable, str(CLIENTS), kind, *extra_args]
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    assert proc.stderr is not None
    proc.stdin.write(json.dumps(params).encode())
    proc.stdin.close()
    os.set_blocking(proc.stdout.fileno(), False)
    os.set_blocking(proc.stderr.fileno(), False)
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, "out")
    sel.register(proc.stderr, selectors.EVENT_READ, "err")
    run = ClientRun(kind=kind, finished=False, wall_s=0.0, cap_s=cap_s)
    buf = b""
    err = bytearray()
    started: float | None = None
    server_cpu0 = [s.cpu() for s in servers]
    launch = time.monotonic()
    open_streams = 2
    while open_streams:
        now = time.monotonic()
        ref = started if started is not None else launch
        limit = ref + cap_s + (0 if started is not None else 60)
        if now >= limit:
            break
        for key, _ in sel.select(timeout=min(0.5, limit - now)):
            data = os.read(key.fileobj.fileno(), 1 << 16)  # type: ignore[union-attr]
            if not data:
                sel.unregister(key.fileobj)
                open_streams -= 1
                continue
            if key.data == "err":
                err += data
                del err[:-4000]
                continue
            buf += data
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if not line.strip():
                    continue
                msg = json.loads(line)
                if "r" in msg:
                    run.records.append(msg["r"])
                elif "ready" in msg:
                    started = time.monotonic()
                    server_cpu0 = [s.cpu() for s in servers]
                elif "summary" in msg:
                    run.summary = msg["summary"]
    end = time.monotonic()
    run.process_s = end - launch
    run.server_cpu_s = sum(s.cpu() - c0 for s, c0 in zip(servers, server_cpu0, strict=True))
    run.client_proc_cpu_s = proc_cpu_seconds(proc.pid)
    if open_streams:  # the cap was hit
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    run.wall_s = end - (started if started is not None else launch)
    run.finished = bool(run.summary) and proc.returncode == 0
    if run.summary.get("wall_s"):
        run.wall_s = run.summary["wall_s"]
    run.stderr_tail = err.decode(errors="replace")[-2000:]
    return run


def pct(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100) of ``values``, ``None`` if empty."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(q / 100 * len(s) + 0.5) - 1))
    return s[k]


def fmt(value: float | None, spec: str = ".2f") -> str:
    if value is None or value != value:
        return "-"
    return format(value, spec)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain GitHub-flavoured markdown table (pastes into the docs as is)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"]
    out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        out.append("| " + " | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + " |")
    return "\n".join(out)


def machine() -> str:
    import platform

    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"Python {platform.python_version()} on {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs ({cpu}); load average {os.getloadavg()[0]:.2f}"
    )
