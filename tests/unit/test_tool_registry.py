"""Tools and the registry, with no network."""

from __future__ import annotations

import asyncio
from importlib.metadata import EntryPoint
from typing import Any, Literal

import pytest

from chatstream.app import create_app
from chatstream.config import Settings
from chatstream.tools import ToolError, ToolRegistry, tool
from chatstream.tools import registry as registry_module


@tool
async def weather(city: str, unit: Literal["C", "F"] = "C", days: int = 1) -> dict[str, Any]:
    """The weather in a city.

    Longer explanation that is not part of the description.
    """
    return {"city": city, "unit": unit, "days": days}


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_schema_is_derived_from_type_hints_and_docstring() -> None:
    schema = weather.schema()
    function = schema["function"]
    assert schema["type"] == "function"
    assert (function["name"], function["description"]) == ("weather", "The weather in a city.")
    parameters = function["parameters"]
    assert parameters["required"] == ["city"]
    assert parameters["additionalProperties"] is False
    assert parameters["properties"]["unit"]["enum"] == ["C", "F"]
    assert parameters["properties"]["days"] == {"default": 1, "title": "Days", "type": "integer"}


def test_name_and_description_can_be_given() -> None:
    @tool(name="forecast", description="Tomorrow's weather.")
    async def whatever(city: str) -> str:
        return city

    assert (whatever.name, whatever.description) == ("forecast", "Tomorrow's weather.")


def test_only_async_functions_with_named_parameters_are_tools() -> None:
    def sync(city: str) -> str:
        return city

    async def variadic(*cities: str) -> str:
        return ""

    with pytest.raises(TypeError):
        tool(sync)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        tool(variadic)


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ('{"city": "Oslo"}', '{"city":"Oslo","unit":"C","days":1}'),
        ("", "error: invalid arguments: city: Field required"),
        ("{broken", "error: the arguments are not valid JSON"),
        ("[1]", "error: the arguments must be a JSON object"),
        (
            '{"city": "Oslo", "unit": "K"}',
            "error: invalid arguments: unit: Input should be 'C' or 'F'",
        ),
        ('{"city": "Oslo", "x": 1}', "error: invalid arguments: x: Extra inputs are not permitted"),
    ],
)
def test_arguments_are_validated(arguments: str, expected: str) -> None:
    assert run(weather.run(arguments, timeout_s=1)) == expected


def test_failures_become_results() -> None:
    @tool
    async def polite() -> str:
        raise ToolError("try tomorrow")

    @tool
    async def rude() -> str:
        raise KeyError("sk-live-secret")

    @tool
    async def slow() -> str:
        await asyncio.sleep(10)
        return "late"

    assert run(polite.run("{}", timeout_s=1)) == "error: try tomorrow"
    assert run(rude.run("{}", timeout_s=1)) == "error: the tool failed"
    assert (
        run(slow.run("{}", timeout_s=0.05)) == "error: the tool did not finish within 0.05 seconds"
    )


def test_large_results_are_truncated() -> None:
    @tool
    async def big() -> str:
        return "x" * 20_000

    result = run(big.run("{}", timeout_s=1))
    assert len(result) < 16_100 and result.endswith("[truncated]")


def test_registry_rejects_duplicates_and_unknown_selections() -> None:
    registry = ToolRegistry([weather])
    with pytest.raises(ValueError, match="already registered"):
        registry.register(tool(name="weather")(weather.function))
    with pytest.raises(ValueError, match=r"'teleport'.*registered: weather"):
        registry.select(["teleport"])
    assert not registry.select([])
    assert (
        run(registry.select(["weather"]).run("nope", "{}", 1))
        == "error: there is no tool named 'nope'"
    )


def test_installed_packages_register_tools_through_entry_points(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plugins = [
        EntryPoint(
            name="weather", value=f"{__name__}:weather", group=registry_module.ENTRY_POINT_GROUP
        )
    ]
    monkeypatch.setattr(
        registry_module,
        "entry_points",
        lambda group: plugins if group == registry_module.ENTRY_POINT_GROUP else [],
    )
    registry = ToolRegistry.default()
    assert registry.names == ["get_current_time", "weather"]


def test_an_unknown_enabled_tool_stops_start_up() -> None:
    with pytest.raises(ValueError, match="CHATSTREAM_TOOLS names 'teleport'"):
        create_app(Settings(tools=["teleport"]))


def test_get_current_time() -> None:
    from chatstream.tools.builtin import get_current_time

    utc = run(get_current_time.run("{}", timeout_s=1))
    assert '"timezone":"UTC"' in utc and "+00:00" in utc
    assert "Asia/Tokyo" in run(get_current_time.run('{"timezone": "Asia/Tokyo"}', timeout_s=1))
    assert run(get_current_time.run('{"timezone": "Nowhere/City"}', timeout_s=1)).startswith(
        "error: unknown time zone"
    )
