"""Sans-I/O emulator of an OpenAI-compatible `/chat/completions` stream.

One script engine behind two adapters: the in-process offline demo upstream
(`emulation/demo.py`, an httpx2 transport) and `chatstream fake-upstream`
(`emulation/fake_server.py`, real HTTP), which the tests and benchmarks talk to.

What a reply does is a `Script`: server-wide defaults, overridden per request
by a directive anywhere in the last user message, for example

    [[fake tokens=50 interval_ms=20 drop_after=10]]

Directives (all optional):
  tokens=N           answer with N tokens (default: a short canned answer)
  token_chars=C      make each of those tokens C characters long
  interval_ms=I      pause between tokens
  first_token_ms=F   pause before the first token
  status=S           answer HTTP S instead of a stream (429 and 5xx are retried by clients)
  retry_after=R      with status: the Retry-After header, in seconds
  fail_times=K       with status: fail only the first K requests carrying the same key=…
  echo_auth=1        with status: put the request's Authorization header in the error body
  reason="TEXT"      the message of the error (status, error_after; default "emulated failure")
  request_id=ID      answer with the header `x-request-id: ID`, as OpenAI's servers do
  key=K              names a request family for fail_times
  drop_after=N       close the connection after N tokens (no end of stream)
  rst_after=N        reset the connection (TCP RST) after N tokens
  stall_after=N      after N tokens, send nothing until released
  no_finish=1        end the stream cleanly but without a finish_reason
  error_after=N      after N tokens, send an in-stream error object
  malformed=KIND     after `malformed_after` tokens (default 0), send one malformed
                     event and keep the stream open: not_json, chunk_array, usage_string,
                     choices_null, choice_string, delta_string, content_number,
                     finish_number, tool_types
  malformed_after=N  see malformed
  content_parts=1    send each token's content as a list of two text parts
  no_usage=1         never report usage
  finish=R           the finish_reason to report (default stop)
  answer=TEXT        answer with exactly TEXT (a JSON object may be given bare:
                     answer={"name": "Ada"}), e.g. for structured output
  tool=NAME          call tool NAME first (the answer follows the tool result)
  tool_args=JSON     its arguments (default {})
  tools=N1,N2        call several tools in parallel in one round
  preamble=N         stream N tokens of text before the tool calls
  arg_chunks=N       split each call's arguments over N chunks
  tool_rounds=N      keep calling the tool for N rounds
  ignore_tool_choice=1  call tools even when told tool_choice "none"
  reasoning=N        think aloud first: N tokens of reasoning before the answer
  reasoning_shape=S  under which name: reasoning_content (default), reasoning,
                     or details (`reasoning_details[]` of `reasoning.text` parts)

A request with `logprobs: true` gets each token's `logprobs` (and up to 3
`top_logprobs`), as OpenAI streams them.

The emulator is deterministic: the same request gives the same bytes.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from typing import Any

import orjson

DIRECTIVE = re.compile(r"\[\[fake(?P<body>.*?)\]\]", re.DOTALL)

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


@dataclass(frozen=True, slots=True)
class Script:
    tokens: int | None = None
    token_chars: int | None = None
    interval_ms: float = 0.0
    first_token_ms: float = 0.0
    status: int = 200
    retry_after: float | None = None
    fail_times: int | None = None
    echo_auth: bool = False
    reason: str = "emulated failure"
    request_id: str | None = None
    key: str = ""
    drop_after: int | None = None
    rst_after: int | None = None
    stall_after: int | None = None
    no_finish: bool = False
    error_after: int | None = None
    malformed: str | None = None
    malformed_after: int = 0
    content_parts: bool = False
    no_usage: bool = False
    finish: str = "stop"
    tool: str | None = None
    tool_args: str = "{}"
    tools: tuple[str, ...] = ()
    arg_chunks: int = 1
    tool_rounds: int = 1
    ignore_tool_choice: bool = False
    preamble: int = 0
    answer: str | None = None
    reasoning: int = 0
    reasoning_shape: str = "reasoning_content"

    def with_directives(self, text: str) -> Script:
        """Apply every `[[fake …]]` directive found in `text`."""
        changes: dict[str, Any] = {}
        types = {f.name: f.type for f in fields(self)}
        for match in DIRECTIVE.finditer(text):
            for name, value in _pairs(match.group("body")):
                kind = types.get(name)
                if kind is None:
                    continue
                changes[name] = _convert(str(kind), value)
        return replace(self, **changes) if changes else self


_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')


def _pairs(body: str) -> Iterator[tuple[str, str]]:
    # key=value pairs; a value may be a JSON object/array (tool_args) or a
    # JSON string (reason), with spaces.
    position = 0
    pattern = re.compile(r"\s*(\w+)=")
    while (match := pattern.match(body, position)) is not None:
        name, start = match.group(1), match.end()
        quoted = _QUOTED.match(body, start)
        if quoted is not None:
            value, position = str(orjson.loads(quoted.group())), quoted.end()
        elif start < len(body) and body[start] in "{[":
            depth, end = 0, start
            for end in range(start, len(body)):
                depth += {"{": 1, "[": 1, "}": -1, "]": -1}.get(body[end], 0)
                if depth == 0:
                    break
            value, position = body[start : end + 1], end + 1
        else:
            end = start
            while end < len(body) and not body[end].isspace():
                end += 1
            value, position = body[start:end], end
        yield name, value


def _convert(kind: str, value: str) -> Any:
    if "bool" in kind:
        return value.lower() in ("1", "true", "yes")
    if "tuple" in kind:
        return tuple(v for v in value.split(",") if v)
    if "int" in kind:
        return int(value)
    if "float" in kind:
        return float(value)
    return value


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
        chunk = _ChunkWriter(model)
        tool_names = self._tool_round(
            script, messages, last_user, _offered_tools(request), request.get("tool_choice")
        )
        if script.first_token_ms:
            yield Sleep(script.first_token_ms / 1000)
        yield Send(chunk.delta({"role": "assistant", "content": ""}))
        for index in range(script.reasoning):
            if index and script.interval_ms:
                yield Sleep(script.interval_ms / 1000)
            yield Send(chunk.delta(_reasoning_delta(script.reasoning_shape, THOUGHTS, index)))
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
                yield Send(_sse({"error": {"message": script.reason, "type": "server_error"}}))
                return
            if script.malformed is not None and index == script.malformed_after:
                yield Send(_malformed_event(script.malformed))
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
                logprobs = _token_logprobs(token, index, request.get("top_logprobs") or 0)
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


class _ChunkWriter:
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


def _tool_calls(chunk: _ChunkWriter, script: Script, names: tuple[str, ...]) -> Iterator[Action]:
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


def _reasoning_delta(shape: str, words: tuple[str, ...], index: int) -> dict[str, Any]:
    """One token of reasoning, under the name the script's server would use."""
    word = words[index % len(words)]
    if shape == "details":
        return {"content": None, "reasoning_details": [{"type": "reasoning.text", "text": word}]}
    return {"content": None, shape: word}


def _token_logprobs(token: str, index: int, alternatives: int) -> dict[str, Any]:
    """A made-up but well-formed `logprobs` for one token, as OpenAI streams it."""
    logprob = -0.1 * (index % 7 + 1)
    top = [
        {"token": candidate, "logprob": logprob - rank, "bytes": list(candidate.encode())}
        for rank, candidate in enumerate([token, token.upper(), token.strip() or "_"])
    ]
    entry = {**top[0], "top_logprobs": top[:alternatives]}
    return {"content": [entry], "refusal": None}


def _malformed_event(kind: str) -> bytes:
    """One event an OpenAI-compatible server should never send (test fault injection)."""
    if kind == "not_json":
        return b"data: {this is not json\n\n"
    return _sse(_MALFORMED[kind])


def _sse(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


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
