"""fake_server_process: the fake server in a child process, started and stopped for a block."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

import httpx
import pytest

from shardline.testing import (
    FakeServerProcess,
    LoadModel,
    TimingModel,
    fake_server_process,
    fake_text,
)

pytestmark = pytest.mark.slow

BODY = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


def alive(pid: int) -> bool:
    """Whether a process with ``pid`` exists (POSIX)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.skipif(sys.platform == "win32", reason="checks the pid with os.kill(pid, 0)")
def test_serves_with_options_and_stops_on_exit() -> None:
    """Keyword options become flags; the URL serves; the process is gone after the block."""
    load = LoadModel(rpm=100)
    with fake_server_process(
        faults="http_502@request=1", seed=3, timing=TimingModel(ttft=0.01), load=load
    ) as server:
        assert isinstance(server, FakeServerProcess)
        assert server.base_url.startswith("http://127.0.0.1:")
        assert alive(server.pid)
        first = httpx.post(f"{server.base_url}/chat/completions", json=BODY, timeout=30)
        second = httpx.post(f"{server.base_url}/chat/completions", json=BODY, timeout=30)
        stats = server.statistics()
    assert (first.status_code, second.status_code) == (502, 200)
    assert second.json()["choices"][0]["message"]["content"] == fake_text(3)
    assert second.headers["x-ratelimit-remaining-requests"] == "98"
    assert stats.faults == {"http_502": 1}
    assert stats.completed == 1
    assert "--rpm" in server.args
    assert not alive(server.pid)


def test_raw_flags_and_load_flags_reach_the_server() -> None:
    """Extra positional flags are passed as given; capacity refusals are visible in its stats."""
    with fake_server_process("--capacity", "1", "--overload", "503", "--no-usage") as server:
        response = httpx.post(
            f"{server.base_url}/chat/completions",
            json={**BODY, "stream": True, "stream_options": {"include_usage": True}},
            timeout=30,
        )
        stats = server.statistics()
    assert '"usage"' not in response.text
    assert stats.usage_withheld == 1


def test_a_bad_option_raises_with_the_servers_message() -> None:
    """A server that exits before serving raises RuntimeError quoting its stderr."""
    with (
        pytest.raises(RuntimeError, match="bad fault entry 'nope=1'"),
        fake_server_process(faults="nope=1"),
    ):
        pytest.fail("the block must not run")


def test_a_bad_load_model_raises_with_the_servers_message() -> None:
    """A load option the server rejects is reported the same way."""
    with (
        pytest.raises(RuntimeError, match=r"slow_first_share must be between 0 and 1, got 2\.0"),
        fake_server_process("--slow-first-share", "2"),
    ):
        pytest.fail("the block must not run")


def test_startup_timeout_stops_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """No URL within the startup timeout: TimeoutError, and the child is stopped and reaped."""
    children: list[subprocess.Popen[str]] = []
    popen = subprocess.Popen

    def recording(*args: Any, **kwargs: Any) -> subprocess.Popen[str]:
        proc: subprocess.Popen[str] = popen(*args, **kwargs)
        children.append(proc)
        return proc

    monkeypatch.setattr(subprocess, "Popen", recording)
    with (
        pytest.raises(TimeoutError, match=r"^shardline fake-server printed no URL within 1e-09 s$"),
        fake_server_process(startup_timeout=1e-9),
    ):
        pytest.fail("the block must not run")
    assert len(children) == 1
    assert children[0].returncode is not None
    assert children[0].stdout is not None
    assert children[0].stdout.closed


@pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT")
def test_a_server_that_stopped_early_is_not_an_error() -> None:
    """If the server was already stopped (here: interrupted), leaving the block just reaps it."""
    with fake_server_process() as server:
        os.kill(server.pid, signal.SIGINT)
    assert not alive(server.pid)
