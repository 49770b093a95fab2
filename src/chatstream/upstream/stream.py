"""Open a streaming chat completion and hand back parsed chunks, cheaply.

The `AsyncOpenAI` client does what it is good at: building the request,
auth, connection pooling, retries with backoff and `Retry-After` (all before
a response exists, so before the first token), and status errors. The body
it gives back raw: our byte-level SSE decoder and orjson turn it into plain
dicts, one batch per network read, with no pydantic object per token.

    async with upstream.stream(request) as batches:
        async for batch in batches:      # list of parsed chunk dicts
            ...

The response is closed on every path out of the `async with`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx2
import openai
import orjson

from chatstream.errors import UpstreamError
from chatstream.upstream.errors import Redact, explain, from_transport_error
from chatstream.upstream.sse import EventTooLarge, SSEDecoder

logger = logging.getLogger(__name__)

_DONE = b"[DONE]"


@dataclass(slots=True)
class UpstreamRequest:
    model: str
    messages: list[dict[str, Any]]
    max_tokens: int
    temperature: float | None = None
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: str | None = None
    # Set by the answer cache (upstream/cache.py) when it answered instead of the model.
    from_cache: bool = False

    def as_kwargs(self) -> dict[str, Any]:
        """Arguments for `chat.completions.create`.

        The body travels in `extra_body`, which the SDK sends as given. Passed
        as typed parameters it would first be walked against the SDK's
        TypedDict schemas, message by message, which costs more CPU than the
        rest of the request (and grows with the history) while changing
        nothing in a body of plain JSON values.
        """
        body: dict[str, Any] = {
            "messages": self.messages,
            "max_tokens": self.max_tokens,
            "stream_options": {"include_usage": True},
        }
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.tools:
            body["tools"] = self.tools
        if self.tool_choice is not None:
            body["tool_choice"] = self.tool_choice
        return {"model": self.model, "messages": [], "stream": True, "extra_body": body}


class ChatUpstream:
    """`redact` cleans what the model server says before anyone reads it."""

    def __init__(self, client: openai.AsyncOpenAI, redact: Redact = str) -> None:
        self._client = client
        self._redact = redact

    @asynccontextmanager
    async def stream(self, request: UpstreamRequest) -> AsyncIterator[AsyncIterator[list[Any]]]:
        create = self._client.chat.completions.with_streaming_response.create
        try:
            response = await create(**request.as_kwargs()).__aenter__()
        except openai.OpenAIError as exc:
            explained = explain(exc, self._redact)
            # Once per failed call (the SDK has already retried), with the model
            # server's own words; the run's `error` event carries the same facts.
            logger.warning("model %s: %s", request.model, explained.log)
            raise explained.error from None
        except httpx2.HTTPError as exc:
            raise from_transport_error(exc) from None
        http_response = response.http_response
        try:
            content_type = http_response.headers.get("content-type", "")
            if content_type.startswith("application/json"):
                # A server that ignored `stream: true` and sent the whole answer.
                yield _whole_completion(http_response)
            else:
                yield _batches(http_response)
        finally:
            with anyio.CancelScope(shield=True):
                await http_response.aclose()


def _body(response: httpx2.Response) -> AsyncIterable[bytes]:
    """The body's bytes as the transport delivers them.

    `Response.stream` directly, when there is no content encoding to undo:
    `aiter_bytes()` would add two generator layers, a chunker and a context
    manager per read, for nothing.
    """
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity") and isinstance(response.stream, httpx2.AsyncByteStream):
        return response.stream
    return response.aiter_bytes()


async def _batches(response: httpx2.Response) -> AsyncIterator[list[Any]]:
    decoder = SSEDecoder()
    try:
        async for raw in _body(response):
            payloads = decoder.feed(raw)
            if not payloads:
                continue
            ended = payloads[-1] == _DONE
            batch, malformed = _parse([p for p in payloads if p != _DONE] if ended else payloads)
            if batch:
                yield batch
            if malformed:
                raise _not_json()
            if ended:
                return
        tail, malformed = _parse([p for p in decoder.flush() if p != _DONE])
        if tail:
            yield tail
        if malformed:
            raise _not_json()
    except httpx2.HTTPError as exc:
        raise from_transport_error(exc) from None
    except EventTooLarge:
        raise UpstreamError(
            "The model server sent a malformed stream (an oversized event)."
        ) from None


def _not_json() -> UpstreamError:
    return UpstreamError("The model server sent a malformed stream (an event is not JSON).")


def _parse(payloads: list[bytes]) -> tuple[list[Any], bool]:
    """Each payload's JSON, and whether one was not JSON.

    On one that is not JSON, the events before it still count: they are
    handed on (their text was streamed and is kept), then the stream ends.
    """
    try:
        return [orjson.loads(p) for p in payloads], False
    except orjson.JSONDecodeError:
        pass
    parsed = []
    for payload in payloads:
        try:
            parsed.append(orjson.loads(payload))
        except orjson.JSONDecodeError:
            return parsed, True
    return parsed, False


async def _whole_completion(response: httpx2.Response) -> AsyncIterator[list[Any]]:
    try:
        body = orjson.loads(await response.aread())
        choice = body["choices"][0]
        message = choice.get("message") or {}
        chunk = {
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "content": message.get("content"),
                        "tool_calls": [
                            {"index": i, **call}
                            for i, call in enumerate(message.get("tool_calls") or [])
                        ],
                    },
                    "finish_reason": choice.get("finish_reason"),
                }
            ],
            "usage": body.get("usage"),
        }
    except httpx2.HTTPError as exc:
        raise from_transport_error(exc) from None
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
        raise UpstreamError("The model server sent a malformed answer.") from None
    yield [chunk]
