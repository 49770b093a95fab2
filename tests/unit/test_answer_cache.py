"""The answer cache's stores and keys, without a server."""

from __future__ import annotations

import asyncio

import pytest

from chatstream.upstream.cache import (
    MemoryAnswerStore,
    RedisAnswerStore,
    cache_key,
    complete_answer,
)
from chatstream.upstream.stream import UpstreamRequest
from tests.support.services import redis_prefix, service_url


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def request(**changes: object) -> UpstreamRequest:
    values: dict[str, object] = {
        "model": "m",
        "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}],
        "max_tokens": 10,
    }
    values.update(changes)
    return UpstreamRequest(**values)  # type: ignore[arg-type]


def test_the_key_is_everything_that_decides_the_answer() -> None:
    base = cache_key(request())
    assert base is not None and base == cache_key(request())
    others = [
        request(model="n"),
        request(messages=[{"role": "user", "content": "q"}]),
        request(messages=[{"role": "system", "content": "t"}, {"role": "user", "content": "q"}]),
        request(temperature=0),
        request(max_tokens=11),
        request(tools=[{"type": "function", "function": {"name": "f"}}]),
    ]
    keys = {cache_key(r) for r in others}
    assert None not in keys and base not in keys and len(keys) == len(others)
    assert cache_key(request(temperature=0.2)) is None
    tool_round = request(
        messages=[{"role": "user", "content": "q"}, {"role": "tool", "content": "r"}]
    )
    assert cache_key(tool_round) is None


def test_only_a_whole_answer_without_tools_is_complete() -> None:
    def chunk(delta: dict[str, object], finish: str | None = None) -> dict[str, object]:
        return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    text = [[chunk({"content": "a"})], [chunk({}, "stop")]]
    assert complete_answer(text)
    assert not complete_answer(text[:1])  # cut short
    assert not complete_answer([[chunk({"tool_calls": [{"index": 0}]})], [chunk({}, "tool_calls")]])
    assert not complete_answer([*text, [{"error": {"message": "x"}}]])


def test_memory_entries_expire() -> None:
    clock = Clock()
    store = MemoryAnswerStore(1000, clock)

    async def scenario() -> None:
        await store.put("k", b"value", ttl_s=5)
        clock.now = 4.9
        assert await store.get("k") == b"value"
        clock.now = 5.0
        assert await store.get("k") is None
        assert store.size == 0

    asyncio.run(scenario())


def test_memory_stays_within_its_byte_budget() -> None:
    clock = Clock()
    store = MemoryAnswerStore(100, clock)

    async def scenario() -> None:
        for name in "abcd":
            await store.put(name, b"x" * 30, ttl_s=60)
        assert store.size <= 100 and len(store) == 3
        assert await store.get("a") is None  # the least recently used went first
        assert await store.get("b") == b"x" * 30
        await store.put("e", b"y" * 30, ttl_s=60)
        assert await store.get("b") is not None and await store.get("c") is None
        await store.put("huge", b"z" * 101, ttl_s=60)  # larger than the budget: not kept
        assert await store.get("huge") is None and store.size <= 100

    asyncio.run(scenario())


@pytest.mark.redis
def test_redis_stays_within_its_byte_budget_and_expires() -> None:
    url = service_url("CHATSTREAM_TEST_REDIS_URL")
    store = RedisAnswerStore(url, redis_prefix(), 100)

    async def scenario() -> None:
        try:
            for name in "abcd":
                await store.put(name, b"x" * 30, ttl_s=60)
            assert await store.size() == 90
            assert await store.get("a") is None  # the soonest to expire went first
            assert await store.get("d") == b"x" * 30
            await store.put("d", b"w" * 40, ttl_s=60)  # a replaced entry is counted once
            assert await store.size() == 100
            await store.put("huge", b"z" * 101, ttl_s=60)
            assert await store.get("huge") is None
            await store.put("brief", b"b" * 10, ttl_s=0.05)
            await asyncio.sleep(0)
            deadline = asyncio.get_running_loop().time() + 5
            while await store.get("brief") is not None:
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.02)
            await store.put("after", b"a" * 5, ttl_s=60)  # the books drop expired entries
            assert await store.size() <= 100
        finally:
            await store.aclose()

    asyncio.run(scenario())
