"""End to end: a server that sends malformed shapes on 30 % of attempts still gives every answer.

The fake server runs in another process; ``shardline run`` reads a real file
and writes real output. Bounded: 300 items, fast timing, about 15 s.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shardline._cli import main
from shardline.testing import TimingModel, fake_server_process

pytestmark = pytest.mark.slow

FAULTS = (
    "malformed_shape=0.3,html_page=0.01,rate_limit=0.01:retry_after=0.2,http_503=0.01,"
    "reset=0.01,truncate=0.005,stall_mid=0.005:after=3"
)


def test_malformed_shapes_on_a_third_of_attempts_end_with_every_item_ok(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """30 % malformed shapes plus 5 % other faults: every item ok with its full text, exit 0."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    n = 300
    inp = tmp_path / "in.jsonl"
    with inp.open("w") as f:
        for i in range(n):
            line = {"id": f"q{i}", "messages": [{"role": "user", "content": f"q {i}"}]}
            f.write(json.dumps({**line, "max_tokens": 12}) + "\n")
    out, events = tmp_path / "out.jsonl", tmp_path / "events.jsonl"
    timing = TimingModel(ttft=0.01, itl=0.001)
    with fake_server_process(faults=FAULTS, seed=5, timing=timing) as server:
        status = main(
            [
                "run",
                str(inp),
                "--base-url",
                server.base_url,
                "--model",
                "m",
                "--shards",
                "4",
                "--concurrency",
                "8",
                "--stall-timeout",
                "1",
                "--output",
                str(out),
                "--events",
                str(events),
            ]
        )
        stats = server.statistics()
    err = capsys.readouterr().err
    assert status == 0, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == n
    assert {r["status"] for r in rows} == {"ok"}
    assert len({r["id"] for r in rows}) == n
    # The full text of every answer: the fake server's 12 tokens, never a cut-short one.
    assert len({r["text"] for r in rows}) == 1
    assert rows[0]["usage"]["completion_tokens"] == 12
    assert sum(stats.malformed_shapes.values()) > 0.2 * n  # the faults did happen
    ends = [json.loads(line) for line in events.read_text().splitlines()]
    causes = {e["cause"] for e in ends if e["kind"] == "attempt_end" and e["cause"]}
    assert "protocol_error" in causes
    assert "internal_error" not in causes
