"""Sans-I/O: fold OpenAI-style `chat.completion.chunk` objects into one message.

Fed the parsed JSON of every upstream event, in order. Returns new text as
it arrives (so the run can stream it at once) and keeps what the end of the
round needs: the full text, complete tool calls (fragments of `id`, `name`
and `arguments` arrive spread over many chunks, keyed by `index`), the
`finish_reason`, and `usage` when the server reports it. Token log
probabilities (`choices[0].logprobs.content`, sent only when a client asked
for them) wait in `logprobs` until the run takes them with the text.

The model's reasoning comes under one of three names, by server:
`delta.reasoning_content` (DeepSeek, vLLM, llama.cpp), `delta.reasoning`
(OpenRouter, Ollama) or `delta.reasoning_details[]` (OpenRouter's typed
parts: `reasoning.text`'s `text`, `reasoning.summary`'s `summary`; an
encrypted part has nothing to show). A server that sends both a name and its
details says the same thing twice: the plain name wins. It is kept apart
from the text (`reasoning`), never mixed into it.
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


# Column sizes (storage/models.py) for values the model chooses; longer ones
# are clipped here, so the stream and the stored row agree and no strange
# value can make the final write fail.
FINISH_REASON_MAX_CHARS = 64
# Text pieces kept before they are joined into one string.
_PARTS_KEPT = 64
TOOL_FIELD_MAX_CHARS = 255


class ChunkAccumulator:
    """Folds chunks; anything that is not the shape of a chunk is `UpstreamError`.

    A server may send any JSON at all, so every value read is checked for its
    type before it is used: a malformed chunk ends its run as an upstream
    error, never as a crash. The common case (`content` a string) is checked
    with one `type(...) is` test.
    """

    __slots__ = (
        "_parts",
        "_reasoning",
        "_tool_calls",
        "content_chunks",
        "finish_reason",
        "logprobs",
        "new_reasoning",
        "usage",
    )

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._tool_calls: dict[int, _ToolCallFragments] = {}
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        # Chunks that carried text or tool-call pieces: the local token
        # estimate when the server reports no usage (one chunk ≈ one token).
        self.content_chunks = 0
        # Token logprobs not yet sent with text (see `take_logprobs`).
        self.logprobs: list[Any] = []
        self._reasoning: list[str] = []
        # Reasoning received and not yet sent (see `take_reasoning`).
        self.new_reasoning = ""

    def feed(self, chunk: Any) -> str | None:
        """Take one parsed chunk; return the text it adds, if any."""
        if type(chunk) is not dict:
            raise _malformed("a chunk is not a JSON object")
        error = chunk.get("error")
        if error:
            raise in_stream_error(error)
        usage = chunk.get("usage")
        if usage is not None:
            if type(usage) is not dict:
                raise _malformed("`usage` is not an object")
            if usage:
                self.usage = usage
        if "choices" not in chunk:
            return None
        choices = chunk["choices"]
        if type(choices) is not list:
            raise _malformed("`choices` is not a list")
        if not choices:
            return None
        choice = choices[0]
        if type(choice) is not dict:
            raise _malformed("a choice is not an object")
        finish_reason = choice.get("finish_reason")
        if finish_reason is not None:
            if type(finish_reason) is not str:
                raise _malformed("`finish_reason` is not a string")
            if finish_reason:
                self.finish_reason = finish_reason[:FINISH_REASON_MAX_CHARS]
        logprobs = choice.get("logprobs")
        if logprobs is not None:
            self._add_logprobs(logprobs)
        delta = choice.get("delta")
        if delta is None:
            return None
        if type(delta) is not dict:
            raise _malformed("`delta` is not an object")
        fragments = delta.get("tool_calls")
        if fragments is not None:
            self._add_tool_fragments(fragments)
        content = delta.get("content")
        if content is None or len(delta) > 1:
            # Not a plain text chunk (`{"content": "..."}`, nearly every one): it
            # may carry reasoning.
            reasoning = _reasoning_of(delta)
            if reasoning:
                self._add_reasoning(reasoning)
        if type(content) is not str:
            if content is None:
                return None
            content = _text_of_parts(content)
        if not content:
            return None
        if "\x00" in content:
            # PostgreSQL text cannot hold NUL; the stream and the row must agree.
            content = content.replace("\x00", "\ufffd")
        parts = self._parts
        parts.append(content)
        if len(parts) >= _PARTS_KEPT:
            # A token's string costs ~50 bytes beside its few characters: the
            # text so far is kept as one string, not one per token.
            self._parts = ["".join(parts)]
        self.content_chunks += 1
        return content

    def _add_tool_fragments(self, fragments: Any) -> None:
        if type(fragments) is not list:
            raise _malformed("`tool_calls` is not a list")
        if not fragments:
            return
        self.content_chunks += 1
        for fragment in fragments:
            if type(fragment) is not dict:
                raise _malformed("a tool call is not an object")
            index = fragment.get("index", 0)
            if type(index) is not int or not 0 <= index < MAX_TOOL_CALLS:
                raise _malformed("a tool call's `index` is not a small integer")
            call_id = _optional_text(fragment.get("id"), "id")
            function = fragment.get("function")
            if function is None:
                function = {}
            elif type(function) is not dict:
                raise _malformed("a tool call's `function` is not an object")
            name = _optional_text(function.get("name"), "function.name")
            arguments = _optional_text(function.get("arguments"), "function.arguments")
            call = self._tool_calls.get(index)
            if call is None:
                call = self._tool_calls[index] = _ToolCallFragments()
            if call_id:
                call.call_id = call_id
            if name:
                call.name += name
            if arguments:
                call.arguments.append(arguments)

    def _add_logprobs(self, logprobs: Any) -> None:
        if type(logprobs) is not dict:
            raise _malformed("`logprobs` is not an object")
        tokens = logprobs.get("content")
        if tokens is None:
            return
        if type(tokens) is not list or any(type(token) is not dict for token in tokens):
            raise _malformed("`logprobs.content` is not a list of objects")
        self.logprobs.extend(tokens)

    def _add_reasoning(self, text: str) -> None:
        if "\x00" in text:
            text = text.replace("\x00", "\ufffd")  # as for text: PostgreSQL cannot hold NUL
        self._reasoning.append(text)
        self.new_reasoning += text
        self.content_chunks += 1

    def take_reasoning(self) -> str:
        """The reasoning received since the last call, handed over once."""
        taken, self.new_reasoning = self.new_reasoning, ""
        return taken

    @property
    def reasoning(self) -> str:
        return "".join(self._reasoning)

    def take_logprobs(self) -> list[Any]:
        """The token logprobs received since the last call, handed over once."""
        taken, self.logprobs = self.logprobs, []
        return taken

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
                    call_id=(fragments.call_id or f"call_{index}")[:TOOL_FIELD_MAX_CHARS],
                    name=fragments.name[:TOOL_FIELD_MAX_CHARS],
                    arguments="".join(fragments.arguments).replace("\x00", "\ufffd"),
                )
            )
        return calls


# More parallel calls than this in one round is not a model, it is noise.
MAX_TOOL_CALLS = 128


def _malformed(what: str) -> UpstreamError:
    return UpstreamError(f"The model server sent a malformed stream ({what}).")


def _optional_text(value: Any, field: str) -> str | None:
    if value is None or type(value) is str:
        return value
    raise _malformed(f"a tool call's `{field}` is not a string")


def _reasoning_of(delta: dict[str, Any]) -> str:
    """A delta's reasoning, under whichever name its server uses ("" if none)."""
    for name in ("reasoning_content", "reasoning"):
        value = delta.get(name)
        if value is not None:
            if type(value) is not str:
                raise _malformed(f"`{name}` is not a string")
            if value:
                return value
    details = delta.get("reasoning_details")
    if details is None:
        return ""
    if type(details) is not list:
        raise _malformed("`reasoning_details` is not a list")
    texts = []
    for detail in details:
        if type(detail) is not dict:
            raise _malformed("a reasoning detail is not an object")
        kind = detail.get("type")
        value = detail.get("text" if kind == "reasoning.text" else "summary")
        if kind in ("reasoning.text", "reasoning.summary") and value is not None:
            if type(value) is not str:
                raise _malformed("a reasoning detail's text is not a string")
            texts.append(value)
    return "".join(texts)


def _text_of_parts(content: Any) -> str:
    """Content given as a list of parts (as some servers stream it): its `text` parts, joined."""
    if type(content) is not list:
        raise _malformed("`content` is neither a string nor a list of parts")
    texts = []
    for part in content:
        if type(part) is not dict:
            raise _malformed("a content part is not an object")
        text = part.get("text")
        if part.get("type", "text") == "text":
            if type(text) is not str:
                raise _malformed("a text part's `text` is not a string")
            texts.append(text)
    return "".join(texts)


def in_stream_error(error: Any) -> UpstreamError:
    """An `{"error": {...}}` object inside the stream: the server gave up mid-answer."""
    kind = ""
    if isinstance(error, dict):
        kind = f"{error.get('type') or ''} {error.get('code') or ''}".lower()
    if "rate" in kind or "quota" in kind:
        return UpstreamRateLimited("The model server stopped: rate limited.")
    retryable = not any(word in kind for word in ("invalid", "context_length", "content_filter"))
    return UpstreamError("The model server reported an error mid-answer.", retryable=retryable)
