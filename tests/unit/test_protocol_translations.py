"""The protocol adapters' translations of run events, sans-I/O: the cases e2e runs rarely reach."""

from __future__ import annotations

from typing import Any

import orjson

from chatstream.api.openai_compat import CompletionChunkTranslation
from chatstream.api.ui_stream import UIMessageStreamTranslation
from chatstream.runs.events import Event, EventPayload

MESSAGE_ID = "6dcc0000-0000-4000-8000-000000000001"


def events(*payloads: dict[str, Any]) -> list[Event]:
    return [Event(seq, payload) for seq, payload in enumerate(payloads, 1)]


def start() -> EventPayload:
    return {
        "type": "start",
        "session_id": "s",
        "message_id": MESSAGE_ID,
        "user_message_id": "u",
        "model": "m",
    }


def done(status: str = "complete", finish_reason: str | None = "stop") -> dict[str, Any]:
    return {
        "type": "done",
        "message_id": MESSAGE_ID,
        "status": status,
        "finish_reason": finish_reason,
        "persisted": True,
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        "metrics": None,
    }


def call(call_id: str, arguments: str = "{}") -> dict[str, Any]:
    return {"type": "tool_call", "call_id": call_id, "name": "lookup", "arguments": arguments}


def result(call_id: str, content: str) -> dict[str, Any]:
    return {"type": "tool_result", "call_id": call_id, "name": "lookup", "content": content}


def decoded(frames: bytes) -> list[Any]:
    items = []
    for frame in frames.split(b"\n\n"):
        if frame:
            assert frame.startswith(b"data: ")
            items.append(orjson.loads(frame[6:]))
    return items


def ui(*payloads: dict[str, Any], batches: int = 1) -> list[dict[str, Any]]:
    """Translate, in one batch or one event per batch: the result must not depend on it."""
    translation = UIMessageStreamTranslation()
    all_events = events(*payloads)
    if batches == 1:
        return decoded(translation.encode(all_events))
    return decoded(b"".join(translation.encode([event]) for event in all_events))


def test_a_round_of_parallel_calls_closes_after_its_last_result() -> None:
    payloads = [
        start(),
        {"type": "delta", "text": "Let me look. "},
        call("a", '{"q": 1}'),
        call("b", "not json"),
        result("b", "error: the tool failed"),
        result("a", '{"found": true}'),
        {"type": "delta", "text": "Found."},
        done(),
    ]
    chunks = ui(*payloads)
    assert chunks == ui(*payloads, batches=len(payloads))
    assert [c["type"] for c in chunks] == [
        "start",
        "start-step",
        "text-start",
        "text-delta",
        "text-end",
        "tool-input-available",
        "tool-input-available",
        "tool-output-available",
        "tool-output-available",
        "finish-step",
        "start-step",
        "text-start",
        "text-delta",
        "text-end",
        "finish-step",
        "finish",
    ]
    inputs = [c["input"] for c in chunks if c["type"] == "tool-input-available"]
    outputs = [c["output"] for c in chunks if c["type"] == "tool-output-available"]
    assert inputs == [{"q": 1}, "not json"]  # arguments that are not JSON stay text
    assert outputs == ["error: the tool failed", {"found": True}]
    texts = [c["id"] for c in chunks if c["type"] == "text-start"]
    assert len(set(texts)) == 2  # each round's text is its own part


def test_a_failure_mid_text_closes_the_text_then_reports_the_error() -> None:
    chunks = ui(
        start(),
        {"type": "delta", "text": "Half"},
        {"type": "error", "code": "upstream_error", "message": "cut", "retryable": True},
        done("error", None),
    )
    assert [c["type"] for c in chunks][-5:] == [
        "text-delta",
        "text-end",
        "error",
        "finish-step",
        "finish",
    ]
    assert chunks[-3] == {"type": "error", "errorText": "cut"}
    assert chunks[-1] == {"type": "finish", "finishReason": "error"}


