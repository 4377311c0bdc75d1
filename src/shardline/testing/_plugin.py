"""pytest plugin (entry point ``shardline``): fixtures that start the fake server.

Installed with shardline, so any project that has shardline and pytest-trio
can write::

    async def test_my_pipeline(fake_server):
        async with httpx.AsyncClient(base_url=fake_server.base_url) as client:
            ...

    @pytest.mark.fake_server(faults="rate_limit=0.2", seed=1)
    async def test_my_pipeline_under_429s(fake_server):
        ...

    async def test_two_backends(fake_server_factory):
        healthy = await fake_server_factory()
        broken = await fake_server_factory(faults="http_503=1")

The servers run in pytest-trio's ``nursery`` fixture, so they stop (stalled
responses included) when the test ends. The fixtures are trio fixtures: use
them from trio tests (``trio_mode = true`` or ``@pytest.mark.trio``).

Importing this module is cheap (pytest only: trio and the server are imported
when a fixture runs), so it never slows down or breaks test runs that do not
use it.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import trio

    from ._server import FakeServer

__all__ = ["fake_server", "fake_server_factory"]


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``fake_server`` marker (so ``--strict-markers`` accepts it)."""
    config.addinivalue_line(
        "markers",
        "fake_server(**options): keyword options for the fake_server fixture, as for "
        "shardline.testing.open_fake_server (faults, timing, seed, load, no_usage, ...)",
    )


@pytest.fixture
async def fake_server_factory(
    nursery: trio.Nursery,
) -> Callable[..., Awaitable[FakeServer]]:
    """Start fake servers in the test's nursery: ``server = await fake_server_factory(**opts)``.

    The options are those of `open_fake_server`
    (``faults``, ``timing``, ``seed``, ``load``, ``no_usage``, ``default_max_tokens``,
    ``models``, ``host``, ``port``, ``max_connections``). Every server stops when the
    test ends.
    """
    from ._server import serve_fake_server

    async def start(**options: Any) -> FakeServer:
        server: FakeServer = await nursery.start(functools.partial(serve_fake_server, **options))
        return server

    return start


@pytest.fixture
async def fake_server(
    request: pytest.FixtureRequest,
    fake_server_factory: Callable[..., Awaitable[FakeServer]],
) -> FakeServer:
    """A well-behaved fake server on 127.0.0.1, running for the test.

    Configure it with ``@pytest.mark.fake_server(faults=..., timing=..., seed=...)``.
    """
    marker = request.node.get_closest_marker("fake_server")
    options: dict[str, Any] = dict(marker.kwargs) if marker is not None else {}
    return await fake_server_factory(**options)
