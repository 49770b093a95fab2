"""A stream that fails after it started, read by `ChatUpstream` (sans network: a mock transport).

What the e2e tests cannot script: an error object split across two reads,
and a credential in the reason it gives.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx2
import openai
import pytest

from chatstream.errors import UpstreamError, sentence
from chatstream.logs import Redactor, without_database_values
from chatstream.upstream.stream import ChatUpstream, UpstreamRequest

KEY = "sk-unit-test-key-0123456789"
TEXT_CHUNK = b'data: {"choices":[{"index":0,"delta":{"content":"Hel"}}]}\n\n'


class Parts(httpx2.AsyncByteStream):
    def __init__(self, parts: list[bytes]) -> None:
        self._parts = parts

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for part in self._parts:
            yield part


def read_all(parts: list[bytes]) -> tuple[list[Any], UpstreamError]:
    """Every chunk the stream handed on, and the error it ended with."""

    def answer(request: httpx2.Request) -> httpx2.Response:
        headers = {"content-type": "text/event-stream", "x-request-id": "req-unit-1"}
        return httpx2.Response(200, headers=headers, stream=Parts(parts), request=request)

    async def main() -> tuple[list[Any], UpstreamError]:
        http_client = httpx2.AsyncClient(transport=httpx2.MockTransport(answer))
        client = openai.AsyncOpenAI(
            api_key=KEY, base_url="http://model.test/v1", http_client=http_client, max_retries=0
        )
        upstream = ChatUpstream(client, Redactor([KEY]))
        request = UpstreamRequest(model="unit-model", messages=[], max_tokens=5)
        chunks: list[Any] = []
        try:
            async with upstream.stream(request) as batches:
                async for batch in batches:
                    chunks.extend(batch)
        except UpstreamError as exc:
            return chunks, exc
        finally:
            await client.close()
        raise AssertionError("the stream did not fail")

    return anyio.run(main)


def test_an_error_object_split_across_reads_is_read_whole_with_its_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    error = b'data: {"error": {"message": "The model is overloaded.", "type": "server_error"}}\n\n'
    chunks, exc = read_all([TEXT_CHUNK + error[:9], error[9:]])
    assert [c["choices"][0]["delta"]["content"] for c in chunks] == ["Hel"]
    assert exc.message == "The model server reported an error mid-answer: The model is overloaded."
    assert exc.retryable is True
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert line == (
        "model unit-model: the stream broke off (HTTP 200, its request id req-unit-1): "
        "The model server reported an error mid-answer: The model is overloaded"
    )


def test_a_credential_in_the_reason_is_redacted_and_the_kind_decides_retrying() -> None:
    error = (
        b'data: {"error": {"message": "bad key ' + KEY.encode() + b'", "type": "invalid_request"}}'
    )
    _, exc = read_all([TEXT_CHUNK, error])  # the last event, unterminated
    assert exc.message == "The model server reported an error mid-answer: bad key [redacted]."
    assert exc.retryable is False


def test_a_rate_limit_object_is_upstream_rate_limited() -> None:
    error = b'data: {"error": {"message": "slow down", "code": "rate_limit_exceeded"}}\n\n'
    _, exc = read_all([error])
    assert exc.code == "upstream_rate_limited"
    assert exc.message == "The model server stopped: rate limited: slow down."


@pytest.mark.parametrize(
    ("text", "expected"),
    [("Bad thing", "Bad thing."), ("Bad thing.", "Bad thing."), ("Why?", "Why?"), ("cut…", "cut…")],
)
def test_a_message_ends_in_one_full_stop(text: str, expected: str) -> None:
    assert sentence(text) == expected


def test_database_values_are_cut_from_a_log_line_even_in_a_repr() -> None:
    text = "IntegrityError: refused\n[SQL: INSERT …]\n[parameters: ('id', 'my words\\nmore')]\n(…)"
    assert without_database_values(text) == (
        "IntegrityError: refused\n[SQL: INSERT …]\n[parameters hidden]\n(…)"
    )
    in_repr = f"failed ({Exception(text)!r})"
    assert "my words" not in without_database_values(in_repr)
    assert "more" not in without_database_values(in_repr)
    detail = 'violates check constraint "c"\nDETAIL:  Failing row contains (id, my words).'
    assert without_database_values(detail) == 'violates check constraint "c"\nDETAIL:  [hidden]'
