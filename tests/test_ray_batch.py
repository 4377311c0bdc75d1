"""ShardlineBatch and the events merge, called directly the way Ray Data calls them (no Ray).

The fake server runs in a process of its own (`shardline.testing.fake_server_process`),
because the batch class blocks its calling thread while its own trio loop (another
thread) works.
These tests are synchronous on purpose: they stand where a Ray actor stands.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from helpers import report_of
from shardline._backoff import Backoff, RetryPolicy
from shardline._batch_io import BatchSettings
from shardline._cli import main
from shardline._config import Deadlines, Endpoint, PipelineConfig
from shardline._exceptions import ConfigError
from shardline._models import Outcome, request_from_json
from shardline._pipeline import open_pipeline
from shardline._sinks import MemoryEventSink
from shardline.ray import (
    COLUMNS,
    RaySettings,
    ShardlineBatch,
    batch_identity,
    merge_event_dir,
    merge_events,
    run_on_ray,
)
from shardline.ray._batch import _interrupt_only
from shardline.ray._merge import batch_end_line, batch_start_line, tag_event
from shardline.ray._run import actor_config, default_batch_size, request_to_json
from shardline.report import RunReport, compute_report
from shardline.testing import FakeServerProcess, fake_server_process

FAULTS = (
    "http_500@item=q3/1,rate_limit@item=q5/1:retry_after=0.05,"
    "http_503@item=bad,stall_headers@item=slow"
)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeServerProcess]:
    """A fake server with scripted faults, in a child process for the whole module."""
    with fake_server_process(faults=FAULTS, seed=1) as server:
        yield server


def make_config(url: str, **overrides: Any) -> PipelineConfig:
    return PipelineConfig(
        endpoint=Endpoint(base_url=url, model="m"),
        shard_count=2,
        concurrency=4,
        retry=RetryPolicy(max_attempts=2, backoff=Backoff(initial=0.01, max=0.05, jitter=0.0)),
        deadlines=Deadlines(connect=5.0, ttft=5.0, stall=5.0, attempt=10.0),
        drain_grace=1.0,
        **overrides,
    )


@pytest.fixture
def batch_fn(fake: FakeServerProcess) -> Iterator[ShardlineBatch]:
    fn = ShardlineBatch(config=make_config(fake.base_url))
    yield fn
    fn.close()


def chat(item_id: str, text: str = "hello") -> dict[str, Any]:
    return {"id": item_id, "messages": [{"role": "user", "content": text}], "max_tokens": 8}


def requests_column(ids: list[str]) -> dict[str, list[str]]:
    return {"request": [json.dumps(chat(i)) for i in ids]}


def test_dict_batch_gives_one_row_per_row_in_order(batch_fn: ShardlineBatch) -> None:
    """A dict-of-lists batch comes back as the result columns, row for row, in input order."""
    ids = [f"a{i}" for i in range(10)]
    out = batch_fn(requests_column(ids))
    assert list(out) == list(COLUMNS)
    assert out["id"] == ids
    assert out["status"] == ["ok"] * 10
    assert all(isinstance(t, str) and t for t in out["text"])
    assert out["completion_tokens"] == [8] * 10
    assert out["attempts"] == [1] * 10
    assert out["cause"] == [None] * 10
    assert all(s in (0, 1) for s in out["shard"])


def test_failures_are_rows_with_their_cause(batch_fn: ShardlineBatch) -> None:
    """Retried, failed and invalid items are rows (status, attempts, cause), never exceptions."""
    batch = requests_column(["q3", "q5", "bad", "fine"])
    batch["request"].append("{not json")
    batch["request"].append(json.dumps({"id": "nomsg"}))
    out = batch_fn(batch)
    by_id = dict(
        zip(out["id"], zip(out["status"], out["attempts"], out["cause"], strict=True), strict=True)
    )
    assert by_id["q3"] == ("ok", 2, None)
    assert by_id["q5"] == ("ok", 2, None)
    assert by_id["bad"] == ("failed", 2, "server_error")
    assert by_id["fine"] == ("ok", 1, None)
    assert by_id["nomsg"] == ("failed", 0, "invalid_input")
    assert out["status"][4] == "failed"
    assert out["cause"][4] == "invalid_input"
    assert "not JSON" in out["message"][4]


def test_rows_without_an_id_get_a_stable_one(batch_fn: ShardlineBatch) -> None:
    """A row without an id gets '<batch id>:<row>', the same on every run of the batch."""
    batch = {"prompt": ["one", "two"]}
    first = batch_fn(batch)["id"]
    second = batch_fn(batch)["id"]
    identity = batch_identity([{"prompt": "one"}, {"prompt": "two"}])
    assert first == second == [f"{identity}:0", f"{identity}:1"]


def test_duplicate_id_in_a_batch_is_invalid_input(batch_fn: ShardlineBatch) -> None:
    """Two rows with one id: the second fails as invalid_input instead of losing a row."""
    out = batch_fn(requests_column(["d1", "d1"]))
    assert out["status"] == ["ok", "failed"]
    assert out["cause"] == [None, "invalid_input"]


def test_pandas_batch_comes_back_as_a_dataframe(batch_fn: ShardlineBatch) -> None:
    """A pandas batch (columns of request fields) comes back as a DataFrame with nullable ints."""
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame([chat("p1"), chat("p2"), {"id": "p3", "prompt": "legacy"}])
    out = batch_fn(frame)
    assert isinstance(out, pd.DataFrame)
    assert list(out["id"]) == ["p1", "p2", "p3"]
    assert list(out["status"]) == ["ok"] * 3
    assert str(out["prompt_tokens"].dtype) == "Int64"


def test_numpy_batch_comes_back_as_numpy_columns(batch_fn: ShardlineBatch) -> None:
    """A numpy batch (Ray's default format) comes back as numpy arrays."""
    np = pytest.importorskip("numpy")
    batch = {"id": np.array(["n1", "n2"]), "prompt": np.array(["x", "y"])}
    out = batch_fn(batch)
    assert isinstance(out["attempts"], np.ndarray)
    assert out["attempts"].dtype == np.int64
    assert out["status"].tolist() == ["ok", "ok"]


def test_pyarrow_batch_comes_back_with_explicit_types(batch_fn: ShardlineBatch) -> None:
    """A pyarrow batch gives typed columns: all-null `cause` is still a string column."""
    pa = pytest.importorskip("pyarrow")
    out = batch_fn(pa.table(requests_column(["t1", "t2"])))
    assert isinstance(out, pa.Table)
    assert out.column("status").to_pylist() == ["ok", "ok"]
    assert out.schema.field("cause").type == pa.string()
    assert out.schema.field("prompt_tokens").type == pa.int64()


def test_answer_columns_hold_tool_calls_reasoning_and_vectors(batch_fn: ShardlineBatch) -> None:
    """Tool calls (JSON text), reasoning and embeddings have columns, null where absent."""
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {}}}
    rows = [
        {**chat("tc"), "tools": [tool]},
        {**chat("th"), "reasoning_effort": "low"},
        {"id": "vec", "api": "embeddings", "input": ["one", "two"]},
        chat("plain"),
    ]
    out = batch_fn({"request": [json.dumps(r) for r in rows]})
    assert out["status"] == ["ok"] * 4
    calls = json.loads(out["tool_calls"][0])
    assert [c["function"]["name"] for c in calls] == ["get_weather"]
    assert calls[0]["arguments_valid"] is True
    assert isinstance(out["reasoning"][1], str)
    assert out["reasoning"][1]
    vectors = out["embeddings"][2]
    assert len(vectors) == 2
    assert all(isinstance(x, float) for x in vectors[0])
    assert out["tool_calls"][3] is None
    assert out["reasoning"][3] is None
    assert out["embeddings"][3] is None


