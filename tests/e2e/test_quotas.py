"""Token quotas per owner, driven by the clients' own libraries against real uvicorn.

httpx (JSON and SSE), `websockets`, the OpenAI Python SDK and the AI SDK's
`DefaultChatTransport` (Node) each see the X-Quota-* headers on their answers
and the same 429 `quota_exceeded` once the window's tokens are used up.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.support.node import node_executable, run_script
from tests.support.prometheus import scrape
from tests.support.servers import AppServer, FakeUpstreamThread
from tests.support.sse import iter_sse, read_stream
from tests.support.wait import wait_until
from tests.support.ws import open_socket, recv, send

DAY_S = 86400
LONG = "[[fake tokens=40]] spend"  # ~45 tokens as the fake reports them


def usage(client: httpx.Client) -> dict[str, Any]:
    response = client.get("/api/usage")
    assert response.status_code == 200, response.text
    return dict(response.json())


def wait_used(client: httpx.Client, tokens: int, model: str | None = None) -> dict[str, Any]:
    """/api/usage once it counts `tokens` (runs are counted just after their `done`)."""

    def counted() -> dict[str, Any] | None:
        now = usage(client)
        used = now["models"][model]["used"] if model else now["used"]
        return now if used == tokens else None

    return wait_until(counted, what=f"{tokens} tokens counted")


def assert_quota_headers(headers: httpx.Headers, limit: int, remaining: int) -> None:
    assert headers["x-quota-limit"] == str(limit)
    assert headers["x-quota-remaining"] == str(remaining)
    assert 1 <= int(headers["x-quota-reset"]) <= DAY_S


def stream_chat(client: httpx.Client, body: dict[str, Any]) -> tuple[httpx.Response, Any]:
    with client.stream("POST", "/api/chat/stream", json=body) as response:
        if response.status_code != 200:
            response.read()
            return response, None
        return response, read_stream(response)


def message_count(database: Path) -> int:
    with sqlite3.connect(database) as db:
        return int(db.execute("select count(*) from messages").fetchone()[0])


def sdk(server: AppServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)


def ui_send(server: AppServer, text: str) -> dict[str, Any]:
    return run_script(
        node_executable(),
        "ui_quota.mjs",
        {"api": f"{server.base_url}/api/ui/chat", "chatId": uuid.uuid4().hex, "text": text},
    )


def test_every_chat_answer_carries_the_quota_headers(
    make_server: Callable[..., AppServer],
) -> None:
    server = make_server(quota_tokens=100000)
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        response, stream = stream_chat(client, {"message": "[[fake tokens=3]] one"})
        assert stream.done["status"] == "complete"
        assert_quota_headers(response.headers, 100000, 100000)
        spent = stream.done["usage"]["total_tokens"]
        assert spent > 0
        wait_used(client, spent)

        answer = client.post("/api/chat", json={"message": "[[fake tokens=3]] two"})
        assert answer.status_code == 200
        assert_quota_headers(answer.headers, 100000, 100000 - spent)
        spent += answer.json()["message"]["usage"]["total_tokens"]
        wait_used(client, spent)

        with sdk(server) as openai_client:
            raw = openai_client.chat.completions.with_raw_response.create(
                model="test-model", messages=[{"role": "user", "content": "[[fake tokens=3]] 3"}]
            )
        assert_quota_headers(raw.headers, 100000, 100000 - spent)
        spent += raw.parse().usage.total_tokens
        wait_used(client, spent)

        ui = ui_send(server, "[[fake tokens=3]] four")
        assert (ui["status"], ui["error"]) == (200, None)
        assert ui["quota"]["limit"] == "100000"
        assert ui["quota"]["remaining"] == str(100000 - spent)


def test_a_used_up_quota_refuses_every_transport_until_the_window_resets(
    make_server: Callable[..., AppServer], database_path: Path
) -> None:
    server = make_server(quota_tokens=20)
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        response, stream = stream_chat(client, {"message": LONG})
        assert_quota_headers(response.headers, 20, 20)
        spent = stream.done["usage"]["total_tokens"]
        assert spent > 20  # the check is before the run: this one may take it over
        report = wait_used(client, spent)
        assert (report["limit"], report["remaining"], report["window"]) == (20, 0, "day")
        written = message_count(database_path)

        refused, _ = stream_chat(client, {"message": "[[fake tokens=2]] more"})
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "quota_exceeded"
        assert_quota_headers(refused.headers, 20, 0)
        assert refused.headers["retry-after"] == refused.headers["x-quota-reset"]
        refused_json = client.post("/api/chat", json={"message": "[[fake tokens=2]] more"})
        assert (refused_json.status_code, refused_json.json()["error"]["code"]) == (
            429,
            "quota_exceeded",
        )

        with open_socket(server) as ws:
            send(ws, {"type": "chat", "request_id": "r1", "message": "[[fake tokens=2]] ws"})
            frame = recv(ws)
            assert (frame["type"], frame["code"], frame["request_id"]) == (
                "error",
                "quota_exceeded",
                "r1",
            )
            assert frame["retryable"] is True and 1 <= frame["retry_after"] <= DAY_S

        with sdk(server) as openai_client, pytest.raises(openai.RateLimitError) as raised:
            openai_client.chat.completions.create(
                model="test-model", messages=[{"role": "user", "content": "[[fake tokens=2]] v1"}]
            )
        assert raised.value.code == "quota_exceeded"
        assert raised.value.response.headers["x-quota-remaining"] == "0"

        ui = ui_send(server, "[[fake tokens=2]] ui")
        assert ui["status"] == 429 and ui["text"] is None
        assert "quota_exceeded" in ui["error"]
        assert ui["quota"]["remaining"] == "0" and ui["quota"]["retryAfter"]

        assert message_count(database_path) == written  # refused chats write nothing
        assert usage(client)["used"] == spent
        metrics = scrape(server.base_url)
        assert metrics.value("chatstream_rejected_total", code="quota_exceeded") == 5
        assert metrics.value("chatstream_quota_exceeded_total", model="test-model") == 5
        assert metrics.value("chatstream_quota_tokens_total", model="test-model") == spent


def test_cancelled_and_failed_runs_count_what_they_used(
    make_server: Callable[..., AppServer], fake: FakeUpstreamThread
) -> None:
    server = make_server(quota_tokens=100000)
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        # Cut short with no usage from the model server: chatstream's estimate counts.
        with client.stream(
            "POST",
            "/api/chat/stream",
            json={"message": "[[fake tokens=50 stall_after=6 no_usage=1]] stop me"},
        ) as response:
            items = iter_sse(response)
            message_id = read_stream(items, stop_after=7).events[0].data["message_id"]
            fake.fake.wait_for(lambda: fake.fake.stalled_streams >= 1)
            assert client.post(f"/api/runs/{message_id}/cancel").status_code == 202
            cancelled = read_stream(items).done
        assert cancelled["status"] == "cancelled"
        assert cancelled["usage"]["completion_tokens"] == 6
        spent = cancelled["usage"]["total_tokens"]
        wait_used(client, spent)

        _, failed = stream_chat(client, {"message": "[[fake tokens=30 drop_after=4]] drop"})
        assert failed.done["status"] == "error"
        assert failed.done["usage"]["completion_tokens"] == 4
        spent += failed.done["usage"]["total_tokens"]
        wait_used(client, spent)


def test_a_model_with_its_own_limit_counts_apart(make_server: Callable[..., AppServer]) -> None:
    server = make_server(quota_tokens=100000, quota_models="other-model=20")
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        response, stream = stream_chat(client, {"message": LONG, "model": "other-model"})
        assert_quota_headers(response.headers, 20, 20)
        spent = stream.done["usage"]["total_tokens"]
        report = wait_used(client, spent, model="other-model")
        assert report["models"]["other-model"] == {"used": spent, "limit": 20, "remaining": 0}
        assert report["models"]["test-model"] == {"used": 0, "limit": None, "remaining": None}
        assert (report["used"], report["remaining"]) == (0, 100000)

        # The session's model is the run's: refused without naming it.
        session = stream.events[0].data["session_id"]
        again = client.post("/api/chat", json={"message": "hi", "session_id": session})
        assert again.status_code == 429 and again.json()["error"]["code"] == "quota_exceeded"
        # The shared limit is untouched: the default model still answers.
        other, _ = stream_chat(
            client,
            {"message": "[[fake tokens=2]] hi", "session_id": session, "model": "test-model"},
        )
        assert other.status_code == 200
        assert_quota_headers(other.headers, 100000, 100000)


def test_a_repeated_request_is_answered_even_over_the_quota(
    make_server: Callable[..., AppServer],
) -> None:
    server = make_server(quota_tokens=10)
    body = {"message": LONG, "client_message_id": "once"}
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        first = client.post("/api/chat", json=body)
        assert first.status_code == 200
        wait_used(client, first.json()["message"]["usage"]["total_tokens"])
        repeat = client.post("/api/chat", json=body)
        assert repeat.status_code == 200
        assert repeat.json()["message"]["id"] == first.json()["message"]["id"]
        assert (
            client.post("/api/chat", json={**body, "client_message_id": "new"}).status_code == 429
        )


def test_a_cached_answer_costs_nothing(make_server: Callable[..., AppServer]) -> None:
    server = make_server(quota_tokens=100000, cache_ttl_s=60)
    body = {"message": "[[fake tokens=5]] same", "temperature": 0}
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        first = client.post("/api/chat", json=body).json()["message"]
        spent = first["usage"]["total_tokens"]
        wait_used(client, spent)
        second = client.post("/api/chat", json=body).json()["message"]
        assert second["metrics"]["cached"] is True
        # Counted after `done`: a later run's count shows the cached one added nothing.
        third = client.post("/api/chat", json={"message": "[[fake tokens=2]] other"}).json()
        wait_used(client, spent + third["message"]["usage"]["total_tokens"])


def test_quotas_off_add_no_headers_and_say_so(server: AppServer) -> None:
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        answer = client.post("/api/chat", json={"message": "[[fake tokens=2]] hi"})
        assert answer.status_code == 200
        assert not [name for name in answer.headers if name.startswith("x-quota-")]
        report = usage(client)
        assert report["enabled"] is False and report["limit"] is None and report["models"] == {}
        schema = client.get("/openapi.json").json()
        assert "/api/usage" in schema["paths"]
        assert {"limit", "used", "remaining", "reset_s", "models"} <= set(
            schema["components"]["schemas"]["UsageOut"]["properties"]
        )


def test_the_quota_headers_are_documented_and_readable_cross_origin(
    make_server: Callable[..., AppServer],
) -> None:
    origin = "http://app.example"
    server = make_server(quota_tokens=1000, cors_origins=origin)
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        answer = client.post(
            "/api/chat", json={"message": "[[fake tokens=2]] hi"}, headers={"Origin": origin}
        )
        assert answer.headers["x-quota-remaining"] == "1000"
        exposed = answer.headers["access-control-expose-headers"].lower()
        assert {"x-quota-limit", "x-quota-remaining", "x-quota-reset"} <= set(exposed.split(", "))
        paths = client.get("/openapi.json").json()["paths"]
    for path in ("/api/chat", "/api/chat/stream", "/api/ui/chat", "/v1/chat/completions"):
        for status in ("200", "429"):
            headers = paths[path]["post"]["responses"][status]["headers"]
            assert {"X-Quota-Limit", "X-Quota-Remaining", "X-Quota-Reset"} <= set(headers)
