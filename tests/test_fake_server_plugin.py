"""The pytest plugin's fixtures and its cheap, side-effect-free import."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from shardline.testing import FakeServer, TimingModel


async def test_fake_server_fixture_serves(fake_server: FakeServer) -> None:
    """The fake_server fixture is a running, well-behaved server."""
    async with httpx.AsyncClient(base_url=fake_server.base_url) as client:
        response = await client.get("/models")
    assert response.status_code == 200
    assert fake_server.statistics().requests == 1


@pytest.mark.fake_server(faults="http_503=1", seed=5, timing=TimingModel(ttft=0.0))
async def test_fake_server_marker_configures_it(fake_server: FakeServer) -> None:
    """@pytest.mark.fake_server passes its options to the fixture's server."""
    async with httpx.AsyncClient(base_url=fake_server.base_url) as client:
        response = await client.post("/chat/completions", json={"messages": [{"content": "x"}]})
    assert response.status_code == 503
    assert fake_server.seed == 5


async def test_factory_starts_independent_servers(
    fake_server_factory: Callable[..., Awaitable[FakeServer]],
) -> None:
    """fake_server_factory starts as many independent servers as a test needs."""
    healthy = await fake_server_factory()
    broken = await fake_server_factory(faults="http_500=1")
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "x"}]}
    async with httpx.AsyncClient() as client:
        ok = await client.post(f"{healthy.base_url}/chat/completions", json=body)
        bad = await client.post(f"{broken.base_url}/chat/completions", json=body)
    assert (ok.status_code, bad.status_code) == (200, 500)
    assert healthy.port != broken.port


def test_plugin_does_not_break_non_trio_runs(tmp_path: Path) -> None:
    """A plain pytest run without pytest-trio still loads the plugin and passes."""
    (tmp_path / "test_plain.py").write_text("def test_one():\n    assert 1 + 1 == 2\n")
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:trio", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 passed" in out.stdout


def test_plugin_import_does_not_import_test_tools() -> None:
    """Importing the plugin pulls in neither pytest-trio, hypothesis nor openai."""
    code = (
        "import sys; import shardline.testing._plugin; "
        "print([m for m in ('pytest_trio', 'hypothesis', 'openai') if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
