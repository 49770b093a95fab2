"""The upstream body is read with aiohttp's own readany(), not through generator layers.

A check on the installed SDK's shape (the fast path looks into its aiohttp
adapter): if an upgrade changes that shape, this fails, rather than the
server silently taking the slower path.
"""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import httpx2
import openai

from chatstream.errors import UpstreamError
from chatstream.upstream.stream import ChatUpstream, UpstreamRequest, _reader
from tests.support.servers import FakeUpstreamThread


def sdk_client(fake: FakeUpstreamThread) -> openai.AsyncOpenAI:
    """The SDK with its aiohttp transport, as chatstream builds it."""
    return openai.AsyncOpenAI(
        api_key="unused",
        base_url=fake.base_url,
        max_retries=0,
        http_client=openai.DefaultAioHttpClient(timeout=httpx2.Timeout(10, read=None)),
    )


def asked(directives: str) -> UpstreamRequest:
    return UpstreamRequest(
        model="m",
        messages=[{"role": "user", "content": f"{directives} {uuid.uuid4()}"}],
        max_tokens=30,
    )


def test_the_sdks_aiohttp_stream_is_read_directly(fake: FakeUpstreamThread) -> None:
    async def scenario() -> tuple[object, list[str]]:
        client = sdk_client(fake)
        request = asked("[[fake tokens=5]]")
        response = await ChatUpstream(client)._post(request)
        read, _ = _reader(response)
        await response.aclose()
        texts: list[str] = []
        async with ChatUpstream(client).stream(request) as batches:
            async for batch in batches:
                for chunk in batch:
                    for choice in chunk.get("choices") or []:
                        texts.append((choice.get("delta") or {}).get("content") or "")
        await client.close()
        return read, texts

    read, texts = asyncio.run(scenario())
    assert getattr(read, "__self__", None).__class__ is aiohttp.StreamReader
    assert "".join(texts) == "stream every token the moment "


def test_what_came_before_a_dropped_connection_is_read_before_the_error(
    fake: FakeUpstreamThread,
) -> None:
    """The body is read only after the model server sent 7 tokens and hung up."""

    async def scenario() -> tuple[list[str], BaseException | None]:
        client = sdk_client(fake)
        request = asked("[[fake tokens=20 drop_after=7]]")
        texts: list[str] = []
        failure: BaseException | None = None
        try:
            async with ChatUpstream(client).stream(request) as batches:
                # Not reading until the server has sent its 7 tokens and closed.
                deadline = asyncio.get_running_loop().time() + 10
                while fake.fake.open_connections:
                    assert asyncio.get_running_loop().time() < deadline
                    await asyncio.sleep(0.01)
                async for batch in batches:
                    for chunk in batch:
                        for choice in chunk.get("choices") or []:
                            texts.append((choice.get("delta") or {}).get("content") or "")
        except UpstreamError as exc:
            failure = exc
        await client.close()
        return texts, failure

    texts, failure = asyncio.run(scenario())
    assert len([t for t in texts if t]) == 7
    assert failure is not None