def test_pyarrow_embeddings_are_lists_of_floats(batch_fn: ShardlineBatch) -> None:
    """In Arrow, the embeddings column is list<list<double>> whatever the batch holds."""
    pa = pytest.importorskip("pyarrow")
    rows = [{"id": "v1", "api": "embeddings", "input": "x"}, chat("c1")]
    out = batch_fn(pa.table({"request": [json.dumps(r) for r in rows]}))
    assert out.schema.field("embeddings").type == pa.list_(pa.list_(pa.float64()))
    assert out.schema.field("tool_calls").type == pa.string()
    column = out.column("embeddings").to_pylist()
    assert len(column[0]) == 1
    assert column[1] is None
    plain = batch_fn(pa.table(requests_column(["c2"])))
    assert plain.schema.field("embeddings").type == pa.list_(pa.list_(pa.float64()))


def test_records_output_is_the_run_output_line(fake: FakeServerProcess) -> None:
    """output='records' gives the exact `shardline run` output line of each item."""
    with ShardlineBatch(config=make_config(fake.base_url), output="records") as fn:
        out = fn(requests_column(["r1", "q3"]))
    records = [json.loads(r) for r in out["record"]]
    assert [r["id"] for r in records] == ["r1", "q3"]
    assert records[1]["attempts"] == 2
    assert set(records[0]) >= {"id", "status", "text", "usage", "attempts", "shard", "latency_s"}


