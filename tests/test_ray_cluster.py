"""End to end on a local Ray instance: `shardline run --ray` and `map_batches(ShardlineBatch)`.

Skipped when Ray Data is not installed (the ``shardline[ray]`` extra). One Ray
instance serves every test here (two CPUs, no dashboard), and is shut down
after them so that it does not outlive this module. Ray fails by
hanging, so every test runs under a hard ``signal.alarm`` timeout.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import attrs
import pytest

from helpers import report_of
from shardline._cli import build_parser
from shardline._cli_ray import ray_settings
from shardline._cli_run import resolve_run_settings
from shardline._config import Deadlines, Endpoint, PipelineConfig
from shardline.ray import ShardlineBatch, merge_event_dir, run_on_ray
from shardline.report import RunReport
from shardline.testing import fake_server_process

# Under `uv run pytest`, Ray would start every worker with `uv run` in a fresh copy
# of the project (without the ray extra); local workers should use this interpreter.
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.ray,
    # Ray and its dependencies warn about their own internals.
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

#: Seconds before a hung Ray call fails the test (Ray startup is slow on a busy 2-core box).
INIT_TIMEOUT = 180
TEST_TIMEOUT = 240
FAULTS = "rate_limit=0.05:retry_after=0.1,http_500=0.05,reset=0.03:after=2"


class RayHang(Exception):
    """A Ray call did not return in time."""


@contextlib.contextmanager
def alarm(seconds: int) -> Iterator[None]:
    """Raise RayHang in the main thread if the block takes longer than ``seconds``."""

    def fire(_sig: int, _frame: FrameType | None) -> None:
        raise RayHang(f"no progress in {seconds} s: Ray is hanging")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def ray_session() -> Iterator[Any]:
    """One local Ray instance with two CPUs for every Ray test (shut down after them)."""
    with alarm(INIT_TIMEOUT):
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
        ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    with alarm(INIT_TIMEOUT):
        ray.shutdown()


@pytest.fixture
def hard_timeout() -> Iterator[None]:
    with alarm(TEST_TIMEOUT):
        yield


@pytest.fixture(scope="module")
def fake_url() -> Iterator[str]:
    """A fake server with seeded faults (the same faults for the same items), in a process."""
    with fake_server_process(faults=FAULTS, seed=3) as server:
        yield server.base_url


def run_parser() -> argparse.ArgumentParser:
    return build_parser()


def totals(report: RunReport) -> dict[str, Any]:
    fields = (
        "items",
        "succeeded",
        "failed",
        "cancelled",
        "attempts",
        "retries",
        "retry_causes",
        "attempt_failures",
        "failure_causes",
        "tokens_in_total",
        "tokens_out_total",
        "shard_count",
    )
    return {f: getattr(report, f) for f in fields}


def outputs(path: Path) -> set[tuple[str, str, str | None, int]]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return {(str(r["id"]), r["status"], r["text"], r["attempts"]) for r in rows}


@pytest.mark.usefixtures("hard_timeout")
def test_run_on_ray_gives_the_outputs_and_report_of_a_single_machine_run(
    ray_session: Any, fake_url: str, tmp_path: Path
) -> None:
    """Done-when: `run --ray --ray-actors 2` equals the run without --ray on the same input."""
    source = tmp_path / "in.jsonl"
    with open(source, "w") as f:
        for i in range(48):
            text = f"item {i} " * (1 + i % 5)
            f.write(json.dumps({"id": f"q{i}", "messages": [{"role": "user", "content": text}],
                                "max_tokens": 4 + i % 7}) + "\n")  # fmt: skip
        f.write("{not json\n")
        f.write(json.dumps({"prompt": "an id from the line number", "max_tokens": 3}) + "\n")
    common = ["--base-url", fake_url, "--model", "m", "--shards", "2", "--concurrency", "4"]
    common += ["--max-attempts", "3", "--no-progress"]

    single = run_parser().parse_args(
        ["run", str(source), "-o", str(tmp_path / "single.out.jsonl"),
         "--events", str(tmp_path / "single.events.jsonl"), *common]
    )  # fmt: skip
    assert single.func(single) == 1  # the invalid line fails

    out, err = io.StringIO(), io.StringIO()
    on_ray = run_parser().parse_args(
        ["run", str(source), "-o", str(tmp_path / "ray.out.jsonl"),
         "--events", str(tmp_path / "ray.events.jsonl"), "--report-json",
         str(tmp_path / "ray.report.json"), "--ray", "--ray-actors", "2", *common]
    )  # fmt: skip
    settings = resolve_run_settings(on_ray, os.environ)
    assert run_on_ray(settings, ray_settings(on_ray), stdout=out, stderr=err) == 1, err.getvalue()

    assert outputs(tmp_path / "ray.out.jsonl") == outputs(tmp_path / "single.out.jsonl")
    single_report = report_of(tmp_path / "single.events.jsonl")
    ray_report = report_of(tmp_path / "ray.events.jsonl")
    assert totals(ray_report) == totals(single_report)
    assert ray_report.retries > 0
    assert ray_report.items == 50
    # The printed report is of the merged file, with its digest (== sha256sum).
    digest = hashlib.sha256((tmp_path / "ray.events.jsonl").read_bytes()).hexdigest()
    assert f"events_sha256             {digest}" in out.getvalue()
    saved = json.loads((tmp_path / "ray.report.json").read_text())
    assert saved["events_sha256"] == digest
    assert saved["items"] == 50
    merged_config = json.loads((tmp_path / "ray.events.jsonl").read_text().splitlines()[0])
    assert merged_config["config"]["ray"]["actors"] >= 2  # two actors and the driver
    assert "48 ok, 2 failed" in err.getvalue()


class DiesOnce(ShardlineBatch):
    """Finishes the batch holding ``m13``, then kills its process before returning, once.

    Ray restarts the actor and runs the batch again: its events are then in the
    actors' files twice (two complete executions), which the merge must count once.
    """

    def __init__(self, *, marker: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.marker = Path(marker)

    def __call__(self, batch: Any) -> Any:
        out = super().__call__(batch)
        if "m13" in list(batch["id"]) and not self.marker.exists():
            self.marker.touch()
            os._exit(1)
        return out


@pytest.mark.usefixtures("hard_timeout")
def test_map_batches_with_events_dir(ray_session: Any, fake_url: str, tmp_path: Path) -> None:
    """The library route: pandas batches, two actors, one killed after a batch; counted once."""
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    config = PipelineConfig(
        endpoint=Endpoint(base_url=fake_url, model="m"),
        shard_count=1,
        concurrency=8,
        deadlines=Deadlines(connect=5.0, ttft=5.0, stall=5.0, attempt=10.0),
    )
    items = [{"id": f"m{i}", "prompt": f"row {i}", "max_tokens": 5} for i in range(40)]
    ds = ray.data.from_items(items, override_num_blocks=4).map_batches(
        DiesOnce,
        fn_constructor_kwargs={
            "config": config,
            "events_dir": str(tmp_path / "events"),
            "run_id": "lib",
            "marker": str(tmp_path / "died"),
        },
        compute=ray.data.ActorPoolStrategy(size=2),
        num_cpus=0.25,
        batch_size=10,
        batch_format="pandas",
    )
    rows = ds.take_all()
    assert sorted(r["id"] for r in rows) == sorted(i["id"] for i in items)
    assert {r["status"] for r in rows} <= {"ok", "failed"}
    assert (tmp_path / "died").exists()
    merged = merge_event_dir(tmp_path / "events", tmp_path / "run.events.jsonl", run_id="lib")
    assert merged.batches == 4
    assert merged.superseded == 1  # the batch Ray ran again
    report = report_of(tmp_path / "run.events.jsonl")
    assert report.items == 40
    assert report.succeeded == sum(r["status"] == "ok" for r in rows)
    assert report.attempts == sum(int(r["attempts"]) for r in rows)
    assert attrs.asdict(report)["tokens_out_total"] == sum(
        int(r["completion_tokens"]) for r in rows if r["status"] == "ok"
    )
