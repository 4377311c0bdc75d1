"""mkdocs hook: put the real ``--help`` of a ``shardline`` subcommand into a page.

A page writes ``<!-- shardline-help: report -->`` on a line of its own; the hook
replaces it with the help text argparse prints for ``shardline report --help``,
built from the subcommand's own module (``shardline._cli_report``), so the CLI
reference cannot drift from the code. An unknown subcommand fails the build.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
from typing import Any

_MARKER = re.compile(r"^<!-- shardline-help: ([\w-]+) -->$", flags=re.MULTILINE)
_WIDTH = "88"


def _help(command: str) -> str:
    module = importlib.import_module(f"shardline._cli_{command.replace('-', '_')}")
    parser = argparse.ArgumentParser(prog="shardline")
    subparsers = parser.add_subparsers(dest="command")
    module.register(subparsers)
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = _WIDTH
    try:
        return subparsers.choices[command].format_help().rstrip()
    finally:
        if previous is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous


def on_page_markdown(markdown: str, **_kwargs: Any) -> str:
    return _MARKER.sub(
        lambda m: f"```text\n$ shardline {m.group(1)} --help\n{_help(m.group(1))}\n```", markdown
    )
