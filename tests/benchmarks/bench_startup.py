"""Start-up time of the ``shardline`` command, next to the interpreter's own.

Not a timed test: it prints a table. Run it from the repository root::

    uv run python tests/benchmarks/bench_startup.py            # 15 runs of each
    uv run python tests/benchmarks/bench_startup.py --runs 40

Each command runs ``--runs`` times, interleaved (one of each in turn, so load
changes hit them all alike); the table gives the best and the median wall time,
and the median CPU time of the process (user + system, from ``os.wait4``; less
sensitive than wall time to other work on the machine) also as a multiple of
``python -c pass``'s:

* ``python -c pass``, ``import trio``, ``import httpx``: the floor and the two
  dependencies a run cannot do without;
* ``shardline --help`` and ``shardline --version``;
* ``shardline run`` up to its first request: from starting the process to the
  first byte of an HTTP request arriving on a socket this script listens on
  (then the child is killed). One input line, stderr not a terminal (so no
  progress panel, and no rich).

``--against DIR`` adds the three ``shardline`` rows of another checkout (its
``DIR/.venv/bin/shardline``, e.g. a clone of the main branch synced with
``uv sync``), interleaved with this one's, so a change is measured side by
side under the same load::

    git clone -q . /tmp/before && git -C /tmp/before checkout -q main
    (cd /tmp/before && uv sync --locked --all-extras)
    uv run python tests/benchmarks/bench_startup.py --against /tmp/before
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import machine, table

PY = sys.executable
SHARDLINE = str(Path(PY).with_name("shardline"))
#: The children may write ``.pyc`` files, as any installed program does: without
#: them every import compiles from source, and start-up measures the compiler.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def _reap(child: subprocess.Popen[bytes]) -> float:
    """Wait for ``child``; its user + system CPU seconds."""
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_utime + usage.ru_stime


def timed_command(argv: list[str]) -> Callable[[], tuple[float, float]]:
    def run() -> tuple[float, float]:
        began = time.perf_counter()
        child = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV
        )
        cpu = _reap(child)
        wall = time.perf_counter() - began
        if child.returncode != 0:
            raise RuntimeError(f"{argv} exited {child.returncode}")
        return wall, cpu

    return run


def timed_first_request(workdir: Path, shardline: str) -> Callable[[], tuple[float, float]]:
    """``shardline run`` from spawn to the first request byte on a local socket."""
    path = workdir / "one.jsonl"
    path.write_text('{"id": "a", "messages": [{"role": "user", "content": "hi"}]}\n')

    def run() -> tuple[float, float]:
        for suffix in (".out.jsonl", ".events.jsonl"):
            (workdir / f"one{suffix}").unlink(missing_ok=True)
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            port = listener.getsockname()[1]
            argv = [
                shardline,
                "run",
                str(path),
                "--base-url",
                f"http://127.0.0.1:{port}/v1",
                "--model",
                "m",
            ]
            began = time.perf_counter()
            child = subprocess.Popen(
                argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=workdir, env=ENV
            )
            try:
                ready, _, _ = select.select([listener], [], [], 30.0)
                if not ready:
                    raise RuntimeError("shardline run sent no request within 30 s")
                conn, _ = listener.accept()
                with conn:
                    conn.recv(1)  # the first byte of the request
                    elapsed = time.perf_counter() - began
            finally:
                child.kill()
                cpu = _reap(child)  # to the kill, a few ms after the first byte
        return elapsed, cpu

    return run


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=15, help="runs of each command (15)")
    ap.add_argument(
        "--against",
        metavar="DIR",
        type=Path,
        help="also time DIR/.venv/bin/shardline (another checkout), interleaved",
    )
    args = ap.parse_args()
    commands = {"": SHARDLINE}
    if args.against is not None:
        other = args.against / ".venv" / "bin" / "shardline"
        if not other.exists():
            ap.error(f"{other} does not exist (run `uv sync` in {args.against})")
        commands = {" (this)": SHARDLINE, f" ({args.against.name})": str(other)}
    print(f"# bench_startup: {machine()}")
    print(f"# {args.runs} interleaved runs of each; wall time of the whole process\n")
    with tempfile.TemporaryDirectory() as tmp:
        cases: list[tuple[str, Callable[[], tuple[float, float]]]] = [
            ("python -c pass", timed_command([PY, "-c", "pass"])),
            ("python -c 'import trio'", timed_command([PY, "-c", "import trio"])),
            ("python -c 'import httpx'", timed_command([PY, "-c", "import httpx"])),
        ]
        per_checkout = [
            [
                ("shardline --help" + label, timed_command([exe, "--help"])),
                ("shardline --version" + label, timed_command([exe, "--version"])),
                ("shardline run: first request" + label, timed_first_request(Path(tmp), exe)),
            ]
            for label, exe in commands.items()
        ]
        for same_command in zip(*per_checkout, strict=True):  # this, then the other
            cases += same_command
        for _, run in cases:  # warm the page cache and write the .pyc files
            run()
        walls: dict[str, list[float]] = {name: [] for name, _ in cases}
        cpus: dict[str, list[float]] = {name: [] for name, _ in cases}
        for _ in range(args.runs):
            for name, run in cases:
                wall, cpu = run()
                walls[name].append(wall)
                cpus[name].append(cpu)
    base = statistics.median(cpus["python -c pass"])
    rows = [
        [
            name,
            f"{min(walls[name]) * 1000:.0f}",
            f"{statistics.median(walls[name]) * 1000:.0f}",
            f"{statistics.median(cpus[name]) * 1000:.0f}",
            f"{statistics.median(cpus[name]) / base:.1f}x",
        ]
        for name in walls
    ]
    headers = ["command", "best wall ms", "median wall ms", "median CPU ms", "CPU / pass"]
    print(table(headers, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
