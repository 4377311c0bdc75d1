"""The Ray part of a run's settings: :class:`RaySettings` and its defaults.

Apart from the runner (:mod:`shardline.ray._run`) so that the ``--ray-*``
options of ``shardline run`` (:mod:`shardline._cli_ray`) cost neither the
runner's imports nor Ray's: every ``shardline run`` builds its parser, and
few runs use Ray.
"""

from __future__ import annotations

from typing import Any

import attrs

__all__ = ["DEFAULT_RAY_ACTORS", "DEFAULT_RAY_NUM_CPUS", "RaySettings"]

#: Actors when ``--ray-actors`` is not given.
DEFAULT_RAY_ACTORS = 2
#: CPUs each actor asks Ray for. The work is I/O bound; with a whole CPU per
#: actor, two actors on a two-CPU machine leave none for Ray Data's own tasks
#: and the job hangs.
DEFAULT_RAY_NUM_CPUS = 0.25


def _positive(name: str, *, at_least_one: bool = False) -> Any:
    def check(_inst: object, _attr: object, value: float | None) -> None:
        if value is None:
            return
        if at_least_one and not value >= 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")

    return check


@attrs.frozen(kw_only=True)
class RaySettings:
    """The Ray part of a run.

    Args:
        actors: How many :class:`ShardlineBatch` actors, each a full shard group
            (``shard_count x concurrency`` in flight); ``rpm``/``tpm`` are split
            evenly between them.
        num_cpus: CPUs each actor asks Ray for; keep it below 1 (the work is I/O bound).
        batch_size: Rows per batch handed to an actor (``None``:
            :func:`default_batch_size`).

    Raises:
        ValueError: naming the field and the bound (``actors must be >= 1, got 0``).
    """

    actors: int = attrs.field(
        default=DEFAULT_RAY_ACTORS, validator=_positive("actors", at_least_one=True)
    )
    num_cpus: float = attrs.field(default=DEFAULT_RAY_NUM_CPUS, validator=_positive("num_cpus"))
    batch_size: int | None = attrs.field(
        default=None, validator=_positive("batch_size", at_least_one=True)
    )
