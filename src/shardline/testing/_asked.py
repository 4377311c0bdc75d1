"""What a completion request asks the fake server for: the checked body (`parse_params`).

A chat request with ``tools`` is answered with a call of one of them, one with
``reasoning_effort`` or a ``reasoning`` object thinks aloud first, and
``logprobs: true`` adds log probabilities; see `Asked`.
"""

from __future__ import annotations

from typing import Any

from ._wire import MAX_COMPLETION_TOKENS, count_prompt_tokens


def text_chars(content: object) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                total += len(part["text"])
            elif isinstance(part, str):
                total += len(part)
        return total
    return 0


class Asked:
    """What a valid completion request asked for (see `parse_params`)."""

    __slots__ = (
        "completion_tokens",
        "finish_reason",
        "include_usage",
        "logprobs",
        "prompt_tokens",
        "reasoning_key",
        "stream",
        "tool_name",
    )

    def __init__(
        self,
        *,
        prompt_tokens: int,
        completion_tokens: int,
        finish_reason: str,
        stream: bool,
        include_usage: bool,
        tool_name: str | None = None,
        reasoning_key: str | None = None,
        logprobs: bool = False,
    ) -> None:
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self.finish_reason = finish_reason
        self.stream = stream
        self.include_usage = include_usage
        self.tool_name = tool_name
        self.reasoning_key = reasoning_key
        self.logprobs = logprobs


def _tool_name(params: dict[str, Any]) -> str | None:
    """The function the fake model calls: the named ``tool_choice``, or the first tool.

    Returns ``None`` when the request has no tools or ``tool_choice`` is ``"none"``;
    raises `ValueError` with the 400 message when ``tools`` is malformed.
    """
    tools = params.get("tools")
    if tools is None:
        return None
    names: list[str] = []
    if isinstance(tools, list):
        for tool in tools:
            function = tool.get("function") if isinstance(tool, dict) else None
            name = function.get("name") if isinstance(function, dict) else None
            if not isinstance(name, str) or not name:
                break
            names.append(name)
    if not isinstance(tools, list) or not tools or len(names) != len(tools):
        raise ValueError("'tools' must be a non-empty list of function tools with a name")
    choice = params.get("tool_choice")
    if choice == "none":
        return None
    if isinstance(choice, dict):
        function = choice.get("function")
        chosen = function.get("name") if isinstance(function, dict) else None
        if chosen not in names:
            raise ValueError("'tool_choice' must name one of the 'tools'")
        assert isinstance(chosen, str)
        return chosen
    return names[0]


def parse_params(params: dict[str, Any], *, chat: bool, default_max_tokens: int) -> Asked | str:
    """Validate a request body. Returns what it asked for, or an error message.

    A chat request with ``tools`` (and ``tool_choice`` not ``"none"``) is answered
    with one call of the chosen function; one with ``reasoning_effort`` thinks
    aloud in ``reasoning_content`` first (vLLM, DeepSeek), one with a
    ``reasoning`` object in ``reasoning`` (OpenRouter); ``logprobs: true`` adds
    per-token log probabilities.
    """
    tool_name: str | None = None
    reasoning_key: str | None = None
    if chat:
        messages = params.get("messages")
        if not isinstance(messages, list) or not messages:
            return "'messages' must be a non-empty list"
        chars = 0
        for message in messages:
            if not isinstance(message, dict):
                return "each message must be an object"
            chars += text_chars(message.get("content"))
        prompt_tokens = count_prompt_tokens(chars)
        try:
            tool_name = _tool_name(params)
        except ValueError as exc:
            return str(exc)
        if isinstance(params.get("reasoning_effort"), str):
            reasoning_key = "reasoning_content"
        elif isinstance(params.get("reasoning"), dict):
            reasoning_key = "reasoning"
    else:
        prompt = params.get("prompt")
        if isinstance(prompt, str):
            prompt_tokens = count_prompt_tokens(len(prompt))
        elif isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt_tokens = count_prompt_tokens(len(prompt[0]))
        elif isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            prompt_tokens = len(prompt)
        else:
            return "'prompt' must be a string or a list of token ids (one prompt per request)"
    n = params.get("n", 1)
    if n not in (1, None):
        return "the fake server supports only n=1"
    limit = params.get("max_completion_tokens", params.get("max_tokens"))
    if limit is None:
        completion_tokens, finish_reason = default_max_tokens, "stop"
    elif isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        return "'max_tokens' must be an integer >= 1"
    elif limit > MAX_COMPLETION_TOKENS:
        return f"'max_tokens' must be <= {MAX_COMPLETION_TOKENS}"
    else:
        completion_tokens, finish_reason = limit, "length"
    if tool_name is not None:
        finish_reason = "tool_calls"  # the fake model always finishes its call
    stream = params.get("stream") is True
    options = params.get("stream_options")
    include_usage = stream and isinstance(options, dict) and options.get("include_usage") is True
    return Asked(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        finish_reason=finish_reason,
        stream=stream,
        include_usage=include_usage,
        tool_name=tool_name,
        reasoning_key=reasoning_key,
        logprobs=chat and params.get("logprobs") is True,
    )


