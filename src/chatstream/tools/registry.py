"""Tools the model may call, and the registry that offers them.

A tool is an async function. Its name, its description (the docstring's
first paragraph) and the JSON schema of its arguments (from its type hints,
through a pydantic model) are derived, never written by hand:

    @tool
    async def get_weather(city: str, unit: Literal["C", "F"] = "C") -> dict[str, Any]:
        \"\"\"The current weather in a city.\"\"\"
        ...

    registry = ToolRegistry.default()       # built-ins + the `chatstream.tools` entry points
    registry.register(get_weather)
    app = create_app(settings, tools=registry)

`CHATSTREAM_TOOLS` chooses which registered tools are offered to the model.

Running a tool never raises: whatever goes wrong (unknown tool, arguments
that are not JSON or break the schema, a tool that raises or runs too long)
becomes the text the model receives as the result, so it can still answer.
A tool reports a failure meant for the model by raising `ToolError`; any
other exception is logged and reported to the model without its details.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from difflib import get_close_matches
from importlib.metadata import entry_points
from typing import Any, get_type_hints, overload

import anyio
import orjson
from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from chatstream.config import ConfigurationError

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "chatstream.tools"
RESULT_MAX_CHARS = 16_000


class ToolError(Exception):
    """Raised by a tool to tell the model what went wrong, in words it may read."""


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    description: str
    arguments: type[BaseModel]
    function: Callable[..., Awaitable[Any]]

    def schema(self) -> dict[str, Any]:
        """The tool as an OpenAI `tools` entry."""
        parameters = self.arguments.model_json_schema()
        parameters.pop("title", None)
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": parameters,
            },
        }

    async def run(self, arguments: str, timeout_s: float) -> str:
        """Call the tool with the model's JSON arguments; return the result as text."""
        try:
            parsed = orjson.loads(arguments or "{}")
        except orjson.JSONDecodeError:
            return "error: the arguments are not valid JSON"
        if not isinstance(parsed, dict):
            return "error: the arguments must be a JSON object"
        try:
            values = self.arguments.model_validate(parsed)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in e['loc']) or 'arguments'}: {e['msg']}"
                for e in exc.errors()
            )
            return f"error: invalid arguments: {problems}"
        try:
            with anyio.fail_after(timeout_s):
                result = await self.function(**dict(values))
        except TimeoutError:
            return f"error: the tool did not finish within {timeout_s:g} seconds"
        except ToolError as exc:
            return f"error: {exc}"
        except Exception as exc:
            logger.warning("tool %s raised %s", self.name, type(exc).__name__)
            return "error: the tool failed"
        return _as_text(result)


def _as_text(result: Any) -> str:
    text = result if isinstance(result, str) else orjson.dumps(result, default=str).decode()
    if len(text) > RESULT_MAX_CHARS:
        text = text[:RESULT_MAX_CHARS] + " …[truncated]"
    return text


@overload
def tool(function: Callable[..., Awaitable[Any]], /) -> Tool: ...


@overload
def tool(
    *, name: str | None = None, description: str | None = None
) -> Callable[[Callable[..., Awaitable[Any]]], Tool]: ...


def tool(
    function: Callable[..., Awaitable[Any]] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
) -> Tool | Callable[[Callable[..., Awaitable[Any]]], Tool]:
    """Make a `Tool` of an async function (use bare, or with `name=` / `description=`)."""

    def build(func: Callable[..., Awaitable[Any]]) -> Tool:
        if not inspect.iscoroutinefunction(func):
            raise TypeError(f"a tool must be an async function: {func!r}")
        hints = get_type_hints(func)
        fields: dict[str, Any] = {}
        for parameter in inspect.signature(func).parameters.values():
            if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                raise TypeError(f"tool {func.__name__}: *args and **kwargs cannot be described")
            annotation = hints.get(parameter.name, Any)
            default = ... if parameter.default is inspect.Parameter.empty else parameter.default
            fields[parameter.name] = (annotation, default)
        tool_name = name or func.__name__
        arguments = create_model(
            f"{tool_name}_arguments", __config__=ConfigDict(extra="forbid"), **fields
        )
        doc = inspect.getdoc(func) or ""
        return Tool(
            name=tool_name,
            description=description or doc.split("\n\n")[0].strip() or tool_name,
            arguments=arguments,
            function=func,
        )

    return build(function) if function is not None else build


class ToolRegistry:
    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        for item in tools:
            self.register(item)

    @classmethod
    def default(cls) -> ToolRegistry:
        """The built-in tools plus every tool installed packages declare as entry points."""
        from chatstream.tools.builtin import BUILTIN_TOOLS

        registry = cls(BUILTIN_TOOLS)
        for entry in entry_points(group=ENTRY_POINT_GROUP):
            loaded = entry.load()
            registry.register(loaded if isinstance(loaded, Tool) else tool(loaded))
        return registry

    def register(self, item: Tool | Callable[..., Awaitable[Any]]) -> Tool:
        registered = item if isinstance(item, Tool) else tool(item)
        if registered.name in self._tools and self._tools[registered.name] is not registered:
            raise ValueError(f"a tool named {registered.name!r} is already registered")
        self._tools[registered.name] = registered
        return registered

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    @property
    def names(self) -> list[str]:
        return sorted(self._tools)

    def select(self, names: Iterable[str]) -> ToolSet:
        """The tools to offer; an unknown name is a configuration error."""
        chosen = []
        for wanted in names:
            found = self._tools.get(wanted)
            if found is None:
                close = get_close_matches(wanted, self.names, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise ConfigurationError(
                    f"CHATSTREAM_TOOLS names {wanted!r}, which is not a registered tool; "
                    f"{hint}registered: {', '.join(self.names) or 'none'}"
                )
            chosen.append(found)
        return ToolSet(chosen)


class ToolSet:
    """The tools offered to the model in a run (possibly none)."""

    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools = {item.name: item for item in tools}
        self.schemas = [item.schema() for item in self._tools.values()]

    def __bool__(self) -> bool:
        return bool(self._tools)

    async def run(self, name: str, arguments: str, timeout_s: float) -> str:
        found = self._tools.get(name)
        if found is None:
            return f"error: there is no tool named {name!r}"
        return await found.run(arguments, timeout_s)
