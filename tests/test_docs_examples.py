"""The documentation cannot rot: every example runs, every schema table matches the code.

Each ``docs/examples/*.py`` is a complete program that the site includes with
``--8<--``. It is run here as a user runs it (``python docs/examples/x.py``, in
a subprocess, against the embedded fake server) and must exit 0 within its
time bound. Examples assert what the page claims about their output.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import types
import typing
from pathlib import Path

import attrs
import pytest

from shardline._events import EVENT_TYPES

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
EXAMPLES = sorted((DOCS / "examples").glob("*.py"))

#: Examples that take longer than a second or two (real-time waits, a server in
#: another process). Keep this list short.
SLOW: frozenset[str] = frozenset()

#: Wall-clock bound for one example; every example is bounded by its own code too.
TIMEOUT_S = 60.0


def _params() -> list[object]:
    return [
        pytest.param(p, id=p.name, marks=[pytest.mark.slow] if p.name in SLOW else [])
        for p in EXAMPLES
    ]


@pytest.mark.parametrize("example", _params())
def test_example_runs(example: Path, tmp_path: Path) -> None:
    """The example exits 0 and prints no traceback, run from a scratch directory."""
    env = dict(os.environ)
    # Examples must never reach a real API: anything set in the developer's
    # environment is removed, so a missing base URL fails loudly instead.
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_MODEL", "OPENAI_API_VERSION"):
        env.pop(name, None)
    env["PYTHONWARNINGS"] = "error"
    proc = subprocess.run(
        [sys.executable, str(example)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert proc.returncode == 0, f"{example.name} failed:\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr


def _snippet_targets() -> set[str]:
    found: set[str] = set()
    for page in DOCS.rglob("*.md"):
        found.update(re.findall(r'--8<--\s+"([^":]+)', page.read_text(encoding="utf-8")))
    return found


def test_every_example_is_on_a_page() -> None:
    """Every file in docs/examples/ is included by some page (no orphans)."""
    included = _snippet_targets()
    orphans = [p.name for p in EXAMPLES if p.name not in included]
    assert orphans == []


def _schema_tables() -> dict[str, list[str]]:
    """The field names of each ``### `kind` `` table on the events schema page."""
    text = (DOCS / "reference" / "events-schema.md").read_text(encoding="utf-8")
    tables: dict[str, list[str]] = {}
    kind: str | None = None
    for line in text.splitlines():
        heading = re.match(r"^### `(\w+)`", line)
        if heading:
            kind = heading.group(1)
            tables[kind] = []
            continue
        row = re.match(r"^\| `(\w+)` \|", line)
        if row and kind is not None:
            tables[kind].append(row.group(1))
        elif line.startswith("## "):
            kind = None
    return tables


def test_events_schema_page_matches_the_records() -> None:
    """docs/reference/events-schema.md lists every event kind with exactly its fields, in order."""
    expected = {kind: [f.name for f in attrs.fields(cls)] for kind, cls in EVENT_TYPES.items()}
    assert _schema_tables() == expected


def test_events_schema_page_lists_every_cause() -> None:
    """The causes table on the schema page has one row per Cause value."""
    from shardline._exceptions import Cause

    text = (DOCS / "reference" / "events-schema.md").read_text(encoding="utf-8")
    section = text.split("## Causes", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \|", section, flags=re.MULTILINE)
    assert sorted(rows) == sorted(c.value for c in Cause)


def test_event_field_types_are_json_types() -> None:
    """Every event field has a type the schema page can name as a JSON type."""
    allowed = {float, int, str, bool, type(None)}
    for cls in EVENT_TYPES.values():
        for name, tp in typing.get_type_hints(cls).items():
            if name == "kind":
                continue
            is_union = isinstance(tp, types.UnionType)
            args = typing.get_args(tp) if is_union else (tp,)
            assert all(a in allowed or typing.get_origin(a) is dict for a in args), (cls, name)
