"""The fake server in another process, for tests that must not share its event loop.

It owns `fake_server_process`: start ``python -m shardline._cli_fake_server``
(the ``shardline fake-server`` command) with options built from the same
settings `open_fake_server` takes, read the base URL from the first line of its
stdout within a bounded time, and stop the process on exit (SIGTERM, then kill).
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import IO, Final

import attrs

from ._load import LoadModel
from ._stats import FakeServerStatistics, fetch_statistics
from ._timing import TimingModel

__all__ = ["FakeServerProcess", "fake_server_process"]

DEFAULT_STARTUP_TIMEOUT: Final = 60.0
"""Seconds `fake_server_process` waits for the server to print its URL."""
DEFAULT_STOP_TIMEOUT: Final = 10.0
"""Seconds `fake_server_process` waits for the server to exit after SIGTERM before killing it."""

_MODULE: Final = "shardline._cli_fake_server"


@attrs.frozen(kw_only=True)
class FakeServerProcess:
    """A fake server running in another process; see `fake_server_process`.

    Attributes:
        base_url: ``http://HOST:PORT/v1``, ready for ``base_url=`` of a client.
        pid: The server's process id.
        args: The command-line options it was started with.
    """

    base_url: str
    pid: int
    args: tuple[str, ...]

    def statistics(self) -> FakeServerStatistics:
        """Its counters, read from ``GET /_shardline/stats`` (a blocking call)."""
        return fetch_statistics(self.base_url)


def _options(
    *,
    host: str,
    port: int,
    faults: str | None,
    seed: int | None,
    timing: TimingModel | None,
    load: LoadModel | None,
    no_usage: bool,
    default_max_tokens: int | None,
    models: Sequence[str] | None,
    max_connections: int | None,
) -> list[str]:
    out = ["--host", host, "--port", str(port)]
    if faults:
        out += ["--faults", faults]
    if seed is not None:
        out += ["--seed", str(seed)]
    if timing is not None:
        out += ["--ttft", repr(timing.ttft), "--itl", repr(timing.itl)]
        out += ["--tokens-per-event", str(timing.tokens_per_event)]
    if load is not None:
        if load.capacity is not None:
            out += ["--capacity", str(load.capacity), "--overload", load.overload]
        if load.retry_after is not None:
            out += ["--capacity-retry-after", repr(load.retry_after)]
        if load.rpm is not None:
            out += ["--rpm", str(load.rpm)]
        if load.tpm is not None:
            out += ["--tpm", str(load.tpm)]
        if load.preempt:
            out.append("--preempt")
        if load.slow_first_share:
            out += ["--slow-first-share", repr(load.slow_first_share)]
            out += ["--slow-first-delay", repr(load.slow_first_delay)]
    if no_usage:
        out.append("--no-usage")
    if default_max_tokens is not None:
        out += ["--default-max-tokens", str(default_max_tokens)]
    for model in models or ():
        out += ["--model", model]
    if max_connections is not None:
        out += ["--max-connections", str(max_connections)]
    return out


def _read_first_line(stream: IO[str], lines: queue.Queue[str]) -> None:
    lines.put(stream.readline())


@contextmanager
def fake_server_process(
    *args: str,
    host: str = "127.0.0.1",
    port: int = 0,
    faults: str | None = None,
    seed: int | None = None,
    timing: TimingModel | None = None,
    load: LoadModel | None = None,
    no_usage: bool = False,
    default_max_tokens: int | None = None,
    models: Sequence[str] | None = None,
    max_connections: int | None = None,
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
    stop_timeout: float = DEFAULT_STOP_TIMEOUT,
) -> Iterator[FakeServerProcess]:
    """Run ``shardline fake-server`` in a child process for the duration of a ``with`` block.

    For tests whose client must not share an event loop (or a GIL) with the
    server: benchmarks, CLI end-to-end tests, Ray workers. The options are those
    of `open_fake_server`, turned into ``shardline fake-server`` flags; extra raw
    flags may follow in ``args``. Leaving the block stops the server (SIGTERM,
    then a kill after ``stop_timeout``).

    Example::

        with fake_server_process(faults="rate_limit=0.1", load=LoadModel(capacity=24)) as server:
            subprocess.run(["shardline", "run", "in.jsonl", "--base-url", server.base_url])
            assert server.statistics().max_generating <= 24

    It is a blocking context manager (it waits for the child to start): call it from
    synchronous code, a session fixture, or through a thread from trio.

    Args:
        *args: Extra ``shardline fake-server`` flags, appended as given.
        host: Address to listen on.
        port: TCP port; 0 (the default) picks a free one.
        faults: A ``--faults`` text spec.
        seed: Seed of rate-drawn faults.
        timing: The `TimingModel`.
        load: The `LoadModel`.
        no_usage: Never send the usage chunk of a stream.
        default_max_tokens: Completion tokens when a request sets no ``max_tokens``.
        models: Model names ``GET /v1/models`` lists.
        max_connections: Connections served at once.
        startup_timeout: Seconds to wait for the server's URL.
        stop_timeout: Seconds to wait for the server to exit after SIGTERM.

    Yields:
        The running `FakeServerProcess` (its ``base_url`` and ``pid``).

    Raises:
        RuntimeError: if the server exits before printing its URL (a bad option, a
            port in use); the message carries its stderr.
        TimeoutError: if it prints no URL within ``startup_timeout``.
    """
    options = _options(
        host=host,
        port=port,
        faults=faults,
        seed=seed,
        timing=timing,
        load=load,
        no_usage=no_usage,
        default_max_tokens=default_max_tokens,
        models=models,
        max_connections=max_connections,
    )
    options += args
    # stderr goes to a file, never a pipe: a long run's log cannot fill a pipe and
    # block the server, and it is there to quote if the server fails to start.
    with tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", _MODULE, *options],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert proc.stdout is not None
        lines: queue.Queue[str] = queue.Queue(maxsize=1)
        reader = threading.Thread(target=_read_first_line, args=(proc.stdout, lines), daemon=True)
        reader.start()
        try:
            try:
                url = lines.get(timeout=startup_timeout).strip()
            except queue.Empty:
                raise TimeoutError(
                    f"shardline fake-server printed no URL within {startup_timeout:g} s"
                ) from None
            if not url.startswith("http"):
                _stop(proc, stop_timeout, reader)
                stderr.seek(0)
                raise RuntimeError(
                    f"shardline fake-server {' '.join(options)} exited with status "
                    f"{proc.returncode} before serving: {stderr.read().strip()}"
                )
            yield FakeServerProcess(base_url=url, pid=proc.pid, args=tuple(options))
        finally:
            _stop(proc, stop_timeout, reader)


def _stop(proc: subprocess.Popen[str], timeout: float, reader: threading.Thread) -> None:
    """Terminate, then kill after ``timeout``; reap it and close its stdout."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    reader.join(timeout)  # it ends at the first line or at end of file
    if proc.stdout is not None and not reader.is_alive():
        proc.stdout.close()
