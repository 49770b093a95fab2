"""`/v1` driven by the real OpenAI SDKs: `openai` for Python (sync and async) and for Node.

What the SDK hands its caller is checked against what chatstream
persisted, and every object it parsed against the SDK's own models: a key
the SDK does not document lands in its `model_extra`, which must stay empty.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import schemathesis
from pydantic import BaseModel

from tests.support.node import node_executable, run_script
from tests.support.readme import SHOWN_URL, readme_block
from tests.support.sentinels import SENTINEL_JWT_SECRET, TOKEN_ALICE, make_token
from tests.support.servers import AppServer, FakeUpstreamThread
from tests.support.sse import read_stream

SESSION = "x-chatstream-session-id"
MESSAGE = "x-chatstream-message-id"


SDK = Callable[..., openai.OpenAI]


@pytest.fixture
def sdk() -> Iterator[SDK]:
    """Sync clients for a server (closed after the test: they pool connections)."""
    clients: list[openai.OpenAI] = []

    def make(server: AppServer, api_key: str = "unused") -> openai.OpenAI:
        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=api_key, max_retries=0)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def async_sdk(server: AppServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def undocumented(model: BaseModel, where: str = "") -> Iterator[str]:
    """Keys the SDK's models do not declare, anywhere in a parsed object."""
    for key in model.model_extra or {}:
        yield f"{where}{key}"
    for name in type(model).model_fields:
        value = getattr(model, name)
        items = value if isinstance(value, list) else [value]
        for index, item in enumerate(items):
            if isinstance(item, BaseModel):
                yield from undocumented(item, f"{where}{name}[{index}].")


def saved(server: AppServer, message_id: str) -> dict[str, Any]:
    run = httpx.get(f"{server.base_url}/api/runs/{message_id}", timeout=10).json()
    rows = httpx.get(f"{server.base_url}/api/sessions/{run['session_id']}/messages", timeout=10)
    answer = next(row for row in rows.json()["items"] if row["id"] == message_id)
    return dict(answer)


def stored(server: AppServer, session_id: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{server.base_url}/api/sessions/{session_id}/messages", timeout=10)
    return list(response.json()["items"])


# --- Python SDK ------------------------------------------------------------------


def test_streaming_with_usage_gives_exactly_the_persisted_answer(
    sdk: SDK, server: AppServer
) -> None:
    with sdk(server).chat.completions.with_streaming_response.create(
        model="test-model",
        messages=ask("[[fake tokens=15]] hello"),
        stream=True,
        stream_options={"include_usage": True},
    ) as response:
        headers = response.headers
        chunks = list(response.parse())

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    answer = saved(server, headers[MESSAGE])
    assert answer["status"] == "complete"
    assert text == answer["content"] and len(text) > 15
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks[:-1]][-1] == "stop"
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None
    assert usage_chunk.usage.model_dump(exclude_none=True) == answer["usage"]
    assert {c.id for c in chunks} == {f"chatcmpl-{headers[MESSAGE]}"}
    assert all(c.object == "chat.completion.chunk" and c.model == "test-model" for c in chunks)
    assert [key for c in chunks for key in undocumented(c)] == []


def test_non_streaming_gives_one_completion(sdk: SDK, server: AppServer) -> None:
    raw = sdk(server).chat.completions.with_raw_response.create(
        model="other-model", messages=ask("[[fake tokens=7]] hi")
    )
    completion = raw.parse()

    answer = saved(server, raw.headers[MESSAGE])
    assert completion.object == "chat.completion"
    assert completion.model == answer["model"] == "other-model"
    assert completion.choices[0].message.content == answer["content"]
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.model_dump(exclude_none=True) == answer["usage"]
    assert list(undocumented(completion)) == []


def test_async_client_streams_and_answers(server: AppServer) -> None:
    async def both() -> tuple[str, str, str, str]:
        client = async_sdk(server)
        async with client.chat.completions.with_streaming_response.create(
            model="test-model", messages=ask("[[fake tokens=9]] one"), stream=True
        ) as response:
            streamed = "".join(
                [c.choices[0].delta.content or "" async for c in await response.parse()]
            )
            streamed_id = response.headers[MESSAGE]
        raw = await client.chat.completions.with_raw_response.create(
            model="test-model", messages=ask("[[fake tokens=4]] two")
        )
        whole = raw.parse().choices[0].message.content or ""
        await client.close()
        return streamed, streamed_id, whole, raw.headers[MESSAGE]

    streamed, streamed_id, whole, whole_id = asyncio.run(both())
    assert streamed == saved(server, streamed_id)["content"] != ""
    assert whole == saved(server, whole_id)["content"] != ""


