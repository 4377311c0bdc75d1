"""Run shardline pipelines on Ray Data: one long-lived pipeline per actor.

This package is deliberately public (like :mod:`shardline.testing`) and is not
imported by ``shardline`` itself: Ray is an optional extra
(``pip install 'shardline[ray]'``). Importing this package does not import Ray
either; :func:`run_on_ray` imports it when called.

* :class:`ShardlineBatch`: the callable class for ``ds.map_batches(...)``.
* :func:`merge_events` / :func:`merge_event_dir`: the actors' tagged events
  into one run's events file, one execution per batch (no double counting
  of batches Ray ran again), readable by ``shardline report``.
* :func:`run_on_ray` with :class:`RaySettings`: a batch file through ``K``
  actors, the library function behind ``shardline run INPUT.jsonl --ray``.

It imports no part of the command line: the ``--ray-*`` options live with the
CLI, which calls :func:`run_on_ray`.
"""

from __future__ import annotations

from ._batch import ShardlineBatch as ShardlineBatch
from ._merge import MergeSummary as MergeSummary
from ._merge import merge_event_dir as merge_event_dir
from ._merge import merge_events as merge_events
from ._rows import COLUMNS as COLUMNS
from ._rows import batch_identity as batch_identity
from ._run import DEFAULT_RAY_ACTORS as DEFAULT_RAY_ACTORS
from ._run import DEFAULT_RAY_NUM_CPUS as DEFAULT_RAY_NUM_CPUS
from ._run import RaySettings as RaySettings
from ._run import run_on_ray as run_on_ray

__all__ = [
    "COLUMNS",
    "DEFAULT_RAY_ACTORS",
    "DEFAULT_RAY_NUM_CPUS",
    "MergeSummary",
    "RaySettings",
    "ShardlineBatch",
    "batch_identity",
    "merge_event_dir",
    "merge_events",
    "run_on_ray",
]