def test_one_pipeline_and_pool_serve_every_batch(fake: FakeServerProcess) -> None:
    """Batches reuse the actor's pipeline and connections: no client per batch."""
    before = fake.statistics().connections_accepted
    with ShardlineBatch(config=make_config(fake.base_url)) as fn:
        assert fn._loop is not None
        pipeline = fn._loop.pipeline
        for b in range(5):
            fn(requests_column([f"c{b}-{i}" for i in range(8)]))
            assert fn._loop.pipeline is pipeline
        assert fn.batches == 5
    # two shards x four connections at most, however many batches (the last statistics()
    # request is one connection more)
    assert fake.statistics().connections_accepted - before - 1 <= 8


def test_close_is_idempotent_and_final(fake: FakeServerProcess) -> None:
    """close() stops the loop; calling again is a no-op and a later batch is refused."""
    fn = ShardlineBatch(config=make_config(fake.base_url))
    fn.close()
    fn.close()
    assert "closed" in repr(fn)
    with pytest.raises(RuntimeError, match="closed"):
        fn(requests_column(["z"]))


def test_bad_arguments_are_config_errors(fake: FakeServerProcess) -> None:
    """Exclusive or invalid constructor arguments fail before any loop starts."""
    with pytest.raises(ConfigError, match="events_dir or inline_events"):
        ShardlineBatch(config=make_config(fake.base_url), events_dir="x", inline_events=True)
    with pytest.raises(ConfigError, match="output must be 'columns' or 'records'"):
        ShardlineBatch(config=make_config(fake.base_url), output="rows")  # type: ignore[arg-type]


def test_api_key_comes_from_the_actor_environment(
    fake: FakeServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a key in the config, the actor reads OPENAI_API_KEY; its repr hides it."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret")
    with ShardlineBatch(config=make_config(fake.base_url)) as fn:
        assert fn.config.endpoint.api_key == "sk-test-secret"
        assert "sk-test-secret" not in repr(fn.config)
        assert fn(requests_column(["k1"]))["status"] == ["ok"]


def test_interrupt_cancels_the_batch_and_the_actor_lives_on(fake: FakeServerProcess) -> None:
    """Ctrl-C / ray.cancel during a batch: a plain KeyboardInterrupt, and the next batch runs."""
    config = make_config(fake.base_url)
    started = time.monotonic()
    with ShardlineBatch(config=config) as fn:
        timer = threading.Timer(0.5, os.kill, args=(os.getpid(), signal.SIGINT))
        timer.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                fn(requests_column(["slow"]))  # stalls before headers
        finally:
            timer.cancel()
        assert fn(requests_column(["after"]))["status"] == ["ok"]
    # Leaving drained the stalled item within drain_grace, without waiting for its deadlines.
    assert time.monotonic() - started < 4.0


def test_interrupt_only_unwraps_groups() -> None:
    """A group holding only KeyboardInterrupts counts as an interrupt; mixed groups do not."""
    assert _interrupt_only(KeyboardInterrupt())
    assert _interrupt_only(BaseExceptionGroup("g", [KeyboardInterrupt(), KeyboardInterrupt()]))
    assert not _interrupt_only(BaseExceptionGroup("g", [KeyboardInterrupt(), ValueError()]))
    assert not _interrupt_only(ValueError())


