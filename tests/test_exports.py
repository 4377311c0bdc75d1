"""The public surface: exactly the names in each __all__, all importable, none private."""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

import shardline
import shardline.errors
import shardline.events
import shardline.report
import shardline.testing

TOP = {
    "AttemptError", "Backoff", "Cause", "ChatRequest", "CompletionRequest", "ConfigError",
    "Deadlines", "EmbeddingRequest", "Endpoint", "EventSink", "FlowControl", "Hedging",
    "InputError", "ItemCancelled", "ResponsesRequest", "ToolCall",
    "JsonlEventSink", "MemoryEventSink", "Outcome", "Pipeline", "PipelineConfig",
    "PipelineStatistics", "Request", "Result", "RetryBudget", "RetryPolicy", "ShardStatistics",
    "ShardlineError", "Status", "TeeSink", "Usage", "no_delays", "open_pipeline",
}  # fmt: skip

ERRORS = {
    "AttemptError", "AttemptTimeout", "ClientError", "ConfigError", "ConnectError",
    "ConnectTimeout", "ConnectionLost", "DeadlineExceeded", "EventDecodeError",
    "HTTPStatusError", "InputError", "InternalError", "ItemCancelled", "PoolTimeout",
    "ProtocolError", "RateLimited", "ReportError", "ServerError", "ShardlineError",
    "StallTimeout", "TTFTTimeout", "ToolArgumentsError", "TransportError", "Truncated",
}  # fmt: skip

EVENTS = {
    "SCHEMA_VERSION", "AttemptEnd", "AttemptOutcome", "AttemptStart", "Event",
    "EventDecodeError", "EventFileReader", "EventSink", "FirstToken", "HedgeSent", "HedgeWon",
    "ItemAdmitted", "ItemEnd", "ItemId", "EndpointState", "JsonlEventSink", "LimitChange",
    "MemoryEventSink", "RetryScheduled", "RunEnd",
    "RunEndReason", "RunStart", "ShardCondition", "ShardState", "TeeSink", "event_from_json",
    "event_to_json",
}  # fmt: skip

REPORT = {
    "LimitReport", "LiveMetrics", "LiveShard", "LiveSnapshot", "MinuteTokens",
    "OpenTelemetrySink", "Percentiles", "PrometheusSink", "ReportBuilder", "ReportError",
    "RunReport", "ShardReport", "compute_report", "render_text",
}  # fmt: skip

NAMESPACES = [
    (shardline, TOP),
    (shardline.errors, ERRORS),
    (shardline.events, EVENTS),
    (shardline.report, REPORT),
]
IDS = [module.__name__ for module, _ in NAMESPACES]
REFERENCE = Path(__file__).resolve().parents[1] / "docs" / "reference"


def _sort_key(name: str) -> tuple[bool, str]:
    return (not name.isupper(), name)  # constants first, as ruff's RUF022 sorts


@pytest.mark.parametrize(("module", "public"), NAMESPACES, ids=IDS)
def test_all_is_exactly_the_public_names_sorted(module: types.ModuleType, public: set[str]) -> None:
    """Each namespace's __all__ lists exactly its intended public names, sorted, no repeats."""
    assert set(module.__all__) == public
    assert module.__all__ == sorted(set(module.__all__), key=_sort_key)


def test_top_level_stays_small() -> None:
    """The top level holds at most 33 names (the four request kinds, ToolCall and Hedging
    among them)."""
    assert len(shardline.__all__) <= 33


@pytest.mark.parametrize(("module", "public"), NAMESPACES, ids=IDS)
def test_every_public_name_resolves_to_a_public_home(
    module: types.ModuleType, public: set[str]
) -> None:
    """Each exported object is defined in a shardline module and is the same in every namespace."""
    for name in module.__all__:
        obj = getattr(module, name)
        assert obj is not None
        for other, names in NAMESPACES:
            if name in names:
                assert getattr(other, name) is obj, (other.__name__, name)


# Run in a fresh interpreter: under pytest, assertion rewriting adds names to the
# package's modules (shardline.testing is a pytest plugin).
_LEAKS = """
import json, sys, types
import shardline
public = {"errors", "events", "report", "testing", "ray"}
out = {}
for module in (shardline, shardline.errors, shardline.events, shardline.report):
    out[module.__name__] = [
        name for name in dir(module)
        if not name.startswith("_") and name not in module.__all__
        and not (module is shardline and name in public
                 and isinstance(getattr(module, name), types.ModuleType))
    ]
out["version"] = [type(shardline.__version__).__name__]
print(json.dumps(out))
"""


