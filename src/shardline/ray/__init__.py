"""Run shardline pipelines on Ray Data: one long-lived pipeline per actor.

This package is deliberately public (like :mod:`shardline.testing`) and is not
imported by ``shardline`` itself: Ray is an optional extra
(``pip install 'shardline[ray]'``). Importing this package does not import Ray
either; :func:`run_on_ray` imports it when called. Its names are imported on
first use, so the ``--ray-*`` options of ``shardline --help`` cost no trio.

* :class:`ShardlineBatch`: the callable class for ``ds.map_batches(...)``.
* :func:`merge_events` / :func:`merge_event_dir`: the actors' tagged events
  into one run's events file, one execution per batch (no double counting
  of batches Ray ran again), readable by ``shardline report``.
* :func:`run_on_ray` with :class:`RaySettings`: a batch file through ``K``
  actors, the library function behind ``shardline run INPUT.jsonl --ray``.

It imports no part of the command line: the ``--ray-*`` options live with the
CLI, which calls :func:`run_on_ray`.
"""

from typing import TYPE_CHECKING

from .. import _lazy

#: Where each public name lives (imported on first use; see shardline._lazy).
_EXPORTS: dict[str, str] = {
    "ShardlineBatch": "_batch",
    "MergeSummary": "_merge",
    "merge_event_dir": "_merge",
    "merge_events": "_merge",
    "COLUMNS": "_rows",
    "batch_identity": "_rows",
    "DEFAULT_RAY_ACTORS": "_settings",
    "DEFAULT_RAY_NUM_CPUS": "_settings",
    "RaySettings": "_settings",
    "run_on_ray": "_run",
}
# Type checkers and the docs see the imports; the runtime imports on first use.
if TYPE_CHECKING:
    from ._batch import ShardlineBatch as ShardlineBatch
    from ._merge import MergeSummary as MergeSummary
    from ._merge import merge_event_dir as merge_event_dir
    from ._merge import merge_events as merge_events
    from ._rows import COLUMNS as COLUMNS
    from ._rows import batch_identity as batch_identity
    from ._run import run_on_ray as run_on_ray
    from ._settings import DEFAULT_RAY_ACTORS as DEFAULT_RAY_ACTORS
    from ._settings import DEFAULT_RAY_NUM_CPUS as DEFAULT_RAY_NUM_CPUS
    from ._settings import RaySettings as RaySettings
else:
    __getattr__, __dir__ = _lazy.lazy_namespace(__name__, globals(), _EXPORTS)

del TYPE_CHECKING  # not a public name

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
