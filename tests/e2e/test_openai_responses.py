"""`/v1/responses` (issue #26), driven by the OpenAI Python SDK against the fake upstream.

A response is a run: its events are numbered, it resumes from any number,
can be read back, cancelled, continued (`previous_response_id`) and deleted.
What reaches the model is read back from the fake upstream (`fake.requests`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel

from tests.support.node import node_executable, run_script
from tests.support.readme import SHOWN_URL, readme_block
from tests.support.servers import AppServer, FakeUpstreamThread
from tests.support.wait import wait_until

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
CALL_WEATHER = '[[fake tool=get_weather tool_args={"city": "Paris"} arg_chunks=3]]'


@pytest.fixture
def sdk(server: AppServer) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)
    yield client
    client.close()


def stored(server: AppServer, session_id: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{server.base_url}/api/sessions/{session_id}/messages", timeout=10)
    response.raise_for_status()
    return list(response.json()["items"])


def test_a_streamed_response_has_the_sdks_events_numbered_and_resumes_from_any_number(
    sdk: openai.OpenAI, server: AppServer
) -> None:
    events = list(
        sdk.responses.create(
            model="test-model",
            input="[[fake tokens=12]] hello",
            instructions="Be brief.",
            stream=True,
        )
    )
    kinds = [event.type for event in events]
    assert kinds[:5] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert kinds.count("response.output_text.delta") == 12
    assert [event.sequence_number for event in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    done = events[-1].response  # type: ignore[union-attr]
    assert done.status == "completed" and done.output_text == text
    assert done.instructions == "Be brief."
    assert done.usage is not None and done.usage.output_tokens > 0
    message_id = done.id.removeprefix("resp_")
    rows = stored(server, _session_of(server, done.id))
    assert rows[-1]["content"] == text and rows[-1]["id"].replace("-", "") == message_id

    # Read back whole, and resumed after any event number: the same events, same numbers.
    again = sdk.responses.retrieve(done.id)
    assert (again.status, again.output_text) == ("completed", text)
    for after in (0, 5, len(events) - 2):
        resumed = list(sdk.responses.retrieve(done.id, stream=True, starting_after=after))
        assert [e.sequence_number for e in resumed] == list(range(after + 1, len(events)))
        assert [e.type for e in resumed] == kinds[after + 1 :]


def _session_of(server: AppServer, response_id: str) -> str:
    message_id = response_id.removeprefix("resp_")
    run = httpx.get(f"{server.base_url}/api/runs/{_dashed(message_id)}", timeout=10)
    run.raise_for_status()
    return str(run.json()["session_id"])


def _dashed(hex_id: str) -> str:
    return str(uuid.UUID(hex=hex_id))


def test_a_client_tool_loop_and_previous_response_id_continue_one_session(
    sdk: openai.OpenAI, server: AppServer, fake: FakeUpstreamThread
) -> None:
    first = sdk.responses.create(
        model="test-model",
        input=[{"role": "user", "content": f"{CALL_WEATHER} weather in Paris?"}],
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="auto",
    )
    sent = fake.fake.requests[-1]
    # Responses' function tools reach the model as Chat Completions tools, nothing added.
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {k: WEATHER[k] for k in ("name", "description", "parameters")},
        }
    ]
    assert sent["tool_choice"] == "auto"
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1
    call = calls[0]
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Paris"})
    assert first.status == "completed"

    second = sdk.responses.create(
        model="test-model",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
        tools=[WEATHER],  # type: ignore[list-item]
    )
    assert second.output_text == "The tool said: sunny"
    assert second.previous_response_id == first.id
    context = fake.fake.requests[-1]["messages"]
    assert [m["role"] for m in context] == ["user", "assistant", "tool"]
    assert context[1]["tool_calls"][0]["id"] == call.call_id
    session = _session_of(server, second.id)
    assert session == _session_of(server, first.id)
    assert [r["role"] for r in stored(server, session)] == [
        "user",
        "assistant",
        "tool",
        "assistant",
    ]

    items = sdk.responses.input_items.list(second.id)
    assert [(i.type, getattr(i, "call_id", None)) for i in items.data] == [
        ("function_call_output", call.call_id)
    ]

    # Stateless, the call referred to by its item id (as the AI SDK does with store on).
    third = sdk.responses.create(
        model="test-model",
        input=[
            {"role": "user", "content": "weather in Paris?"},
            {"type": "item_reference", "id": call.id},
            {"type": "function_call_output", "call_id": call.call_id, "output": "rain"},
        ],
        tools=[WEATHER],  # type: ignore[list-item]
    )
    assert third.output_text == "The tool said: rain"
    sent_calls = fake.fake.requests[-1]["messages"][1]["tool_calls"]
    assert [(c["id"], c["function"]["name"]) for c in sent_calls] == [(call.call_id, "get_weather")]
    with pytest.raises(openai.BadRequestError) as raised:
        sdk.responses.create(
            model="test-model",
            input=[
                {"type": "item_reference", "id": "msg_nothing_0"},
                {"role": "user", "content": "x"},
            ],
        )
    assert raised.value.param == "input.[0]"


class Person(BaseModel):
    name: str
    age: int


def test_structured_output_parses_into_the_clients_model(
    sdk: openai.OpenAI, fake: FakeUpstreamThread
) -> None:
    parsed = sdk.responses.parse(
        model="test-model",
        input='[[fake answer={"name": "Ada", "age": 36}]] who?',
        text_format=Person,
    )
    assert parsed.output_parsed == Person(name="Ada", age=36)
    response_format = fake.fake.requests[-1]["response_format"]
    assert response_format["type"] == "json_schema"
    assert response_format["json_schema"]["name"] == "Person"
    assert response_format["json_schema"]["schema"]["required"] == ["name", "age"]


def test_background_cancel_and_delete(sdk: openai.OpenAI, server: AppServer) -> None:
    queued = sdk.responses.create(
        model="test-model",
        input="[[fake tokens=400 interval_ms=20]] long",
        background=True,
        include=["reasoning.encrypted_content"],  # accepted, cannot apply: ignored
    )
    assert queued.status == "queued"
    wait_until(
        lambda: sdk.responses.retrieve(queued.id).output_text != "",
        what="the background response has text",
    )
    assert sdk.responses.retrieve(queued.id).status == "in_progress"
    with pytest.raises(openai.ConflictError):
        sdk.responses.delete(queued.id)
    cancelled = sdk.responses.cancel(queued.id)
    assert cancelled.status == "cancelled"
    session = _session_of(server, queued.id)
    assert stored(server, session)[-1]["status"] == "cancelled"
    sdk.responses.delete(queued.id)
    assert stored(server, session) == []
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(queued.id)


def test_store_false_keeps_nothing_once_the_answer_has_ended(
    sdk: openai.OpenAI, server: AppServer
) -> None:
    answer = sdk.responses.create(model="test-model", input="forget me", store=False)
    assert answer.status == "completed" and answer.output_text

    def no_sessions() -> bool:
        listed = httpx.get(f"{server.base_url}/api/sessions", timeout=10).json()
        return listed["items"] == []

    wait_until(no_sessions, what="the unstored conversation is deleted")
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(answer.id)
    with pytest.raises(openai.BadRequestError) as raised:
        sdk.responses.create(
            model="test-model", input="x", store=False, previous_response_id=answer.id
        )
    assert raised.value.param == "store"


def test_namespaced_tools_reach_the_model_and_hosted_ones_are_named_as_not_run(
    sdk: openai.OpenAI, fake: FakeUpstreamThread
) -> None:
    # As Codex sends them: some tools grouped in a namespace, and a hosted web search.
    raw = sdk.responses.with_raw_response.create(
        model="test-model",
        input=f"{CALL_WEATHER} weather?",
        tools=[  # type: ignore[list-item]
            {
                "type": "namespace",
                "name": "weather_v1",
                "description": "Weather.",
                "tools": [WEATHER],
            },
            {"type": "web_search", "external_web_access": False},
        ],
        tool_choice="auto",
    )
    assert raw.headers["x-chatstream-ignored-tools"] == "web_search"
    sent = fake.fake.requests[-1]
    assert [t["function"]["name"] for t in sent["tools"]] == ["get_weather"]
    (call,) = [item for item in raw.parse().output if item.type == "function_call"]
    assert (call.name, call.namespace) == ("get_weather", "weather_v1")
    # Only hosted tools: none is offered, and neither is tool_choice (the model would refuse it).
    sdk.responses.create(
        model="test-model",
        input="hi",
        tools=[{"type": "web_search"}],
        tool_choice="auto",  # type: ignore[list-item]
    )
    assert "tools" not in fake.fake.requests[-1] and "tool_choice" not in fake.fake.requests[-1]


def test_what_cannot_apply_is_a_clear_openai_error(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        sdk.responses.create(model="test-model", input="x", previous_response_id="resp_nope")
    assert raised.value.code == "previous_response_not_found"
    with pytest.raises(openai.NotFoundError) as raised:
        sdk.responses.create(model="gpt-nothing", input="x")
    assert raised.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as raised:
        sdk.responses.compact(model="test-model", input="x")
    assert "not supported" in raised.value.message


def test_the_ai_sdks_default_openai_model_streams_and_runs_a_tool_loop(
    server: AppServer, fake: FakeUpstreamThread
) -> None:
    node = node_executable()
    result = run_script(
        node,
        "ai_openai_responses.mjs",
        {
            "baseURL": f"{server.base_url}/v1",
            "model": "test-model",
            "prompt": f"{CALL_WEATHER} weather in Paris?",
        },
    )
    assert result["error"] is None
    assert result["toolCalls"] == [{"name": "get_weather", "input": {"city": "Paris"}}]
    assert result["toolResults"] == ["sunny in Paris"]
    assert result["text"] == "The tool said: sunny in Paris"
    assert result["steps"] == 2
    # The second step sent the SDK's own tool result back, answered in one session.
    context = fake.fake.requests[-1]["messages"]
    assert [m["role"] for m in context][-2:] == ["assistant", "tool"]
    assert context[-1]["content"] == "sunny in Paris"


def test_the_readme_example_runs_as_shown(make_server: Callable[..., AppServer]) -> None:
    # As against `make run`: the offline demo upstream, its model `demo`.
    server = make_server(models=["demo"], openai_api_key=None, openai_base_url=None)
    script = readme_block("python", "client.responses.create(")
    assert f'base_url="{SHOWN_URL}/v1"' in script
    shown = subprocess.run(
        [sys.executable, "-c", script.replace(SHOWN_URL, server.base_url)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.splitlines()
    (session,) = httpx.get(f"{server.base_url}/api/sessions", timeout=10).json()["items"]
    rows = stored(server, session["id"])
    assert [r["role"] for r in rows] == [
        "user",
        "assistant",
        "user",
        "assistant",
        "tool",
        "assistant",
    ]
    assert shown == [rows[1]["content"], "4", "get_current_time", "The tool said: 12:00"]


def test_a_response_carries_the_quota_headers_and_is_refused_over_quota(
    make_server: Callable[..., AppServer],
) -> None:
    server = make_server(quota_tokens=20)
    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0) as client:
        raw = client.responses.with_raw_response.create(
            model="test-model", input="[[fake tokens=40]] a"
        )
        assert raw.headers["x-quota-limit"] == "20"
        assert raw.parse().usage.total_tokens > 20  # type: ignore[union-attr]

        def refused() -> bool:
            try:
                client.responses.create(model="test-model", input="[[fake tokens=2]] b")
            except openai.RateLimitError as exc:
                return exc.code == "quota_exceeded"
            return False

        wait_until(refused, what="the used-up quota refuses the next response")


def test_every_streamed_event_and_response_is_what_openapi_describes(
    server: AppServer,
) -> None:
    document = httpx.get(f"{server.base_url}/openapi.json", timeout=10).json()
    components = document["components"]["schemas"]

    def check(value: Any, component: str) -> None:
        schema = {**components[component], "components": {"schemas": components}}
        validator = jsonschema.Draft202012Validator(schema)
        problems = [e.message for e in validator.iter_errors(value)]
        assert problems == [], (component, value, problems)

    operation = document["paths"]["/v1/responses"]["post"]["responses"]["200"]["content"]
    assert "text/event-stream" in operation and "application/json" in operation
    body = {
        "model": "test-model",
        "input": f"{CALL_WEATHER} [[fake preamble=3]] weather?",
        "tools": [WEATHER],
        "stream": True,
    }
    with httpx.stream("POST", f"{server.base_url}/v1/responses", json=body, timeout=20) as answer:
        lines = [line for line in answer.iter_lines() if line]
    events = [json.loads(line.removeprefix("data: ")) for line in lines if line.startswith("data:")]
    kinds = [line.removeprefix("event: ") for line in lines if line.startswith("event:")]
    assert kinds == [event["type"] for event in events]
    assert "response.function_call_arguments.done" in kinds
    for event in events:
        check(event, "ResponseStreamEvent")
    whole = httpx.get(f"{server.base_url}/v1/responses/{events[-1]['response']['id']}", timeout=10)
    check(whole.json(), "ResponseObject")


def test_logprobs_asked_with_include_stream_with_the_text_and_match_openapi(
    sdk: openai.OpenAI, server: AppServer, fake: FakeUpstreamThread
) -> None:
    events = list(
        sdk.responses.create(
            model="test-model",
            input="[[fake tokens=5]] odds?",
            include=["message.output_text.logprobs"],
            top_logprobs=2,
            stream=True,
        )
    )
    sent = fake.fake.requests[-1]
    assert (sent["logprobs"], sent["top_logprobs"]) == (True, 2)
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    tokens = [token for delta in deltas for token in delta.logprobs]
    assert len(tokens) == 5
    assert "".join(t.token for t in tokens) == "".join(d.delta for d in deltas) != ""
    assert all(len(t.top_logprobs) == 2 for t in tokens)
    # Numbered like every event, with no gap where the slower frame was built.
    assert [e.sequence_number for e in events] == list(range(len(events)))
    (done,) = [e for e in events if e.type == "response.output_text.done"]
    assert [t.token for t in done.logprobs] == [t.token for t in tokens]
    final = events[-1].response.output[0].content[0]
    assert [t.token for t in final.logprobs or []] == [t.token for t in tokens]

    # Without the include: the model is not asked, the deltas carry none.
    plain = list(sdk.responses.create(model="test-model", input="[[fake tokens=2]]", stream=True))
    assert "logprobs" not in fake.fake.requests[-1]
    assert all(e.logprobs == [] for e in plain if e.type == "response.output_text.delta")

    document = httpx.get(f"{server.base_url}/openapi.json", timeout=10).json()
    components = document["components"]["schemas"]
    validator = jsonschema.Draft202012Validator(
        {**components["ResponseStreamEvent"], "components": {"schemas": components}}
    )
    body = {
        "model": "test-model",
        "input": "[[fake tokens=3]] odds?",
        "include": ["message.output_text.logprobs"],
        "stream": True,
    }
    with httpx.stream("POST", f"{server.base_url}/v1/responses", json=body, timeout=20) as answer:
        lines = [line.removeprefix("data: ") for line in answer.iter_lines() if line]
    wire = [json.loads(line) for line in lines if line.startswith("{")]
    assert any(event.get("logprobs") for event in wire)
    for event in wire:
        problems = [e.message for e in validator.iter_errors(event)]
        assert problems == [], (event["type"], problems)


def test_a_response_reads_back_with_what_its_request_asked(
    sdk: openai.OpenAI, make_server: Callable[..., AppServer]
) -> None:
    asked: dict[str, Any] = {
        "instructions": "Be brief.",
        "metadata": {"ticket": "T-7", "team": "support"},
        "tools": [WEATHER],
        "tool_choice": "auto",
        "temperature": 0.3,
        "top_p": 0.9,
        "max_output_tokens": 50,
        "text": {"format": {"type": "text"}},
    }
    created = sdk.responses.create(model="test-model", input="[[fake tokens=3]] hi", **asked)
    live = sdk.responses.create(
        model="test-model", input="[[fake tokens=40 interval_ms=50]] slow", background=True, **asked
    )
    for response_id in (created.id, live.id):
        again = sdk.responses.retrieve(response_id)
        assert again.instructions == "Be brief."
        assert again.metadata == {"ticket": "T-7", "team": "support"}
        assert [tool.name for tool in again.tools] == ["get_weather"]  # type: ignore[union-attr]
        assert (again.temperature, again.top_p, again.max_output_tokens) == (0.3, 0.9, 50)
    assert sdk.responses.retrieve(live.id).background is True
    assert sdk.responses.retrieve(created.id).background is False
    # Streamed again, the response objects in its events say the same.
    events = list(sdk.responses.retrieve(created.id, stream=True))
    assert events[0].response.metadata == asked["metadata"]  # type: ignore[union-attr]
    assert events[-1].response.instructions == "Be brief."  # type: ignore[union-attr]
    sdk.responses.cancel(live.id)
