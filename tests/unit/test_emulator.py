"""The upstream emulator's scripts, with no network."""

from __future__ import annotations

import json

from chatstream.emulation.emulator import Drop, Emulator, Send, Stall
from chatstream.emulation.script import Script


def reply_events(emulator: Emulator, text: str) -> tuple[int, list[object]]:
    reply = emulator.reply(
        {
            "model": "m",
            "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": text}],
        }
    )
    return reply.status, list(reply.body)


def data_of(actions: list[object]) -> list[object]:
    out: list[object] = []
    for action in actions:
        if isinstance(action, Send):
            payload = action.data.decode().removeprefix("data: ").strip()
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def test_directives_override_defaults() -> None:
    script = Script(tokens=3).with_directives(
        'hi [[fake tokens=5 interval_ms=2.5 no_finish=1 tool_args={"a": [1, 2]}]]'
    )
    assert (script.tokens, script.interval_ms, script.no_finish) == (5, 2.5, True)
    assert script.tool_args == '{"a": [1, 2]}'
    assert Script().with_directives("no directive here") == Script()


def test_normal_stream_shape() -> None:
    status, actions = reply_events(Emulator(), "[[fake tokens=3]]")
    assert status == 200
    chunks = data_of(actions)
    assert chunks[-1] == "[DONE]"
    usage = chunks[-2]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 3  # type: ignore[index]
    assert chunks[-3]["choices"][0]["finish_reason"] == "stop"  # type: ignore[index]
    texts = [c["choices"][0]["delta"].get("content") for c in chunks[1:-3]]  # type: ignore[index]
    assert texts == ["stream ", "every ", "token "]


def test_failure_modes() -> None:
    _, dropped = reply_events(Emulator(), "[[fake tokens=5 drop_after=2]]")
    assert isinstance(dropped[-1], Drop) and not dropped[-1].reset
    _, reset = reply_events(Emulator(), "[[fake tokens=5 rst_after=2]]")
    assert isinstance(reset[-1], Drop) and reset[-1].reset
    _, stalled = reply_events(Emulator(), "[[fake tokens=5 stall_after=2]]")
    assert any(isinstance(a, Stall) for a in stalled)
    status, _ = reply_events(Emulator(), "[[fake status=429 retry_after=3]]")
    assert status == 429


def test_fail_times_counts_per_key() -> None:
    emulator = Emulator()
    statuses = [
        reply_events(emulator, "[[fake status=500 fail_times=2 key=k]]")[0] for _ in range(3)
    ]
    assert statuses == [500, 500, 200]
    assert reply_events(emulator, "[[fake status=500 fail_times=1 key=other]]")[0] == 500


def test_parallel_tool_calls_with_split_arguments() -> None:
    _, actions = reply_events(Emulator(), '[[fake tools=a,b arg_chunks=4 tool_args={"x": 12345}]]')
    chunks = data_of(actions)
    calls: dict[int, str] = {}
    for chunk in chunks[1:]:
        if chunk == "[DONE]" or not chunk["choices"]:  # type: ignore[index]
            continue
        for fragment in chunk["choices"][0]["delta"].get("tool_calls", []):  # type: ignore[index]
            calls[fragment["index"]] = calls.get(fragment["index"], "") + fragment["function"].get(
                "arguments", ""
            )
    assert calls == {0: '{"x": 12345}', 1: '{"x": 12345}'}
    assert any(
        c != "[DONE]" and c["choices"] and c["choices"][0]["finish_reason"] == "tool_calls"
        for c in chunks
    )  # type: ignore[index]


def test_the_demo_calls_a_tool_only_when_offered() -> None:
    demo = Emulator(demo=True)
    question = {
        "model": "m",
        "stream": True,
        "messages": [{"role": "user", "content": "what time is it?"}],
    }
    answer = data_of(list(demo.reply(question).body))
    assert not any("tool_calls" in str(c) for c in answer)
    offered = {
        **question,
        "tools": [{"type": "function", "function": {"name": "get_current_time"}}],
    }
    call = data_of(list(demo.reply(offered).body))
    assert any("get_current_time" in str(c) for c in call)
