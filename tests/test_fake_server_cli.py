"""``shardline fake-server`` as a process: first-line URL, faults, Ctrl-C, bad specs."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import pytest

from shardline.testing import FAULT_KINDS, SHAPE_VARIANTS

pytestmark = pytest.mark.slow

# Drive the subcommand through its own register() so this test does not depend on
# the other subcommands being importable.
RUNNER = (
    "import argparse, sys\n"
    "from shardline import _cli_fake_server\n"
    "parser = argparse.ArgumentParser(prog='shardline')\n"
    "_cli_fake_server.register(parser.add_subparsers())\n"
    "args = parser.parse_args(sys.argv[1:])\n"
    "sys.exit(args.func(args))\n"
)
BODY = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


@contextmanager
def fake_server_process(*args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Start ``shardline fake-server ARGS``; yield the process and its base URL."""
    proc = subprocess.Popen(
        [sys.executable, "-c", RUNNER, "fake-server", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def test_prints_url_first_and_stops_cleanly_on_ctrl_c() -> None:
    """The first stdout line is the base URL; SIGINT exits 0 without a traceback."""
    with fake_server_process("--port", "0", "--ttft", "0.01") as (proc, url):
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1", url)
        response = httpx.post(f"{url}/chat/completions", json=BODY, timeout=30)
        assert response.status_code == 200
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0
        assert "Traceback" not in err


def test_faults_and_seed_options_apply() -> None:
    """--faults and --seed configure the server's fault plan."""
    with fake_server_process("--faults", "http_502@request=1", "--seed", "3") as (proc, url):
        first = httpx.post(f"{url}/chat/completions", json=BODY, timeout=30)
        second = httpx.post(f"{url}/chat/completions", json=BODY, timeout=30)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
        assert proc.returncode == 0
    assert (first.status_code, second.status_code) == (502, 200)


def test_bad_fault_spec_exits_2_naming_the_problem() -> None:
    """A bad --faults spec exits 2 with a message naming the bad entry."""
    out = subprocess.run(
        [sys.executable, "-c", RUNNER, "fake-server", "--faults", "reset=0.1,nope=1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert out.stdout == ""
    assert "bad fault entry 'nope=1': unknown fault kind 'nope'" in out.stderr


def test_help_lists_every_fault_kind_variant_and_load_flag() -> None:
    """--help names every fault kind, every malformed_shape variant and the load flags."""
    out = subprocess.run(
        [sys.executable, "-c", RUNNER, "fake-server", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0
    words = set(out.stdout.split())
    assert set(FAULT_KINDS) <= words
    assert set(SHAPE_VARIANTS) <= words
    for flag in ("--capacity", "--overload", "--rpm", "--tpm", "--preempt", "--no-usage"):
        assert flag in words
    assert {"--slow-first-share", "--slow-first-delay", "--capacity-retry-after"} <= words


def test_conflicting_load_flags_exit_2_naming_the_problem() -> None:
    """--preempt with --capacity exits 2 with the LoadModel's message."""
    out = subprocess.run(
        [sys.executable, "-c", RUNNER, "fake-server", "--preempt", "--capacity", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert out.stdout == ""
    assert "preempt serves one request at a time; capacity must be None, got 2" in out.stderr


def test_load_flags_apply() -> None:
    """--capacity/--overload/--capacity-retry-after configure the server's load model."""
    args = ("--capacity", "1", "--capacity-retry-after", "2.5", "--ttft", "2")
    with fake_server_process(*args) as (proc, url):

        def post() -> httpx.Response:
            return httpx.post(f"{url}/chat/completions", json=BODY, timeout=30)

        with ThreadPoolExecutor(max_workers=2) as pool:
            first = pool.submit(post)
            stats_url = url.removesuffix("/v1") + "/_shardline/stats"
            deadline = time.monotonic() + 30
            while httpx.get(stats_url, timeout=30).json()["generating"] < 1:
                assert time.monotonic() < deadline, "the first request never started"
            second = post()
            assert first.result().status_code == 200
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert second.status_code == 429
    assert second.headers["retry-after"] == "3"
    assert second.headers["retry-after-ms"] == "2500"
