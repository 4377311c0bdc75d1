"""The ``--ray*`` options of ``shardline run``, turned into :class:`~shardline.ray.RaySettings`.

This module owns only the command line's side of Ray: the option group and
the mapping of :class:`~shardline.ray.RaySettings` validation errors to the
option at fault. The run itself is :func:`shardline.ray.run_on_ray`, which
imports Ray when called.
"""

from __future__ import annotations

import argparse

from ._cli_options import UsageError
from .ray._settings import DEFAULT_RAY_ACTORS, DEFAULT_RAY_NUM_CPUS, RaySettings

__all__ = ["add_ray_options", "ray_settings"]

#: Which option sets a RaySettings field (a validation message starts with the field).
_OPTION_FOR_FIELD = {
    "actors": "--ray-actors",
    "num_cpus": "--ray-cpus",
    "batch_size": "--ray-batch-size",
}


def add_ray_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--ray``, ``--ray-actors``, ``--ray-cpus`` and ``--ray-batch-size`` to ``parser``."""
    g = parser.add_argument_group("ray (needs the shardline[ray] extra)")
    g.add_argument(
        "--ray",
        action="store_true",
        help="run on Ray Data: a local Ray instance, or the cluster named by RAY_ADDRESS",
    )
    g.add_argument(
        "--ray-actors",
        type=int,
        default=DEFAULT_RAY_ACTORS,
        metavar="K",
        help="actors, each a full shard group (--shards x --concurrency); --rpm/--tpm are "
        f"split between them (default: {DEFAULT_RAY_ACTORS})",
    )
    g.add_argument(
        "--ray-cpus",
        type=float,
        default=DEFAULT_RAY_NUM_CPUS,
        metavar="CPUS",
        help=f"CPUs each actor asks for; keep it below 1 (default: {DEFAULT_RAY_NUM_CPUS:g})",
    )
    g.add_argument(
        "--ray-batch-size",
        type=int,
        default=None,
        metavar="N",
        help="rows per batch handed to an actor (default: 4 x shards x concurrency, "
        "smaller for small inputs so every actor gets work)",
    )


def ray_settings(args: argparse.Namespace) -> RaySettings:
    """The validated ``--ray-*`` options.

    Raises:
        UsageError: ``invalid value for --ray-actors: must be >= 1, got 0``.
    """
    try:
        return RaySettings(
            actors=args.ray_actors, num_cpus=args.ray_cpus, batch_size=args.ray_batch_size
        )
    except ValueError as exc:
        field, _, rest = str(exc).partition(" ")
        option = _OPTION_FOR_FIELD.get(field, field)
        raise UsageError(f"invalid value for {option}: {rest}") from None
