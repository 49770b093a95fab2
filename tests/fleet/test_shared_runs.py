"""Two instances on one PostgreSQL and one Redis are one service (contract §6)."""

from __future__ import annotations

import logging
import signal
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.fleet.conftest import FleetFactory, last_seq
from tests.support.servers import FakeUpstreamThread
from tests.support.sse import Stream, iter_sse, read_stream
from tests.support.wait import wait_until
from tests.support.ws import dones, open_socket_at, recv, recv_until, send

pytestmark = [pytest.mark.postgres, pytest.mark.redis]
log = logging.getLogger(__name__)


def follow(base_url: str, message_id: str, **headers: str) -> Stream:
    with httpx.stream(
        "GET", f"{base_url}/api/runs/{message_id}/events", headers=headers, timeout=30
    ) as response:
        assert response.status_code == 200, response.read()
        return read_stream(response)


def messages(base_url: str, session_id: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{base_url}/api/sessions/{session_id}/messages", timeout=10)
    return list(answer.json()["items"])


def test_a_run_on_one_instance_is_followed_from_another(
    fleet: FleetFactory, fake: FakeUpstreamThread
) -> None:
    a, b = fleet("a"), fleet("b")
    with (
        httpx.Client(base_url=a.base_url, timeout=30) as client,
        client.stream(
            "POST", "/api/chat/stream", json={"message": "[[fake tokens=20 stall_after=8]] hi"}
        ) as response,
    ):
        events = iter_sse(response)
        head = read_stream(events, stop_after=6)
        message_id = head.events[0].data["message_id"]
        # On B, from the start and after an id (SSE), and after a seq (WebSocket), live.
        with ThreadPoolExecutor(max_workers=3) as pool:
            whole = pool.submit(follow, b.base_url, message_id)
            later = pool.submit(follow, b.base_url, message_id, **{"Last-Event-ID": "4"})
            with open_socket_at(b.ws_url) as ws:
                send(ws, {"type": "resume", "message_id": message_id, "after": 5})
                first = recv(ws)
                fake.fake.release(wait_for=1)
                frames = [first, *recv_until(ws, lambda fs: dones(fs) == 1)]
            seen_by_a = Stream(events=head.events + read_stream(events).events)
            seen_whole, seen_later = whole.result(), later.result()
    assert seen_by_a.types[-1] == "done"
    assert [e.data for e in seen_whole.events] == [e.data for e in seen_by_a.events]
    assert [e.id for e in seen_whole.events] == [e.id for e in seen_by_a.events]
    assert [e.id for e in seen_later.events] == [e.id for e in seen_by_a.events[4:]]
    assert [f["seq"] for f in frames] == [e.id for e in seen_by_a.events[5:]]
    assert frames[-1]["type"] == "done"
    # The state, from either instance.
    for server in (a, b):
        state = httpx.get(f"{server.base_url}/api/runs/{message_id}", timeout=10).json()
        assert (state["status"], state["last_seq"]) == ("complete", seen_by_a.events[-1].id)


def test_cancel_from_another_instance_ends_the_run_at_once(
    fleet: FleetFactory, fake: FakeUpstreamThread
) -> None:
    a, b = fleet("a"), fleet("b")
    ended_at: list[float] = []
    with (
        httpx.Client(base_url=a.base_url, timeout=30) as client,
        client.stream(
            "POST", "/api/chat/stream", json={"message": "[[fake tokens=20 stall_after=4]] hold"}
        ) as response,
    ):
        events = iter_sse(response)
        head = read_stream(events, stop_after=5)
        message_id = head.events[0].data["message_id"]
        rest: list[Stream] = []

        def read_rest() -> None:
            rest.append(read_stream(events))
            ended_at.append(time.monotonic())

        reader = threading.Thread(target=read_rest)
        reader.start()
        with httpx.Client(base_url=b.base_url, timeout=10) as on_b:
            # B has served a request before (its first one pays for warming up).
            assert on_b.get(f"/api/runs/{message_id}").json()["status"] == "running"
            asked_at = time.monotonic()
            accepted = on_b.post(f"/api/runs/{message_id}/cancel")
            answered_at = time.monotonic()
        reader.join(30)
        log.info("cancel answered by B after %.1f ms", (answered_at - asked_at) * 1000)
    assert accepted.status_code == 202
    took = ended_at[0] - asked_at
    log.info("cancel from B to done on A: %.1f ms", took * 1000)
    assert took < 0.1, f"{took * 1000:.0f} ms"
    done = rest[0].done
    assert (done["status"], done["persisted"]) == ("cancelled", True)
    session_id = head.events[0].data["session_id"]
    stored = [m for m in messages(b.base_url, session_id) if m["role"] == "assistant"]
    assert [(m["id"], m["status"]) for m in stored] == [(message_id, "cancelled")]
    assert stored[0]["content"] == head.text + rest[0].text
    again = httpx.post(f"{b.base_url}/api/runs/{message_id}/cancel", timeout=10)
    assert again.status_code == 409


def test_an_instance_killed_mid_run_is_ended_by_another(
    fleet: FleetFactory, fake: FakeUpstreamThread
) -> None:
    a = fleet("a", run_lease_s="1.5", checkpoint_interval_s="0.05")
    b = fleet("b", run_lease_s="1.5")
    with httpx.Client(base_url=a.base_url, timeout=30) as client:
        context = client.stream(
            "POST", "/api/chat/stream", json={"message": "[[fake tokens=20 stall_after=7]] x"}
        )
        head = read_stream(iter_sse(context.__enter__()), stop_after=8)
        message_id = head.events[0].data["message_id"]
        session_id = head.events[0].data["session_id"]
        with ThreadPoolExecutor(max_workers=1) as pool:
            on_b = pool.submit(follow, b.base_url, message_id)
            wait_until(
                lambda: last_seq(httpx.get(f"{b.base_url}/api/runs/{message_id}", timeout=5)) >= 8,
                what="B sees the run's events",
            )
            killed_at = time.monotonic()
            a.process.send_signal(signal.SIGKILL)
            a.process.wait(10)
            seen = on_b.result(timeout=30)
        took = time.monotonic() - killed_at
    assert seen.types[-2:] == ["error", "done"]
    assert seen.of("error")[0].data["code"] == "server_shutdown"
    assert seen.of("error")[0].data["retryable"] is True
    assert seen.done["status"] == "interrupted" and seen.done["persisted"] is True
    assert took < 1.5 + 2.0, took  # within the lease (and a sweep)
    stored = [m for m in messages(b.base_url, session_id) if m["role"] == "assistant"]
    assert [(m["id"], m["status"], m["content"]) for m in stored] == [
        (message_id, "interrupted", seen.text)
    ]
    # Written by B from Redis' copy, the answer still follows its question.
    assert stored[0]["parent_id"] == head.events[0].data["user_message_id"]
    # A comes back: its own recovery finds the run written, and writes nothing twice.
    restarted = fleet("a", run_lease_s="1.5")
    restarted.wait_for_line("recovered")
    assert [m["id"] for m in messages(b.base_url, session_id)] == [
        m["id"] for m in messages(restarted.base_url, session_id)
    ]
    assert len([m for m in messages(b.base_url, session_id) if m["role"] == "assistant"]) == 1


def test_one_client_message_id_sent_to_both_starts_one_run(
    fleet: FleetFactory, fake: FakeUpstreamThread
) -> None:
    a, b = fleet("a"), fleet("b")
    body = {"message": "[[fake tokens=15 interval_ms=10]] once", "client_message_id": "k-1"}

    def chat(base_url: str) -> Stream:
        with (
            httpx.Client(base_url=base_url, timeout=30) as client,
            client.stream("POST", "/api/chat/stream", json=body) as response,
        ):
            assert response.status_code == 200, response.read()
            return read_stream(response)

    with ThreadPoolExecutor(max_workers=2) as pool:
        one, two = pool.map(chat, [a.base_url, b.base_url])
    assert [e.data for e in one.events] == [e.data for e in two.events]
    assert one.done["status"] == "complete"
    assert len(fake.fake.requests) == 1
    session_id = one.events[0].data["session_id"]
    assert [m["role"] for m in messages(a.base_url, session_id)] == ["user", "assistant"]


def test_limits_and_the_run_cap_are_global(fleet: FleetFactory, fake: FakeUpstreamThread) -> None:
    a = fleet("a", rate_limit="3/minute", max_concurrent_runs="1")
    b = fleet("b", rate_limit="3/minute", max_concurrent_runs="1")
    quick = {"message": "[[fake tokens=2]] hi"}
    with (
        httpx.Client(base_url=a.base_url, timeout=30) as one,
        httpx.Client(base_url=b.base_url, timeout=30) as two,
    ):
        with one.stream(
            "POST", "/api/chat/stream", json={"message": "[[fake tokens=4 stall_after=1]] hold"}
        ) as held:
            events = iter_sse(held)
            message_id = read_stream(events, stop_after=2).events[0].data["message_id"]
            refused = two.post("/api/chat", json=quick)
            assert (refused.status_code, refused.json()["error"]["code"]) == (429, "too_many_runs")
            assert two.post(f"/api/runs/{message_id}/cancel").status_code == 202
            assert read_stream(events).done["status"] == "cancelled"
        assert two.post("/api/chat", json=quick).status_code == 200
        assert one.post("/api/chat", json=quick).status_code == 200
        # 3 per minute across both: the held run, then one on each.
        limited = [one.post("/api/chat", json=quick), two.post("/api/chat", json=quick)]
    assert [r.status_code for r in limited] == [429, 429]
    assert {r.json()["error"]["code"] for r in limited} == {"rate_limited"}


def test_a_run_of_a_session_is_found_from_another_instance(
    fleet: FleetFactory, fake: FakeUpstreamThread
) -> None:
    """Deleting a session on B cancels its live run on A (lookups by session are shared)."""
    a, b = fleet("a"), fleet("b")
    with (
        httpx.Client(base_url=a.base_url, timeout=30) as client,
        client.stream(
            "POST", "/api/chat/stream", json={"message": "[[fake tokens=8 stall_after=2]] x"}
        ) as response,
    ):
        events = iter_sse(response)
        head = read_stream(events, stop_after=3)
        session_id = head.events[0].data["session_id"]
        assert (
            httpx.delete(f"{b.base_url}/api/sessions/{session_id}", timeout=10).status_code == 204
        )
        done = read_stream(events).done
    assert (done["status"], done["persisted"]) == ("cancelled", False)
    assert uuid.UUID(done["message_id"])


def test_a_remote_follower_outlasts_a_long_silence(
    fleet: FleetFactory, fake: FakeUpstreamThread
) -> None:
    """Quiet longer than one Redis read may block: B's follower waits on, with keepalives."""
    a = fleet("a")
    b = fleet("b", keepalive_interval_s="1")
    with (
        httpx.Client(base_url=a.base_url, timeout=30) as client,
        client.stream(
            "POST", "/api/chat/stream", json={"message": "[[fake tokens=8 stall_after=3]] hold"}
        ) as response,
    ):
        events = iter_sse(response)
        head = read_stream(events, stop_after=4)
        message_id = head.events[0].data["message_id"]
        with httpx.stream("GET", f"{b.base_url}/api/runs/{message_id}/events", timeout=30) as on_b:
            items = iter_sse(on_b)
            keepalives = 0
            seen = Stream()
            for item in items:
                if isinstance(item, str):
                    keepalives += 1
                    if keepalives == 7:  # seven idle seconds: past any single blocking read
                        fake.fake.release(wait_for=1)
                    continue
                seen.events.append(item)
                if item.type == "done":
                    break
        rest = read_stream(events)
    assert keepalives >= 7
    assert seen.text == head.text + rest.text and seen.done["status"] == "complete"
