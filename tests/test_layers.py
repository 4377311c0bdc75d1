"""Data flows one way: the import direction of every shardline module.

No module imports one that (directly or not) imports it back, counting imports
inside functions and under ``TYPE_CHECKING``: a cycle hidden there is still a
cycle in the design. The core never reaches up to the pipeline, the library
never imports the command line, and ``import shardline.ray`` loads no
``shardline._cli*`` module.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import shardline

PACKAGE = Path(shardline.__file__).parent


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> Iterator[str]:
    """Every ``shardline`` module that ``name`` imports, anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from . import _cli_run` imports a module; `from ._x import name` imports _x.
            targets = [module] + [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            if target in modules and target != name:
                yield target


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: set(_imports(name, path, modules)) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph.get(node, ()):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_function_level_imports() -> None:
    """The graph is built from every import statement, not only the top-level ones."""
    graph = import_graph()
    assert "shardline._cli_run" in graph["shardline._cli"]
    assert "shardline.ray._run" in graph["shardline.ray"]
    assert "shardline.ray._batch" in graph["shardline.ray._run"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_anywhere() -> None:
    """No import cycle among all of shardline's modules."""
    assert cycles(import_graph()) == []


#: The layers below the pipeline: none of them may import it.
BELOW_THE_PIPELINE = (
    "shardline._shard",
    "shardline._hedge",
    "shardline._send",
    "shardline._state",
    "shardline._attempt",
    "shardline._http",
    "shardline._transport",
    "shardline._transport_body",
    "shardline._openai",
    "shardline._openai_apis",
    "shardline._wirecheck",
    "shardline._sse",
    "shardline._flow",
    "shardline._flow_pacer",
    "shardline._budget",
    "shardline._backoff",
    "shardline._models",
    "shardline._requests",
    "shardline._request_base",
    "shardline._answers",
    "shardline._config",
    "shardline._events",
    "shardline._exceptions",
)


def test_the_core_never_reaches_up_to_the_pipeline() -> None:
    """A shard gets what it needs in RunState; nothing below the pipeline imports it."""
    graph = import_graph()
    assert "shardline._shard" in graph["shardline._pipeline"]
    assert {m: "shardline._pipeline" in graph[m] for m in BELOW_THE_PIPELINE} == dict.fromkeys(
        BELOW_THE_PIPELINE, False
    )


def test_library_modules_do_not_import_the_cli() -> None:
    """Only CLI modules (and ``python -m shardline``) import CLI modules: the runner
    and Ray are library code."""
    graph = import_graph()
    offenders = {
        name: sorted(t for t in targets if t.rpartition(".")[2].startswith("_cli"))
        for name, targets in graph.items()
        if not name.rpartition(".")[2].startswith(("_cli", "__main__"))
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_importing_shardline_ray_loads_no_cli_module() -> None:
    """`import shardline.ray` loads neither argparse-based CLI modules nor Ray."""
    code = (
        "import sys, shardline.ray\n"
        "cli = sorted(m for m in sys.modules if m.startswith('shardline._cli'))\n"
        "assert not cli, cli\n"
        "assert 'ray' not in sys.modules\n"
        "print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_the_help_path_imports_no_http_stack() -> None:
    """`shardline --help` (and plain `import shardline`) load neither trio nor httpx nor rich,
    nor the events, the batch runner's files or Ray's runner.

    The package's names are imported on first use (shardline._lazy), and the
    subcommands import the pipeline only to run it; see the performance page
    for the start-up times this keeps.
    """
    code = (
        "import sys, shardline, shardline._cli\n"
        "shardline._cli.build_parser().format_help()\n"
        "heavy = {'trio', 'httpx', 'httpcore', 'rich', 'pytest', 'shardline._pipeline',\n"
        "         'shardline._events', 'shardline._batch_io', 'shardline.ray._run'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


#: Modules a run needs only after its last request, or only when asked for:
#: the report's rendering and exporters, the HTML report, Ray, the demo's fake
#: server, hedging (off by default).
NOT_BEFORE_THE_FIRST_REQUEST = (
    "shardline.report",
    "shardline._report_text",
    "shardline._report_html",
    "shardline._report_series",
    "shardline._report_svg",
    "shardline._otel",
    "shardline._prometheus",
    "shardline.ray._run",
    "shardline.ray._merge",
    "shardline.ray._batch",
    "shardline.testing",
    "shardline._hedge",
)


def test_the_run_path_imports_only_what_the_first_request_needs(tmp_path: Path) -> None:
    """`shardline run` sends its first request without importing what only the end of a
    run, or an option it was not given, needs (see the performance page's start-up part)."""
    (tmp_path / "in.jsonl").write_text(
        '{"id": "a", "messages": [{"role": "user", "content": "hi"}]}\n'
    )
    code = (
        "import io, sys, httpx\n"
        "import shardline._cli as cli\n"
        "from shardline._cli_run import resolve_run_settings\n"
        "seen = []\n"
        "def answer(request):\n"
        "    seen.append({m for m in sys.modules if m.startswith('shardline')})\n"
        "    return httpx.Response(401, json={'error': {'message': 'no key'}})\n"
        "args = cli.build_parser().parse_args(\n"
        "    ['run', sys.argv[1], '--base-url', 'http://127.0.0.1:9/v1', '--model', 'm',\n"
        "     '--no-progress'])\n"
        "from shardline._batch import run_batch\n"
        "mock = lambda _: httpx.MockTransport(answer)\n"
        "run_batch(resolve_run_settings(args, {}), transport=mock,\n"
        "          stdout=io.StringIO(), stderr=io.StringIO())\n"
        f"late = set({NOT_BEFORE_THE_FIRST_REQUEST!r})\n"
        "assert 'shardline._pipeline' in seen[0], sorted(seen[0])\n"
        "print(sorted(seen[0] & late))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "in.jsonl")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