def test_dir_shows_only_public_names_dunders_and_submodules() -> None:
    """No namespace leaks a helper import (annotations, version, PackageNotFoundError)."""
    result = subprocess.run(
        [sys.executable, "-c", _LEAKS], check=True, capture_output=True, text=True
    )
    assert json.loads(result.stdout) == {
        "shardline": [],
        "shardline.errors": [],
        "shardline.events": [],
        "shardline.report": [],
        "version": ["str"],
    }


def _shardline_errors() -> set[type[BaseException]]:
    """Every ShardlineError subclass defined anywhere in the imported package."""
    found: set[type[BaseException]] = set()
    for mod_name, mod in list(sys.modules.items()):
        if not mod_name.startswith("shardline") or mod is None:
            continue
        for _, obj in inspect.getmembers(mod, inspect.isclass):
            if issubclass(obj, shardline.ShardlineError) and obj.__module__.startswith(
                "shardline."
            ):
                found.add(obj)
    return found


def test_errors_namespace_holds_the_whole_exception_tree() -> None:
    """shardline.errors exports every ShardlineError subclass the library defines."""
    exported = {getattr(shardline.errors, name) for name in shardline.errors.__all__}
    missing = sorted(
        cls.__qualname__
        for cls in _shardline_errors()
        if cls not in exported
        and not cls.__name__.startswith("_")
        and not cls.__module__.startswith("shardline.testing")
    )
    assert missing == []
    assert all(issubclass(e, shardline.ShardlineError) for e in exported)


def _resolve(path: str) -> object:
    """The object a ``::: dotted.path`` directive documents."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise LookupError(path)  # pragma: no cover


@pytest.mark.parametrize("module", [m for m, _ in NAMESPACES][1:], ids=IDS[1:])
def test_sub_namespace_names_have_docstrings_and_reference_entries(
    module: types.ModuleType,
) -> None:
    """Each name of a sub-namespace has a docstring and a reference entry at a public path."""
    undocumented = [
        name
        for name in module.__all__
        if (inspect.isclass(obj := getattr(module, name)) or inspect.isfunction(obj))
        and not (obj.__doc__ or "").strip()
    ]
    assert undocumented == []
    text = "\n".join(p.read_text(encoding="utf-8") for p in REFERENCE.glob("*.md"))
    paths = re.findall(r"^::: ([\w.]+)", text, flags=re.MULTILINE)
    assert not [p for p in paths if "._" in p]  # public paths only
    documented = {id(_resolve(p)) for p in paths}
    # An object exported in several namespaces is documented once, at any of them.
    missing = [name for name in module.__all__ if id(getattr(module, name)) not in documented]
    assert missing == []


@pytest.mark.parametrize("package", ["shardline", "shardline.ray"])
def test_lazy_exports_match_the_type_checking_imports(package: str) -> None:
    """The runtime table of lazily imported names is what type checkers and the docs see."""
    module = importlib.import_module(package)
    assert module.__file__ is not None
    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    guarded = next(
        node
        for node in tree.body
        if isinstance(node, ast.If)
        and isinstance(node.test, ast.Name)
        and node.test.id == "TYPE_CHECKING"
    )
    seen = {
        alias.name: (node.module or "").lstrip(".")
        for node in guarded.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    submodules = {name for name, source in seen.items() if source == ""}
    assert {k: v for k, v in seen.items() if k not in submodules} == module._EXPORTS
    assert submodules == set(getattr(module, "_SUBMODULES", set()))
    assert set(module.__all__) == set(module._EXPORTS)
    for name in module.__all__:
        assert getattr(module, name) is getattr(
            importlib.import_module(f"{package}.{module._EXPORTS[name]}"), name
        )


def test_testing_is_not_imported_by_the_package() -> None:
    """`import shardline` does not pull in shardline.testing, nor the optional extras."""
    code = (
        "import sys, shardline; "
        "assert 'shardline.testing' not in sys.modules; "
        "assert 'ray' not in sys.modules; "
        "assert 'prometheus_client' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_testing_all_resolves() -> None:
    """shardline.testing.__all__ names resolve."""
    mod = importlib.import_module("shardline.testing")
    for name in mod.__all__:
        assert hasattr(mod, name), name