def test_without_a_session_header_the_messages_are_the_context_and_are_kept(
    sdk: SDK, server: AppServer, fake: FakeUpstreamThread
) -> None:
    given = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is chatstream?"},
        {"role": "assistant", "content": "A chat backend."},
        {"role": "user", "content": [{"type": "text", "text": "[[fake tokens=3]] And why?"}]},
    ]
    raw = sdk(server).chat.completions.with_raw_response.create(model="test-model", messages=given)
    answer = raw.parse().choices[0].message.content

    assert fake.fake.requests[-1]["messages"] == [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is chatstream?"},
        {"role": "assistant", "content": "A chat backend."},
        {"role": "user", "content": [{"type": "text", "text": "[[fake tokens=3]] And why?"}]},
    ]
    session_id = raw.headers[SESSION]
    session = httpx.get(f"{server.base_url}/api/sessions/{session_id}", timeout=10).json()
    assert session["system_prompt"] == "Answer briefly."
    rows = stored(server, session_id)
    assert [(r["role"], r["content"]) for r in rows] == [
        ("user", "What is chatstream?"),
        ("assistant", "A chat backend."),
        ("user", "[[fake tokens=3]] And why?"),
        ("assistant", answer),
    ]


def test_the_session_header_continues_with_stored_history_and_only_the_last_message(
    sdk: SDK, server: AppServer, fake: FakeUpstreamThread
) -> None:
    client = sdk(server)
    first = client.chat.completions.with_raw_response.create(
        model="test-model", messages=ask("[[fake tokens=3]] first")
    )
    session_id = first.headers[SESSION]
    first_answer = first.parse().choices[0].message.content

    with client.chat.completions.with_streaming_response.create(
        model="test-model",
        messages=[
            {"role": "user", "content": "not sent: the server has the history"},
            {"role": "user", "content": "[[fake tokens=2]] second"},
        ],
        stream=True,
        extra_headers={"X-Chatstream-Session-Id": session_id},
    ) as response:
        assert response.headers[SESSION] == session_id
        list(response.parse())

    assert fake.fake.requests[-1]["messages"] == [
        {"role": "user", "content": "[[fake tokens=3]] first"},
        {"role": "assistant", "content": first_answer},
        {"role": "user", "content": "[[fake tokens=2]] second"},
    ]
    assert len(stored(server, session_id)) == 4
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="test-model",
            messages=ask("hi"),
            extra_headers={"X-Chatstream-Session-Id": "00000000-0000-4000-8000-000000000000"},
        )


