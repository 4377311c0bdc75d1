"""Embed a corpus with `shardline run`, then stream the vectors into numpy and Arrow.

Neither step holds the whole output in memory: the JSONL is read one line at a
time into a memory-mapped ``.npy`` file and into Arrow record batches.
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shardline.testing import fake_embedding, fake_server_process

DIMENSIONS = 4
BATCH = 2  # inputs per request; real servers take up to a few hundred


def write_input(path: Path, passages: list[str]) -> None:
    with path.open("w") as f:
        for start in range(0, len(passages), BATCH):
            line = {
                "id": start,  # the index of the request's first passage
                "api": "embeddings",
                "input": passages[start : start + BATCH],
                "dimensions": DIMENSIONS,
            }
            f.write(json.dumps(line) + "\n")


def to_memmap(output: Path, npy: Path, rows: int) -> np.memmap:
    """Write each line's vectors at their rows of an .npy file, one line at a time."""
    matrix = np.lib.format.open_memmap(npy, mode="w+", dtype=np.float32, shape=(rows, DIMENSIONS))
    with output.open() as f:
        for line in f:
            record = json.loads(line)
            if record["status"] != "ok":
                raise SystemExit(f"item {record['id']} failed: {record['error']}")
            vectors = record["embeddings"]
            matrix[record["id"] : record["id"] + len(vectors)] = vectors
    matrix.flush()
    return matrix


def to_parquet(output: Path, parquet: Path) -> None:
    """Stream the vectors into a Parquet file, one record batch per output line."""
    schema = pa.schema([("row", pa.int64()), ("vector", pa.list_(pa.float32(), DIMENSIONS))])
    with output.open() as f, pq.ParquetWriter(parquet, schema) as writer:
        for line in f:
            record = json.loads(line)
            vectors = record["embeddings"]
            rows = list(range(record["id"], record["id"] + len(vectors)))
            writer.write_batch(pa.record_batch([rows, vectors], schema=schema))


def main() -> None:
    passages = [f"passage number {i}" for i in range(7)]
    with tempfile.TemporaryDirectory() as tmp, fake_server_process() as server:
        work = Path(tmp)
        write_input(work / "corpus.jsonl", passages)
        env = {**os.environ, "OPENAI_API_KEY": "sk-example"}
        shardline = str(Path(sys.executable).with_name("shardline"))  # the installed command
        command = [shardline, "run", str(work / "corpus.jsonl")]
        command += ["--base-url", server.base_url, "--model", "bge-m3", "--no-progress"]
        subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, timeout=60)
        output = work / "corpus.out.jsonl"

        matrix = to_memmap(output, work / "vectors.npy", rows=len(passages))
        print(matrix.shape, matrix.dtype)
        to_parquet(output, work / "vectors.parquet")
        table = pq.read_table(work / "vectors.parquet").sort_by("row")
        print(table.num_rows, "rows in Parquet")

        expected = np.array([fake_embedding(p, DIMENSIONS) for p in passages], dtype=np.float32)
        assert np.array_equal(np.load(work / "vectors.npy"), expected)
        assert table.column("vector").to_pylist() == expected.tolist()


main()
