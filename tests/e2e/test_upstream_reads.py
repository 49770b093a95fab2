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

from chatstream.upstream.stream import ChatUpstream, UpstreamRequest, _reader
from tests.support.servers import FakeUpstreamThread


def test_the_sdks_aiohttp_stream_is_read_directly(fake: FakeUpstreamThread) -> None:
    async def scenario() -> tuple[object, list[str]]:
        client = openai.AsyncOpenAI(
            api_key="unused",
            base_url=fake.base_url,
            max_retries=0,
            http_client=openai.DefaultAioHttpClient(timeout=httpx2.Timeout(10, read=None)),
        )
        request = UpstreamRequest(
            model="m",
            messages=[{"role": "user", "content": f"[[fake tokens=5]] {uuid.uuid4()}"}],
            max_tokens=10,
        )
        response = await ChatUpstream(client)._post(request)
        read = _reader(response)
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
