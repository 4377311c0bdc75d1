"""The exit statuses of the ``shardline`` command and of the batch runner, in one place.

Every subcommand and :func:`shardline._batch.run_batch` return one of these;
the CLI reference documents them from here. :func:`print_error` writes the one
line that goes with a failure.
"""

from __future__ import annotations

import enum
from typing import IO

__all__ = ["ExitStatus", "print_error"]


class ExitStatus(enum.IntEnum):
    """How a ``shardline`` command ended.

    An ``IntEnum``, so a status is the process exit code as it is
    (``sys.exit(ExitStatus.USAGE)`` exits 2).
    """

    OK = 0
    """Everything asked for was done (every item ok, the report printed, ...)."""
    FAILED_ITEMS = 1
    """The run finished, and some items failed (their lines say why)."""
    USAGE = 2
    """A usage, configuration or file error, or an endpoint that cannot work (a failed
    ``--check``, or a run stopped because every first attempt failed the same way)."""
    INTERNAL = 70
    """A bug in shardline (sysexits' ``EX_SOFTWARE``); the traceback is in a file."""
    INTERRUPTED = 130
    """Ctrl-C or SIGTERM, after the output, events and report were flushed."""


def print_error(stderr: IO[str], title: str, message: str) -> None:
    """One error line: ``shardline run: error: ...``."""
    print(f"{title}: error: {message}", file=stderr, flush=True)
