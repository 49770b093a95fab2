"""Run events → OpenAI's `chat.completion.chunk` frames, and what ends an answer (sans-I/O).

One translation per streamed response (`CompletionChunkTranslation`); the
non-streamed answer (`api/openai_compat.py`) uses the same pieces: the usage,
the error a run that did not complete becomes, and the calls of the client's
own tools (`ToolCalls`), which end the answer as OpenAI's `tool_calls`.
"""

from __future__ import annotations

from typing import Any

import orjson

from chatstream.api.openai_schemas import (
    ChatCompletionChunk,
    ChoiceLogprobs,
    ChunkDelta,
    ChunkToolCall,
    CompletionUsage,
    OpenAIErrorBody,
    error_type,
)
from chatstream.errors import failed_run_status
from chatstream.runs.events import DoneEvent, ErrorEvent, Event, TokenLogprob

CANCELLED = "The run was cancelled; what it generated is saved."


def usage_of(done: DoneEvent) -> CompletionUsage:
    usage = done["usage"]
    if usage is None:
        return {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    return {
        "prompt_tokens": usage["prompt_tokens"],
        "completion_tokens": usage["completion_tokens"],
        "total_tokens": usage["total_tokens"],
    }


def failure_of(done: DoneEvent, error: ErrorEvent | None) -> OpenAIErrorBody | None:
    """The OpenAI error for a run that did not complete; None if it did."""
    if done["status"] == "complete":
        return None
    if done["status"] == "cancelled" or error is None:
        return {
            "error": {
                "message": CANCELLED,
                "type": error_type(409),
                "code": "cancelled",
                "param": None,
            }
        }
    status = failed_run_status(error["code"])
    return {
        "error": {
            "message": error["message"],
            "type": error_type(status),
            "code": error["code"],
            "param": None,
        }
    }


class CompletionChunkTranslation:
    """Run events → `chat.completion.chunk` frames, for one response."""

    __slots__ = (
        "_calls",
        "_content_frame",
        "_created",
        "_error",
        "_id",
        "_include_usage",
        "_model",
    )

    def __init__(self, *, created: int, include_usage: bool) -> None:
        self._created = created
        self._include_usage = include_usage
        self._id = ""
        self._model = ""
        self._error: ErrorEvent | None = None
        self._calls = ToolCalls()
        # A content chunk's frame around its text (the hot path: once per token).
        self._content_frame = (b"", b"")

    def _chunk(
        self,
        delta: ChunkDelta,
        finish_reason: str | None = None,
        logprobs: list[TokenLogprob] | None = None,
    ) -> bytes:
        chunk: ChatCompletionChunk = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": [
                {
                    "index": 0,
                    "delta": delta,
                    "finish_reason": finish_reason,
                    "logprobs": None if logprobs is None else choice_logprobs(logprobs),
                }
            ],
        }
        if self._include_usage:
            chunk["usage"] = None  # as OpenAI does: only the last chunk carries it
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def encode(self, batch: list[Event]) -> bytes:
        frames: list[bytes] = []
        for event in batch:
            data: Any = event.data
            if event.type == "delta":
                if "logprobs" in data:
                    frames.append(self._chunk({"content": data["text"]}, None, data["logprobs"]))
                    continue
                head, tail = self._content_frame
                frames.append(head + orjson.dumps(data["text"]) + tail)
            elif event.type == "start":
                self._id = f"chatcmpl-{data['message_id']}"
                self._model = data["model"]
                frames.append(self._chunk({"role": "assistant", "content": ""}))
                # The same bytes `_chunk({"content": text})` makes, split where the text goes.
                head, _, tail = self._chunk({"content": "\0"}).partition(b'"\\u0000"')
                self._content_frame = (head, tail)
            elif event.type == "reasoning":
                frames.append(self._chunk({"reasoning_content": data["text"]}))
            elif event.type in ("tool_call", "tool_result"):
                self._calls.see(event.type, data)
            elif event.type == "error":
                self._error = data
            elif event.type == "done":
                frames.append(self._end(data))
        return b"".join(frames)

    def _end(self, done: DoneEvent) -> bytes:
        failure = failure_of(done, self._error)
        if failure is not None:
            return b"data: " + orjson.dumps(failure) + b"\n\n"
        last = self._chunk({}, done["finish_reason"] or "stop")
        calls = self._calls.pending
        if calls:
            last = self._chunk({"tool_calls": calls}) + last
        if not self._include_usage:
            return last
        usage: ChatCompletionChunk = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": [],
            "usage": usage_of(done),
        }
        return last + b"data: " + orjson.dumps(usage) + b"\n\n"


def choice_logprobs(tokens: list[TokenLogprob]) -> ChoiceLogprobs:
    """A choice's `logprobs`, as OpenAI writes it, around the model server's token entries."""
    return {"content": tokens, "refusal": None}


class ToolCalls:
    """The run's calls of the client's tools: the ones no result followed.

    Built-in tools' calls are followed by their results (they ran here) and
    are not the client's business; a client tool's call ends the run.
    """

    __slots__ = ("pending",)

    def __init__(self) -> None:
        self.pending: list[ChunkToolCall] = []

    def see(self, kind: str, data: Any) -> None:
        if kind == "tool_result":
            self.pending = []
            return
        call: ChunkToolCall = {
            "index": len(self.pending),
            "id": data["call_id"],
            "type": "function",
            "function": {"name": data["name"], "arguments": data["arguments"]},
        }
        self.pending.append(call)
