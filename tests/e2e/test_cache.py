"""The answer cache: exact repeats answered without the model, persisted like any answer."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.servers import AppServer, FakeUpstreamThread
from tests.support.services import redis_prefix, service_url
from tests.support.sse import Stream, read_stream
from tests.support.wait import wait_until


def chat(server: AppServer, **body: Any) -> Stream:
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        stream = read_stream(client.post("/api/chat/stream", json=body))
    assert stream.types[-1] == "done", stream.types
    return stream


def cached(stream: Stream) -> bool:
    return bool(stream.done["metrics"].get("cached"))


def test_an_exact_repeat_is_answered_from_the_cache(
    make_server: Callable[..., AppServer], fake: FakeUpstreamThread
) -> None:
    server = make_server(cache_ttl_s=60)
    first = chat(server, message="[[fake tokens=12]] what is chatstream?")
    assert len(fake.fake.requests) == 1 and not cached(first)
    second = chat(server, message="[[fake tokens=12]] what is chatstream?")
    assert len(fake.fake.requests) == 1, "no upstream call for a hit"
    assert cached(second) and second.done["status"] == "complete"
    assert second.text == first.text and len(second.of("delta")) > 1
    # Persisted like any answer, marked as cached.
    session_id = second.of("start")[0].data["session_id"]
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        messages = client.get(f"/api/sessions/{session_id}/messages").json()["items"]
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[1]["content"] == first.text and messages[1]["metrics"]["cached"] is True
    assert messages[1]["id"] == second.done["message_id"]


def test_a_miss_when_anything_in_the_key_differs(
    make_server: Callable[..., AppServer], fake: FakeUpstreamThread
) -> None:
    server = make_server(cache_ttl_s=60)
    base = {"message": "same question"}
    first = chat(server, **base)
    calls = 1
    variants: list[dict[str, Any]] = [
        {"model": "other-model"},
        {"system_prompt": "Answer in French."},
        {"temperature": 0},  # not the same as unset
        {"max_tokens": 77},
        {"message": "same question!"},
        # The same message later in a conversation: another context.
        {"session_id": first.of("start")[0].data["session_id"]},
    ]
    for variant in variants:
        stream = chat(server, **{**base, **variant})
        calls += 1
        assert len(fake.fake.requests) == calls, variant
        assert not cached(stream), variant
    # A temperature above 0 is never answered from the cache, even repeated.
    for _ in range(2):
        assert not cached(chat(server, **base, temperature=0.7))
        calls += 1
    assert len(fake.fake.requests) == calls
    # Each cacheable variant is a hit the second time.
    assert cached(chat(server, **base, temperature=0))
    assert cached(chat(server, **base, model="other-model"))
    assert cached(chat(server, **base))
    assert len(fake.fake.requests) == calls


def test_entries_expire(make_server: Callable[..., AppServer], fake: FakeUpstreamThread) -> None:
    server = make_server(cache_ttl_s=0.5)
    chat(server, message="expiring")
    stored_at = time.monotonic()
    assert cached(chat(server, message="expiring"))
    wait_until(lambda: time.monotonic() - stored_at > 0.6, what="the entry's TTL has passed")
    assert not cached(chat(server, message="expiring"))
    assert len(fake.fake.requests) == 2


def test_only_whole_tool_free_answers_are_kept(
    make_server: Callable[..., AppServer], fake: FakeUpstreamThread
) -> None:
    server = make_server(cache_ttl_s=60)
    for _ in range(2):
        assert not cached(chat(server, message="[[fake tool=get_current_time]] time?"))
    assert len(fake.fake.requests) == 4  # two rounds each
    for _ in range(2):
        failed = chat(server, message="[[fake tokens=9 drop_after=4]] cut")
        assert failed.done["status"] == "error" and not cached(failed)
    assert len(fake.fake.requests) == 6


def test_off_by_default(server: AppServer, fake: FakeUpstreamThread) -> None:
    for _ in range(2):
        assert "cached" not in chat(server, message="hello").done["metrics"]
    assert len(fake.fake.requests) == 2


@pytest.mark.redis
def test_the_cache_is_shared_through_redis(
    make_server: Callable[..., AppServer], fake: FakeUpstreamThread, tmp_path: Path
) -> None:
    url = service_url("CHATSTREAM_TEST_REDIS_URL")
    settings = {
        "cache_ttl_s": 60,
        "cache_storage": url,
        "redis_key_prefix": redis_prefix(),
    }
    one = make_server(**settings)
    two = make_server(**settings, spool_dir=tmp_path / "second-spool")
    first = chat(one, message="[[fake tokens=6]] shared")
    second = chat(two, message="[[fake tokens=6]] shared")
    assert cached(second) and second.text == first.text
    assert len(fake.fake.requests) == 1


def test_a_regeneration_is_never_answered_from_the_cache(
    make_server: Callable[..., AppServer], fake: FakeUpstreamThread
) -> None:
    server = make_server(cache_ttl_s=60)
    first = chat(server, message="[[fake tokens=12]] once more")
    session, question = first.events[0].data["session_id"], first.events[0].data["user_message_id"]
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        path = f"/api/sessions/{session}/messages/{question}/regenerate"
        again = read_stream(client.post(path, json={"stream": True}))
    # The same context as the first answer's, and yet the model was asked again.
    assert len(fake.fake.requests) == 2
    assert fake.fake.requests[0]["messages"] == fake.fake.requests[1]["messages"]
    assert again.done["status"] == "complete" and not cached(again)
