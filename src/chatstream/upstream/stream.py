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

A stream that fails once it has started is logged here, once, at WARNING,
with the model server's reason, the response's status and its request id
(`x-request-id`), whoever found the fault: this decoder (an error object in
the stream, an event that is not JSON, a dropped connection), the reader's
accumulator (a chunk of the wrong shape) or the reader itself (no
`finish_reason`), each raising its `UpstreamError` inside the `async with`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import aiohttp
import anyio
import httpx2
import openai
import orjson

from chatstream.errors import UpstreamError
from chatstream.jsonbytes import dumps_to_keep
from chatstream.upstream.errors import (
    Redact,
    explain,
    from_stream_error,
    from_transport_error,
    mid_answer_log,
)
from chatstream.upstream.sse import EventTooLarge, SSEDecoder

logger = logging.getLogger(__name__)

_DONE = b"[DONE]"


@dataclass(slots=True)
class UpstreamRequest:
    model: str
    messages: list[dict[str, Any]]
    max_tokens: int | None  # None: none sent (the model server's default)
    temperature: float | None = None
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: str | None = None
    # A pass-through client's own fields (`response_format`, `stop`, its `tools`, ...),
    # sent as given.
    extra: dict[str, Any] = field(default_factory=dict)
    # Set by the answer cache (upstream/cache.py) when it answered instead of the model.
    from_cache: bool = False
    # Not to be answered from the cache (a regeneration asks for another answer).
    fresh: bool = False

    def body(self) -> dict[str, Any]:
        """The request body, as plain JSON values."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": self.messages,
            "stream": True,
            # Usage is what runs are counted by (limits, metrics, the stored row).
            "stream_options": {"include_usage": True},
        }
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        if self.extra:
            body.update(self.extra)
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.tools:
            body["tools"] = self.tools
        if self.tool_choice is not None:
            body["tool_choice"] = self.tool_choice
        return body


class ChatUpstream:
    """`redact` cleans what the model server says before anyone reads it."""

    def __init__(self, client: openai.AsyncOpenAI, redact: Redact = str) -> None:
        self._client = client
        self._redact = redact

    async def _post(self, request: UpstreamRequest) -> httpx2.Response:
        """`POST /chat/completions`, the response's head read, its body not yet.

        Through the client's own request machinery (auth, base URL, pooling,
        retries with backoff and `Retry-After`, status errors), as the SDK
        offers for any request: the answer is the raw HTTP response
        (`cast_to=httpx2.Response`). Not `chat.completions.create`: its typed
        parameters are walked against the SDK's schemas on every call, which
        costs more CPU than the rest of the request while changing nothing in
        a body of plain JSON values; and the stream is read raw anyway.
        """
        response = await self._client.post(
            "/chat/completions",
            cast_to=httpx2.Response,
            # Bytes, encoded by orjson rather than by the SDK's standard-library
            # `json`: a long history is the largest thing a chat sends.
            content=dumps_to_keep(request.body()),
            stream=True,
            stream_cls=openai.AsyncStream[Any],
        )
        # The typing follows `stream_cls`; with `cast_to=httpx2.Response` the SDK
        # hands back the response itself, unread.
        assert isinstance(response, httpx2.Response)
        return response

    @asynccontextmanager
    async def stream(self, request: UpstreamRequest) -> AsyncIterator[AsyncIterator[list[Any]]]:
        try:
            http_response = await self._post(request)
        except openai.OpenAIError as exc:
            explained = explain(exc, self._redact)
            # Once per failed call (the SDK has already retried), with the model
            # server's own words; the run's `error` event carries the same facts.
            logger.warning("model %s: %s", request.model, explained.log)
            raise explained.error from None
        except httpx2.HTTPError as exc:
            raise from_transport_error(exc) from None
        try:
            content_type = http_response.headers.get("content-type", "")
            if content_type.startswith("application/json"):
                # A server that ignored `stream: true` and sent the whole answer.
                yield _whole_completion(http_response)
            else:
                yield _batches(http_response, self._redact)
        except UpstreamError as exc:
            upstream_id = http_response.headers.get("x-request-id")
            line = mid_answer_log(exc, http_response.status_code, upstream_id, self._redact)
            logger.warning("model %s: %s", request.model, line)
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await http_response.aclose()


Read = Callable[[], Awaitable[bytes]]


def _reader(response: httpx2.Response) -> tuple[Read, Callable[[], bytes]]:
    """A function that returns the body's next bytes (b"" at the end), as cheaply as possible;
    and one that returns what a broken connection left unread (see `_unread`).

    With the SDK's aiohttp transport and no content encoding to undo, that is
    aiohttp's own `readany()` on the response: whatever has arrived, one await
    per read. The generic path wraps each read in three async generators and
    a context manager (httpx2's stream, the SDK's aiohttp adapter, its
    chunker), which at a token per read costs more than parsing the token.
    The shape is checked, not assumed: anything else takes the generic path.
    """
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    identity = encoding in ("", "identity")
    adapter = getattr(response.stream, "_stream", None)  # httpx2's timing wrapper
    content = getattr(getattr(adapter, "_aiohttp_response", None), "content", None)
    if identity and isinstance(content, aiohttp.StreamReader):
        return content.readany, partial(_unread, content)
    chunks = (
        response.stream
        if identity and isinstance(response.stream, httpx2.AsyncByteStream)
        else response.aiter_bytes()
    ).__aiter__()

    async def read() -> bytes:
        try:
            return await chunks.__anext__()
        except StopAsyncIteration:
            return b""

    return read, bytes


def _unread(content: aiohttp.StreamReader) -> bytes:
    """The body's bytes that arrived before its connection broke and were not read yet.

    aiohttp raises a broken connection's error as soon as it is set, even
    with bytes of the body still in its buffer: text the model server sent
    just before it dropped would be lost, the likelier the busier the server
    (the further behind its reads). That text is part of the answer and is
    kept. aiohttp's buffer is private, so its shape is checked; anything
    else gives nothing, as before.
    """
    buffer = getattr(content, "_buffer", None)
    read_now = getattr(content, "_read_nowait", None)
    if not buffer or not callable(read_now):
        return b""
    try:
        return bytes(read_now(-1))
    except Exception:
        return b""


async def _batches(response: httpx2.Response, redact: Redact) -> AsyncIterator[list[Any]]:
    decoder = SSEDecoder()
    read, unread = _reader(response)
    try:
        while raw := await read():
            carried = decoder.holding
            payloads = decoder.feed(raw)
            if not payloads:
                continue
            ended = payloads[-1] == _DONE
            batch, malformed = _parse([p for p in payloads if p != _DONE] if ended else payloads)
            failure = None
            # An error object in the stream, looked for only in a read that
            # could hold one (one search of its bytes, not a look at each chunk).
            if _ERROR_KEY in raw or (carried and _ERROR_KEY in payloads[0]):
                batch, failure = _until_error(batch, redact)
            # Nothing of this read is kept while waiting for the next one: a
            # burst of a hundred chunks is a hundred dicts and their bytes.
            raw = payloads = b""  # type: ignore[assignment]
            if batch:
                yield batch
                batch = []
            if failure is not None:
                raise failure
            if malformed:
                raise _not_json()
            if ended:
                return
        tail, malformed = _parse([p for p in decoder.flush() if p != _DONE])
        tail, failure = _until_error(tail, redact)
        if tail:
            yield tail
        if failure is not None:
            raise failure
        if malformed:
            raise _not_json()
    except (httpx2.HTTPError, aiohttp.ClientError, OSError) as exc:
        error = from_transport_error(exc)
        try:
            # Whole events that came before the break are part of the answer;
            # an error object among them is why it broke.
            rest, _ = _parse([p for p in decoder.feed(unread()) if p != _DONE])
        except EventTooLarge:
            rest = []
        rest, failure = _until_error(rest, redact)
        if rest:
            yield rest
        raise (failure or error) from None
    except EventTooLarge:
        raise UpstreamError(
            "The model server sent a malformed stream (an oversized event)."
        ) from None


_ERROR_KEY = b'"error"'


def _until_error(batch: list[Any], redact: Redact) -> tuple[list[Any], UpstreamError | None]:
    """The chunks before an `{"error": …}` object, and the error it reports (None if none)."""
    for index, chunk in enumerate(batch):
        if type(chunk) is dict and chunk.get("error"):
            return batch[:index], from_stream_error(chunk["error"], redact)
    return batch, None


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
                        # The reasoning, under its server's name (the accumulator reads all).
                        **{
                            name: message[name]
                            for name in ("reasoning_content", "reasoning", "reasoning_details")
                            if message.get(name) is not None
                        },
                        "tool_calls": [
                            {"index": i, **call}
                            for i, call in enumerate(message.get("tool_calls") or [])
                        ],
                    },
                    "finish_reason": choice.get("finish_reason"),
                    "logprobs": choice.get("logprobs"),
                }
            ],
            "usage": body.get("usage"),
        }
    except httpx2.HTTPError as exc:
        raise from_transport_error(exc) from None
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
        raise UpstreamError("The model server sent a malformed answer.") from None
    yield [chunk]