def test_a_run_cancelled_while_tools_run_ends_with_abort_alone() -> None:
    chunks = ui(start(), call("a"), done("cancelled", None))
    assert [c["type"] for c in chunks] == ["start", "start-step", "tool-input-available", "abort"]


def test_thinking_is_a_transient_data_part() -> None:
    chunks = ui(start(), {"type": "thinking", "elapsed_ms": 5000})
    assert chunks[-1] == {"type": "data-thinking", "data": {"elapsed_ms": 5000}, "transient": True}


def test_finish_reasons_are_the_sdks() -> None:
    for ours, theirs in [
        ("stop", "stop"),
        ("length", "length"),
        ("content_filter", "content-filter"),
        ("something_new", "other"),
        (None, "other"),
    ]:
        assert ui(start(), done("complete", ours))[-1]["finishReason"] == theirs
    assert ui(start(), done("interrupted", None))[-1]["finishReason"] == "error"


def openai_stream(*payloads: dict[str, Any], include_usage: bool) -> list[dict[str, Any]]:
    translation = CompletionChunkTranslation(created=1700000000, include_usage=include_usage)
    return decoded(translation.encode(events(*payloads)))


def test_chunks_carry_every_rounds_text_and_nothing_of_the_tools() -> None:
    items = openai_stream(
        start(),
        {"type": "thinking", "elapsed_ms": 5000},
        {"type": "delta", "text": "One. "},
        call("a"),
        result("a", "{}"),
        {"type": "delta", "text": "Two."},
        done(finish_reason="length"),
        include_usage=False,
    )
    assert [item["choices"][0]["delta"] for item in items] == [
        {"role": "assistant", "content": ""},
        {"content": "One. "},
        {"content": "Two."},
        {},
    ]
    assert items[-1]["choices"][0]["finish_reason"] == "length"
    assert all("usage" not in item for item in items)
    assert {item["id"] for item in items} == {f"chatcmpl-{MESSAGE_ID}"}


def test_the_usage_chunk_comes_last_and_only_when_asked() -> None:
    items = openai_stream(start(), {"type": "delta", "text": "Hi"}, done(), include_usage=True)
    assert all(item["usage"] is None for item in items[:-1])
    assert items[-1]["choices"] == []
    assert items[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


def test_a_run_that_did_not_complete_ends_with_an_error_object() -> None:
    failed = openai_stream(
        start(),
        {"type": "error", "code": "upstream_timeout", "message": "slow", "retryable": True},
        done("error", None),
        include_usage=True,
    )
    assert failed[-1] == {
        "error": {
            "message": "slow",
            "type": "server_error",
            "code": "upstream_timeout",
            "param": None,
        }
    }
    cancelled = openai_stream(start(), done("cancelled", None), include_usage=False)
    assert cancelled[-1]["error"]["code"] == "cancelled"


TRICKY = 'quote " backslash \\ newline \n separator \u2028 é 😀 \x00'


def test_the_per_token_fast_paths_send_exactly_the_documented_json() -> None:
    ui_frames = UIMessageStreamTranslation().encode(
        events(start(), {"type": "delta", "text": "a"}, {"type": "delta", "text": TRICKY})
    )
    expected = {"type": "text-delta", "id": "text-1", "delta": TRICKY}
    assert ui_frames.endswith(b"data: " + orjson.dumps(expected) + b"\n\n")

    for include_usage in (False, True):
        translation = CompletionChunkTranslation(created=1700000000, include_usage=include_usage)
        frames = translation.encode(events(start(), {"type": "delta", "text": TRICKY}))
        chunk: dict[str, Any] = {
            "id": f"chatcmpl-{MESSAGE_ID}",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": "m",
            "choices": [
                {"index": 0, "delta": {"content": TRICKY}, "finish_reason": None, "logprobs": None}
            ],
        }
        if include_usage:
            chunk["usage"] = None
        assert frames.endswith(b"data: " + orjson.dumps(chunk) + b"\n\n")
