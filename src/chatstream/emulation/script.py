"""The emulator's script: what a reply does, and the `[[fake …]]` directives that say so.

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
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from typing import Any

import orjson

DIRECTIVE = re.compile(r"\[\[fake(?P<body>.*?)\]\]", re.DOTALL)


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
