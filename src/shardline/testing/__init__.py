"""Test helpers for shardline users: a fault-injecting OpenAI-compatible server.

This package is deliberately public (like ``trio.testing``) and is not imported
by ``shardline`` itself.
"""

from __future__ import annotations

__all__: list[str] = []
