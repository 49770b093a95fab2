"""`/v1` content parts on PostgreSQL: a payload sent again is stored once, and replays."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import openai

from tests.support.servers import AppServer, FakeUpstreamThread

PIXEL = "data:image/png;base64," + base64.b64encode(b"\x89PNG on postgres").decode()


def looking(text: str) -> dict[str, Any]:
    return {
        "role": "user",
        "content": [
            {"type": "text", "text": text},
            {"type": "image_url", "image_url": {"url": PIXEL}},
        ],
    }


def test_the_same_image_twice_is_stored_once_and_replays_on_postgres(
    make_server: Callable[..., AppServer], postgres_url: str, fake: FakeUpstreamThread
) -> None:
    server = make_server(database_url=postgres_url)
    sdk = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)
    with sdk:
        sdk.chat.completions.create(model="test-model", messages=[looking("[[fake tokens=1]] a")])
        # The same payload again: no conflict on its hash, the stored row is reused.
        raw = sdk.chat.completions.with_raw_response.create(
            model="test-model", messages=[looking("[[fake tokens=1]] b")]
        )
        answer = raw.parse().choices[0].message.content
        sdk.chat.completions.create(
            model="test-model",
            messages=[{"role": "user", "content": "[[fake tokens=1]] c"}],
            extra_headers={"X-Chatstream-Session-Id": raw.headers["x-chatstream-session-id"]},
        )
    assert fake.fake.requests[-1]["messages"] == [
        looking("[[fake tokens=1]] b"),
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "[[fake tokens=1]] c"},
    ]