@pytest.mark.parametrize(
    ("extra", "param", "code"),
    [
        ({"tools": [{"type": "function"}]}, "tools.[0].function", "invalid_value"),
        ({"n": 2}, "n", "invalid_value"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio", "unsupported_parameter"),
        ({"logprobs": False, "top_logprobs": 2}, "top_logprobs", "invalid_value"),
        (
            {"stream_options": {"include_usage": True, "x": 1}},
            "stream_options.x",
            "unsupported_parameter",
        ),
        ({"messages": [{"role": "tool", "content": "r"}]}, "messages.[0]", None),
        (
            {"messages": [{"role": "assistant", "content": "a"}]},
            "messages.[0].role",
            "invalid_request",
        ),
        ({"messages": ask("   ")}, "messages", "invalid_request"),
    ],
    ids=[
        "tools",
        "n",
        "audio",
        "top_logprobs alone",
        "stream_options",
        "tool message",
        "no user message",
        "blank",
    ],
)
def test_unsupported_or_invalid_fields_are_a_bad_request_naming_the_field(
    sdk: SDK, server: AppServer, extra: dict[str, Any], param: str, code: str | None
) -> None:
    request: dict[str, Any] = {"model": "test-model", "messages": ask("hi"), **extra}
    with pytest.raises(openai.BadRequestError) as raised:
        sdk(server).chat.completions.create(**request)
    error = raised.value
    assert error.param is not None and error.param.startswith(param)
    if code is not None:
        assert error.code == code
    assert isinstance(error.body, dict) and set(error.body) == {"message", "type", "code", "param"}
    assert error.body["type"] == "invalid_request_error"
    assert httpx.get(f"{server.base_url}/api/sessions", timeout=10).json()["items"] == []


def test_an_unknown_model_is_not_found(sdk: SDK, server: AppServer) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        sdk(server).chat.completions.create(model="gpt-nope", messages=ask("hi"))
    assert raised.value.code == "model_not_found"
    models = sdk(server).models.list()
    assert [m.id for m in models.data] == ["test-model", "other-model"]


def test_rate_limits_raise_rate_limit_error_with_retry_after(
    sdk: SDK,
    make_server: Callable[..., AppServer],
) -> None:
    server = make_server(rate_limit="1/minute")
    client = sdk(server)
    client.chat.completions.create(model="test-model", messages=ask("[[fake tokens=1]] one"))
    with pytest.raises(openai.RateLimitError) as raised:
        client.chat.completions.create(model="test-model", messages=ask("two"))
    assert raised.value.code == "rate_limited"
    assert int(raised.value.response.headers["retry-after"]) >= 1


def test_a_body_over_the_limit_is_413_in_openais_shape(
    sdk: SDK, make_server: Callable[..., AppServer]
) -> None:
    server = make_server(max_body_bytes=1024)
    with pytest.raises(openai.APIStatusError) as raised:
        sdk(server).chat.completions.create(model="test-model", messages=ask("x" * 2000))
    assert raised.value.status_code == 413 and raised.value.code == "payload_too_large"

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted as it streams in
        yield b'{"model": "test-model", "messages": [{"role": "user", "content": "'
        yield b"x" * 2000
        yield b'"}]}'

    response = httpx.post(f"{server.base_url}/v1/chat/completions", content=chunked(), timeout=10)
    assert response.status_code == 413
    assert response.json() == {
        "error": {
            "message": "The request body is over the limit of 1024 bytes "
            "(CHATSTREAM_MAX_BODY_BYTES).",
            "type": "invalid_request_error",
            "code": "payload_too_large",
            "param": None,
        }
    }
    # Elsewhere the limit still answers in chatstream's own shape.
    other = httpx.post(f"{server.base_url}/api/chat", content=b"x" * 2000, timeout=10)
    assert other.status_code == 413 and other.json()["error"]["code"] == "payload_too_large"


def test_with_auth_on_the_jwt_is_the_api_key(
    sdk: SDK, make_server: Callable[..., AppServer]
) -> None:
    server = make_server(auth="jwt", jwt_secret=SENTINEL_JWT_SECRET)
    with pytest.raises(openai.AuthenticationError) as raised:
        sdk(server, api_key="not-a-jwt").chat.completions.create(
            model="test-model", messages=ask("hi")
        )
    assert raised.value.body == {
        "message": "The bearer token is not valid.",
        "type": "authentication_error",
        "code": "unauthorized",
        "param": None,
    }
    with pytest.raises(openai.AuthenticationError):
        sdk(server, api_key="not-a-jwt").models.list()
    # An expired token says so, in the code and in the challenge, so clients refresh it.
    expired = make_token("alice", exp=int(time.time()) - 60)
    with pytest.raises(openai.AuthenticationError) as stale:
        sdk(server, api_key=expired).chat.completions.create(model="test-model", messages=ask("hi"))
    assert stale.value.code == "token_expired"
    assert "expired" in stale.value.response.headers["www-authenticate"]
    answer = sdk(server, api_key=TOKEN_ALICE).chat.completions.create(
        model="test-model", messages=ask("[[fake tokens=2]] hi")
    )
    assert answer.choices[0].message.content


def test_a_failed_run_is_an_api_error_streaming_or_not(sdk: SDK, server: AppServer) -> None:
    client = sdk(server)
    with pytest.raises(openai.InternalServerError) as raised:
        client.chat.completions.create(model="test-model", messages=ask("[[fake status=500]] a"))
    assert raised.value.status_code == 502 and raised.value.code == "upstream_error"

    stream = client.chat.completions.create(
        model="test-model", messages=ask("[[fake tokens=3 error_after=2]] b"), stream=True
    )
    with pytest.raises(openai.APIError) as in_stream:
        list(stream)
    assert (
        isinstance(in_stream.value.body, dict) and in_stream.value.body["code"] == "upstream_error"
    )


def test_a_client_that_disconnects_leaves_a_run_to_follow(
    sdk: SDK, server: AppServer, fake: FakeUpstreamThread
) -> None:
    with sdk(server).chat.completions.with_streaming_response.create(
        model="test-model", messages=ask("[[fake tokens=12 stall_after=3]] long"), stream=True
    ) as response:
        message_id = response.headers[MESSAGE]
        chunks = response.parse()
        seen = "".join(next(chunks).choices[0].delta.content or "" for _ in range(3))
    # The response is closed mid-stream: the run goes on server-side.
    state = httpx.get(f"{server.base_url}/api/runs/{message_id}", timeout=10).json()
    assert state["status"] == "running"

    with httpx.stream(
        "GET", f"{server.base_url}/api/runs/{message_id}/events", timeout=20
    ) as events:
        fake.fake.release(wait_for=1)
        followed = read_stream(events)
    assert followed.done["status"] == "complete"
    assert followed.text == saved(server, message_id)["content"]
    assert followed.text.startswith(seen)


def test_the_readme_example_runs_as_shown(make_server: Callable[..., AppServer]) -> None:
    # As against `make run`: the offline demo upstream, its model `demo`.
    server = make_server(models=["demo"], openai_api_key=None, openai_base_url=None)
    script = readme_block("python", "from openai import OpenAI")
    assert f'base_url="{SHOWN_URL}/v1"' in script

    shown = subprocess.run(
        [sys.executable, "-c", script.replace(SHOWN_URL, server.base_url)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout

    (session,) = httpx.get(f"{server.base_url}/api/sessions", timeout=10).json()["items"]
    rows = stored(server, session["id"])
    assert [(r["role"], r["status"]) for r in rows] == [
        ("user", "complete"),
        ("assistant", "complete"),
        ("user", "complete"),
        ("assistant", "complete"),
        ("tool", "complete"),
        ("assistant", "complete"),
    ]
    call = rows[3]["tool_calls"][0]
    assert rows[3]["finish_reason"] == "tool_calls"
    assert (rows[4]["tool_call_id"], rows[4]["content"]) == (call["id"], "12:00")
    assert shown == (
        f"{rows[1]['content']}\ntool_calls {call['function']['name']}\n{rows[5]['content']}\n"
    )
    assert rows[5]["content"] == "The tool said: 12:00"


def test_what_is_sent_is_what_openapi_describes(server: AppServer) -> None:
    schema = schemathesis.openapi.from_url(f"{server.base_url}/openapi.json")
    operation = schema["/v1/chat/completions"]["POST"]
    for body, status in [
        (
            {
                "messages": ask("[[fake tokens=3]] a"),
                "stream": True,
                "stream_options": {"include_usage": True},
            },
            200,
        ),
        ({"messages": ask("[[fake tokens=3 error_after=1]] b"), "stream": True}, 200),
        ({"messages": ask("[[fake tokens=3]] c")}, 200),
        ({"messages": ask("[[fake status=500]] d")}, 502),
        ({"messages": ask("e"), "audio": {"voice": "alloy", "format": "wav"}}, 400),
    ]:
        case = operation.Case(body={"model": "test-model", **body})
        # Bodies, event streams and headers are checked against the operation's description.
        response = case.call_and_validate(excluded_checks=[schemathesis.checks.not_a_server_error])
        assert response.status_code == status


# --- Node SDK ----------------------------------------------------------------------


@pytest.fixture
def node() -> str:
    return node_executable()


def node_call(node: str, server: AppServer, request: dict[str, Any], **options: Any) -> Any:
    return run_script(
        node,
        "openai_chat.mjs",
        {"baseURL": f"{server.base_url}/v1", "apiKey": "unused", "request": request, **options},
    )


def test_node_sdk_streams_and_answers_the_persisted_text(node: str, server: AppServer) -> None:
    streamed = node_call(
        node,
        server,
        {
            "model": "test-model",
            "messages": ask("[[fake tokens=11]] node"),
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert streamed["error"] is None
    answer = saved(server, streamed["headers"]["message"])
    assert streamed["text"] == answer["content"] != ""
    assert streamed["chunks"][-1]["usage"]["total_tokens"] == answer["usage"]["total_tokens"]

    whole = node_call(node, server, {"model": "test-model", "messages": ask("[[fake tokens=5]] x")})
    assert whole["text"] == saved(server, whole["headers"]["message"])["content"] != ""
    assert whole["completion"]["object"] == "chat.completion"


def test_node_sdk_raises_its_typed_errors(
    node: str, server: AppServer, make_server: Callable[..., AppServer], tmp_path: Path
) -> None:
    bad = node_call(
        node,
        server,
        {
            "model": "test-model",
            "messages": ask("hi"),
            "audio": {"voice": "alloy", "format": "wav"},
        },
    )["error"]
    assert bad["typed"]["BadRequestError"] and bad["status"] == 400 and bad["param"] == "audio"

    # Each more server in the test has its own spool (one process per spool directory).
    limited = make_server(rate_limit="1/minute", spool_dir=tmp_path / "limited")
    node_call(node, limited, {"model": "test-model", "messages": ask("[[fake tokens=1]] 1")})
    refused = node_call(node, limited, {"model": "test-model", "messages": ask("2")})["error"]
    assert refused["typed"]["RateLimitError"] and int(refused["retryAfter"]) >= 1

    guarded = make_server(
        auth="jwt", jwt_secret=SENTINEL_JWT_SECRET, spool_dir=tmp_path / "guarded"
    )
    denied = node_call(node, guarded, {"model": "test-model", "messages": ask("hi")})["error"]
    assert denied["typed"]["AuthenticationError"] and denied["status"] == 401
    allowed = node_call(
        node,
        guarded,
        {"model": "test-model", "messages": ask("[[fake tokens=2]] hi")},
        apiKey=TOKEN_ALICE,
    )
    assert allowed["error"] is None and allowed["text"]