# -- events and their merge ------------------------------------------------------------------


def totals(report: RunReport) -> tuple[Any, ...]:
    return (
        report.items,
        report.succeeded,
        report.failed,
        report.attempts,
        report.retries,
        report.retry_causes,
        report.tokens_in_total,
        report.tokens_out_total,
    )


def test_two_actors_merge_to_the_report_of_one_pipeline(
    fake: FakeServerProcess, tmp_path: Path
) -> None:
    """Two actors' inline events merge into one run whose totals equal a single pipeline's."""
    ids = [f"q{i}" for i in range(12)] + ["bad"]
    config = make_config(fake.base_url)

    async def single() -> list[Outcome]:
        sink = MemoryEventSink()
        send, recv = trio.open_memory_channel[Outcome](len(ids))
        async with open_pipeline(config, sink=sink) as pipeline:
            await pipeline.map([request_from_json(chat(i)) for i in ids], send)
            got = [o async for o in recv]
        single_report.append(compute_report(sink.events, events_sha256=None))
        return got

    single_report: list[RunReport] = []
    outcomes = trio.run(single)
    spool = tmp_path / "spool"
    spool.mkdir()
    rows: list[tuple[Any, ...]] = []
    with (
        ShardlineBatch(config=config, inline_events=True) as a1,
        ShardlineBatch(config=config, inline_events=True) as a2,
    ):
        for n, (fn, part) in enumerate([(a1, ids[:7]), (a2, ids[7:])]):
            out = fn(requests_column(part))
            assert out["events"][1:] == [""] * (len(part) - 1)
            (spool / f"{n}.jsonl").write_text(out["events"][0])
            rows += zip(out["id"], out["status"], out["text"], strict=True)
    merged = merge_events(sorted(spool.iterdir()), tmp_path / "events.jsonl", run_id="r1")
    assert merged.actors == 2
    assert merged.batches == 2
    assert merged.superseded == 0
    report = report_of(tmp_path / "events.jsonl")
    assert report.run_id == "r1"
    assert report.events_sha256 == merged.sha256
    assert totals(report) == totals(single_report[0])
    assert report.retry_causes == {"rate_limited": 1, "server_error": 2}
    expected = {(o.id, o.status.value, o.result.text if o.result else None) for o in outcomes}
    assert set(rows) == expected


def test_a_re_run_batch_is_counted_once(fake: FakeServerProcess, tmp_path: Path) -> None:
    """The same batch run on two actors (a Ray re-run): the merge keeps one execution."""
    batch = requests_column(["q3", "e1", "e2"])
    with (
        ShardlineBatch(config=make_config(fake.base_url), events_dir=tmp_path, run_id="job") as a1,
        ShardlineBatch(config=make_config(fake.base_url), events_dir=tmp_path, run_id="job") as a2,
    ):
        a1(batch)
        a2(batch)
        a2(requests_column(["e3"]))
    files = sorted(tmp_path.glob("job.*.events.jsonl"))
    assert len(files) == 2
    merged = merge_event_dir(tmp_path, tmp_path / "run.events.jsonl", run_id="job")
    assert (merged.batches, merged.superseded, merged.complete_batches) == (2, 1, 2)
    report = report_of(tmp_path / "run.events.jsonl")
    assert (report.items, report.succeeded, report.attempts, report.retries) == (4, 4, 5, 1)
    run_starts = [
        line
        for line in (tmp_path / "run.events.jsonl").read_text().splitlines()
        if '"kind":"run_start"' in line
    ]
    assert len(run_starts) == 1
    assert json.loads(run_starts[0])["config"]["ray"]["superseded_executions"] == 1


