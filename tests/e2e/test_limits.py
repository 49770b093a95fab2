"""Rate limits and the concurrent-run cap, over HTTP and WebSocket, in memory and in Redis."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.sentinels import SENTINEL_JWT_SECRET, TOKEN_ALICE
from tests.support.servers import AppServer, FakeUpstreamThread
from tests.support.services import redis_prefix, service_url
from tests.support.sse import iter_sse, read_stream
from tests.support.ws import dones, open_socket, recv, recv_until, send

QUICK = "[[fake tokens=2]] hi"


def message_count(database: Path) -> int:
    with sqlite3.connect(database) as db:
        return int(db.execute("select count(*) from messages").fetchone()[0])


def assert_window_headers(response: httpx.Response, limit: int, remaining: int) -> None:
    assert response.headers["x-ratelimit-limit"] == str(limit)
    assert response.headers["x-ratelimit-remaining"] == str(remaining)
    assert 0 <= int(response.headers["x-ratelimit-reset"]) <= 60


def stream_status(client: httpx.Client, body: dict[str, Any]) -> httpx.Response:
    with client.stream("POST", "/api/chat/stream", json=body) as response:
        response.read()
        return response


def test_the_window_counts_http_and_websocket_chats_alike(
    make_server: Callable[..., AppServer], database_path: Path
) -> None:
    server = make_server(rate_limit="3/minute")
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        first = stream_status(client, {"message": QUICK})
        assert first.status_code == 200
        assert_window_headers(first, 3, 2)
        second = client.post("/api/chat", json={"message": QUICK})
        assert second.status_code == 200
        assert_window_headers(second, 3, 1)
        with open_socket(server) as ws:
            send(ws, {"type": "chat", "request_id": "third", "message": QUICK})
            assert recv_until(ws, lambda fs: dones(fs) == 1)[-1]["status"] == "complete"
            written = message_count(database_path)

            refused = stream_status(client, {"message": QUICK})
            assert refused.status_code == 429
            assert refused.json()["error"]["code"] == "rate_limited"
            assert int(refused.headers["retry-after"]) >= 1
            assert_window_headers(refused, 3, 0)
            assert client.post("/api/chat", json={"message": QUICK}).status_code == 429

            send(ws, {"type": "chat", "request_id": "fifth", "message": QUICK})
            error = recv(ws)
            assert (error["type"], error["code"], error["request_id"]) == (
                "error",
                "rate_limited",
                "fifth",
            )
            assert error["retry_after"] >= 1 and error["retryable"] is True
        assert message_count(database_path) == written  # refused chats write nothing


def test_a_spoofed_forwarded_for_does_not_change_the_bucket(
    make_server: Callable[..., AppServer],
) -> None:
    server = make_server(rate_limit="2/minute")
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        codes = [
            client.post(
                "/api/chat", json={"message": QUICK}, headers={"X-Forwarded-For": f"10.0.0.{n}"}
            ).status_code
            for n in range(3)
        ]
    assert codes == [200, 200, 429]


def test_forwarded_for_from_a_trusted_proxy_picks_the_bucket(
    make_server: Callable[..., AppServer],
) -> None:
    server = make_server(rate_limit="2/minute", trusted_proxies=["127.0.0.0/8"])
    with httpx.Client(base_url=server.base_url, timeout=20) as client:

        def post(forwarded: str) -> int:
            return client.post(
                "/api/chat", json={"message": QUICK}, headers={"X-Forwarded-For": forwarded}
            ).status_code

        assert [post("203.0.113.1"), post("203.0.113.2"), post("203.0.113.3")] == [200, 200, 200]
        # The client may prepend anything; the nearest untrusted hop is what counts.
        assert [
            post("1.1.1.1, 203.0.113.9"),
            post("2.2.2.2, 203.0.113.9"),
            post("203.0.113.9"),
        ] == [200, 200, 429]


def start_stalled(client: httpx.Client, stack: list[Any]) -> str:
    stream = client.stream(
        "POST", "/api/chat/stream", json={"message": "[[fake tokens=4 stall_after=1]] hold"}
    )
    response = stream.__enter__()
    assert response.status_code == 200, response.read()
    stack.append(stream)
    events = iter_sse(response)
    head = read_stream(events, stop_after=2)
    stack.append(events)
    return str(head.events[0].data["message_id"])


@pytest.fixture
def streams() -> Iterator[list[Any]]:
    opened: list[Any] = []
    yield opened
    for item in reversed(opened):
        if hasattr(item, "__exit__"):
            item.__exit__(None, None, None)


def test_the_run_cap_frees_its_slot_after_cancel_error_and_disconnect(
    make_server: Callable[..., AppServer], fake: FakeUpstreamThread, streams: list[Any]
) -> None:
    server = make_server(max_concurrent_runs=1, on_disconnect="cancel")
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        # Held by a live run: HTTP and WebSocket are refused.
        live = start_stalled(client, streams)
        refused = client.post("/api/chat", json={"message": QUICK})
        assert (refused.status_code, refused.json()["error"]["code"]) == (429, "too_many_runs")
        assert int(refused.headers["retry-after"]) >= 1
        with open_socket(server) as ws:
            send(ws, {"type": "chat", "request_id": "w", "message": QUICK})
            error = recv(ws)
            assert (error["code"], error["retryable"]) == ("too_many_runs", True) and error[
                "retry_after"
            ] >= 1

        # Freed by cancel.
        assert client.post(f"/api/runs/{live}/cancel").status_code == 202
        rest = read_stream(streams[-1])
        assert rest.done["status"] == "cancelled"
        # Freed by an upstream error.
        failed = client.post("/api/chat", json={"message": "[[fake tokens=4 drop_after=1]] x"})
        assert failed.status_code == 502
        # Freed by the client going away (the cancel policy ends the run).
        start_stalled(client, streams)
        streams.pop().close()  # the event iterator
        streams.pop().__exit__(None, None, None)  # the connection
        registry = server.state.registry

        async def all_ended() -> None:
            import asyncio

            while registry.live_count:
                await asyncio.sleep(0.02)

        server.call(all_ended)
        assert client.post("/api/chat", json={"message": QUICK}).status_code == 200


@pytest.mark.redis
def test_limits_are_shared_by_two_instances_on_one_redis(
    make_server: Callable[..., AppServer],
    fake: FakeUpstreamThread,
    streams: list[Any],
    tmp_path: Path,
) -> None:
    redis_url = service_url("CHATSTREAM_TEST_REDIS_URL")
    shared = {
        "rate_limit_storage": redis_url,
        "redis_key_prefix": redis_prefix(),
        "auth": "jwt",
        "jwt_secret": SENTINEL_JWT_SECRET,
    }
    first = make_server(rate_limit="3/minute", max_concurrent_runs=1, **shared)
    # Two instances: one spool directory each (a spool belongs to one process).
    second = make_server(
        rate_limit="3/minute", max_concurrent_runs=1, spool_dir=tmp_path / "spool-2", **shared
    )
    headers = {"Authorization": f"Bearer {TOKEN_ALICE}"}
    with (
        httpx.Client(base_url=first.base_url, headers=headers, timeout=20) as one,
        httpx.Client(base_url=second.base_url, headers=headers, timeout=20) as two,
    ):
        # The run cap: a live run on one instance holds the slot on the other.
        live = start_stalled(one, streams)
        assert (
            two.post("/api/chat", json={"message": QUICK}).json()["error"]["code"]
            == "too_many_runs"
        )
        assert one.post(f"/api/runs/{live}/cancel").status_code == 202
        assert read_stream(streams[-1]).done["status"] == "cancelled"
        # The window: the third chat was the cancelled one; both instances now refuse.
        assert two.post("/api/chat", json={"message": QUICK}).status_code == 200
        assert one.post("/api/chat", json={"message": QUICK}).status_code == 200
        refused_one = one.post("/api/chat", json={"message": QUICK})
        refused_two = two.post("/api/chat", json={"message": QUICK})
    assert (refused_one.status_code, refused_two.status_code) == (429, 429)
    assert refused_two.json()["error"]["code"] == "rate_limited"
    assert refused_two.headers["x-ratelimit-remaining"] == "0"


@pytest.mark.redis
def test_readiness_checks_redis_when_it_is_used(make_server: Callable[..., AppServer]) -> None:
    redis_url = service_url("CHATSTREAM_TEST_REDIS_URL")
    server = make_server(rate_limit_storage=redis_url, redis_key_prefix=redis_prefix())
    ready = httpx.get(f"{server.base_url}/readyz", timeout=10).json()
    assert (ready["status"], ready["redis"]) == ("ready", "ok")
    # (Redis unreachable at start-up: the server does not start; tests/faults/test_startup.py.
    # Redis lost later: tests/e2e/test_limiter_outage.py.)


def test_a_chat_refused_for_another_reason_costs_nothing_from_the_window(
    make_server: Callable[..., AppServer], fake: FakeUpstreamThread, streams: list[Any]
) -> None:
    server = make_server(rate_limit="2/minute", max_live_runs=1)
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        unknown = client.post("/api/chat", json={"message": QUICK, "session_id": str(uuid.uuid4())})
        assert unknown.status_code == 404
        invalid = client.post("/api/chat", json={"message": QUICK, "model": "no-such-model"})
        assert invalid.status_code == 422
        # At capacity (one live run per process here): 503, not charged either.
        start_stalled(client, streams)
        busy = client.post("/api/chat", json={"message": QUICK})
        assert (busy.status_code, busy.json()["error"]["code"]) == (503, "unavailable")
        fake.fake.release(wait_for=1)
        assert read_stream(streams[-1]).done["status"] == "complete"
        # Only the stalled run was charged: one more fits, then the window is full.
        assert_window_headers(client.post("/api/chat", json={"message": QUICK}), 2, 0)
        assert client.post("/api/chat", json={"message": QUICK}).status_code == 429


def test_too_many_runs_carries_the_window_headers(
    make_server: Callable[..., AppServer], streams: list[Any]
) -> None:
    server = make_server(rate_limit="5/minute", max_concurrent_runs=1)
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        start_stalled(client, streams)
        refused = client.post("/api/chat", json={"message": QUICK})
    assert (refused.status_code, refused.json()["error"]["code"]) == (429, "too_many_runs")
    assert_window_headers(refused, 5, 4)
