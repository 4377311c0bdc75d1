"""Ray Data batches in, columns out: the conversions around :class:`ShardlineBatch`.

This module owns the shape of the data only: reading the rows of a batch in
any of Ray Data's batch formats (pyarrow, pandas, numpy dicts) as plain
Python, turning each row into a request (or an ``invalid_input`` entry),
naming a batch by its rows (:func:`batch_identity`), and building the output
batch (the :data:`COLUMNS`, or one ``record`` column) in the format it came in.
It runs nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from .._exceptions import InputError
from .._jsonl_output import answer_fields, outcome_to_json
from .._models import ItemId, Outcome, Request, Result, request_from_json

__all__ = [
    "COLUMNS",
    "Entry",
    "batch_identity",
    "build_batch",
    "entries_of",
    "record_of",
    "row_of",
    "rows_of",
]

#: Output columns of ``output="columns"``, in order (``events`` is added with
#: ``inline_events=True``).
COLUMNS = (
    "id",
    "status",
    "text",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "usage_estimated",
    "attempts",
    "cause",
    "message",
    "shard",
    "ttft_s",
    "latency_s",
    "tool_calls",
    "reasoning",
    "refusal",
    "embeddings",
)
_INT_COLUMNS = frozenset({"prompt_tokens", "completion_tokens", "attempts", "shard"})


# -- rows in ---------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """Numpy and pandas values as plain Python (arrays to lists, scalars to numbers)."""
    if isinstance(value, str | bytes | bool | int | float) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    tolist = getattr(value, "tolist", None)  # numpy arrays and scalars
    if callable(tolist):
        return _plain(tolist())
    return value


#: OpenAI parameters that are integers: a pandas column of them with a gap is
#: float, so integral floats in these are turned back into ints.
_INT_PARAMS = frozenset(
    {"max_tokens", "max_completion_tokens", "n", "seed", "top_logprobs", "logprobs", "best_of"}
)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def rows_of(batch: Any) -> list[dict[str, Any]]:
    """The rows of a pandas DataFrame, a pyarrow Table or a dict of columns."""
    to_dict = getattr(batch, "to_dict", None)
    if callable(to_dict) and hasattr(batch, "columns"):  # pandas.DataFrame
        return [_plain(row) for row in to_dict("records")]
    to_pylist = getattr(batch, "to_pylist", None)
    if callable(to_pylist) and hasattr(batch, "schema"):  # pyarrow.Table
        return [dict(row) for row in to_pylist()]
    if isinstance(batch, Mapping):
        columns = {str(k): _plain(v) for k, v in batch.items()}
        sizes = {len(v) for v in columns.values()}
        if len(sizes) > 1:
            raise ValueError(f"batch columns have different lengths: {sorted(sizes)}")
        n = sizes.pop() if sizes else 0
        return [{k: v[i] for k, v in columns.items()} for i in range(n)]
    raise TypeError(
        "a batch must be a pandas DataFrame, a pyarrow Table or a dict of columns, "
        f"got {type(batch).__name__}"
    )


def batch_identity(rows: Sequence[Mapping[str, Any]]) -> str:
    """The identity of a batch: a digest of its rows, so a re-run batch has the same one.

    Example::

        >>> batch_identity([{"id": "q1", "prompt": "Hi"}])[:2]
        'b-'
    """
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps(row, sort_keys=True, default=str, ensure_ascii=False).encode())
        h.update(b"\n")
    return "b-" + h.hexdigest()[:24]


def _as_id(value: Any) -> ItemId | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str | int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)  # an integer id column with a gap is float in pandas
    return None


@attrs.frozen
class Entry:
    index: int
    item_id: ItemId
    request: Request | None
    error: InputError | None


def entries_of(rows: Sequence[Mapping[str, Any]], batch_id: str) -> list[Entry]:
    """Parse each row into a request (or the error that makes it unusable)."""
    out: list[Entry] = []
    seen: set[ItemId] = set()
    for index, row in enumerate(rows):
        raw = row.get("request")
        obj: Any
        if isinstance(raw, str | bytes):
            try:
                obj = json.loads(raw)
            except ValueError as exc:
                obj = None
                error: InputError | None = InputError(f"field 'request' is not JSON: {exc}")
            else:
                error = None
        elif isinstance(raw, Mapping):
            obj, error = dict(raw), None
        else:
            obj = {k: v for k, v in row.items() if not _missing(v)}
            for key in _INT_PARAMS & obj.keys():
                value = obj[key]
                if isinstance(value, float) and value.is_integer():
                    obj[key] = int(value)
            error = None
        if isinstance(obj, dict) and "id" not in obj and not _missing(row.get("id")):
            obj["id"] = row["id"]
        item_id = _as_id(obj.get("id")) if isinstance(obj, dict) else None
        if item_id is None:
            item_id = f"{batch_id}:{index}"
            if isinstance(obj, dict) and obj.get("id") is None:
                obj["id"] = item_id
        elif isinstance(obj, dict):
            obj["id"] = item_id
        if item_id in seen:
            error = InputError(f"duplicate id {item_id!r} in one batch")
        seen.add(item_id)
        request: Request | None = None
        if error is None:
            try:
                request = request_from_json(obj)
            except InputError as exc:
                error = exc
        out.append(Entry(index=index, item_id=item_id, request=request, error=error))
    return out


# -- rows out --------------------------------------------------------------------------------


def row_of(outcome: Outcome) -> dict[str, Any]:
    result = outcome.result
    if result is not None:
        return {
            "id": outcome.id,
            "status": outcome.status.value,
            "text": result.text,
            "finish_reason": result.finish_reason,
            "prompt_tokens": result.usage.prompt_tokens,
            "completion_tokens": result.usage.completion_tokens,
            "usage_estimated": result.usage.estimated,
            "attempts": result.attempts,
            "cause": None,
            "message": None,
            "shard": result.shard,
            "ttft_s": result.ttft_s,
            "latency_s": result.latency_s,
            **_answer_columns(result),
        }
    cause = outcome.cause
    return {
        "id": outcome.id,
        "status": outcome.status.value,
        "text": None,
        "finish_reason": None,
        "prompt_tokens": None,
        "completion_tokens": None,
        "usage_estimated": False,
        "attempts": outcome.attempts,
        "cause": cause.value if cause is not None else None,
        "message": str(outcome.error) if outcome.error is not None else None,
        "shard": outcome.shard,
        "ttft_s": None,
        "latency_s": outcome.latency_s,
        "tool_calls": None,
        "reasoning": None,
        "refusal": None,
        "embeddings": None,
    }


def _answer_columns(result: Result) -> dict[str, Any]:
    """Tool calls (as the output line's JSON text), reasoning, refusal and vectors."""
    record = answer_fields(result)
    calls = record.get("tool_calls")
    vectors = record.get("embeddings")
    return {
        "tool_calls": None
        if calls is None
        else json.dumps(calls, ensure_ascii=False, separators=(",", ":")),
        "reasoning": record.get("reasoning"),
        "refusal": record.get("refusal"),
        "embeddings": None if vectors is None else [list(v) for v in vectors],
    }


def record_of(outcome: Outcome) -> str:
    """The ``shardline run`` output line of an outcome (without its newline)."""
    return json.dumps(outcome_to_json(outcome), ensure_ascii=False, separators=(",", ":"))


def _numpy_column(np: Any, values: list[Any]) -> Any:
    if values and all(type(v) is int for v in values):
        return np.asarray(values, dtype=np.int64)
    if values and all(type(v) is float or type(v) is int for v in values):
        return np.asarray(values, dtype=np.float64)
    if values and all(type(v) is bool for v in values):
        return np.asarray(values, dtype=np.bool_)
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr


def build_batch(like: Any, columns: dict[str, list[Any]]) -> Any:
    """Columns in the same format as the input batch."""
    module = type(like).__module__.split(".", 1)[0]
    if module == "pandas":
        pd = sys.modules["pandas"]
        frame = pd.DataFrame(columns)
        for name in _INT_COLUMNS & set(columns):
            frame[name] = frame[name].astype("Int64")
        return frame
    if module == "pyarrow":
        pa = sys.modules["pyarrow"]
        types = {
            "id": None,  # as the input ids (string or integer)
            "usage_estimated": pa.bool_(),
            "ttft_s": pa.float64(),
            "latency_s": pa.float64(),
            "embeddings": pa.list_(pa.list_(pa.float64())),
            **dict.fromkeys(_INT_COLUMNS, pa.int64()),
        }
        # Explicit types, so that a column that is all null in one batch (``cause``
        # when every item succeeded) is not typed ``null`` there and ``string`` elsewhere.
        return pa.table(
            {
                name: pa.array(values, type=types.get(name, pa.string()))
                for name, values in columns.items()
            }
        )
    if isinstance(like, Mapping) and any(
        type(v).__module__.split(".", 1)[0] == "numpy" for v in like.values()
    ):
        np = sys.modules["numpy"]
        return {k: _numpy_column(np, v) for k, v in columns.items()}
    return columns
