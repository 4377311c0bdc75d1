"""Every kind of answer through ``shardline run``, as a user runs it: a real process against the
fake server in another, with a fault on the first attempt of each item (marked ``slow``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import read_jsonl
from shardline.testing import fake_embedding, fake_server_process, fake_text

pytestmark = pytest.mark.slow

TOOLS = [{"type": "function", "function": {"name": "extract", "parameters": {"type": "object"}}}]
LINES = [
    {
        "id": "tools",
        "messages": [{"role": "user", "content": "Extract the city: I live in Oslo."}],
        "tools": TOOLS,
        "tool_choice": "required",
        "max_tokens": 12,
    },
    {
        "id": "think",
        "messages": [{"role": "user", "content": "What is 17 * 23?"}],
        "reasoning_effort": "high",
        "max_tokens": 20,
    },
    {"id": "resp", "api": "responses", "input": "A haiku, please.", "max_output_tokens": 9},
    {"id": "vec", "api": "embeddings", "input": ["first", "second", "third"], "dimensions": 4},
    {"id": "plain", "messages": [{"role": "user", "content": "Hi"}]},
]
#: A fault on the first attempt of every item (stall_mid and drip need the stall deadline).
FAULTS = (
    "truncate@item=tools/1,stall_mid@item=think/1,error_event@item=resp/1,reset@item=resp/2,"
    "rate_limit@item=vec/1:retry_after=0.1,malformed_shape@item=vec/2,drip@item=plain/1"
)


def test_a_mixed_batch_with_faults_ends_with_every_answer_complete(tmp_path: Path) -> None:
    """Chat with tools, a reasoning stream, a Responses request and embeddings: each meets a
    fault, is retried, and ends ok with its whole answer in the output; the report counts them."""
    inp = tmp_path / "mixed.jsonl"
    inp.write_text("".join(json.dumps(line) + "\n" for line in LINES))
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SHARD_"))}
    environ.update(OPENAI_API_KEY="sk-test-SECRET", LLM_RETRY_BACKOFF_S="0.01")
    with fake_server_process(faults=FAULTS) as server:
        command = [sys.executable, "-m", "shardline._cli", "run", str(inp)]
        options = ["--base-url", server.base_url, "--model", "fake", "--no-progress"]
        options += ["--stall-timeout", "0.5", "--ttft-timeout", "1", "--report-json"]
        proc = subprocess.run(
            [*command, *options, str(tmp_path / "report.json")],
            capture_output=True,
            text=True,
            timeout=60,
            env=environ,
        )
        faults = server.statistics().faults
    assert proc.returncode == 0, proc.stderr
    assert sum(faults.values()) == 7
    out = {r["id"]: r for r in read_jsonl(tmp_path / "mixed.out.jsonl")}
    assert {r["status"] for r in out.values()} == {"ok"}
    assert {i: r["attempts"] for i, r in out.items()} == {
        "tools": 2,
        "think": 2,
        "resp": 3,
        "vec": 3,
        "plain": 2,
    }
    (call,) = out["tools"]["tool_calls"]
    assert call["function"] == {
        "name": "extract",
        "arguments": json.dumps({"text": fake_text(12)}),
    }
    assert (call["arguments_valid"], out["tools"]["finish_reason"]) == (True, "tool_calls")
    assert (out["think"]["reasoning"], out["think"]["text"]) == (fake_text(10), fake_text(10))
    assert (out["resp"]["text"], out["resp"]["finish_reason"]) == (fake_text(9), "length")
    assert out["vec"]["embeddings"] == [fake_embedding(t, 4) for t in ("first", "second", "third")]
    tokens_in = 2 + 2 + 2  # the fake tokenizer: a token per 4 characters, rounded up
    assert out["vec"]["usage"] == {
        "prompt_tokens": tokens_in,
        "completion_tokens": 0,
        "total_tokens": tokens_in,
    }
    assert out["plain"]["text"] == fake_text(16)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["items_by_api"] == {"chat": 3, "embeddings": 1, "responses": 1}
    assert report["answer_counts"] == {
        "tool_call_items": 1,
        "tool_calls": 1,
        "reasoning_items": 1,
        "embeddings": 3,
    }
    assert report["attempt_failures"] == {
        "connection_lost": 1,
        "protocol_error": 1,
        "rate_limited": 1,
        "server_error": 1,
        "stall_timeout": 1,
        "truncated": 1,
        "ttft_timeout": 1,
    }
    assert "sk-test-SECRET" not in proc.stdout + proc.stderr