def _lines(actor: str, batch: str, exec_id: str, *, t0: float, complete: bool, status: str) -> str:
    """A hand-written execution of one single-item batch."""
    item = {"v": 1, "kind": "item_admitted", "t": t0, "item_id": "i1", "shard": 0}
    start = {"v": 1, "kind": "attempt_start", "t": t0, "item_id": "i1", "shard": 0, "attempt": 1}
    end = {
        "v": 1, "kind": "item_end", "t": t0 + 1.0, "item_id": "i1", "shard": 0,
        "status": status, "attempts": 1, "latency_s": 1.0,
        "cause": None if status == "ok" else "server_error",
        "prompt_tokens": 3 if status == "ok" else None,
        "completion_tokens": 5 if status == "ok" else None,
    }  # fmt: skip
    text = batch_start_line(
        actor=actor, batch=batch, exec_id=exec_id, t=t0, rows=1,
        started_at=1000.0, shard_count=2, config={"shard_count": 2},
    )  # fmt: skip
    for e in (item, start, end):
        text += tag_event(e, actor=actor, batch=batch, exec_id=exec_id)
    if complete:
        text += batch_end_line(actor=actor, batch=batch, exec_id=exec_id, t=t0 + 1.0, rows=1)
    return text


def test_merge_prefers_the_complete_execution(tmp_path: Path) -> None:
    """An execution without batch_end loses to a complete one, even if it was seen later."""
    (tmp_path / "a.jsonl").write_text(_lines("A", "b1", "x1", t0=1.0, complete=True, status="ok"))
    (tmp_path / "b.jsonl").write_text(
        _lines("B", "b1", "x2", t0=5.0, complete=False, status="failed")
    )
    merged = merge_events([tmp_path / "a.jsonl", tmp_path / "b.jsonl"], tmp_path / "m.jsonl")
    assert (merged.batches, merged.superseded, merged.actors) == (1, 1, 1)
    report = report_of(tmp_path / "m.jsonl")
    assert (report.items, report.succeeded, report.tokens_out_total) == (1, 1, 5)
    assert report.started_at_utc == "1970-01-01T00:16:40Z"  # the actor's started_at, 1000 s


def test_merge_keeps_the_last_incomplete_execution_when_none_completed(tmp_path: Path) -> None:
    """With no complete execution, the last one seen stays, so the report shows what happened."""
    text = _lines("A", "b1", "x1", t0=1.0, complete=False, status="ok")
    text += _lines("A", "b1", "x2", t0=3.0, complete=False, status="failed")
    (tmp_path / "a.jsonl").write_text(text)
    merged = merge_events([tmp_path / "a.jsonl"], tmp_path / "m.jsonl", reason="cancelled")
    assert (merged.batches, merged.complete_batches, merged.superseded) == (1, 0, 1)
    report = report_of(tmp_path / "m.jsonl")
    assert (report.items, report.failed, report.end_reason) == (1, 1, "cancelled")


