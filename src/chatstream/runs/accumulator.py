"""Sans-I/O: fold OpenAI-style `chat.completion.chunk` objects into one message.

Fed the parsed JSON of every upstream event, in order. Returns new text as
it arrives (so the run can stream it at once) and keeps what the end of the
round needs: the full text, complete tool calls (fragments of `id`, `name`
and `arguments` arrive spread over many chunks, keyed by `index`), the
`finish_reason`, and `usage` when the server reports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chatstream.errors import UpstreamError, UpstreamRateLimited


@dataclass(slots=True)
class ToolCall:
    call_id: str
    name: str
    arguments: str

    def as_openai(self) -> dict[str, Any]:
        return {
            "id": self.call_id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


class _ToolCallFragments:
    __slots__ = ("arguments", "call_id", "name")

    def __init__(self) -> None:
        self.call_id = ""
        self.name = ""
        self.arguments: list[str] = []


class ChunkAccumulator:
    __slots__ = ("_parts", "_tool_calls", "content_chunks", "finish_reason", "usage")

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._tool_calls: dict[int, _ToolCallFragments] = {}
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        # Chunks that carried text or tool-call pieces: the local token
        # estimate when the server reports no usage (one chunk ≈ one token).
        self.content_chunks = 0

    def feed(self, chunk: Any) -> str | None:
        """Take one parsed chunk; return the text it adds, if any."""
        if not isinstance(chunk, dict):
            raise UpstreamError("The model server sent a malformed stream.")
        error = chunk.get("error")
        if error:
            raise in_stream_error(error)
        usage = chunk.get("usage")
        if usage:
            self.usage = usage
        choices = chunk.get("choices")
        if not choices:
            return None
        choice = choices[0]
        finish_reason = choice.get("finish_reason")
        if finish_reason:
            self.finish_reason = finish_reason
        delta = choice.get("delta")
        if not delta:
            return None
        fragments = delta.get("tool_calls")
        if fragments:
            self._add_tool_fragments(fragments)
        content = delta.get("content")
        if content:
            self._parts.append(content)
            self.content_chunks += 1
            return content  # type: ignore[no-any-return]
        return None

    def _add_tool_fragments(self, fragments: list[Any]) -> None:
        self.content_chunks += 1
        for fragment in fragments:
            index = fragment.get("index", 0)
            call = self._tool_calls.get(index)
            if call is None:
                call = self._tool_calls[index] = _ToolCallFragments()
            if fragment.get("id"):
                call.call_id = fragment["id"]
            function = fragment.get("function") or {}
            if function.get("name"):
                call.name += function["name"]
            if function.get("arguments"):
                call.arguments.append(function["arguments"])

    @property
    def text(self) -> str:
        return "".join(self._parts)

    @property
    def tool_calls(self) -> list[ToolCall]:
        calls = []
        for index in sorted(self._tool_calls):
            fragments = self._tool_calls[index]
            calls.append(
                ToolCall(
                    call_id=fragments.call_id or f"call_{index}",
                    name=fragments.name,
                    arguments="".join(fragments.arguments),
                )
            )
        return calls


def in_stream_error(error: Any) -> UpstreamError:
    """An `{"error": {...}}` object inside the stream: the server gave up mid-answer."""
    kind = ""
    if isinstance(error, dict):
        kind = f"{error.get('type') or ''} {error.get('code') or ''}".lower()
    if "rate" in kind or "quota" in kind:
        return UpstreamRateLimited("The model server stopped: rate limited.")
    retryable = not any(word in kind for word in ("invalid", "context_length", "content_filter"))
    return UpstreamError("The model server reported an error mid-answer.", retryable=retryable)
