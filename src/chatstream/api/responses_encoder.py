"""Run events → the OpenAI Responses API's stream events and `response` object (sans-I/O).

One `ResponseEncoder` per served stream or answer. Its events are numbered
(`sequence_number`, from 0) by the encoder alone, from the run's events
alone: encoding a run from its first event always yields the same numbers,
so a stream resumed with `starting_after=N` (from any instance) encodes the
run again from its start and drops every event numbered N or less.

    start                 response.created, response.in_progress
    reasoning             a `reasoning` output item: response.reasoning_text.delta
    delta                 a `message` output item: response.output_text.delta
    tool_call (client's)  a `function_call` item: response.function_call_arguments.delta / .done
    done                  each open item's .done events, then response.completed,
                          .incomplete (length, cancelled) or .failed (an error)

Built-in tools' calls and results (which ran here, offered by the operator)
are not the client's: their rounds' text stays in the one message item.
The same state gives the final `response` object, which the non-streamed
answer (`api/responses_api.py`) returns.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from chatstream.runs.events import DoneEvent, ErrorEvent, Event

# An error code of a run → the Responses API's `error.code`.
_ERROR_CODES = {
    "upstream_rate_limited": "rate_limit_exceeded",
    "rate_limited": "rate_limit_exceeded",
}


@dataclass(slots=True)
class ResponseEcho:
    """What the request asked for, repeated in every `response` object (OpenAI does)."""

    instructions: str | None = None
    metadata: dict[str, str] | None = None
    tools: list[Any] = field(default_factory=list)
    tool_choice: Any = "auto"
    parallel_tool_calls: bool = True
    temperature: float | None = None
    top_p: float | None = None
    max_output_tokens: int | None = None
    previous_response_id: str | None = None
    text: dict[str, Any] = field(default_factory=lambda: {"format": {"type": "text"}})
    store: bool = True
    background: bool = False


def response_id(message_id: str) -> str:
    return f"resp_{message_id.replace('-', '')}"


class ResponseEncoder:
    """Run events → `event: <type>` / `data: <JSON>` frames, for one response."""

    def __init__(
        self,
        *,
        message_id: str,
        model: str,
        created_at: float | None = None,
        echo: ResponseEcho | None = None,
        starting_after: int = -1,
        namespaces: dict[str, str] | None = None,
    ) -> None:
        self.id = response_id(message_id)
        self._hex = message_id.replace("-", "")
        self.model = model
        self.created_at = created_at if created_at is not None else time.time()
        self._echo = echo or ResponseEcho()
        self._after = starting_after
        self._namespaces = namespaces or {}
        self._seq = -1
        self.status = "in_progress"
        self.output: list[dict[str, Any]] = []
        self.usage: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.incomplete_details: dict[str, Any] | None = None
        self.run_error: ErrorEvent | None = None
        self._open: dict[str, Any] | None = None  # the item text is streaming into
        self._texts: list[str] = []
        self._logprobs: list[Any] = []  # the open item's token logprobs, when asked for
        self._delta_fields: dict[str, Any] = {}
        self._delta_frame = (b"", b"")

    # --- the response object ----------------------------------------------------------

    def response(self) -> dict[str, Any]:
        """The `response` object as it stands (final once `done` was encoded)."""
        echo = self._echo
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": self.status,
            "model": self.model,
            "output": [self._so_far(item) for item in self.output],
            "usage": self.usage,
            "error": self.error,
            "incomplete_details": self.incomplete_details,
            "instructions": echo.instructions,
            "metadata": echo.metadata or {},
            "tools": echo.tools,
            "tool_choice": echo.tool_choice,
            "parallel_tool_calls": echo.parallel_tool_calls,
            "temperature": echo.temperature,
            "top_p": echo.top_p,
            "max_output_tokens": echo.max_output_tokens,
            "previous_response_id": echo.previous_response_id,
            "text": echo.text,
            "store": echo.store,
            "background": echo.background,
            "reasoning": None,
            "truncation": "disabled",
        }

    def _so_far(self, item: dict[str, Any]) -> dict[str, Any]:
        """An item as it stands: the one text is streaming into, with its text so far."""
        if item is not self._open:
            return item
        text = "".join(self._texts)
        part: dict[str, Any] = (
            {"type": "output_text", "text": text, "annotations": []}
            if item["type"] == "message"
            else {"type": "reasoning_text", "text": text}
        )
        return {**item, "content": [part]}

    def output_text(self) -> str:
        return "".join(
            part["text"]
            for item in self.output
            if item["type"] == "message"
            for part in item["content"]
        )

    # --- frames -----------------------------------------------------------------------

    def _frame(self, payload: dict[str, Any]) -> bytes:
        self._seq += 1
        if self._seq <= self._after:
            return b""
        payload["sequence_number"] = self._seq
        kind: str = payload["type"]
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"

    def encode(self, batch: list[Event]) -> bytes:
        frames: list[bytes] = []
        for event in batch:
            data: Any = event.data
            kind: str = event.type
            if kind == "delta":
                frames.append(self._text(data["text"], "message", data.get("logprobs")))
            elif kind == "reasoning":
                frames.append(self._text(data["text"], "reasoning"))
            elif kind == "start":
                self.model = data["model"] or self.model
                frames.append(
                    self._frame({"type": "response.created", "response": self.response()})
                )
                frames.append(
                    self._frame({"type": "response.in_progress", "response": self.response()})
                )
            elif kind == "tool_call" and data.get("client"):
                frames.append(self._close())
                frames.append(self._function_call(data))
            elif kind == "error":
                self.run_error = data
            elif kind == "done":
                frames.append(self._close())
                frames.append(self._end(data))
        return b"".join(frames)

    def _text(self, text: str, item_type: str, logprobs: list[Any] | None = None) -> bytes:
        opened = b""
        if self._open is None or self._open["type"] != item_type:
            opened = self._close() + self._open_item(item_type)
        self._texts.append(text)
        if logprobs is not None:  # asked for with `include`: the delta carries its tokens'
            self._logprobs += logprobs
            return opened + self._frame({**self._delta_fields, "logprobs": logprobs, "delta": text})
        self._seq += 1
        if self._seq <= self._after:
            return opened
        head, tail = self._delta_frame
        return opened + head + orjson.dumps(text) + tail + str(self._seq).encode() + b"}\n\n"

    def _open_item(self, item_type: str) -> bytes:
        index = len(self.output)
        if item_type == "message":
            item: dict[str, Any] = {
                "id": f"msg_{self._hex}_{index}",
                "type": "message",
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            }
            part: dict[str, Any] = {"type": "output_text", "text": "", "annotations": []}
            delta_type = "response.output_text.delta"
        else:
            item = {
                "id": f"rs_{self._hex}_{index}",
                "type": "reasoning",
                "status": "in_progress",
                "summary": [],
                "content": [],
            }
            part = {"type": "reasoning_text", "text": ""}
            delta_type = "response.reasoning_text.delta"
        self.output.append(item)
        self._open = item
        self._texts = []
        self._logprobs = []
        added = self._frame(
            {"type": "response.output_item.added", "output_index": index, "item": dict(item)}
        )
        added += self._frame(
            {
                "type": "response.content_part.added",
                "item_id": item["id"],
                "output_index": index,
                "content_index": 0,
                "part": part,
            }
        )
        # A text delta's frame around its text and number (the hot path: once per token).
        fixed: dict[str, Any] = {
            "type": delta_type,
            "item_id": item["id"],
            "output_index": index,
            "content_index": 0,
        }
        self._delta_fields = dict(fixed)
        if item_type == "message":
            fixed["logprobs"] = []
        fixed["delta"] = "\0"
        body = orjson.dumps(fixed)
        head, _, tail = body.partition(b'"\\u0000"')
        prefix = b"event: " + delta_type.encode() + b"\ndata: " + head
        self._delta_frame = (prefix, tail[:-1] + b',"sequence_number":')
        return added

    def _close(self) -> bytes:
        """End the item text was streaming into, if any."""
        item = self._open
        if item is None:
            return b""
        self._open = None
        text = "".join(self._texts)
        index = self.output.index(item)
        if item["type"] == "message":
            part: dict[str, Any] = {"type": "output_text", "text": text, "annotations": []}
            if self._logprobs:
                part["logprobs"] = self._logprobs
            done: dict[str, Any] = {
                "type": "response.output_text.done",
                "item_id": item["id"],
                "output_index": index,
                "content_index": 0,
                "text": text,
                "logprobs": self._logprobs,
            }
        else:
            part = {"type": "reasoning_text", "text": text}
            done = {
                "type": "response.reasoning_text.done",
                "item_id": item["id"],
                "output_index": index,
                "content_index": 0,
                "text": text,
            }
        item["content"] = [part]
        item["status"] = "completed"
        return (
            self._frame(done)
            + self._frame(
                {
                    "type": "response.content_part.done",
                    "item_id": item["id"],
                    "output_index": index,
                    "content_index": 0,
                    "part": part,
                }
            )
            + self._frame(
                {"type": "response.output_item.done", "output_index": index, "item": dict(item)}
            )
        )

    def _function_call(self, call: Any) -> bytes:
        index = len(self.output)
        item: dict[str, Any] = {
            "id": f"fc_{self._hex}_{index}",
            "type": "function_call",
            "status": "in_progress",
            "call_id": call["call_id"],
            "name": call["name"],
            "arguments": "",
        }
        namespace = self._namespaces.get(call["name"])
        if namespace is not None:
            item["namespace"] = namespace
        self.output.append(item)
        frames = self._frame(
            {"type": "response.output_item.added", "output_index": index, "item": dict(item)}
        )
        arguments = call["arguments"]
        where = {"item_id": item["id"], "output_index": index}
        frames += self._frame(
            {"type": "response.function_call_arguments.delta", **where, "delta": arguments}
        )
        frames += self._frame(
            {"type": "response.function_call_arguments.done", **where, "arguments": arguments}
        )
        item.update(arguments=arguments, status="completed")
        frames += self._frame(
            {"type": "response.output_item.done", "output_index": index, "item": dict(item)}
        )
        return frames

    def lost(self, error: ErrorEvent) -> bytes:
        """A follow whose run's stream was lost here, while the run goes on elsewhere.

        One `error` event, numbered as the last event sent (0 if none): a
        client that resumes `starting_after` it misses none of the run's
        events. Not `response.failed`: the response has not failed, and
        closing its items here would use up numbers its own events will have.
        """
        payload = {
            "type": "error",
            "code": error["code"],
            "message": error["message"],
            "param": None,
            "sequence_number": max(self._seq, 0),
        }
        return b"event: error\ndata: " + orjson.dumps(payload) + b"\n\n"

    def _end(self, done: DoneEvent) -> bytes:
        self.usage = usage_of(done)
        status = done["status"]
        error = self.run_error
        if status == "complete":
            if done["finish_reason"] == "length":
                self.status = "incomplete"
                self.incomplete_details = {"reason": "max_output_tokens"}
                return self._frame({"type": "response.incomplete", "response": self.response()})
            self.status = "completed"
            return self._frame({"type": "response.completed", "response": self.response()})
        if status == "cancelled" or error is None:
            # Responses has no stream event of its own for a cancelled response.
            self.status = "cancelled"
            return self._frame({"type": "response.incomplete", "response": self.response()})
        self.status = "failed"
        self.error = {
            "code": _ERROR_CODES.get(error["code"], "server_error"),
            "message": error["message"],
        }
        return self._frame({"type": "response.failed", "response": self.response()})


def usage_of(done: DoneEvent) -> dict[str, Any]:
    usage: Any = done["usage"] or {}
    return {
        "input_tokens": usage.get("prompt_tokens", 0),
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": usage.get("completion_tokens", 0),
        "output_tokens_details": {"reasoning_tokens": usage.get("reasoning_tokens", 0)},
        "total_tokens": usage.get("total_tokens", 0),
    }
