"""Tool calling inside a streaming run, against real uvicorn and the fake upstream."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Callable
from typing import Any

import anyio.to_thread
import httpx

from chatstream.tools import ToolError, ToolRegistry, tool
from tests.conftest import StatementLog
from tests.support.servers import AppServer, FakeUpstreamThread
from tests.support.sse import Stream, iter_sse, read_stream


def stream_on(server: AppServer, message: str, **body: Any) -> Stream:
    with (
        httpx.Client(base_url=server.base_url, timeout=30) as client,
        client.stream("POST", "/api/chat/stream", json={"message": message, **body}) as response,
    ):
        assert response.status_code == 200, response.read()
        return read_stream(response)


def messages_of(server: AppServer, session_id: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{server.base_url}/api/sessions/{session_id}/messages", timeout=10)
    return list(response.json()["items"])


def registry_with(*tools: Any) -> ToolRegistry:
    registry = ToolRegistry.default()
    for item in tools:
        registry.register(item)
    return registry


def test_a_tool_round_streams_text_first_and_persists_every_row_once(
    make_server: Callable[..., AppServer], fake: FakeUpstreamThread, sql_log: StatementLog
) -> None:
    text_arrived = threading.Event()

    @tool
    async def lookup(query: str) -> dict[str, str]:
        """Look something up."""
        # Completes only once the client holds the text sent before the call.
        if not await anyio.to_thread.run_sync(text_arrived.wait, 10):
            raise ToolError("the text before the call never reached the client")
        return {"found": query.upper()}

    server = make_server(tool_registry=registry_with(lookup), tools=["lookup"])
    events = []
    with (
        httpx.Client(base_url=server.base_url, timeout=30) as client,
        client.stream(
            "POST",
            "/api/chat/stream",
            json={"message": '[[fake tool=lookup preamble=3 tool_args={"query": "chat"}]] find'},
        ) as response,
    ):
        for item in iter_sse(response):
            if isinstance(item, str):
                continue
            events.append(item)
            if sum(1 for e in events if e.type == "delta") == 3:
                text_arrived.set()
    stream = Stream(events=events)

    kinds = stream.types
    assert kinds[0] == "start" and kinds[-1] == "done"
    assert kinds.index("tool_call") < kinds.index("tool_result")
    assert kinds[1:4] == ["delta", "delta", "delta"]
    call = stream.of("tool_call")[0].data
    assert (call["name"], json.loads(call["arguments"])) == ("lookup", {"query": "chat"})
    result = stream.of("tool_result")[0].data
    assert (result["call_id"], result["content"]) == (call["call_id"], '{"found":"CHAT"}')
    assert stream.done["status"] == "complete"

    # The follow-up request carried the call and its result.
    follow_up = fake.fake.requests[-1]["messages"]
    assert (
        follow_up[-2]["role"] == "assistant"
        and follow_up[-2]["tool_calls"][0]["id"] == call["call_id"]
    )
    assert follow_up[-1] == {
        "role": "tool",
        "tool_call_id": call["call_id"],
        "content": '{"found":"CHAT"}',
    }

    # Rows: the user's, the assistant's call, the tool's result, the final answer; once each.
    rows = messages_of(server, stream.events[0].data["session_id"])
    assert [r["role"] for r in rows] == ["user", "assistant", "tool", "assistant"]
    assert rows[1]["tool_calls"][0]["function"] == {
        "name": "lookup",
        "arguments": call["arguments"],
    }
    assert rows[1]["finish_reason"] == "tool_calls"
    assert (rows[2]["tool_call_id"], rows[2]["name"], rows[2]["content"]) == (
        call["call_id"],
        "lookup",
        '{"found":"CHAT"}',
    )
    assert rows[3]["id"] == stream.done["message_id"]
    assert rows[1]["content"] + rows[3]["content"] == stream.text
    # The user's row; then the run's three rows, in one statement of one transaction.
    assert len(sql_log.matching("INSERT INTO messages")) == 2
    assert sql_log.matching("UPDATE") == []


def test_two_parallel_calls_in_one_round(
    make_server: Callable[..., AppServer], fake: FakeUpstreamThread
) -> None:
    # Each waits for the other to have started: sequential execution would time out.
    a_started, b_started = asyncio.Event(), asyncio.Event()

    @tool
    async def left() -> str:
        """Half of a pair."""
        a_started.set()
        await b_started.wait()
        return "left done"

    @tool
    async def right() -> str:
        """The other half."""
        b_started.set()
        await a_started.wait()
        return "right done"

    server = make_server(
        tool_registry=registry_with(left, right), tool_timeout_s=5, tools=["left", "right"]
    )
    stream = stream_on(server, "[[fake tools=left,right]] go")
    calls = stream.of("tool_call")
    assert [c.data["name"] for c in calls] == ["left", "right"]
    assert len({c.data["call_id"] for c in calls}) == 2
    assert sorted(r.data["content"] for r in stream.of("tool_result")) == [
        "left done",
        "right done",
    ]
    assert stream.types.index("tool_result") > max(
        i for i, k in enumerate(stream.types) if k == "tool_call"
    )
    rows = messages_of(server, stream.events[0].data["session_id"])
    assert [r["role"] for r in rows] == ["user", "assistant", "tool", "tool", "assistant"]
    assert len(rows[1]["tool_calls"]) == 2
    assert stream.done["status"] == "complete"


def test_arguments_split_across_ten_chunks(
    make_server: Callable[..., AppServer], fake: FakeUpstreamThread
) -> None:
    server = make_server()
    stream = stream_on(
        server,
        '[[fake tool=get_current_time arg_chunks=10 tool_args={"timezone": "Europe/Paris"}]] t',
    )
    call = stream.of("tool_call")[0].data
    assert json.loads(call["arguments"]) == {"timezone": "Europe/Paris"}
    fragments = _argument_fragments_sent(fake)
    assert len(fragments) == 10 and "".join(fragments) == call["arguments"]
    result = json.loads(stream.of("tool_result")[0].data["content"])
    assert result["timezone"] == "Europe/Paris" and result["time"].endswith(("+01:00", "+02:00"))
    assert stream.done["status"] == "complete"


def _argument_fragments_sent(fake: FakeUpstreamThread) -> list[str]:
    """The argument pieces the fake upstream streamed (its script is deterministic: replay it)."""
    from chatstream.emulation.emulator import Emulator, Send

    pieces: list[str] = []
    for action in Emulator().reply(fake.fake.requests[0]).body:
        if isinstance(action, Send) and b"tool_calls" in action.data:
            payload = json.loads(action.data.decode().removeprefix("data: "))
            for fragment in payload["choices"][0]["delta"].get("tool_calls", []):
                if fragment["function"].get("arguments"):
                    pieces.append(fragment["function"]["arguments"])
    return pieces


def test_bad_json_arguments_become_a_result_the_model_answers(
    make_server: Callable[..., AppServer], fake: FakeUpstreamThread
) -> None:
    server = make_server()
    stream = stream_on(server, "[[fake tool=get_current_time tool_args=not-json]] t")
    assert stream.of("tool_result")[0].data["content"] == "error: the arguments are not valid JSON"
    assert "error: the arguments are not valid JSON" in stream.text
    assert stream.done["status"] == "complete"


def test_arguments_that_break_the_schema(
    make_server: Callable[..., AppServer], fake: FakeUpstreamThread
) -> None:
    server = make_server()
    stream = stream_on(
        server, '[[fake tool=get_current_time tool_args={"timezone": 5, "extra": 1}]] t'
    )
    content = stream.of("tool_result")[0].data["content"]
    assert content.startswith("error: invalid arguments:")
    assert "timezone" in content and "extra" in content
    assert stream.done["status"] == "complete"


def test_a_tool_that_raises(
    make_server: Callable[..., AppServer], fake: FakeUpstreamThread
) -> None:
    @tool
    async def explode() -> str:
        """Always fails."""
        raise RuntimeError("postgresql://admin:hunter2@db/prod is down")

    @tool
    async def refuse() -> str:
        """Fails politely."""
        raise ToolError("the archive is closed on Sundays")

    server = make_server(tool_registry=registry_with(explode, refuse), tools=["explode", "refuse"])
    stream = stream_on(server, "[[fake tools=explode,refuse]] t")
    results = {r.data["name"]: r.data["content"] for r in stream.of("tool_result")}
    assert results == {
        "explode": "error: the tool failed",
        "refuse": "error: the archive is closed on Sundays",
    }
    assert "hunter2" not in json.dumps([e.data for e in stream.events])
    assert stream.done["status"] == "complete"


def test_a_tool_that_sleeps_past_its_timeout(
    make_server: Callable[..., AppServer], fake: FakeUpstreamThread
) -> None:
    @tool
    async def sleepy() -> str:
        """Takes forever."""
        await asyncio.sleep(30)
        return "never"

    server = make_server(
        tool_registry=registry_with(sleepy),
        tool_timeout_s=0.3,
        thinking_interval_s=0.05,
        tools=["sleepy"],
    )
    stream = stream_on(server, "[[fake tool=sleepy tokens=2]] t")
    kinds = stream.types
    call_at, result_at = kinds.index("tool_call"), kinds.index("tool_result")
    assert "thinking" in kinds[call_at:result_at], "no thinking events while the tool ran"
    assert (
        stream.of("tool_result")[0].data["content"]
        == "error: the tool did not finish within 0.3 seconds"
    )
    assert stream.done["status"] == "complete"


def test_unknown_tool(make_server: Callable[..., AppServer], fake: FakeUpstreamThread) -> None:
    stream = stream_on(make_server(), "[[fake tool=teleport]] t")
    assert stream.of("tool_result")[0].data["content"] == "error: there is no tool named 'teleport'"
    assert stream.done["status"] == "complete"


def test_round_limit_then_the_model_must_answer(
    make_server: Callable[..., AppServer], fake: FakeUpstreamThread
) -> None:
    server = make_server(max_tool_rounds=2)
    stream = stream_on(server, "[[fake tool=get_current_time tool_rounds=99]] t")
    assert len(stream.of("tool_call")) == 2
    assert fake.fake.requests[-1]["tool_choice"] == "none"
    assert stream.done["status"] == "complete"
    rows = messages_of(server, stream.events[0].data["session_id"])
    assert [r["role"] for r in rows] == [
        "user",
        "assistant",
        "tool",
        "assistant",
        "tool",
        "assistant",
    ]


def test_a_model_that_keeps_calling_tools_past_the_limit(
    make_server: Callable[..., AppServer], fake: FakeUpstreamThread
) -> None:
    server = make_server(max_tool_rounds=2)
    stream = stream_on(
        server, "[[fake tool=get_current_time tool_rounds=99 ignore_tool_choice=1]] t"
    )
    assert len(stream.of("tool_call")) == 2  # the third round's calls are not run
    error = stream.of("error")[0].data
    assert (error["code"], error["retryable"]) == ("upstream_error", False)
    assert stream.done["status"] == "error"
    rows = messages_of(server, stream.events[0].data["session_id"])
    assert [r["role"] for r in rows] == [
        "user",
        "assistant",
        "tool",
        "assistant",
        "tool",
        "assistant",
    ]
    assert rows[-1]["tool_calls"] is None and rows[-1]["status"] == "error"


def test_cancel_mid_tool_persists_what_exists(
    make_server: Callable[..., AppServer], fake: FakeUpstreamThread
) -> None:
    started = threading.Event()

    @tool
    async def wait_forever() -> str:
        """Never returns."""
        started.set()
        await asyncio.Event().wait()
        return "unreachable"

    server = make_server(tool_registry=registry_with(wait_forever), tools=["wait_forever"])
    with (
        httpx.Client(base_url=server.base_url, timeout=30) as client,
        client.stream(
            "POST", "/api/chat/stream", json={"message": "[[fake tool=wait_forever preamble=2]] t"}
        ) as r,
    ):
        items = iter_sse(r)
        head = []
        for item in items:
            if isinstance(item, str):
                continue
            head.append(item)
            if item.type == "tool_call":
                break
        assert started.wait(10)
        assert client.post(f"/api/runs/{head[0].data['message_id']}/cancel").status_code == 202
        rest = read_stream(items)
    assert rest.done["status"] == "cancelled"
    rows = messages_of(server, head[0].data["session_id"])
    assert [r["role"] for r in rows] == ["user", "assistant", "tool", "assistant"]
    assert rows[1]["tool_calls"] and rows[1]["content"] == "".join(
        e.data["text"] for e in head if e.type == "delta"
    )
    assert rows[2]["content"] == "error: the run ended before the tool finished"
    assert (rows[3]["status"], rows[3]["content"]) == ("cancelled", "")


def test_upstream_failure_after_a_tool_round(
    make_server: Callable[..., AppServer], fake: FakeUpstreamThread
) -> None:
    server = make_server()
    stream = stream_on(server, "[[fake tool=get_current_time tokens=6 drop_after=2]] t")
    assert stream.types.count("delta") == 2
    assert stream.of("error")[0].data["code"] == "upstream_error"
    rows = messages_of(server, stream.events[0].data["session_id"])
    assert [r["role"] for r in rows] == ["user", "assistant", "tool", "assistant"]
    assert (rows[3]["status"], rows[3]["content"]) == ("error", stream.text)


def test_later_turns_send_the_tool_rows_upstream(
    make_server: Callable[..., AppServer], fake: FakeUpstreamThread
) -> None:
    server = make_server()
    first = stream_on(server, "[[fake tool=get_current_time]] what time?")
    session_id = first.events[0].data["session_id"]
    stream_on(server, "[[fake tokens=2]] thanks", session_id=session_id)
    sent = fake.fake.requests[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "assistant", "user"]
    call_id = first.of("tool_call")[0].data["call_id"]
    assert sent[1]["tool_calls"][0]["id"] == call_id and sent[1]["content"] is None
    assert sent[2]["tool_call_id"] == call_id
    assert sent[3]["content"] == first.text


def test_tools_are_offered_with_derived_schemas(
    make_server: Callable[..., AppServer], fake: FakeUpstreamThread
) -> None:
    stream_on(make_server(), "[[fake tokens=1]] hi")
    offered = fake.fake.requests[-1]["tools"]
    assert [t["function"]["name"] for t in offered] == ["get_current_time"]
    parameters = offered[0]["function"]["parameters"]
    assert parameters["properties"]["timezone"]["anyOf"][0] == {"type": "string"}
    assert parameters["additionalProperties"] is False
    assert "tool_choice" not in fake.fake.requests[-1]


def test_no_tools_offered_when_none_are_enabled(
    make_server: Callable[..., AppServer], fake: FakeUpstreamThread
) -> None:
    stream_on(make_server(tools=[]), "[[fake tokens=1]] hi")
    assert "tools" not in fake.fake.requests[-1]


def test_the_demo_calls_get_current_time_when_asked_the_time(
    make_server: Callable[..., AppServer],
) -> None:
    server = make_server(openai_api_key=None, openai_base_url=None)
    stream = stream_on(server, "What time is it?")
    call = stream.of("tool_call")[0].data
    assert call["name"] == "get_current_time"
    result = json.loads(stream.of("tool_result")[0].data["content"])
    assert set(result) == {"time", "timezone", "weekday"}
    assert "The tool said" in stream.text
    assert stream.done["status"] == "complete"
    assert uuid.UUID(stream.done["message_id"])
