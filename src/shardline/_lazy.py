"""Public names imported on first use (PEP 562), so a namespace costs nothing until used.

``shardline --help`` should not pay for trio and httpx, yet ``shardline`` and
``shardline.ray`` re-export names from modules that import them. A package's
``__init__`` keeps its ``from ._x import Name as Name`` lines under
``if TYPE_CHECKING:`` (for type checkers and the docs) and hands the same
table to :func:`lazy_namespace` for the runtime; a test keeps the two equal.
A name, once imported, is stored in the package's globals, so only the first
access goes through ``__getattr__``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any

__all__ = ["lazy_namespace"]


def lazy_namespace(
    package: str,
    namespace: dict[str, Any],
    exports: Mapping[str, str],
    *,
    submodules: frozenset[str] = frozenset(),
    computed: Mapping[str, Callable[[], object]] | None = None,
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of a package with lazily imported names.

    Args:
        package: The package's ``__name__``.
        namespace: Its ``globals()``: imported names are cached there.
        exports: Public name -> the submodule (relative, without dot) defining it.
        submodules: Public submodules, imported when first accessed as attributes.
        computed: Names whose value a function computes on first access
            (``__version__``).
    """
    extra = dict(computed or {})

    def __getattr__(name: str) -> object:
        if name in exports:
            value = getattr(import_module(f"{package}.{exports[name]}"), name)
        elif name in submodules:
            value = import_module(f"{package}.{name}")
        elif name in extra:
            value = extra[name]()
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports) | submodules | set(extra))

    return __getattr__, __dir__
