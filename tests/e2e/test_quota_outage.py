"""The Redis that keeps the quota counts goes away under a running server (as the limiter's)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.support.servers import AppServer
from tests.support.services import redis_prefix, service_url
from tests.support.tcp_proxy import TcpProxy
from tests.support.wait import wait_until

pytestmark = pytest.mark.redis
QUICK = "[[fake tokens=2]] hi"


@pytest.fixture
def redis_proxy() -> Iterator[tuple[str, TcpProxy]]:
    url = make_url(service_url("CHATSTREAM_TEST_REDIS_URL"))
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 6379)
    yield f"redis://127.0.0.1:{proxy.port}/{url.database or 0}", proxy
    proxy.close()


def quota_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("chatstream.limiting.quotas") and r.levelno == logging.WARNING
    ]


def test_an_outage_lets_chats_through_unchecked_with_fail_open(
    make_server: Callable[..., AppServer],
    redis_proxy: tuple[str, TcpProxy],
    caplog: pytest.LogCaptureFixture,
) -> None:
    url, proxy = redis_proxy
    server = make_server(
        quota_tokens=100000,
        rate_limit_storage=url,
        redis_key_prefix=redis_prefix(),
        rate_limit_fail_open=True,
    )
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        first = client.post("/api/chat", json={"message": QUICK})
        assert first.headers["x-quota-remaining"] == "100000"
        spent = first.json()["message"]["usage"]["total_tokens"]
        wait_until(lambda: client.get("/api/usage").json()["used"] == spent)
        proxy.cut()
        for _ in range(2):
            through = client.post("/api/chat", json={"message": QUICK})
            assert through.status_code == 200, through.text
            assert "x-quota-remaining" not in through.headers  # nothing to say while down
        assert client.get("/api/usage").json()["error"]["code"] == "rate_limiter_unavailable"
        wait_until(lambda: len(quota_warnings(caplog)) >= 2, what="the outage is logged")
        proxy.restore()
        wait_until(lambda: client.get("/api/usage").status_code == 200, what="counts readable")
        back = client.post("/api/chat", json={"message": QUICK})
        assert back.headers["x-quota-remaining"] == str(100000 - spent)  # the two went uncounted
    warnings = quota_warnings(caplog)
    # Reads and writes each say once that the counts are unreachable, then that they are back.
    assert sum("unreachable" in w for w in warnings) == 2, warnings
    assert "letting chats through unchecked" in " ".join(warnings)
    assert sum("again" in w for w in warnings) >= 1, warnings


def test_an_outage_refuses_chats_by_default(
    make_server: Callable[..., AppServer],
    redis_proxy: tuple[str, TcpProxy],
    caplog: pytest.LogCaptureFixture,
) -> None:
    url, proxy = redis_proxy
    server = make_server(
        quota_tokens=100000, rate_limit_storage=url, redis_key_prefix=redis_prefix()
    )
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        assert client.post("/api/chat", json={"message": QUICK}).status_code == 200
        proxy.cut()
        refused = client.post("/api/chat", json={"message": QUICK})
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "rate_limiter_unavailable"
        assert refused.headers["retry-after"] == "1"
        proxy.restore()
        # Served again once it is back (a client retries after Retry-After).
        wait_until(
            lambda: client.post("/api/chat", json={"message": QUICK}).status_code == 200,
            what="chats served again",
        )
        assert "quota counts reachable again" in [r.getMessage() for r in caplog.records]
