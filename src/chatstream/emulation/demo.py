"""The offline demo upstream: the emulator behind an httpx2 transport.

With neither `OPENAI_API_KEY` nor `OPENAI_BASE_URL`, the `AsyncOpenAI`
client is given this transport, so the whole pipeline (SDK, byte decoder,
runs, persistence) runs as it would against a real server, with no network.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import anyio
import httpx2
import orjson

from chatstream.emulation.emulator import Action, Drop, Emulator, Send, Sleep, Stall

DEMO_BASE_URL = "http://demo-upstream.invalid/v1"


class DemoTransport(httpx2.AsyncBaseTransport):
    def __init__(self, emulator: Emulator | None = None) -> None:
        self._emulator = emulator or Emulator(demo=True)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if request.method == "GET" and request.url.path.endswith("/models"):
            return httpx2.Response(200, json={"object": "list", "data": []}, request=request)
        if not request.url.path.endswith("/chat/completions"):
            return httpx2.Response(404, json={"error": {"message": "not found"}}, request=request)
        try:
            body = orjson.loads(await request.aread())
        except orjson.JSONDecodeError:
            return httpx2.Response(400, json={"error": {"message": "bad json"}}, request=request)
        reply = self._emulator.reply(body, request.headers.get("authorization", ""))
        return httpx2.Response(
            reply.status,
            headers=reply.headers,
            stream=_ActionStream(reply.body),
            request=request,
        )


class _ActionStream(httpx2.AsyncByteStream):
    def __init__(self, actions: Iterator[Action]) -> None:
        self._actions = actions

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for action in self._actions:
            if isinstance(action, Send):
                yield action.data
            elif isinstance(action, Sleep):
                await anyio.sleep(action.seconds)
            elif isinstance(action, Stall):
                await anyio.sleep_forever()
            elif isinstance(action, Drop):
                raise httpx2.RemoteProtocolError("emulated connection drop")