DEFAULT_DIMENSIONS = 8
"""Components of a fake embedding when the request sets no ``dimensions``."""
MAX_DIMENSIONS = 4096
"""Largest ``dimensions`` the fake server accepts."""
MAX_INPUTS = 2048
"""Most inputs one embeddings request may carry (OpenAI's limit)."""


class AskedEmbeddings:
    """What a valid embeddings request asked for."""

    __slots__ = ("base64", "dimensions", "prompt_tokens", "texts")

    def __init__(self, texts: list[str], prompt_tokens: int, dimensions: int, base64: bool) -> None:
        self.texts = texts
        self.prompt_tokens = prompt_tokens
        self.dimensions = dimensions
        self.base64 = base64


def _token_ids(value: object) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(t, int) and not isinstance(t, bool) for t in value)
    )


def parse_embedding_params(params: dict[str, Any]) -> AskedEmbeddings | str:
    """Validate an embeddings body. Returns what it asked for, or an error message."""
    raw = params.get("input")
    if isinstance(raw, str) or _token_ids(raw):
        inputs: list[Any] = [raw]
    elif isinstance(raw, list) and raw and all(isinstance(v, str) or _token_ids(v) for v in raw):
        inputs = raw
    else:
        return "'input' must be a string, a list of strings, or token ids"
    if len(inputs) > MAX_INPUTS:
        return f"'input' must have at most {MAX_INPUTS} items"
    texts: list[str] = []
    tokens = 0
    for value in inputs:
        if isinstance(value, str):
            texts.append(value)
            tokens += count_prompt_tokens(len(value))
        else:
            texts.append(" ".join(map(str, value)))
            tokens += len(value)
    dimensions = params.get("dimensions", DEFAULT_DIMENSIONS)
    if (
        isinstance(dimensions, bool)
        or not isinstance(dimensions, int)
        or not 1 <= dimensions <= MAX_DIMENSIONS
    ):
        return f"'dimensions' must be an integer from 1 to {MAX_DIMENSIONS}"
    encoding = params.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        return "'encoding_format' must be 'float' or 'base64'"
    return AskedEmbeddings(texts, tokens, dimensions, encoding == "base64")


class AskedResponse:
    """What a valid Responses API request asked for."""

    __slots__ = (
        "completion_tokens",
        "incomplete",
        "prompt_tokens",
        "reasoning",
        "stream",
        "tool_name",
    )

    def __init__(
        self,
        *,
        prompt_tokens: int,
        completion_tokens: int,
        incomplete: bool,
        stream: bool,
        tool_name: str | None,
        reasoning: bool,
    ) -> None:
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self.incomplete = incomplete
        self.stream = stream
        self.tool_name = tool_name
        self.reasoning = reasoning


def _responses_tool(params: dict[str, Any]) -> str | None:
    """The function a Responses request's model calls (tools are flat: ``{"type", "name"}``)."""
    tools = params.get("tools")
    if tools is None:
        return None
    if not isinstance(tools, list) or not tools:
        raise ValueError("'tools' must be a non-empty list of function tools with a name")
    names = [t.get("name") for t in tools if isinstance(t, dict) and t.get("type") == "function"]
    if len(names) != len(tools) or not all(isinstance(n, str) and n for n in names):
        raise ValueError("'tools' must be a non-empty list of function tools with a name")
    choice = params.get("tool_choice")
    if choice == "none":
        return None
    if isinstance(choice, dict):
        if choice.get("name") not in names:
            raise ValueError("'tool_choice' must name one of the 'tools'")
        return str(choice["name"])
    return str(names[0])


def parse_response_params(
    params: dict[str, Any], *, default_max_tokens: int
) -> AskedResponse | str:
    """Validate a Responses API body. Returns what it asked for, or an error message.

    ``tools`` make the answer one function call, a ``reasoning`` object makes it
    think first, and ``max_output_tokens`` cuts it (``status: incomplete``).
    """
    raw = params.get("input")
    if isinstance(raw, str):
        chars = len(raw)
    elif isinstance(raw, list) and raw and all(isinstance(i, dict) for i in raw):
        chars = sum(text_chars(item.get("content")) for item in raw)
    else:
        return "'input' must be a string or a non-empty list of input items"
    instructions = params.get("instructions")
    if isinstance(instructions, str):
        chars += len(instructions)
    try:
        tool_name = _responses_tool(params)
    except ValueError as exc:
        return str(exc)
    limit = params.get("max_output_tokens")
    if limit is None:
        completion_tokens = default_max_tokens
    elif isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        return "'max_output_tokens' must be an integer >= 1"
    elif limit > MAX_COMPLETION_TOKENS:
        return f"'max_output_tokens' must be <= {MAX_COMPLETION_TOKENS}"
    else:
        completion_tokens = limit
    return AskedResponse(
        prompt_tokens=count_prompt_tokens(chars),
        completion_tokens=completion_tokens,
        incomplete=limit is not None and tool_name is None,
        stream=params.get("stream") is True,
        tool_name=tool_name,
        reasoning=isinstance(params.get("reasoning"), dict),
    )
