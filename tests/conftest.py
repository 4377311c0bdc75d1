"""Test configuration shared by the whole suite: the hypothesis profiles.

Shared helpers (input files, reports, virtual time, SSE bytes, fake transports)
are in ``helpers.py``. Fake servers come from `shardline.testing`, as users get
them: the ``fake_server`` and ``fake_server_factory`` fixtures of the installed
pytest plugin, and ``fake_server_process`` for a server in a child process.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
settings.register_profile("dev", max_examples=30, deadline=None)
settings.register_profile("thorough", max_examples=1000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
