"""The rate limiter's Redis goes away under a running server: 503, or let through if so chosen."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.support.servers import AppServer
from tests.support.services import redis_prefix, service_url
from tests.support.tcp_proxy import TcpProxy
from tests.support.ws import dones, open_socket, recv, recv_until, send

QUICK = "[[fake tokens=2]] hi"
pytestmark = pytest.mark.redis


@pytest.fixture
def redis_proxy() -> Iterator[tuple[str, TcpProxy]]:
    """The real Redis, through a proxy the test can cut; the URL to reach it that way."""
    url = make_url(service_url("CHATSTREAM_TEST_REDIS_URL"))
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 6379)
    yield f"redis://127.0.0.1:{proxy.port}/{url.database or 0}", proxy
    proxy.close()


def limited_server(make: Callable[..., AppServer], redis_url: str, **values: object) -> AppServer:
    return make(
        rate_limit="100/minute",
        max_concurrent_runs=5,
        rate_limit_storage=redis_url,
        redis_key_prefix=redis_prefix(),
        **values,
    )


def outage_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "chatstream.limiting.ratelimit" and r.levelno == logging.WARNING
    ]


def test_a_limiter_outage_refuses_chats_with_503_by_default(
    make_server: Callable[..., AppServer],
    redis_proxy: tuple[str, TcpProxy],
    caplog: pytest.LogCaptureFixture,
) -> None:
    url, proxy = redis_proxy
    server = limited_server(make_server, url)
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        assert client.post("/api/chat", json={"message": QUICK}).status_code == 200
        proxy.cut()
        for _ in range(3):
            refused = client.post("/api/chat", json={"message": QUICK})
            assert refused.status_code == 503, refused.text
            error = refused.json()["error"]
            assert error["code"] == "rate_limiter_unavailable"
            assert "rate limiter" in error["message"]
            assert refused.headers["retry-after"] == "1"
        with client.stream("POST", "/api/chat/stream", json={"message": QUICK}) as streamed:
            assert streamed.status_code == 503
        # Sessions and everything else that does not start a chat still work.
        assert client.get("/api/sessions").status_code == 200
        ready = client.get("/readyz")
        assert (ready.status_code, ready.json()["redis"]) == (503, "unreachable")
        proxy.restore()
        assert client.post("/api/chat", json={"message": QUICK}).status_code == 200
    warnings = outage_warnings(caplog)
    # Once when it started (saying what is done meanwhile), once when it ended.
    assert len(warnings) == 2, warnings
    assert "refusing chats" in warnings[0] and "FAIL_OPEN=false" in warnings[0]
    assert "reachable again" in warnings[1]


def test_fail_open_lets_chats_through_while_the_limiter_is_down(
    make_server: Callable[..., AppServer],
    redis_proxy: tuple[str, TcpProxy],
    caplog: pytest.LogCaptureFixture,
) -> None:
    url, proxy = redis_proxy
    server = limited_server(make_server, url, rate_limit_fail_open=True)
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        proxy.cut()
        answered = client.post("/api/chat", json={"message": QUICK})
        assert answered.status_code == 200, answered.text
        assert answered.json()["message"]["status"] == "complete"
        assert "x-ratelimit-limit" not in answered.headers  # no window to report
    (warning,) = outage_warnings(caplog)
    assert "letting chats through unlimited" in warning


def test_a_limiter_outage_is_an_error_frame_with_its_code_on_a_socket(
    make_server: Callable[..., AppServer], redis_proxy: tuple[str, TcpProxy]
) -> None:
    url, proxy = redis_proxy
    server = limited_server(make_server, url)
    with open_socket(server) as ws:
        proxy.cut()
        send(ws, {"type": "chat", "request_id": "down", "message": QUICK})
        error = recv(ws)
        assert (error["type"], error["code"], error["request_id"]) == (
            "error",
            "rate_limiter_unavailable",
            "down",
        )
        assert error["retryable"] is True
        proxy.restore()
        send(ws, {"type": "chat", "request_id": "back", "message": QUICK})
        assert recv_until(ws, lambda fs: dones(fs) == 1)[-1]["status"] == "complete"
