"""Agent frameworks against chatstream: the OpenAI Agents SDK (Responses API) and instructor.

Their pins clash with chatstream's own, so they run in `.venv-clients` as
separate processes (tests/support/python_clients.py), over real HTTP.
"""

from __future__ import annotations

import pytest

from tests.support.python_clients import run_client
from tests.support.servers import AppServer, FakeUpstreamThread

CALL_WEATHER = '[[fake tool=get_weather tool_args={"city": "Paris"} arg_chunks=2]]'
ADA = '{"name": "Ada", "age": 36}'


@pytest.mark.parametrize("stream", [False, True])
def test_the_agents_sdk_runs_a_function_tool_loop(
    server: AppServer, fake: FakeUpstreamThread, stream: bool
) -> None:
    result = run_client(
        "agents_tool_loop.py",
        {
            "base_url": f"{server.base_url}/v1",
            "model": "test-model",
            "prompt": f"{CALL_WEATHER} weather in Paris?",
            "stream": stream,
        },
    )
    assert result["error"] is None
    assert result["tool_outputs"] == ["sunny in Paris"]
    assert result["final_output"] == "The tool said: sunny in Paris"
    assert len(result["responses"]) == 2 and all(r.startswith("resp_") for r in result["responses"])
    if stream:
        assert result["deltas"] == "The tool said: sunny in Paris"
    first, second = fake.fake.requests[-2:]
    assert first["messages"][0] == {"role": "system", "content": "Answer with the weather."}
    assert [t["function"]["name"] for t in first["tools"]] == ["get_weather"]
    assert [m["role"] for m in second["messages"]] == ["system", "user", "assistant", "tool"]


@pytest.mark.parametrize(
    ("mode", "directive"),
    [("TOOLS", f"tool=Person tool_args={ADA}"), ("JSON_SCHEMA", f"answer={ADA}")],
)
def test_instructor_gets_its_pydantic_model(
    server: AppServer, fake: FakeUpstreamThread, mode: str, directive: str
) -> None:
    result = run_client(
        "instructor_structured.py",
        {
            "base_url": f"{server.base_url}/v1",
            "model": "test-model",
            "prompt": f"[[fake {directive}]] who is Ada?",
            "mode": mode,
        },
    )
    assert result["error"] is None
    assert result["person"] == {"name": "Ada", "age": 36}
    sent = fake.fake.requests[-1]
    if mode == "TOOLS":
        assert sent["tool_choice"] == {"type": "function", "function": {"name": "Person"}}
    else:
        assert sent["response_format"]["type"] == "json_schema"
