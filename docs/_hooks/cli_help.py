"""mkdocs hook: put the real ``--help`` of a ``shardline`` subcommand into a page.

A page writes ``<!-- shardline-help: report -->`` on a line of its own; the hook
replaces it with the help text argparse prints for ``shardline report --help``,
built from the command's own parser (``shardline._cli.build_parser``), so the
CLI reference cannot drift from the code. An unknown subcommand fails the build.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import textwrap
from typing import Any

_MARKER = re.compile(r"^<!-- shardline-help: ([\w-]+) -->$", flags=re.MULTILINE)
_WIDTH = "88"


def _fit(text: str, width: int = int(_WIDTH)) -> str:
    """Wrap the lines argparse left longer than ``width`` (raw descriptions, long usage).

    A wrapped line keeps its indentation, so the help still reads as argparse's.
    """
    out: list[str] = []
    for line in text.splitlines():
        if len(line) <= width:
            out.append(line)
            continue
        indent = line[: len(line) - len(line.lstrip())]
        out.extend(
            textwrap.wrap(
                line.strip(),
                width=width,
                initial_indent=indent,
                subsequent_indent=indent,
                break_on_hyphens=False,
            )
        )
    return "\n".join(out)


def _help(command: str) -> str:
    cli = importlib.import_module("shardline._cli")
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = _WIDTH
    try:
        parser = cli.build_parser()
        if command == "shardline":
            return _fit(str(parser.format_help()).rstrip())
        subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        return _fit(str(subparsers.choices[command].format_help()).rstrip())
    finally:
        if previous is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous


def on_page_markdown(markdown: str, **_kwargs: Any) -> str:
    def block(m: re.Match[str]) -> str:
        name = m.group(1)
        prompt = "shardline --help" if name == "shardline" else f"shardline {name} --help"
        return f"```text\n$ {prompt}\n{_help(name)}\n```"

    return _MARKER.sub(block, markdown)
