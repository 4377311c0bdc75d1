"""The docs' pictures and tables agree with the code, and their code fits the column.

The SVG figures are drawn by ``docs/_figures/figures.py`` (the performance charts
from the page's own tables): each committed file must be what it draws now. The
``Cause`` table of the errors reference must list every member with its exception
and default retry. Code in the docs must fit the content column without
scrolling sideways: 86 columns for Python (program output wraps instead), and
the CLI help is wrapped at 88.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from types import ModuleType

import pytest

import shardline.errors
from shardline import Cause
from shardline._backoff import DEFAULT_RETRY_ON

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CODE_COLUMNS = 86
WRAPPED = {"text", "console", "json", "jsonl", ""}  # output and data: wrapped by the site's CSS


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


FIGURES = _load(DOCS / "_figures" / "figures.py", "docs_figures")
DRAWN: dict[Path, str] = FIGURES.figures()


@pytest.mark.parametrize("path", sorted(DRAWN), ids=lambda p: p.name)
def test_committed_figure_is_what_the_script_draws(path: Path) -> None:
    """Run ``python docs/_figures/figures.py`` after changing a figure or a table."""
    assert path.read_text(encoding="utf-8") == DRAWN[path]


@pytest.mark.parametrize("path", sorted(DRAWN), ids=lambda p: p.name)
def test_figure_is_plain_svg_shown_on_a_page(path: Path) -> None:
    """Well-formed, titled, no script or external resource, and linked from a page."""
    root = ET.fromstring(DRAWN[path])
    ns = "{http://www.w3.org/2000/svg}"
    assert root.tag == f"{ns}svg"
    assert (root.findtext(f"{ns}title") or "").strip()
    assert all(el.tag != f"{ns}script" for el in root.iter())
    assert all(not k.endswith("href") for el in root.iter() for k in el.attrib)
    pages = "".join(p.read_text(encoding="utf-8") for p in DOCS.rglob("*.md"))
    assert f"{path.name})" in pages


def test_performance_charts_carry_the_tables_numbers() -> None:
    """Every req/s and CPU figure of the current tables is printed on its chart."""
    markdown = (DOCS / "explanation" / "performance.md").read_text(encoding="utf-8")
    tables = FIGURES._tables(markdown, "### Current figures")
    assert set(tables) == {"Burst", "Paced"}
    charts = FIGURES.throughput_charts(markdown)
    for rows in tables.values():
        for rps, cpu in rows.values():
            assert f"{rps:,.1f}" in charts["perf-throughput.svg"]
            assert f"{cpu:.2f}" in charts["perf-cpu.svg"]


def test_cause_table_lists_every_member() -> None:
    """One row per Cause: its exception carries that cause; the retry column is the default."""
    text = (DOCS / "reference" / "errors.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(\w+)` \| `(\w+)` \| [^|]+ \| ([^|]+) \|$", text, re.MULTILINE)
    assert sorted(cause for cause, _, _ in rows) == sorted(c.value for c in Cause)
    for cause, exception, retried in rows:
        assert getattr(shardline.errors, exception).cause == Cause(cause)
        assert (retried.strip() == "yes") == (Cause(cause) in DEFAULT_RETRY_ON)


def _code_blocks() -> list[tuple[str, str, str]]:
    blocks = []
    for page in sorted(DOCS.rglob("*.md")):
        text = page.read_text(encoding="utf-8")
        for m in re.finditer(r"^```(\w*)[^\n]*\n(.*?)^```", text, re.DOTALL | re.MULTILINE):
            blocks.append((str(page.relative_to(DOCS)), m.group(1), m.group(2)))
    for example in sorted((DOCS / "examples").glob("*.py")):
        blocks.append((str(example.relative_to(DOCS)), "python", example.read_text()))
    return blocks


def test_code_fits_the_content_column() -> None:
    """No line of code in the docs is wider than the column (output blocks wrap)."""
    wide = [
        f"{where}: {len(line)}: {line}"
        for where, language, code in _code_blocks()
        if language not in WRAPPED
        for line in code.splitlines()
        if len(line) > CODE_COLUMNS
    ]
    assert wide == []


def test_cli_help_fits_the_content_column() -> None:
    """The help the CLI reference embeds is wrapped at 88 columns, every subcommand."""
    hook = _load(DOCS / "_hooks" / "cli_help.py", "docs_cli_help")
    for command in ("shardline", "run", "check", "demo", "report", "fake-server"):
        text = hook._help(command)
        assert max(len(line) for line in text.splitlines()) <= 88, command
