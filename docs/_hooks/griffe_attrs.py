"""A griffe extension: give attrs classes the ``__init__`` that attrs generates.

griffe reads source code without running it, so it cannot see the ``__init__``
that ``@attrs.frozen`` / ``@attrs.define`` create. Without one, the reference
shows shardline's configuration classes with no signature, and their ``Args:``
sections with no types and every default as "required". This extension
re-creates the signature statically, the way griffe's built-in dataclasses
extension does for ``@dataclass``:

* every annotated attribute is a parameter, except ``ClassVar``s and fields
  with ``init=False``;
* ``attrs.field(default=...)``, ``factory=...`` and ``alias=...`` are honoured,
  and a leading underscore is dropped from the parameter name, as attrs does;
* ``kw_only=True`` on the decorator or the field makes the parameter
  keyword-only;
* a default that names a module constant with a literal value
  (``DEFAULT_STALL_TIMEOUT``) is shown as that value (``30.0``).

It only changes what the documentation shows; nothing is imported or run.
"""

from __future__ import annotations

from typing import Any

import griffe

_DECORATORS = {
    "attrs.define",
    "attrs.frozen",
    "attrs.mutable",
    "attr.s",
    "attr.attrs",
    "attr.define",
    "attr.frozen",
    "attr.mutable",
}
_FIELDS = {"attrs.field", "attr.ib", "attr.attrib", "attr.field"}


def _call_args(expr: object) -> dict[str, Any]:
    if isinstance(expr, griffe.ExprCall):
        return {
            argument.name: argument.value
            for argument in expr.arguments
            if isinstance(argument, griffe.ExprKeyword)
        }
    return {}


def _attrs_decorator(class_: griffe.Class) -> dict[str, Any] | None:
    for decorator in class_.decorators:
        value = decorator.value
        function = value.function if isinstance(value, griffe.ExprCall) else value
        path = getattr(function, "canonical_path", str(function))
        if path in _DECORATORS:
            return _call_args(value)
    return None


def _literal(class_: griffe.Class, default: Any) -> Any:
    """``DEFAULT_STALL_TIMEOUT`` -> ``30.0`` when the name is a module constant with a literal."""
    if isinstance(default, griffe.ExprName):
        module = class_.module
        target = module.members.get(default.name)
        if isinstance(target, griffe.Attribute) and isinstance(target.value, str):
            return target.value
    return default


def _parameters(class_: griffe.Class, kw_only: bool) -> list[griffe.Parameter]:
    parameters = []
    for member in class_.members.values():
        if not isinstance(member, griffe.Attribute) or member.annotation is None:
            continue
        if "property" in member.labels or (
            "class-attribute" in member.labels and "instance-attribute" not in member.labels
        ):
            continue  # ClassVar, property
        value = member.value
        field: dict[str, Any] = {}
        if isinstance(value, griffe.ExprCall) and value.function.canonical_path in _FIELDS:
            field = _call_args(value)
        if str(field.get("init", "True")) == "False":
            continue
        if "factory" in field:
            default: Any = griffe.ExprCall(function=field["factory"], arguments=[])
        elif "default" in field:
            default = field["default"]
        elif field:
            default = None  # attrs.field(...) without a default: required
        else:
            default = value
        name = str(field.get("alias", member.name.lstrip("_"))).strip("'\"")
        keyword_only = kw_only or str(field.get("kw_only", "False")) == "True"
        kind = (
            griffe.ParameterKind.keyword_only
            if keyword_only
            else griffe.ParameterKind.positional_or_keyword
        )
        parameters.append(
            griffe.Parameter(
                name, annotation=member.annotation, kind=kind, default=_literal(class_, default)
            )
        )
    return parameters


class AttrsExtension(griffe.Extension):
    """Create ``__init__`` for attrs classes that do not define one."""

    def on_class_members(self, *, cls: griffe.Class, **kwargs: Any) -> None:
        options = _attrs_decorator(cls)
        if options is None or "__init__" in cls.members:
            return
        kw_only = str(options.get("kw_only", "False")) == "True"
        init = griffe.Function(
            "__init__",
            lineno=cls.lineno,
            endlineno=cls.lineno,
            parent=cls,
            parameters=griffe.Parameters(
                griffe.Parameter("self", kind=griffe.ParameterKind.positional_or_keyword),
                *_parameters(cls, kw_only),
            ),
            returns="None",
        )
        cls.set_member("__init__", init)
