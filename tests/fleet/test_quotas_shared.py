"""One owner's token quota, shared by two real `chatstream serve` instances through Redis.

Tokens a run spends on one instance are counted against the quota the other
checks; each instance's answers carry the same X-Quota-* figures, and every
quota key in Redis expires with its window.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from tests.fleet.conftest import FleetFactory
from tests.support.sentinels import SENTINEL_JWT_SECRET, TOKEN_ALICE
from tests.support.services import redis_prefix
from tests.support.sse import read_stream
from tests.support.wait import wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

DAY_S = 86400
EXPIRY_GRACE_S = 60


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


def used(http: httpx.Client) -> int:
    response = http.get("/api/usage")
    assert response.status_code == 200, response.text
    return int(response.json()["used"])


def stream(http: httpx.Client, body: dict[str, Any]) -> tuple[httpx.Response, dict[str, Any]]:
    with http.stream("POST", "/api/chat/stream", json=body) as response:
        assert response.status_code == 200, response.read()
        return response, read_stream(response).done


def test_a_quota_is_shared_by_two_instances(fleet: FleetFactory, client: redis.Redis) -> None:
    prefix = redis_prefix()
    settings = {
        "env": {"CHATSTREAM_REDIS_KEY_PREFIX": prefix},
        "quota_tokens": "30",
        "auth": "jwt",
        "jwt_secret": SENTINEL_JWT_SECRET,
    }
    one, two = fleet("one", **settings), fleet("two", **settings)
    headers = {"Authorization": f"Bearer {TOKEN_ALICE}"}
    with (
        httpx.Client(base_url=one.base_url, headers=headers, timeout=20) as first,
        httpx.Client(base_url=two.base_url, headers=headers, timeout=20) as second,
    ):
        response, done = stream(first, {"message": "[[fake tokens=4]] a little"})
        assert response.headers["x-quota-remaining"] == "30"
        spent = done["usage"]["total_tokens"]
        assert 0 < spent < 30
        # Counted on one instance, seen by the other.
        wait_until(lambda: used(second) == spent, what="the other instance sees the tokens")
        answer = second.post("/api/chat", json={"message": "[[fake tokens=40]] a lot"})
        assert answer.status_code == 200
        assert answer.headers["x-quota-remaining"] == str(30 - spent)
        spent += answer.json()["message"]["usage"]["total_tokens"]
        wait_until(lambda: used(first) == spent, what="the first instance sees both runs")

        for http in (first, second):
            refused = http.post("/api/chat", json={"message": "[[fake tokens=2]] more"})
            assert refused.status_code == 429
            assert refused.json()["error"]["code"] == "quota_exceeded"
            assert refused.headers["x-quota-remaining"] == "0"
            assert 1 <= int(refused.headers["retry-after"]) <= DAY_S

    keys = list(client.scan_iter(match=f"{prefix}:quota:*"))
    assert len(keys) == 1  # one hash per owner and window
    assert client.hgetall(keys[0]) == {b"test-model": str(spent).encode()}
    assert 0 < client.ttl(keys[0]) <= DAY_S + EXPIRY_GRACE_S
