"""Redis goes away and comes back (empty) mid-run: nothing is lost, nothing needs a restart."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.fleet.conftest import FleetFactory, last_seq
from tests.fleet.test_shared_runs import follow, messages
from tests.support.node import NodeScript, node_executable
from tests.support.redis_server import RedisServer
from tests.support.servers import FakeUpstreamThread
from tests.support.sse import Stream, iter_sse, read_stream
from tests.support.tcp_proxy import TcpProxy
from tests.support.wait import wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


def test_redis_restarted_mid_run(
    fleet: FleetFactory, fake: FakeUpstreamThread, own_redis: RedisServer
) -> None:
    a = fleet("a", env={"CHATSTREAM_REDIS_URL": own_redis.url})
    b = fleet("b", env={"CHATSTREAM_REDIS_URL": own_redis.url})
    with (
        httpx.Client(base_url=a.base_url, timeout=30) as client,
        client.stream(
            "POST", "/api/chat/stream", json={"message": "[[fake tokens=16 stall_after=5]] x"}
        ) as response,
    ):
        events = iter_sse(response)
        head = read_stream(events, stop_after=6)
        message_id = head.events[0].data["message_id"]
        session_id = head.events[0].data["session_id"]

        own_redis.stop()
        down = httpx.get(f"{a.base_url}/readyz", timeout=10)
        assert (down.status_code, down.json()["redis"]) == (503, "unreachable")
        fake.fake.release(wait_for=1)  # the answer goes on while Redis is away
        whole = Stream(events=head.events + read_stream(events).events)
    assert whole.done["status"] == "complete" and whole.done["persisted"] is True
    stored = [m for m in messages(a.base_url, session_id) if m["role"] == "assistant"]
    assert [(m["id"], m["content"]) for m in stored] == [(message_id, whole.text)]

    own_redis.start()  # back, and empty
    wait_until(lambda: httpx.get(f"{a.base_url}/readyz", timeout=10).status_code == 200)
    wait_until(lambda: httpx.get(f"{b.base_url}/readyz", timeout=10).status_code == 200)
    # The run that ended while Redis was away is in it again, whole: B can replay it.
    wait_until(
        lambda: (
            httpx.get(f"{b.base_url}/api/runs/{message_id}/events", timeout=10).status_code == 200
        ),
        what="the ended run mirrored again",
    )
    assert [e.data for e in follow(b.base_url, message_id).events] == [e.data for e in whole.events]
    # And the service works across instances without a restart.
    with (
        httpx.Client(base_url=a.base_url, timeout=30) as client,
        client.stream(
            "POST", "/api/chat/stream", json={"message": "[[fake tokens=12 interval_ms=20]] again"}
        ) as response,
    ):
        events = iter_sse(response)
        head = read_stream(events, stop_after=3)
        with ThreadPoolExecutor(max_workers=1) as pool:
            on_b = pool.submit(follow, b.base_url, head.events[0].data["message_id"])
            rest = read_stream(events)
            seen_on_b = on_b.result(timeout=30)
    assert seen_on_b.text == head.text + rest.text and seen_on_b.done["status"] == "complete"


def test_an_outage_longer_than_the_lease_takes_over_nothing(
    fleet: FleetFactory, fake: FakeUpstreamThread, redis_url: str
) -> None:
    """Redis cut off (its data kept) for two leases: when it is back, every lease looks
    lapsed, and still no live run may be taken from its owner."""
    target = make_url(redis_url)
    proxy = TcpProxy(target.host or "127.0.0.1", target.port or 6379)
    through = f"redis://127.0.0.1:{proxy.port}/{target.database or 0}"
    try:
        lease = {"run_lease_s": "1.5"}
        a = fleet("a", env={"CHATSTREAM_REDIS_URL": through}, **lease)
        b = fleet("b", env={"CHATSTREAM_REDIS_URL": through}, **lease)
        with (
            httpx.Client(base_url=a.base_url, timeout=30) as client,
            client.stream(
                "POST",
                "/api/chat/stream",
                json={"message": "[[fake tokens=10 stall_after=4]] hold"},
            ) as response,
        ):
            events = iter_sse(response)
            head = read_stream(events, stop_after=5)
            message_id = head.events[0].data["message_id"]
            wait_until(
                lambda: last_seq(httpx.get(f"{b.base_url}/api/runs/{message_id}", timeout=5)) >= 5
            )
            proxy.cut()
            down_at = time.monotonic()
            wait_until(lambda: time.monotonic() - down_at > 2 * 1.5, timeout=10, what="2 leases")
            proxy.restore()
            wait_until(lambda: httpx.get(f"{b.base_url}/readyz", timeout=5).status_code == 200)
            # Both sweepers have had time to look (a lease of steady Redis, then a sweep).
            wait_until(lambda: time.monotonic() - down_at > 5 * 1.5, timeout=15, what="sweeps")
            fake.fake.release(wait_for=1)
            rest = read_stream(events)
    finally:
        proxy.close()
    assert rest.done["status"] == "complete", rest.types
    assert "taken over" not in a.log_text() and "stopped renewing" not in b.log_text()


def test_an_ai_sdk_stream_from_another_instance_ends_with_an_error_when_redis_is_lost(
    fleet: FleetFactory, fake: FakeUpstreamThread, redis_url: str
) -> None:
    """The AI SDK's reconnect on B follows A's run through Redis; B then loses Redis.

    Its stream must still end as the protocol says (an `error` part, `finish`,
    `[DONE]`), which the SDK reports as an error, not as a broken connection.
    """
    target = make_url(redis_url)
    proxy = TcpProxy(target.host or "127.0.0.1", target.port or 6379)
    through = f"redis://127.0.0.1:{proxy.port}/{target.database or 0}"
    node = node_executable()
    try:
        lease = {"run_lease_s": "1"}
        a = fleet("a", **lease)
        b = fleet("b", env={"CHATSTREAM_REDIS_URL": through}, **lease)
        body = {
            "id": "lost-on-b",
            "resume": True,
            "messages": [
                {
                    "id": "u1",
                    "role": "user",
                    "parts": [{"type": "text", "text": "[[fake tokens=12 stall_after=4]] go"}],
                }
            ],
        }
        with httpx.stream("POST", f"{a.base_url}/api/ui/chat", json=body, timeout=30) as started:
            assert started.status_code == 200
            next(started.iter_lines())  # the run is live on A; the request may leave now
        client = NodeScript(
            node,
            "ui_chat.mjs",
            {
                "api": f"{b.base_url}/api/ui/chat",
                "action": "reconnect",
                "chatId": "lost-on-b",
                "notifyAfterDeltas": 4,
            },
        )
        try:
            client.expect("deltas")  # B follows the run through Redis
            proxy.cut()
            result = client.result()
        finally:
            client.close()
    finally:
        proxy.close()
        fake.fake.release()
    types = [chunk["type"] for chunk in result["chunks"]]
    assert types[0] == "start" and types.count("text-delta") == 4, types
    assert types[-3:] == ["error", "finish-step", "finish"], types
    assert result["chunks"][-1]["finishReason"] == "error"
    assert "stream is not reachable" in result["chunks"][-3]["errorText"]
