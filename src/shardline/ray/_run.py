"""The batch runner on Ray Data: :func:`run_on_ray`, behind ``shardline run INPUT.jsonl --ray``.

This module owns running a batch file through :class:`ShardlineBatch` actors
and merging their events; the files around the run (checks, resume, report,
summary) are the single-machine runner's own (:mod:`shardline._batch_io`), and
the ``--ray-*`` options live with the CLI (:mod:`shardline._cli_ray`): nothing
here parses a command line.

The driver (the process calling :func:`run_on_ray`) does what it does without
Ray, except for sending: it reads and validates the input (invalid lines are
written to the output and recorded as ``invalid_input`` at once, as without
Ray), collects the valid requests in Arrow blocks, puts them into Ray's
object store, runs them through ``K`` :class:`~shardline.ray.ShardlineBatch`
actors, and writes each result line as it comes back. Memory: the driver holds
the valid requests (about the size of the input file) until they are in the
object store; for inputs larger than that, use ``ShardlineBatch`` with
``ray.data.read_json`` from shared storage instead. The actors' events come back with their results
(inline events, so no shared storage is needed) and are merged into the one
events file; the report is computed from it exactly as for a single-machine
run. Output lines, the events schema and the report have the same fields.

Per actor: ``--shards``, ``--concurrency`` and ``--queue-size`` are each
actor's own (every actor is a full shard group); ``--rpm`` and ``--tpm`` are
for the whole run and are divided evenly between the actors.

Ray: ``ray.init()`` starts a local Ray instance when ``RAY_ADDRESS`` is unset
and connects to the cluster it names otherwise (``ray job submit`` sets it for
its entrypoint). The API key never travels in task arguments: each actor reads
``OPENAI_API_KEY`` from its own environment (local workers inherit the
driver's; on a cluster, set it on the nodes or in the job's ``runtime_env``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import attrs

from .._batch_io import (
    OUTPUT_FSYNC_INTERVAL,
    BatchSettings,
    BatchSummary,
    finish_report,
    open_output,
    print_summary,
)
from .._config import PipelineConfig
from .._events import EventFileReader, ItemEnd, event_to_json
from .._exit import ExitStatus, print_error
from .._jsonl import read_input
from .._jsonl_output import outcome_to_json
from .._models import Outcome, Request, Status
from ..report import RunReport, compute_report
from ._merge import merge_events, tag_event
from ._settings import DEFAULT_RAY_ACTORS, DEFAULT_RAY_NUM_CPUS, RaySettings

__all__ = [
    "DEFAULT_RAY_ACTORS",
    "DEFAULT_RAY_NUM_CPUS",
    "RaySettings",
    "run_on_ray",
]

#: Most requests per block put into Ray's object store by the driver (a block
#: is also at most one batch, so that every actor gets blocks to work on).
MAX_BLOCK_ROWS = 2048
#: The driver's name in the tagged events of invalid input lines.
DRIVER_ACTOR = "driver"


def actor_config(config: PipelineConfig, actors: int) -> PipelineConfig:
    """Each actor's config: global rate limits split evenly, and no API key in it.

    The key is read by each actor from its own ``OPENAI_API_KEY``, so it never
    travels in Ray task arguments (which Ray stores and may log).
    """
    return attrs.evolve(
        config,
        endpoint=attrs.evolve(config.endpoint, api_key=None),
        endpoints=tuple(attrs.evolve(e, api_key=None) for e in config.endpoints),
        rpm=None if config.rpm is None else config.rpm / actors,
        tpm=None if config.tpm is None else config.tpm / actors,
    )


def request_to_json(request: Request) -> dict[str, Any]:
    """The JSON object of a request: :func:`~shardline._models.request_from_json` gives it back."""
    return request.to_json()


def default_batch_size(config: PipelineConfig, actors: int, rows: int) -> int:
    """Enough rows per batch to keep an actor's shards busy, small enough to spread the input.

    ``4 x shards x concurrency`` amortises the tail of each batch (the last
    items of a batch leave slots idle until the next batch arrives); for an
    input too small for that, ``rows / (2 x actors)`` so every actor gets work.
    """
    full = 4 * config.shard_count * config.concurrency
    spread = math.ceil(rows / (2 * actors)) if rows else 1
    return max(1, min(full, spread))


@attrs.define(eq=False)
class _Spools:
    """The actors' inline events as they come back, one file per actor, in arrival order."""

    directory: Path
    files: dict[str, IO[str]] = attrs.field(factory=dict)

    def add(self, blob: str) -> None:
        if not blob:
            return
        first = blob[: blob.index("\n")] if "\n" in blob else blob
        actor = str(json.loads(first).get("actor"))
        f = self.files.get(actor)
        if f is None:
            name = f"{len(self.files):04d}.events.jsonl"
            f = self.files[actor] = open(self.directory / name, "w", encoding="utf-8")  # noqa: SIM115
        f.write(blob)

    def driver(self) -> IO[str]:
        f = self.files.get(DRIVER_ACTOR)
        if f is None:
            f = self.files[DRIVER_ACTOR] = open(  # noqa: SIM115
                self.directory / "driver.events.jsonl", "w", encoding="utf-8"
            )
        return f

    def close(self) -> list[Path]:
        paths = []
        for f in self.files.values():
            f.close()
            paths.append(Path(f.name))
        return sorted(paths)


