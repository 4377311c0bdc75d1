"""pytest plugin (entry point ``shardline``): fixtures that start the fake server.

Importing this module must stay cheap and must not import trio-only test
machinery, so it never breaks test runs that do not use the fixtures.
"""

from __future__ import annotations
