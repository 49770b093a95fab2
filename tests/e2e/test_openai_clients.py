"""`/v1` driven by the libraries agents and apps use (issue #26): the OpenAI SDK's
`.parse()`, LangChain's `bind_tools` and `with_structured_output`, LiteLLM as a
client with tools.

The fake upstream scripts the model: `tool=NAME tool_args=JSON` makes it call a
tool (the client's), `answer=JSON` makes it answer exactly that text. Each test
checks what the library hands its caller, and what reached the model.

instructor is not among them: every release that works with openai 3.x
(1.17.0) requires jiter<0.15, and openai 3.54 requires jiter>=0.16, so it
cannot be installed beside the SDK chatstream uses.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from tests.support.servers import AppServer, FakeUpstreamThread


class Person(BaseModel):
    name: str
    age: int


ADA = '{"name": "Ada", "age": 36}'


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


@pytest.fixture
def sdk(server: AppServer) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)
    yield client
    client.close()


@pytest.fixture
def chat_model(server: AppServer) -> ChatOpenAI:
    return ChatOpenAI(
        model="test-model",
        base_url=f"{server.base_url}/v1",
        api_key="unused",  # type: ignore[arg-type]
        max_retries=0,
    )


# --- OpenAI Python SDK ---------------------------------------------------------------


def test_the_sdks_parse_gives_the_pydantic_model(
    sdk: openai.OpenAI, fake: FakeUpstreamThread
) -> None:
    completion = sdk.chat.completions.parse(
        model="test-model",
        messages=[{"role": "user", "content": f"[[fake answer={ADA}]] who?"}],
        response_format=Person,
    )
    assert completion.choices[0].message.parsed == Person(name="Ada", age=36)
    sent = fake.fake.requests[-1]["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["name"] == "Person"


def test_the_sdks_parse_runs_a_client_tool_loop(
    sdk: openai.OpenAI, fake: FakeUpstreamThread
) -> None:
    weather = openai.pydantic_function_tool(Person, name="lookup_person")
    messages: list[Any] = [
        {"role": "user", "content": f"[[fake tool=lookup_person tool_args={ADA}]] find Ada"}
    ]
    first = sdk.chat.completions.parse(model="test-model", messages=messages, tools=[weather])
    call = (first.choices[0].message.tool_calls or [])[0]
    assert first.choices[0].finish_reason == "tool_calls"
    assert call.function.parsed_arguments == Person(name="Ada", age=36)  # type: ignore[union-attr]

    messages += [
        first.choices[0].message,  # the SDK's own object, sent back as it is
        {"role": "tool", "tool_call_id": call.id, "content": "found"},
    ]
    second = sdk.chat.completions.parse(model="test-model", messages=messages, tools=[weather])
    assert second.choices[0].message.content == "The tool said: found"
    assert [m["role"] for m in fake.fake.requests[-1]["messages"]] == ["user", "assistant", "tool"]


# --- LangChain ------------------------------------------------------------------------


def test_langchain_bind_tools_runs_a_tool_loop(
    chat_model: ChatOpenAI, fake: FakeUpstreamThread
) -> None:
    with_tools = chat_model.bind_tools([get_weather])
    messages: list[BaseMessage] = [
        HumanMessage('[[fake tool=get_weather tool_args={"city": "Paris"}]] weather?')
    ]
    reply = with_tools.invoke(messages)
    assert isinstance(reply, AIMessage)
    assert [(c["name"], c["args"]) for c in reply.tool_calls] == [
        ("get_weather", {"city": "Paris"})
    ]
    assert [t["function"]["name"] for t in fake.fake.requests[-1]["tools"]] == ["get_weather"]

    messages += [
        reply,
        ToolMessage(
            get_weather.invoke(reply.tool_calls[0]["args"]), tool_call_id=reply.tool_calls[0]["id"]
        ),
    ]
    final = with_tools.invoke(messages)
    assert final.content == "The tool said: sunny in Paris"
    assert not getattr(final, "tool_calls", None)


def test_langchain_streams_tool_call_chunks(chat_model: ChatOpenAI) -> None:
    with_tools = chat_model.bind_tools([get_weather])
    chunks = list(
        with_tools.stream('[[fake tool=get_weather tool_args={"city": "Rome"} arg_chunks=4]] w')
    )
    whole = chunks[0]
    for chunk in chunks[1:]:
        whole = whole + chunk  # type: ignore[assignment]
    assert isinstance(whole, AIMessage)
    assert [(c["name"], c["args"]) for c in whole.tool_calls] == [("get_weather", {"city": "Rome"})]
    assert whole.response_metadata.get("finish_reason") == "tool_calls"


@pytest.mark.parametrize("method", ["json_schema", "function_calling", "json_mode"])
def test_langchain_with_structured_output_gives_the_model(
    chat_model: ChatOpenAI, method: str
) -> None:
    structured = chat_model.with_structured_output(Person, method=method)  # type: ignore[arg-type]
    directive = f"tool=Person tool_args={ADA}" if method == "function_calling" else f"answer={ADA}"
    person = structured.invoke(f"[[fake {directive}]] who is Ada? Answer in JSON.")
    assert person == Person(name="Ada", age=36)


def test_langchain_on_the_responses_api_runs_a_tool_loop_and_structured_output(
    server: AppServer, fake: FakeUpstreamThread
) -> None:
    model = ChatOpenAI(
        model="test-model",
        base_url=f"{server.base_url}/v1",
        api_key="unused",  # type: ignore[arg-type]
        max_retries=0,
        use_responses_api=True,
    )
    with_tools = model.bind_tools([get_weather])
    messages: list[BaseMessage] = [
        HumanMessage('[[fake tool=get_weather tool_args={"city": "Oslo"}]] weather?')
    ]
    reply = with_tools.invoke(messages)
    assert isinstance(reply, AIMessage)
    assert [(c["name"], c["args"]) for c in reply.tool_calls] == [("get_weather", {"city": "Oslo"})]
    messages += [
        reply,
        ToolMessage(
            get_weather.invoke(reply.tool_calls[0]["args"]), tool_call_id=reply.tool_calls[0]["id"]
        ),
    ]
    final = with_tools.invoke(messages)
    assert final.text == "The tool said: sunny in Oslo"
    assert [m["role"] for m in fake.fake.requests[-1]["messages"]] == ["user", "assistant", "tool"]

    structured = model.with_structured_output(Person, method="json_schema")
    assert structured.invoke(f"[[fake answer={ADA}]] who?") == Person(name="Ada", age=36)


# --- LiteLLM ---------------------------------------------------------------------------


@pytest.fixture
def litellm(monkeypatch: pytest.MonkeyPatch) -> Any:
    # Its price list from the package, not fetched from the network at import.
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    return litellm


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def test_litellm_as_a_client_runs_a_tool_loop(
    litellm: Any, server: AppServer, fake: FakeUpstreamThread
) -> None:
    options = {
        "model": "openai/test-model",
        "api_base": f"{server.base_url}/v1",
        "api_key": "unused",
        "tools": [WEATHER],
        "max_retries": 0,
    }
    messages: list[Any] = [
        {"role": "user", "content": '[[fake tool=get_weather tool_args={"city": "Oslo"}]] w?'}
    ]
    first = litellm.completion(messages=messages, **options)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert (call.function.name, call.function.arguments) == ("get_weather", '{"city": "Oslo"}')
    assert fake.fake.requests[-1]["tools"] == [WEATHER]

    messages += [
        choice.message.model_dump(),
        {"role": "tool", "tool_call_id": call.id, "content": "snow"},
    ]
    chunks = list(litellm.completion(messages=messages, stream=True, **options))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "The tool said: snow"