def _dataset(ray: Any, tables: list[Any]) -> Any:
    """A dataset of exactly these blocks, with their metadata computed here.

    ``ray.data.from_blocks`` (a developer API) puts the blocks and computes their
    metadata in the driver; ``from_arrow_refs`` runs one Ray task per block for
    it, which costs about a second per block on a busy machine.
    """
    from_blocks = getattr(ray.data, "from_blocks", None)
    if from_blocks is not None:
        return from_blocks(tables)
    return ray.data.from_arrow_refs([ray.put(t) for t in tables])  # pragma: no cover


def run_on_ray(
    settings: BatchSettings,
    ray_settings: RaySettings | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
) -> ExitStatus:
    """Run a batch file on Ray Data; return the exit status.

    Gives the same output lines, events file and report as
    :func:`shardline._batch.run_batch` (the run without Ray), with the same
    exit statuses: 0 all ok, 1 some failed (or the Ray job failed part-way),
    2 a file error or no Ray installed, 130 interrupted.

    Args:
        settings: What to run, as for the run without Ray.
        ray_settings: Actors, CPUs and batch size (default: :class:`RaySettings()`).
        environ: Where ``RAY_ADDRESS`` is read (default ``os.environ``).
        stdout: Where the report goes (default ``sys.stdout``).
        stderr: Where messages go (default ``sys.stderr``).
    """
    env = os.environ if environ is None else environ
    out = sys.stdout if stdout is None else stdout
    err = sys.stderr if stderr is None else stderr
    rs = RaySettings() if ray_settings is None else ray_settings
    local = not env.get("RAY_ADDRESS")
    if local:
        # `uv run shardline ...` would otherwise make Ray start every worker with
        # `uv run` in a fresh copy of the project, without the ray extra.
        os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    try:
        import ray
        import ray.data
    except ImportError:
        print_error(
            err, settings.title, "--ray needs Ray Data: pip install 'shardline[ray]' (ray[data])"
        )
        return ExitStatus.USAGE
    return _run(settings, rs, ray, local=local, progress=settings.progress, out=out, err=err)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the run like Ctrl-C (output kept, events merged, exit 130), as without Ray."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(
    settings: BatchSettings,
    rs: RaySettings,
    ray: Any,
    *,
    local: bool,
    progress: bool,
    out: IO[str],
    err: IO[str],
) -> ExitStatus:
    from ._batch import ShardlineBatch  # the pipeline (trio, httpx): not for --help

    title = settings.title
    summary = BatchSummary()
    # 1. Everything that can be wrong with files, before anything is sent (as without
    #    Ray). The events file is written at the end, after the Ray job: checked now too.
    opened = open_output(settings, summary, err, fsync_interval=OUTPUT_FSYNC_INTERVAL)
    if isinstance(opened, int):
        return ExitStatus(opened)
    writer = opened

    started_ray = False
    reason = "completed"
    failure: str | None = None
    workdir = Path(tempfile.mkdtemp(prefix="shardline-ray-"))
    spools = _Spools(workdir)
    driver_started = time.time()
    config = settings.config
    signals = contextlib.ExitStack()
    try:
        signals.enter_context(_sigterm_as_interrupt())
        # 2. Read and validate the input into blocks of valid requests (Ray is not needed yet).
        driver = spools.driver()
        driver.write(
            tag_event(
                {
                    "v": 1,
                    "kind": "run_start",
                    "t": 0.0,
                    "run_id": "driver",
                    "started_at": driver_started,
                    "shard_count": config.shard_count,
                    "config": config.safe_dict(),
                },
                actor=DRIVER_ACTOR,
                batch=None,
                exec_id=None,
            )
        )
        pa = sys.modules.get("pyarrow") or __import__("pyarrow")
        blocks: list[Any] = []  # pyarrow tables of `block_rows` requests
        block: list[str] = []
        valid = 0
        batch_size = rs.batch_size or default_batch_size(config, rs.actors, summary.total)
        block_rows = min(batch_size, MAX_BLOCK_ROWS)
        skip = summary.resume.done if summary.resume is not None else None
        with contextlib.closing(
            read_input(settings.input, skip=skip, yield_skipped=True)
        ) as entries:
            for entry in entries:
                if entry.skipped:
                    summary.skipped += 1
                    continue
                if entry.request is None:
                    assert entry.error is not None
                    outcome = Outcome(id=entry.item_id, status=Status.FAILED, error=entry.error)
                    summary.failed += 1
                    writer.write(outcome_to_json(outcome, line=entry.line))
                    ended = ItemEnd(
                        t=time.time() - driver_started,
                        item_id=entry.item_id,
                        shard=None,
                        status="failed",
                        attempts=0,
                        latency_s=0.0,
                        cause="invalid_input",
                    )
                    driver.write(
                        tag_event(
                            event_to_json(ended), actor=DRIVER_ACTOR, batch=None, exec_id=None
                        )
                    )
                    continue
                block.append(
                    json.dumps(
                        request_to_json(entry.request), ensure_ascii=False, separators=(",", ":")
                    )
                )
                valid += 1
                if len(block) >= block_rows:
                    blocks.append(pa.table({"request": block}))
                    block = []
        if block:
            blocks.append(pa.table({"request": block}))
        driver.flush()

        # 3. Run the batches on the actors; write each result as it comes back.
        if blocks:
            if not ray.is_initialized():
                ray.init(
                    **({"include_dashboard": False} if local else {}),
                    logging_level=logging.WARNING,
                    log_to_driver=True,
                )
                started_ray = True
            # After ray.init, which installs its own SIGTERM handlers (exit, abort).
            signals.enter_context(_sigterm_as_interrupt())
            ray.data.DataContext.get_current().enable_progress_bars = progress
            ds = _dataset(ray, blocks).map_batches(
                ShardlineBatch,
                fn_constructor_kwargs={
                    "config": actor_config(config, rs.actors),
                    "inline_events": True,
                    "output": "records",
                    "run_id": "ray",
                },
                compute=ray.data.ActorPoolStrategy(size=rs.actors),
                num_cpus=rs.num_cpus,
                batch_size=batch_size,
                batch_format="pyarrow",
            )
            blocks = []  # the object store holds them now
            print(
                f"{title}: {valid} items on Ray ({'local' if local else 'cluster'}): "
                f"{rs.actors} actors x {config.shard_count} shards x {config.concurrency} "
                f"in flight, batches of {batch_size}",
                file=err,
                flush=True,
            )
            try:
                for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                    records = batch.column("record").to_pylist()
                    for blob in batch.column("events").to_pylist():
                        spools.add(blob)
                    for text in records:
                        record = json.loads(text)
                        status = record.get("status")
                        if status == Status.OK:
                            summary.ok += 1
                        elif status == Status.FAILED:
                            summary.failed += 1
                        else:
                            summary.cancelled += 1
                            continue  # not written: --resume runs it again
                        writer.write(record)
            except KeyboardInterrupt:
                reason = "cancelled"
                summary.interrupted = True
                print(f"\n{title}: interrupted: stopping the Ray job", file=err, flush=True)
    except KeyboardInterrupt:
        reason = "cancelled"
        summary.interrupted = True
    except Exception as exc:  # the Ray job failed: keep what finished, report, exit 1
        reason = "error"
        failure = f"the Ray job failed: {type(exc).__name__}: {exc}"
    finally:
        writer.close()
        paths = spools.close()
        if started_ray:
            ray.shutdown()
        signals.close()
    # 4. One events file for the run, and its report.
    try:
        merged = merge_events(
            paths,
            settings.events,
            run_id=uuid.uuid4().hex[:12],
            reason=reason,
            append=settings.resume,
        )
    except OSError as exc:
        print_error(
            err, title, f"cannot write events file {settings.events}: {exc.strerror or exc}"
        )
        return ExitStatus.USAGE
    finally:
        for path in paths:
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            workdir.rmdir()
    if merged.superseded:
        print(
            f"{title}: {merged.superseded} batch execution(s) that Ray ran again were not "
            "counted twice",
            file=err,
            flush=True,
        )
    finish_report(settings, lambda: _merged_report(settings, merged.sha256), out, err)
    print_summary(settings, summary, err)
    if failure is not None:
        print_error(err, title, f"{failure} (items without an output line run again with --resume)")
        return max(summary.exit_status, ExitStatus.FAILED_ITEMS)
    return summary.exit_status


def _merged_report(settings: BatchSettings, digest: str) -> RunReport:
    """The report of the merged events file, read back once."""
    with EventFileReader(settings.events) as reader:
        return compute_report(reader, events_sha256=digest)
