"""Every key chatstream writes to Redis expires: none is left there forever (issue #24).

Two real instances on one Redis, under a key prefix of the test's own, use
every feature that writes keys: shared runs (followed and cancelled from the
other instance, taken over when their instance dies), the rate window and
the run cap, idempotency, and the answer cache (a miss, then a hit). Redis
is scanned while a run is live and once everything has ended: every key
must have an expiry (`PTTL` answers -1 for a key without one).
"""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import redis

from chatstream.upstream.cache import RedisAnswerStore
from tests.fleet.conftest import FleetFactory, last_seq
from tests.support.servers import FakeUpstreamThread
from tests.support.services import redis_prefix, service_url
from tests.support.sse import Stream, iter_sse, read_stream
from tests.support.wait import wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

CACHE_TTL_S = 60

# What each key is, with its ids taken out.
_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{64}")


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


def ttls(client: redis.Redis, prefix: str) -> dict[str, int]:
    """Every key under `prefix`, and its PTTL (ms; -1 for a key without an expiry)."""
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    pipeline = client.pipeline(transaction=False)
    for key in keys:
        pipeline.pttl(key)
    found: dict[str, int] = {}
    for key, ttl in zip(keys, pipeline.execute(), strict=True):
        if ttl != -2:  # expired between the scan and the TTL
            found[key.decode()] = int(ttl)
    return found


def kinds(found: dict[str, int], prefix: str) -> set[str]:
    """What the keys are, their ids replaced by `<id>`."""
    return {_ID.sub("<id>", key.removeprefix(prefix + ":")) for key in found}


def assert_every_key_expires(found: dict[str, int]) -> None:
    forever = sorted(key for key, ttl in found.items() if ttl < 0)
    assert not forever, f"Redis keys without an expiry (PTTL -1): {forever}"


def chat(on: httpx.Client, message: str, **body: str) -> Stream:
    with on.stream("POST", "/api/chat/stream", json={"message": message, **body}) as response:
        assert response.status_code == 200, response.read()
        return read_stream(response)


def follow(base_url: str, message_id: str) -> Stream:
    with httpx.stream("GET", f"{base_url}/api/runs/{message_id}/events", timeout=30) as response:
        assert response.status_code == 200, response.read()
        return read_stream(response)


def test_every_key_two_instances_write_expires(
    fleet: FleetFactory, fake: FakeUpstreamThread, client: redis.Redis
) -> None:
    prefix = redis_prefix()
    settings = {
        "rate_limit": "1000/minute",  # the window, in Redis
        "max_concurrent_runs": "50",  # the run cap's slots, in Redis
        "cache_ttl_s": str(CACHE_TTL_S),  # the answer cache, in Redis
        "run_lease_s": "1.5",
        "checkpoint_interval_s": "0.05",
    }
    env = {"CHATSTREAM_REDIS_KEY_PREFIX": prefix}
    a, b = fleet("a", env=env, **settings), fleet("b", env=env, **settings)
    with (
        httpx.Client(base_url=a.base_url, timeout=30) as on_a,
        httpx.Client(base_url=b.base_url, timeout=30) as on_b,
    ):
        # The answer cache: a miss on A, then a hit on B.
        missed = chat(on_a, "[[fake tokens=6]] cache me")
        hit = chat(on_b, "[[fake tokens=6]] cache me")
        assert hit.done["metrics"].get("cached") and hit.text == missed.text

        # A live run on A, followed from B, then cancelled from B.
        body = {"message": "[[fake tokens=20 stall_after=4]] hold", "client_message_id": "ttl-1"}
        with on_a.stream("POST", "/api/chat/stream", json=body) as response:
            events = iter_sse(response)
            head = read_stream(events, stop_after=5)
            message_id = head.events[0].data["message_id"]
            wait_until(
                lambda: last_seq(on_b.get(f"/api/runs/{message_id}")) >= 5,
                what="B sees the run's events",
            )
            live = ttls(client, prefix)
            assert {
                "shared:run:<id>",
                "shared:run:<id>:events",
                "shared:session:<id>:runs",
                "shared:leases",
                "runs:ip:127.0.0.1",  # the run cap's slots, keyed by the client's address
            } <= kinds(live, prefix), sorted(live)
            assert any(kind.startswith("limits:") for kind in kinds(live, prefix)), sorted(live)
            assert_every_key_expires(live)
            with ThreadPoolExecutor(max_workers=1) as pool:
                followed = pool.submit(follow, b.base_url, message_id)
                wait_until(lambda: fake.fake.stalled_streams >= 1, what="the run stalls")
                assert on_b.post(f"/api/runs/{message_id}/cancel").status_code == 202
                rest = read_stream(events)
                assert followed.result(timeout=30).done["status"] == "cancelled"
        assert rest.done["status"] == "cancelled"

        # Idempotency: the same client_message_id answers with the first run, replayed.
        again = chat(on_b, body["message"], client_message_id="ttl-1")
        assert again.events[0].data["message_id"] == message_id

        # A killed mid-run: B takes the run over and ends it.
        with on_a.stream(
            "POST", "/api/chat/stream", json=body | {"client_message_id": "ttl-2"}
        ) as r:
            head = read_stream(iter_sse(r), stop_after=5)
            orphan = head.events[0].data["message_id"]
            wait_until(
                lambda: last_seq(on_b.get(f"/api/runs/{orphan}")) >= 5,
                what="B sees the run's events",
            )
            a.process.send_signal(signal.SIGKILL)
            a.process.wait(10)
        wait_until(
            lambda: on_b.get(f"/api/runs/{orphan}").json()["status"] == "interrupted",
            timeout=15,
            what="B ends the run of the killed instance",
        )

    ended = ttls(client, prefix)
    assert {
        "shared:run:<id>",
        "shared:run:<id>:events",
        "cache:a:<id>",
        "cache:index",
        "cache:sizes",
        "cache:bytes",
    } <= kinds(ended, prefix), sorted(ended)
    assert_every_key_expires(ended)
    books = {key: ttl for key, ttl in ended.items() if key.startswith(f"{prefix}:cache:")}
    assert max(books.values()) <= CACHE_TTL_S * 1000, books  # CHATSTREAM_CACHE_TTL_S, no longer


def test_the_answer_caches_books_expire_with_its_last_entry(client: redis.Redis) -> None:
    """The index, sizes and total live as long as the longest-lived entry, and go with it."""
    url = service_url("CHATSTREAM_TEST_REDIS_URL")
    kept, brief = redis_prefix(), redis_prefix()

    def books(prefix: str) -> list[str]:
        return [f"{prefix}:cache:{name}" for name in ("index", "sizes", "bytes")]

    async def scenario() -> None:
        store = RedisAnswerStore(url, kept, 1000)
        try:
            await store.put("long", b"x" * 10, ttl_s=60)
            await store.put("short", b"y" * 10, ttl_s=0.3)  # never shortens the books' life
            await store.put("huge", b"z" * 2000, ttl_s=60)  # over the budget: not kept
        finally:
            await store.aclose()
        store = RedisAnswerStore(url, brief, 1000)
        try:
            await store.put("only", b"o" * 10, ttl_s=0.2)
        finally:
            await store.aclose()

    asyncio.run(scenario())
    for key in books(kept):
        assert 50_000 < client.pttl(key) <= 60_000, key
    assert_every_key_expires(ttls(client, kept))  # the entries too
    wait_until(lambda: not client.exists(*books(brief)), what="the books go with their entry")
