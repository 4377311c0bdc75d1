"""The parts of an answer beyond its text: tool calls (and their arguments' JSON).

A :class:`ToolCall` keeps a call as the server sent it; whether its
``arguments`` parse as JSON is a property (:attr:`ToolCall.arguments_valid`)
and a method that raises (:meth:`ToolCall.arguments_json`), never a silent
``None``.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from ._exceptions import ToolArgumentsError

__all__ = ["ToolCall"]


@attrs.frozen(kw_only=True)
class ToolCall:
    """One tool (function) call of an answer, assembled from the server's deltas.

    Example::

        for call in result.tool_calls:
            args = call.arguments_json()  # ToolArgumentsError if not JSON
            handlers[call.name](**args)

    Attributes:
        index: The call's position (the ``index`` of its streamed deltas).
        id: The call's id (``call_…``), used to answer it with a ``tool``
            message; ``None`` if the server sent none.
        type: ``"function"`` (the only type the API has today).
        name: The function's name.
        arguments: The arguments exactly as the server sent them (the deltas
            joined): a JSON text when all went well, but not checked here.
    """

    index: int
    id: str | None
    type: str = "function"
    name: str
    arguments: str

    @property
    def arguments_valid(self) -> bool:
        """Whether :attr:`arguments` parse as a JSON object."""
        try:
            return isinstance(json.loads(self.arguments), dict)
        except (ValueError, RecursionError):
            return False

    def arguments_json(self) -> dict[str, Any]:
        """The arguments, parsed.

        Raises:
            ToolArgumentsError: they are not JSON, or not a JSON object; the
                message names the call and where the JSON broke.
        """
        who = f"tool call {self.index} ({self.name!r}, id {self.id!r})"
        try:
            value = json.loads(self.arguments)
        except (ValueError, RecursionError) as exc:
            shown = self.arguments if len(self.arguments) <= 80 else self.arguments[:77] + "..."
            raise ToolArgumentsError(
                f"{who}: arguments are not JSON ({exc}): {shown!r}",
                name=self.name,
                call_id=self.id,
                arguments=self.arguments,
            ) from exc
        if not isinstance(value, dict):
            raise ToolArgumentsError(
                f"{who}: arguments must be a JSON object, got {type(value).__name__}",
                name=self.name,
                call_id=self.id,
                arguments=self.arguments,
            )
        return value

    def to_json(self) -> dict[str, Any]:
        """The call in the API's own shape (as an assistant message's ``tool_calls`` holds it)."""
        return {
            "id": self.id,
            "type": self.type,
            "function": {"name": self.name, "arguments": self.arguments},
        }
