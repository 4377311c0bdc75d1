"""The documentation cannot rot: every example runs, every schema table matches the code.

Each ``docs/examples/*.py`` is a complete program that the site includes with
``--8<--``. It is run here as ``__main__`` (as ``python docs/examples/x.py``
runs it, against the embedded fake server) and must finish within its time
bound; ``test_*.py`` examples are test modules and run under pytest in a
subprocess. Examples assert what their page claims about their output.
"""

from __future__ import annotations

import enum
import os
import re
import runpy
import subprocess
import sys
import threading
import time
import traceback
import types
import typing
from pathlib import Path

import attrs
import pytest

from shardline._events import EVENT_TYPES

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
EXAMPLES = sorted((DOCS / "examples").glob("*.py"))

#: Wall-clock bound for one example; every example is bounded by its own code too.
TIMEOUT_S = 60.0


@attrs.frozen
class _Run:
    returncode: int
    stdout: str
    stderr: str


def _pytest_command(example: Path, workdir: Path) -> list[str]:
    """A test-module example runs under pytest, configured as the testing how-to says."""
    ini = workdir / "pytest.ini"
    ini.write_text("[pytest]\ntrio_mode = true\nfilterwarnings = error\n", encoding="utf-8")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    return [*command, "-c", str(ini), "--rootdir", str(workdir), str(example)]


def _run_script(example: Path, runs: dict[str, _Run]) -> None:
    try:
        runpy.run_path(str(example), run_name="__main__")
    except BaseException:
        runs[example.name] = _Run(1, "", traceback.format_exc())
    else:
        runs[example.name] = _Run(0, "", "")


@pytest.fixture(scope="module")
def example_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, _Run]:
    """Run every example at once: scripts in threads, test modules under pytest.

    Examples spend most of their time waiting (on deadlines, backoff, the fake
    server's timing), so running them side by side keeps this file fast. Each
    script calls ``trio.run`` itself, in its own thread; they share one scratch
    working directory, so examples that write files must use distinct names.
    """
    runs: dict[str, _Run] = {}
    with pytest.MonkeyPatch.context() as mp:
        # Examples must never reach a real API: anything set in the developer's
        # environment is removed, so a missing base URL fails loudly instead.
        for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_MODEL", "OPENAI_API_VERSION"):
            mp.delenv(name, raising=False)
        procs: dict[str, subprocess.Popen[str]] = {}
        for example in EXAMPLES:
            if example.name.startswith("test_"):
                workdir = tmp_path_factory.mktemp(example.stem)
                procs[example.name] = subprocess.Popen(
                    _pytest_command(example, workdir),
                    cwd=workdir,
                    env={**os.environ, "PYTHONWARNINGS": "error"},
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
        mp.chdir(tmp_path_factory.mktemp("scripts"))
        threads = [
            threading.Thread(target=_run_script, args=(example, runs), daemon=True)
            for example in EXAMPLES
            if not example.name.startswith("test_")
        ]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + TIMEOUT_S
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        for name, proc in procs.items():
            try:
                stdout, stderr = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                stdout, stderr = proc.communicate()
                stderr += f"\n[killed after {TIMEOUT_S} s]"
            runs[name] = _Run(proc.returncode, stdout, stderr)
    for example in EXAMPLES:
        runs.setdefault(example.name, _Run(1, "", f"[still running after {TIMEOUT_S} s]"))
    return runs


@pytest.mark.parametrize("example", [p.name for p in EXAMPLES])
def test_example_runs(example: str, example_runs: dict[str, _Run]) -> None:
    """The example runs to completion, its own assertions included, from a scratch directory."""
    run = example_runs[example]
    assert run.returncode == 0, f"{example} failed:\n{run.stdout}\n{run.stderr}"


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
            assert all(
                a in allowed
                or typing.get_origin(a) is dict
                or (isinstance(a, type) and issubclass(a, enum.StrEnum))  # a JSON string
                for a in args
            ), (cls, name)


def test_every_public_name_has_a_docstring() -> None:
    """Every class and function exported by shardline's public packages has a docstring."""
    import inspect

    import shardline
    import shardline.ray
    import shardline.testing

    missing = [
        f"{module.__name__}.{name}"
        for module in (shardline, shardline.testing, shardline.ray)
        for name in module.__all__
        if (inspect.isclass(obj := getattr(module, name)) or inspect.isfunction(obj))
        and not (obj.__doc__ or "").strip()
    ]
    assert missing == []


def test_reference_pages_use_public_paths() -> None:
    """The reference documents public paths only: no ``::: shardline._private`` directive."""
    private = [
        f"{page.name}: {line.strip()}"
        for page in (DOCS / "reference").glob("*.md")
        for line in page.read_text(encoding="utf-8").splitlines()
        if line.startswith(":::") and "._" in line
    ]
    assert private == []


def test_examples_import_public_names_only() -> None:
    """Examples import from ``shardline`` and ``shardline.testing``, never a private module."""
    private = [
        f"{example.name}: {line.strip()}"
        for example in EXAMPLES
        for line in example.read_text(encoding="utf-8").splitlines()
        if re.search(r"\bshardline\._", line)
    ]
    assert private == []


def test_every_public_name_is_in_the_reference() -> None:
    """Each name exported by shardline's public packages has a ``:::`` entry in docs/reference."""
    import shardline
    import shardline.ray
    import shardline.testing

    text = "\n".join(p.read_text(encoding="utf-8") for p in (DOCS / "reference").glob("*.md"))
    documented = set(re.findall(r"^::: ([\w.]+)", text, flags=re.MULTILINE))
    missing = [
        f"{module.__name__}.{name}"
        for module in (shardline, shardline.testing, shardline.ray)
        for name in module.__all__
        if f"{module.__name__}.{name}" not in documented
    ]
    assert missing == []


def test_every_public_member_has_a_docstring() -> None:
    """Public methods and properties of exported classes have a docstring (or inherit one)."""
    import inspect

    import shardline
    import shardline.ray
    import shardline.testing

    missing = []
    for module in (shardline, shardline.testing, shardline.ray):
        for name in module.__all__:
            cls = getattr(module, name)
            if not inspect.isclass(cls):
                continue
            for attr, value in vars(cls).items():
                routine = isinstance(value, property | classmethod | staticmethod)
                if attr.startswith("_") or not (routine or inspect.isfunction(value)):
                    continue
                foreign = [b for b in cls.__mro__[1:] if not b.__module__.startswith("shardline")]
                if any(attr in vars(base) for base in foreign):
                    continue  # implements another library's interface (httpx transport ...)
                if not (inspect.getdoc(getattr(cls, attr)) or "").strip():
                    missing.append(f"{module.__name__}.{name}.{attr}")
    assert missing == []