def test_merge_sorts_a_source_that_is_out_of_order(tmp_path: Path) -> None:
    """Batches that came back out of order in one spool are still merged in time order."""
    text = _lines("A", "b2", "x2", t0=9.0, complete=True, status="ok").replace('"i1"', '"i2"')
    text += _lines("A", "b1", "x1", t0=1.0, complete=True, status="ok")
    (tmp_path / "a.jsonl").write_text(text)
    merge_events([tmp_path / "a.jsonl"], tmp_path / "m.jsonl")
    times = [json.loads(line)["t"] for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert times == sorted(times)
    assert report_of(tmp_path / "m.jsonl").items == 2


def test_merge_ignores_a_torn_last_line_and_rejects_garbage(tmp_path: Path) -> None:
    """A torn tail (actor killed mid-write) is skipped; a bad complete line names file and line."""
    text = _lines("A", "b1", "x1", t0=1.0, complete=True, status="ok")
    (tmp_path / "a.jsonl").write_text(text + '{"v":1,"kind":"item_adm')
    assert merge_events([tmp_path / "a.jsonl"], tmp_path / "m.jsonl").batches == 1
    (tmp_path / "b.jsonl").write_text(text + "oops\n")
    with pytest.raises(ValueError, match=r"b\.jsonl:6: invalid JSON"):
        merge_events([tmp_path / "b.jsonl"], tmp_path / "m2.jsonl")
    with pytest.raises(ValueError, match="no actor events files"):
        merge_event_dir(tmp_path / "nowhere", tmp_path / "m3.jsonl")


# -- the CLI glue, without Ray -----------------------------------------------------------------


def test_actor_config_splits_rate_limits_and_drops_the_key() -> None:
    """Each actor gets rpm/tpm divided by the actor count, and no API key in its arguments."""
    config = PipelineConfig(
        endpoint=Endpoint(base_url="http://127.0.0.1:1/v1", api_key="sk-secret"),
        rpm=600,
        tpm=90_000,
    )
    per_actor = actor_config(config, 3)
    assert per_actor.rpm == 200
    assert per_actor.tpm == 30_000
    assert per_actor.endpoint.api_key is None
    assert actor_config(attrs.evolve(config, rpm=None, tpm=None), 3).rpm is None


def test_actor_config_drops_the_key_from_every_replica() -> None:
    """Several --base-url replicas: no endpoint keeps the key (it was a ConfigError)."""
    endpoint = Endpoint(base_url="http://127.0.0.1:1/v1", api_key="sk-secret")
    replicas = (endpoint, attrs.evolve(endpoint, base_url="http://127.0.0.1:2/v1"))
    config = PipelineConfig(endpoint=endpoint, endpoints=replicas, shard_count=2)
    per_actor = actor_config(config, 2)
    assert [e.api_key for e in per_actor.all_endpoints()] == [None, None]
    assert [e.base_url for e in per_actor.endpoints] == [e.base_url for e in replicas]
    assert "sk-secret" not in repr(per_actor)


def test_request_to_json_round_trips() -> None:
    """The driver's request rows parse back into the same request."""
    for obj in (
        {"id": 7, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "model": "x"},
        {"id": "c", "prompt": "once", "temperature": 0.5},
    ):
        request = request_from_json(obj)
        assert request_from_json(request_to_json(request)) == request


def test_default_batch_size_spreads_small_inputs() -> None:
    """Small inputs are split so every actor gets work; large ones use 4 x capacity."""
    config = PipelineConfig(shard_count=2, concurrency=8)
    assert default_batch_size(config, 2, 40) == 10
    assert default_batch_size(config, 2, 1_000_000) == 64
    assert default_batch_size(config, 4, 0) == 1


def test_run_on_ray_rejects_bad_ray_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--ray-actors 0 is a usage error (exit 2) naming the option, before Ray is touched."""
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps(chat("x")) + "\n")
    base = ["run", str(source), "--base-url", "http://127.0.0.1:9/v1", "--ray"]
    assert main([*base, "--ray-actors", "0"]) == 2
    assert "invalid value for --ray-actors: must be >= 1, got 0" in capsys.readouterr().err
    assert main([*base, "--ray-cpus", "nan"]) == 2
    assert "invalid value for --ray-cpus: must be > 0, got nan" in capsys.readouterr().err
    assert not (tmp_path / "in.out.jsonl").exists()


def test_ray_settings_validate_with_the_field_name() -> None:
    """RaySettings, the library's record, names the field and the bound."""
    assert RaySettings() == RaySettings(actors=2, num_cpus=0.25, batch_size=None)
    with pytest.raises(ValueError, match=r"^actors must be >= 1, got 0$"):
        RaySettings(actors=0)
    with pytest.raises(ValueError, match=r"^batch_size must be >= 1, got 0$"):
        RaySettings(batch_size=0)


def test_importing_shardline_ray_does_not_import_ray() -> None:
    """Ray is optional: `import shardline` and `import shardline.ray` leave it unimported."""
    code = "import sys, shardline, shardline.ray; assert 'ray' not in sys.modules, 'ray imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_run_on_ray_checks_the_events_path_before_running(tmp_path: Path) -> None:
    """An events file that cannot be written is a usage error before Ray or any request."""
    pytest.importorskip("ray")
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps(chat("x")) + "\n")
    missing = tmp_path / "no" / "such" / "events.jsonl"
    settings = BatchSettings(
        input=source,
        output=tmp_path / "in.out.jsonl",
        events=missing,
        report_json=None,
        config=PipelineConfig(endpoint=Endpoint(base_url="http://127.0.0.1:9/v1", model="m")),
    )
    err = io.StringIO()
    assert run_on_ray(settings, environ={"RAY_ADDRESS": "127.0.0.1:9"}, stderr=err) == 2
    assert f"cannot write events file {missing}: directory" in err.getvalue()
    assert not (tmp_path / "in.out.jsonl").exists()
