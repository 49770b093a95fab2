"""`/v1` as a faithful pass-through (issue #26), driven by the OpenAI Python SDK.

What reaches the model is read back from the fake upstream (`fake.requests`):
a stateless call's `messages` as sent, the client's own options as sent, and
nothing chatstream would add of its own (built-in tools, a default
`max_tokens`). Client tools end the run with `finish_reason: "tool_calls"`;
they are never run server-side.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.support.servers import AppServer, FakeUpstreamThread

SESSION = "x-chatstream-session-id"
MESSAGE = "x-chatstream-message-id"


@pytest.fixture
def client(server: AppServer) -> Iterator[openai.OpenAI]:
    sdk = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)
    yield sdk
    sdk.close()


# --- (5) models and unknown paths --------------------------------------------------


def test_a_model_is_retrieved_by_id_and_an_unknown_one_is_not_found(
    client: openai.OpenAI,
) -> None:
    model = client.models.retrieve("test-model")
    assert (model.id, model.object, model.owned_by) == ("test-model", "model", "chatstream")
    with pytest.raises(openai.NotFoundError) as raised:
        client.models.retrieve("gpt-nothing")
    assert raised.value.code == "model_not_found"


@pytest.mark.parametrize(
    ("method", "path", "status", "allow"),
    [
        ("POST", "/v1/embeddings", 404, None),
        ("PUT", "/v1/responses", 405, "POST"),
        ("GET", "/v1/embeddings", 404, None),
        ("DELETE", "/v1/models/test-model", 405, "GET"),
        ("GET", "/v1/chat/completions", 405, "POST"),
    ],
)
def test_an_unknown_path_or_method_answers_openais_error_shape(
    server: AppServer, method: str, path: str, status: int, allow: str | None
) -> None:
    response = httpx.request(method, f"{server.base_url}{path}", json={}, timeout=10)
    assert response.status_code == status
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "code", "param"}
    assert body["error"]["type"] == "invalid_request_error"
    assert path in body["error"]["message"]
    assert response.headers.get("allow") == allow


# --- helpers ----------------------------------------------------------------------


def ask(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def stored(server: AppServer, session_id: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{server.base_url}/api/sessions/{session_id}/messages", timeout=10)
    return list(response.json()["items"])


def sessions(server: AppServer) -> list[dict[str, Any]]:
    return list(httpx.get(f"{server.base_url}/api/sessions", timeout=10).json()["items"])


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
CALL_WEATHER = '[[fake tool=get_weather tool_args={"city": "Paris"} arg_chunks=3]]'


# --- (1) the messages are the whole context ---------------------------------------


def test_a_stateless_call_reaches_the_model_as_sent_with_nothing_added(
    client: openai.OpenAI, server: AppServer, fake: FakeUpstreamThread
) -> None:
    # 16 messages, over CHATSTREAM_HISTORY_MESSAGES (10): none is dropped.
    given: list[dict[str, Any]] = [{"role": "system", "content": "Be brief."}]
    for turn in range(7):
        given.append({"role": "user", "content": f"question {turn}"})
        given.append({"role": "assistant", "content": f"answer {turn}"})
    given.append({"role": "user", "content": "[[fake tokens=2]] last"})
    assert len(given) == 16

    client.chat.completions.create(model="test-model", messages=given)  # type: ignore[arg-type]

    sent = fake.fake.requests[-1]
    assert sent["messages"] == given
    # Nothing of chatstream's own: no default max_tokens, no built-in tools.
    assert "max_tokens" not in sent and "max_completion_tokens" not in sent
    assert "tools" not in sent and "tool_choice" not in sent


def test_messages_over_the_character_budget_are_a_400_naming_the_limit(
    make_server: Callable[..., AppServer],
) -> None:
    server = make_server(history_chars=100)
    sdk = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)
    with sdk, pytest.raises(openai.BadRequestError) as raised:
        sdk.chat.completions.create(
            model="test-model",
            messages=[
                {"role": "system", "content": "s" * 500},  # the system prompt is not counted
                {"role": "user", "content": "x" * 60},
                {"role": "assistant", "content": "y" * 30},
                {"role": "user", "content": "z" * 20},
            ],
        )
    assert "CHATSTREAM_HISTORY_CHARS" in raised.value.message
    assert "110" in raised.value.message and "100" in raised.value.message
    assert raised.value.param == "messages"
    assert sessions(server) == []


# --- (3) the client's options reach the model as sent ------------------------------


def test_the_clients_options_reach_the_model_as_sent(
    client: openai.OpenAI, fake: FakeUpstreamThread
) -> None:
    schema = {
        "name": "person",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {"name": {"type": "string"}},
            "required": ["name"],
            "additionalProperties": False,
        },
    }
    options: dict[str, Any] = {
        "response_format": {"type": "json_schema", "json_schema": schema},
        "stop": ["END", "\n\n"],
        "seed": 7,
        "top_p": 0.5,
        "presence_penalty": 0.25,
        "frequency_penalty": -0.5,
        "logit_bias": {"50256": -100},
        "user": "user-42",
    }
    completion = client.chat.completions.create(
        model="test-model",
        messages=ask('[[fake answer={"name": "Ada"}]] who?'),  # type: ignore[arg-type]
        max_completion_tokens=10**6,
        **options,
    )

    sent = fake.fake.requests[-1]
    assert {key: sent.get(key) for key in options} == options
    assert sent["max_completion_tokens"] == 4096  # capped at CHATSTREAM_MAX_TOKENS
    assert "max_tokens" not in sent
    assert completion.choices[0].message.content == '{"name": "Ada"}'

    client.chat.completions.create(
        model="test-model", messages=ask("[[fake tokens=1]] x"), max_tokens=12
    )
    assert fake.fake.requests[-1]["max_tokens"] == 12


def test_logprobs_pass_through_streamed_and_whole_when_the_model_gives_them(
    client: openai.OpenAI, server: AppServer, fake: FakeUpstreamThread
) -> None:
    stream = client.chat.completions.create(
        model="test-model",
        messages=ask("[[fake tokens=6]] odds?"),
        logprobs=True,
        top_logprobs=2,
        stream=True,
    )
    chunks = list(stream)
    assert fake.fake.requests[-1]["logprobs"] is True
    assert fake.fake.requests[-1]["top_logprobs"] == 2
    streamed_text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    tokens = [
        token
        for chunk in chunks
        if chunk.choices and chunk.choices[0].logprobs and chunk.choices[0].logprobs.content
        for token in chunk.choices[0].logprobs.content
    ]
    # One entry per token of the text, each with the two alternatives asked for.
    assert len(tokens) == 6
    assert "".join(token.token for token in tokens) == streamed_text != ""
    assert all(len(token.top_logprobs) == 2 and token.logprob < 0 for token in tokens)
    assert all(token.bytes == list(token.token.encode()) for token in tokens)
    saved = stored(server, stream.response.headers[SESSION])[-1]
    assert saved["content"] == streamed_text  # logprobs are passed on, never mixed into text

    whole = client.chat.completions.create(
        model="test-model", messages=ask("[[fake tokens=4]] odds?"), logprobs=True
    )
    choice = whole.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    assert "".join(t.token for t in choice.logprobs.content) == choice.message.content
    assert all(t.top_logprobs == [] for t in choice.logprobs.content)

    # Not asked: none asked of the model, none in the answer.
    plain = client.chat.completions.create(model="test-model", messages=ask("[[fake tokens=2]]"))
    assert "logprobs" not in fake.fake.requests[-1]
    assert plain.choices[0].logprobs is None


# --- (2) client tools, (6) what is stored replays -----------------------------------


def test_a_client_tool_loop_streams_the_calls_and_never_runs_them_here(
    client: openai.OpenAI, server: AppServer, fake: FakeUpstreamThread
) -> None:
    messages: list[Any] = ask(f"{CALL_WEATHER} weather in Paris?")
    stream = client.chat.completions.create(
        model="test-model",
        messages=messages,
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="auto",
        parallel_tool_calls=False,
        stream=True,
    )
    chunks = list(stream)

    sent = fake.fake.requests[-1]
    assert sent["tools"] == [WEATHER]  # the client's, and no built-in ones
    assert (sent["tool_choice"], sent["parallel_tool_calls"]) == ("auto", False)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "tool_calls"
    fragments = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or ()]
    assert len(fragments) == 1
    call = fragments[0]
    assert (call.index, call.type) == (0, "function")
    assert call.id and call.function and call.function.name == "get_weather"
    assert call.function.arguments == '{"city": "Paris"}'
    answer_rows = stored(server, sessions(server)[0]["id"])
    assert answer_rows[-1]["finish_reason"] == "tool_calls"
    assert answer_rows[-1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert not any(row["role"] == "tool" for row in answer_rows)  # nothing ran here

    # The client runs its tool and sends the result back: the model answers from it.
    messages += [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": call.function.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"},
    ]
    raw = client.chat.completions.with_raw_response.create(
        model="test-model",
        messages=messages,
        tools=[WEATHER],  # type: ignore[list-item]
    )
    final = raw.parse().choices[0]
    assert final.finish_reason == "stop" and final.message.tool_calls is None
    assert final.message.content == "The tool said: sunny, 21 C"
    assert fake.fake.requests[-1]["messages"] == messages
    rows = stored(server, raw.headers[SESSION])
    assert [row["role"] for row in rows] == ["user", "assistant", "tool", "assistant"]
    assert rows[1]["tool_calls"] == messages[1]["tool_calls"]
    assert (rows[2]["tool_call_id"], rows[2]["content"]) == (call.id, "sunny, 21 C")
    assert [row["parent_id"] for row in rows] == [None, *(row["id"] for row in rows[:-1])]


def test_a_non_streamed_answer_carries_message_tool_calls(
    client: openai.OpenAI, server: AppServer
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="test-model",
        messages=ask("[[fake tools=get_weather,get_time preamble=2]] both"),  # type: ignore[arg-type]
        tools=[WEATHER, {"type": "function", "function": {"name": "get_time"}}],  # type: ignore[list-item]
    )
    choice = raw.parse().choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert [(c.type, c.function.name) for c in calls] == [  # type: ignore[union-attr]
        ("function", "get_weather"),
        ("function", "get_time"),
    ]
    answer = stored(server, raw.headers[SESSION])[-1]
    assert answer["id"] == raw.headers[MESSAGE]
    assert answer["content"] == choice.message.content  # the preamble's text
    assert [c["id"] for c in answer["tool_calls"]] == [c.id for c in calls]


def test_the_session_header_continues_a_client_tool_loop_from_what_was_stored(
    client: openai.OpenAI, server: AppServer, fake: FakeUpstreamThread
) -> None:
    first = client.chat.completions.with_raw_response.create(
        model="test-model",
        messages=ask(f"{CALL_WEATHER} weather?"),  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
    )
    session_id = first.headers[SESSION]
    call = (first.parse().choices[0].message.tool_calls or [])[0]

    # Only the new message (the result) is taken; the session has the rest.
    second = client.chat.completions.create(
        model="test-model",
        messages=[
            {"role": "user", "content": "not sent: the session has it"},
            {"role": "tool", "tool_call_id": call.id, "content": "rain"},
        ],
        tools=[WEATHER],  # type: ignore[list-item]
        extra_headers={"X-Chatstream-Session-Id": session_id},
    )
    assert second.choices[0].message.content == "The tool said: rain"
    assert fake.fake.requests[-1]["messages"] == [
        {"role": "user", "content": f"{CALL_WEATHER} weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "content": "rain", "tool_call_id": call.id},
    ]
    # The stored conversation replays as it happened, a third turn included.
    client.chat.completions.create(
        model="test-model",
        messages=ask("[[fake tokens=1]] thanks"),  # type: ignore[arg-type]
        extra_headers={"X-Chatstream-Session-Id": session_id},
    )
    replayed = fake.fake.requests[-1]["messages"]
    assert replayed[:3] == fake.fake.requests[-2]["messages"]
    assert replayed[3] == {"role": "assistant", "content": "The tool said: rain"}
    rows = stored(server, session_id)
    assert [r["role"] for r in rows] == [
        "user", "assistant", "tool", "assistant", "user", "assistant",
    ]  # fmt: skip
    # One branch: the client's tool result follows the call, the next question the answer.
    assert [r["parent_id"] for r in rows] == [None, *(r["id"] for r in rows[:-1])]


def test_built_in_tools_are_offered_only_when_the_operator_turns_them_on(
    make_server: Callable[..., AppServer],
    fake: FakeUpstreamThread,
    client: openai.OpenAI,
    tmp_path: Path,
) -> None:
    client.chat.completions.create(model="test-model", messages=ask("[[fake tokens=1]] a"))
    assert "tools" not in fake.fake.requests[-1]

    # Each more server in the test has its own spool (one process per spool directory).
    server = make_server(openai_server_tools=True, spool_dir=tmp_path / "tools-on")
    sdk = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)
    with sdk:
        answer = sdk.chat.completions.create(
            model="test-model", messages=ask("[[fake tool=get_current_time]] time?")
        )
        names = [t["function"]["name"] for t in fake.fake.requests[-1]["tools"]]
        assert names == ["get_current_time"]
        # Built-in tools run here; the client sees the answer, not the calls.
        assert answer.choices[0].finish_reason == "stop"
        assert answer.choices[0].message.tool_calls is None
        # With tools of its own, the client gets only its own.
        sdk.chat.completions.create(
            model="test-model",
            messages=ask(f"{CALL_WEATHER} w"),  # type: ignore[arg-type]
            tools=[WEATHER],  # type: ignore[list-item]
        )
        assert fake.fake.requests[-1]["tools"] == [WEATHER]


def test_a_client_that_drops_its_tool_calls_can_go_on_in_the_session(
    client: openai.OpenAI, fake: FakeUpstreamThread
) -> None:
    first = client.chat.completions.with_raw_response.create(
        model="test-model",
        messages=ask(f"{CALL_WEATHER[:-2]} preamble=2]] weather?"),
        tools=[WEATHER],  # type: ignore[list-item]
    )
    assert first.parse().choices[0].finish_reason == "tool_calls"
    assert first.parse().choices[0].message.content == "stream every "

    # A new question instead of the results: the unanswered calls are not sent again
    # (a model server refuses calls without their results), the answer's text is.
    answer = client.chat.completions.create(
        model="test-model",
        messages=ask("[[fake tokens=1]] never mind"),
        extra_headers={"X-Chatstream-Session-Id": first.headers[SESSION]},
    )
    assert answer.choices[0].finish_reason == "stop"
    assert fake.fake.requests[-1]["messages"] == [
        {"role": "user", "content": f"{CALL_WEATHER[:-2]} preamble=2]] weather?"},
        {"role": "assistant", "content": "stream every "},
        {"role": "user", "content": "[[fake tokens=1]] never mind"},
    ]
