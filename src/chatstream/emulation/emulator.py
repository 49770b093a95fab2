"""Sans-I/O emulator of an OpenAI-compatible `/chat/completions` stream.

One script engine behind two adapters: the in-process offline demo upstream
(`emulation/demo.py`, an httpx2 transport) and `chatstream fake-upstream`
(`emulation/fake_server.py`, real HTTP), which the tests and benchmarks talk to.

What a reply does is a `Script` (`emulation/script.py`: server-wide
defaults, overridden per request by `[[fake …]]` directives); the chunks it
is made of come from `emulation/chunks.py`.

The emulator is deterministic: the same request gives the same bytes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from chatstream.emulation.chunks import (
    ChunkWriter,
    malformed_event,
    reasoning_delta,
    sse,
    token_logprobs,
)
from chatstream.emulation.script import DIRECTIVE, Script

WORDS = (
    "stream ", "every ", "token ", "the ", "moment ", "it ", "is ", "generated, ",
    "and ", "keep ", "the ", "whole ", "answer ", "safe. ",
)  # fmt: skip

THOUGHTS = ("Let ", "me ", "think ", "this ", "through ", "step ", "by ", "step. ")

DEMO_ANSWER = (
    "Hello! This is chatstream's offline demo model: no model server is configured, so "
    "this canned answer streams word by word to show the pipeline end to end. Set "
    "OPENAI_API_KEY (or OPENAI_BASE_URL for a local server such as Ollama or vLLM) to "
    "talk to a real model. Ask me what time it is to see a tool call."
)


# --- replies -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    data: bytes


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


@dataclass(frozen=True, slots=True)
class Stall:
    """Send nothing until the server is told to release stalled streams."""


@dataclass(frozen=True, slots=True)
class Drop:
    reset: bool = False


Action = Send | Sleep | Stall | Drop


@dataclass(slots=True)
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: Iterator[Action] = field(default_factory=lambda: iter(()))

    @property
    def streaming(self) -> bool:
        return self.status == 200


class Emulator:
    """Turns a parsed chat-completion request into a `Reply`."""

    def __init__(self, defaults: Script | None = None, *, demo: bool = False) -> None:
        self.defaults = defaults or Script()
        self.demo = demo
        self._failures: dict[str, int] = {}

    def reply(self, request: dict[str, Any], authorization: str = "") -> Reply:
        messages = request.get("messages") or []
        last_user = _last_user_text(messages)
        # Directives script the fake upstream (tests, benchmarks); the demo a
        # person talks to takes no orders from what that person types.
        script = self.defaults if self.demo else self.defaults.with_directives(last_user)
        if script.status != 200 and self._should_fail(script):
            # A careless server echoes credentials in its errors; ours can, on demand.
            return _error_reply(
                script, f"bad key: {authorization}" if script.echo_auth else script.reason
            )
        if not request.get("stream"):
            return _error_reply(replace(script, status=400), "only stream=true is emulated")
        model = str(request.get("model") or "fake")
        include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
        return Reply(
            status=200,
            headers=[
                ("content-type", "text/event-stream"),
                ("cache-control", "no-cache"),
                *_request_id(script),
            ],
            body=self._stream(script, model, request, last_user, include_usage),
        )

    def _should_fail(self, script: Script) -> bool:
        if script.fail_times is None:
            return True
        seen = self._failures.get(script.key, 0)
        self._failures[script.key] = seen + 1
        return seen < script.fail_times

    def _stream(
        self,
        script: Script,
        model: str,
        request: dict[str, Any],
        last_user: str,
        include_usage: bool,
    ) -> Iterator[Action]:
        messages = request.get("messages") or []
        chunk = ChunkWriter(model)
        tool_names = self._tool_round(
            script, messages, last_user, _offered_tools(request), request.get("tool_choice")
        )
        if script.first_token_ms:
            yield Sleep(script.first_token_ms / 1000)
        yield Send(chunk.delta({"role": "assistant", "content": ""}))
        for index in range(script.reasoning):
            if index and script.interval_ms:
                yield Sleep(script.interval_ms / 1000)
            yield Send(chunk.delta(reasoning_delta(script.reasoning_shape, THOUGHTS, index)))
        if script.reasoning and script.interval_ms:
            yield Sleep(script.interval_ms / 1000)  # then the answer, at the same pace
        if tool_names:
            for index in range(script.preamble):
                yield Send(chunk.delta({"content": WORDS[index % len(WORDS)]}))
            yield from _tool_calls(chunk, script, tool_names)
            finish_reason = "tool_calls"
            tokens: list[str] = []
        else:
            tokens = self._tokens(script, messages, last_user)
            finish_reason = script.finish
        interval = script.interval_ms / 1000
        for index, token in enumerate(tokens):
            if index == script.drop_after:
                yield Drop()
                return
            if index == script.rst_after:
                yield Drop(reset=True)
                return
            if index == script.stall_after:
                yield Stall()
            if index == script.error_after:
                yield Send(sse({"error": {"message": script.reason, "type": "server_error"}}))
                return
            if script.malformed is not None and index == script.malformed_after:
                yield Send(malformed_event(script.malformed))
            if index and interval:
                yield Sleep(interval)
            if script.content_parts:
                half = len(token) // 2
                parts = [
                    {"type": "text", "text": token[:half]},
                    {"type": "text", "text": token[half:]},
                ]
                yield Send(chunk.delta({"content": parts}))
            elif request.get("logprobs"):
                logprobs = token_logprobs(token, index, request.get("top_logprobs") or 0)
                yield Send(chunk.delta({"content": token}, logprobs))
            else:
                yield Send(chunk.delta({"content": token}))
        if len(tokens) == script.drop_after:
            yield Drop()
            return
        if len(tokens) == script.stall_after:
            yield Stall()
        if not script.no_finish:
            yield Send(chunk.finish(finish_reason))
        if include_usage and not script.no_usage:
            prompt = sum(len(str(m.get("content") or "")) for m in messages) // 4 + 1
            completion = max(len(tokens), 1) + script.reasoning
            yield Send(chunk.usage(prompt, completion, script.reasoning))
        yield Send(b"data: [DONE]\n\n")

    def _tool_round(
        self,
        script: Script,
        messages: list[Any],
        last_user: str,
        offered: set[str],
        tool_choice: Any = None,
    ) -> tuple[str, ...]:
        """The tools to call now, or () to answer with text.

        Directives call whatever they name (offered or not, to test unknown
        tools); the demo, like a model, only calls a tool it was offered.
        Like a model, neither calls any when told `tool_choice: "none"`.
        """
        if tool_choice == "none" and not script.ignore_tool_choice:
            return ()
        names = script.tools or ((script.tool,) if script.tool else ())
        if (
            not names
            and self.demo
            and "time" in last_user.lower()
            and "get_current_time" in offered
        ):
            names = ("get_current_time",)
        if not names:
            return ()
        rounds_done = _tool_rounds_since_last_user(messages)
        return names if rounds_done < script.tool_rounds else ()

    def _tokens(self, script: Script, messages: list[Any], last_user: str) -> list[str]:
        if script.answer is not None:
            return _split_words(script.answer)
        if script.tokens is not None:
            words = [WORDS[i % len(WORDS)] for i in range(script.tokens)]
            if script.token_chars:
                words = [
                    (w * (script.token_chars // len(w) + 1))[: script.token_chars] for w in words
                ]
            return words
        tool_results = _tool_results_since_last_user(messages)
        if tool_results:
            text = "The tool said: " + "; ".join(tool_results)
        elif self.demo:
            text = DEMO_ANSWER
        else:
            text = f"You said: {DIRECTIVE.sub('', last_user).strip()}"
        return _split_words(text)


def _tool_calls(chunk: ChunkWriter, script: Script, names: tuple[str, ...]) -> Iterator[Action]:
    pieces = max(script.arg_chunks, 1)
    for index, name in enumerate(names):
        call_id = f"call_{index}_{name}"
        head = {"index": index, "id": call_id, "type": "function"}
        yield Send(
            chunk.delta({"tool_calls": [{**head, "function": {"name": name, "arguments": ""}}]})
        )
        arguments = script.tool_args
        size = -(-len(arguments) // pieces) or 1
        for start in range(0, len(arguments), size):
            piece = {"index": index, "function": {"arguments": arguments[start : start + size]}}
            yield Send(chunk.delta({"tool_calls": [piece]}))


def _request_id(script: Script) -> list[tuple[str, str]]:
    return [("x-request-id", script.request_id)] if script.request_id else []


def _error_reply(script: Script, message: str = "emulated failure") -> Reply:
    headers = [("content-type", "application/json"), *_request_id(script)]
    if script.retry_after is not None:
        headers.append(("retry-after", f"{script.retry_after:g}"))
    body = orjson.dumps({"error": {"message": message, "type": "emulated", "code": script.status}})
    return Reply(status=script.status, headers=headers, body=iter((Send(body),)))


def _offered_tools(request: dict[str, Any]) -> set[str]:
    names = set()
    for tool in request.get("tools") or ():
        if isinstance(tool, dict):
            name = (tool.get("function") or {}).get("name")
            if isinstance(name, str):
                names.add(name)
    return names


def _last_user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):  # content parts: their text
                return "".join(
                    str(part.get("text") or "") for part in content if isinstance(part, dict)
                )
            return content if isinstance(content, str) else ""
    return ""


def _since_last_user(messages: list[Any]) -> list[dict[str, Any]]:
    tail: list[dict[str, Any]] = []
    for message in reversed(messages):
        if not isinstance(message, dict) or message.get("role") == "user":
            break
        tail.append(message)
    tail.reverse()
    return tail


def _tool_rounds_since_last_user(messages: list[Any]) -> int:
    return sum(
        1
        for m in _since_last_user(messages)
        if m.get("role") == "assistant" and m.get("tool_calls")
    )


def _tool_results_since_last_user(messages: list[Any]) -> list[str]:
    return [str(m.get("content")) for m in _since_last_user(messages) if m.get("role") == "tool"]


def _split_words(text: str) -> list[str]:
    words = re.findall(r"\S+\s*", text)
    return words or [text]
