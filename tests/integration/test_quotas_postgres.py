"""Token quotas on real PostgreSQL: what the check reads from the database (a session's
model, an earlier request's key) and the refusal that writes nothing."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import openai

from tests.support.servers import AppServer
from tests.support.wait import wait_until
from tests.support.ws import open_socket, recv, send


def used_of(client: httpx.Client, model: str) -> int:
    return int(client.get("/api/usage").json()["models"][model]["used"])


def test_quotas_on_postgres(make_server: Callable[..., AppServer], postgres_url: str) -> None:
    server = make_server(
        database_url=postgres_url, quota_tokens=100000, quota_models="other-model=10"
    )
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        session = client.post("/api/sessions", json={"model": "other-model"}).json()["id"]
        body = {"message": "[[fake tokens=30]] go", "session_id": session, "client_message_id": "k"}
        first = client.post("/api/chat", json=body)
        assert first.status_code == 200
        assert first.headers["x-quota-limit"] == "10"  # the session's model, read from PostgreSQL
        spent = first.json()["message"]["usage"]["total_tokens"]
        wait_until(lambda: used_of(client, "other-model") == spent, what="tokens counted")

        # The same key again: answered from the database, over the quota or not.
        repeat = client.post("/api/chat", json=body)
        assert repeat.status_code == 200
        assert repeat.json()["message"]["id"] == first.json()["message"]["id"]
        before = client.get(f"/api/sessions/{session}").json()["message_count"]
        refused = client.post("/api/chat", json={**body, "client_message_id": "new"})
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "quota_exceeded"
        with client.stream(
            "POST", "/api/chat/stream", json={"message": "sse", "session_id": session}
        ) as sse:
            sse.read()
        assert sse.status_code == 429 and sse.headers["x-quota-remaining"] == "0"
        with open_socket(server) as ws:
            send(ws, {"type": "chat", "request_id": "w", "message": "ws", "session_id": session})
            frame = recv(ws)
            assert (frame["type"], frame["code"]) == ("error", "quota_exceeded")
        assert client.get(f"/api/sessions/{session}").json()["message_count"] == before

    with (
        openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0) as sdk,
    ):
        raw = sdk.chat.completions.with_raw_response.create(
            model="test-model", messages=[{"role": "user", "content": "[[fake tokens=2]] hi"}]
        )
        assert raw.headers["x-quota-limit"] == "100000"
        assert raw.headers["x-quota-remaining"] == "100000"
