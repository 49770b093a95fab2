"""The reference point: a tutorial-style relay, as many chat backends are written.

FastAPI + `AsyncOpenAI(stream=True)` iterating the SDK's chunk objects +
`StreamingResponse`. No persistence, no runs, no resume: only the relay.
Served by `bench/run.py` for comparison; not part of chatstream.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from openai import AsyncOpenAI


def create_app() -> FastAPI:
    app = FastAPI()
    client = AsyncOpenAI(base_url=os.environ["RELAY_UPSTREAM"], api_key="bench", max_retries=0)

    @app.post("/relay")
    async def relay(body: dict[str, str]) -> StreamingResponse:
        stream = await client.chat.completions.create(
            model="bench", messages=[{"role": "user", "content": body["message"]}], stream=True
        )

        async def events() -> AsyncIterator[str]:
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    yield f"data: {json.dumps({'text': chunk.choices[0].delta.content})}\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app
