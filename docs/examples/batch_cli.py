"""Run a JSONL batch with the command line, then resume it after some items failed."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from shardline.events import EventFileReader
from shardline.report import compute_report

# the installed command
SHARDLINE = [str(Path(sys.executable).with_name("shardline"))]


def run(*args: str) -> int:
    # a short first backoff, for the demo
    env = {**os.environ, "LLM_RETRY_BACKOFF_S": "0.05"}
    return subprocess.run([*SHARDLINE, *args], env=env, check=False).returncode


def outputs() -> dict[str, str]:
    lines = Path("prompts.out.jsonl").read_text().splitlines()
    return {str(r["id"]): r["status"] for r in map(json.loads, lines)}


# 1. An input file: 20 chat requests with ids, and one line that is not JSON.
lines = [
    json.dumps({"id": f"q{n}", "messages": [{"role": "user", "content": f"Hi {n}"}]})
    for n in range(20)
]
lines.insert(5, "{not json")
Path("prompts.jsonl").write_text("\n".join(lines) + "\n")

# 2. A fake server (as `shardline fake-server`) that fails the first two attempts
#    of q3 (503) and of q7 (connection reset); its first line of output is its URL.
faults = "http_503@item=q3/1,http_503@item=q3/2,reset@item=q7/1,reset@item=q7/2"
server_command = [*SHARDLINE, "fake-server", "--port", "0", "--faults", faults]
with subprocess.Popen(server_command, stdout=subprocess.PIPE, text=True) as server:
    assert server.stdout is not None
    url = server.stdout.readline().strip()
    try:
        options = [
            "--base-url",
            url,
            "--model",
            "fake-model",
            "--shards",
            "2",
            "--no-progress",
        ]

        # 3. With two attempts per item, q3 and q7 fail; so does the bad line.
        assert run("run", "prompts.jsonl", *options, "--max-attempts", "2") == 1
        failed = sorted(i for i, status in outputs().items() if status != "ok")
        print("failed:", failed)
        assert failed == ["6", "q3", "q7"]  # the bad line is item 6: its line number

        # 4. Fix the bad line (keeping its id) and resume with the default five
        #    attempts: only the three failed items are sent again, and succeed.
        lines[5] = json.dumps({"messages": [{"role": "user", "content": "Hi"}]})
        Path("prompts.jsonl").write_text("\n".join(lines) + "\n")
        assert run("run", "prompts.jsonl", *options, "--resume") == 0
    finally:
        server.terminate()

statuses = outputs()
assert len(statuses) == 21
assert set(statuses.values()) == {"ok"}  # every input id once, with its latest status

# 5. The report of both runs, from the events file alone (as `shardline report` does).
with EventFileReader("prompts.events.jsonl") as reader:
    report = compute_report(reader, events_sha256=None)
    digest = reader.hexdigest()
print(f"items={report.items} succeeded={report.succeeded} retries={report.retries}")
assert report.items == report.succeeded == 21  # each item counted once, last status
assert digest == hashlib.sha256(Path("prompts.events.jsonl").read_bytes()).hexdigest()
