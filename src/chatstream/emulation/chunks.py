"""The emulator's bytes: `chat.completion.chunk` events as OpenAI-compatible servers send them.

The shapes tests need a server to send: text, reasoning under each name
servers use, token logprobs, and the malformed events a careless server sends.
"""

from __future__ import annotations

import time
from typing import Any

import orjson


class ChunkWriter:
    """Builds `data: {chat.completion.chunk}` events; the common prefix is encoded once."""

    def __init__(self, model: str) -> None:
        self._head = (
            b'{"id":"chatcmpl-emulated","object":"chat.completion.chunk","created":'
            + str(int(time.time())).encode()
            + b',"model":'
            + orjson.dumps(model)
            + b',"choices":['
        )

    def delta(self, delta: dict[str, Any], logprobs: dict[str, Any] | None = None) -> bytes:
        tail = (
            b"}]}\n\n"
            if logprobs is None
            else b',"logprobs":' + orjson.dumps(logprobs) + b"}]}\n\n"
        )
        return (
            b"data: "
            + self._head
            + b'{"index":0,"delta":'
            + orjson.dumps(delta)
            + b',"finish_reason":null'
            + tail
        )

    def finish(self, reason: str) -> bytes:
        return (
            b"data: "
            + self._head
            + b'{"index":0,"delta":{},"finish_reason":'
            + orjson.dumps(reason)
            + b"}]}\n\n"
        )

    def usage(self, prompt: int, completion: int, reasoning: int = 0) -> bytes:
        usage: dict[str, Any] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        if reasoning:
            usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
        return b"data: " + self._head + b'],"usage":' + orjson.dumps(usage) + b"}\n\n"


def reasoning_delta(shape: str, words: tuple[str, ...], index: int) -> dict[str, Any]:
    """One token of reasoning, under the name the script's server would use."""
    word = words[index % len(words)]
    if shape == "details":
        return {"content": None, "reasoning_details": [{"type": "reasoning.text", "text": word}]}
    return {"content": None, shape: word}


def token_logprobs(token: str, index: int, alternatives: int) -> dict[str, Any]:
    """A made-up but well-formed `logprobs` for one token, as OpenAI streams it."""
    logprob = -0.1 * (index % 7 + 1)
    top = [
        {"token": candidate, "logprob": logprob - rank, "bytes": list(candidate.encode())}
        for rank, candidate in enumerate([token, token.upper(), token.strip() or "_"])
    ]
    entry = {**top[0], "top_logprobs": top[:alternatives]}
    return {"content": [entry], "refusal": None}


_MALFORMED: dict[str, Any] = {
    "chunk_array": [1, 2, 3],
    "usage_string": {"choices": [], "usage": "lots"},
    "choices_null": {"choices": None},
    "choice_string": {"choices": ["stop"]},
    "delta_string": {"choices": [{"index": 0, "delta": "text"}]},
    "content_number": {"choices": [{"index": 0, "delta": {"content": 42}}]},
    "finish_number": {"choices": [{"index": 0, "delta": {}, "finish_reason": 7}]},
    "tool_types": {
        "choices": [
            {"index": 0, "delta": {"tool_calls": [{"index": "zero", "function": {"name": 5}}]}}
        ]
    },
}


def malformed_event(kind: str) -> bytes:
    """One event an OpenAI-compatible server should never send (test fault injection)."""
    if kind == "not_json":
        return b"data: {this is not json\n\n"
    return sse(_MALFORMED[kind])


def sse(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"
