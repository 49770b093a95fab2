"""Folding chat.completion.chunk objects into one message, with no network."""

from __future__ import annotations

from typing import Any

import pytest

from chatstream.errors import UpstreamError, UpstreamRateLimited
from chatstream.runs.accumulator import ChunkAccumulator


def chunk(
    delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any
) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}], **extra}


def test_text_is_returned_as_it_arrives_and_kept() -> None:
    acc = ChunkAccumulator()
    assert acc.feed(chunk({"role": "assistant", "content": ""})) is None
    assert acc.feed(chunk({"content": "Hel"})) == "Hel"
    assert acc.feed(chunk({"content": "lo"})) == "lo"
    assert acc.feed(chunk(finish="stop")) is None
    assert (
        acc.feed(
            {
                "choices": [],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
            }
        )
        is None
    )
    assert acc.text == "Hello"
    assert acc.finish_reason == "stop"
    assert acc.usage == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert acc.content_chunks == 2
    assert acc.tool_calls == []


def test_a_long_answer_is_kept_whole_and_in_order() -> None:
    acc = ChunkAccumulator()
    pieces = [f"w{i} " for i in range(1000)]
    for index, piece in enumerate(pieces):
        assert acc.feed(chunk({"content": piece})) == piece
        if index % 97 == 0:  # mid-way, across the points where pieces are joined
            assert acc.text == "".join(pieces[: index + 1])
    assert acc.text == "".join(pieces)
    assert acc.content_chunks == 1000


def test_tool_call_fragments_assemble_by_index() -> None:
    acc = ChunkAccumulator()
    acc.feed(
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_a",
                        "type": "function",
                        "function": {"name": "get_", "arguments": ""},
                    }
                ]
            }
        )
    )
    acc.feed(
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 1,
                        "id": "call_b",
                        "function": {"name": "lookup", "arguments": '{"q"'},
                    }
                ]
            }
        )
    )
    acc.feed(
        chunk(
            {
                "tool_calls": [
                    {"index": 0, "function": {"name": "current_time", "arguments": '{"timez'}}
                ]
            }
        )
    )
    for piece in ['one": "U', 'TC"}']:
        acc.feed(chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}))
    acc.feed(chunk({"tool_calls": [{"index": 1, "function": {"arguments": ': "x"}'}}]}))
    acc.feed(chunk(finish="tool_calls"))
    calls = acc.tool_calls
    assert [(c.call_id, c.name, c.arguments) for c in calls] == [
        ("call_a", "get_current_time", '{"timezone": "UTC"}'),
        ("call_b", "lookup", '{"q": "x"}'),
    ]
    assert acc.finish_reason == "tool_calls"
    assert calls[0].as_openai() == {
        "id": "call_a",
        "type": "function",
        "function": {"name": "get_current_time", "arguments": '{"timezone": "UTC"}'},
    }


def test_a_call_without_id_gets_one() -> None:
    acc = ChunkAccumulator()
    acc.feed(chunk({"tool_calls": [{"index": 3, "function": {"name": "f", "arguments": "{}"}}]}))
    assert acc.tool_calls[0].call_id == "call_3"


def test_in_stream_errors_raise() -> None:
    with pytest.raises(UpstreamRateLimited):
        ChunkAccumulator().feed({"error": {"type": "rate_limit_exceeded", "message": "slow down"}})
    with pytest.raises(UpstreamError) as raised:
        ChunkAccumulator().feed({"error": {"type": "invalid_request_error", "message": "bad"}})
    assert raised.value.retryable is False
    with pytest.raises(UpstreamError) as raised:
        ChunkAccumulator().feed({"error": {"type": "server_error"}})
    assert raised.value.retryable is True


def test_malformed_chunks_raise() -> None:
    with pytest.raises(UpstreamError):
        ChunkAccumulator().feed(["not", "a", "dict"])


def test_content_as_a_list_of_parts_is_their_text() -> None:
    acc = ChunkAccumulator()
    parts = [{"type": "text", "text": "Hel"}, {"type": "image_url"}, {"text": "lo"}]
    assert acc.feed(chunk({"content": parts})) == "Hello"
    assert acc.text == "Hello"


@pytest.mark.parametrize(
    "bad",
    [
        [1, 2],
        "data",
        {"usage": "lots"},
        {"choices": None},
        {"choices": "all"},
        {"choices": ["stop"]},
        {"choices": [{"delta": "text"}]},
        {"choices": [{"delta": {"content": 42}}]},
        {"choices": [{"delta": {"content": [{"type": "text", "text": 3}]}}]},
        {"choices": [{"delta": {"content": ["part"]}}]},
        {"choices": [{"delta": {}, "finish_reason": 7}]},
        {"choices": [{"delta": {"tool_calls": {"index": 0}}}]},
        {"choices": [{"delta": {"tool_calls": ["call"]}}]},
        {"choices": [{"delta": {"tool_calls": [{"index": "zero"}]}}]},
        {"choices": [{"delta": {"tool_calls": [{"index": 10**9}]}}]},
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "id": 5}]}}]},
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": "f"}]}}]},
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"name": 5}}]}}]},
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": {}}}]}}]},
        {"choices": [{"delta": {}, "logprobs": "high"}]},
        {"choices": [{"delta": {}, "logprobs": {"content": {"token": "a"}}}]},
        {"choices": [{"delta": {}, "logprobs": {"content": ["a"]}}]},
    ],
)
def test_a_malformed_chunk_is_an_upstream_error(bad: Any) -> None:
    with pytest.raises(UpstreamError, match="malformed"):
        ChunkAccumulator().feed(bad)


def test_token_logprobs_wait_until_taken_once() -> None:
    acc = ChunkAccumulator()
    first = {"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": []}
    second = {"token": "!", "logprob": -0.2, "bytes": [33], "top_logprobs": []}
    acc.feed({"choices": [{"delta": {"content": "Hi"}, "logprobs": {"content": [first]}}]})
    acc.feed({"choices": [{"delta": {"content": "!"}, "logprobs": {"content": [second]}}]})
    acc.feed({"choices": [{"delta": {}, "logprobs": {"content": None, "refusal": None}}]})
    assert acc.take_logprobs() == [first, second]
    assert acc.take_logprobs() == []
    assert acc.text == "Hi!"


def test_values_bound_for_columns_are_clipped_and_nul_free() -> None:
    acc = ChunkAccumulator()
    assert acc.feed(chunk({"content": "a\x00b"})) == "a\ufffdb"
    call = {"index": 0, "id": "c" * 1000, "function": {"name": "n" * 1000, "arguments": "{\x00}"}}
    acc.feed(chunk({"tool_calls": [call]}, finish="f" * 500))
    assert acc.finish_reason == "f" * 64
    (tool_call,) = acc.tool_calls
    assert len(tool_call.call_id) == 255 and len(tool_call.name) == 255
    assert tool_call.arguments == "{\ufffd}"
