"""A session's live state across two real instances on one PostgreSQL and one Redis.

A run lives on instance A; what B says of the session (`active_run`), what
a tab watching it on B hears, and what a message sent to B does while the
run lives (`if_busy`), are exactly what A would say and do.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from tests.fleet.conftest import FleetFactory
from tests.support.process import ServeProcess
from tests.support.servers import FakeUpstreamThread
from tests.support.session_watch import Watcher
from tests.support.sse import SSEEvent, Stream, iter_sse, read_stream
from tests.support.wait import wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

STALLED = "[[fake tokens=6 stall_after=2]] hold on"
FAST = {"keepalive_interval_s": "0.2"}  # a closed tab is noticed at once


def new_session(server: ServeProcess) -> str:
    answer = httpx.post(f"{server.base_url}/api/sessions", json={}, timeout=10)
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


@contextmanager
def live_run(server: ServeProcess, session_id: str) -> Iterator[tuple[str, Iterator[Any]]]:
    """A run held live on `server` (at its stall): its message id and the rest of its events."""
    with (
        httpx.Client(base_url=server.base_url, timeout=30) as client,
        client.stream(
            "POST", "/api/chat/stream", json={"message": STALLED, "session_id": session_id}
        ) as response,
    ):
        assert response.status_code == 200, response.read()
        events = iter_sse(response)
        head = read_stream(events, stop_after=3)
        yield head.events[0].data["message_id"], events


def chat(server: ServeProcess, session_id: str, message: str, **fields: Any) -> httpx.Response:
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        body = {"message": message, "session_id": session_id, **fields}
        with client.stream("POST", "/api/chat/stream", json=body) as response:
            response.read()
            return response


def stream_of(response: httpx.Response) -> Stream:
    return read_stream(iter_sse(httpx.Response(200, content=response.content)))


def session(server: ServeProcess, session_id: str) -> dict[str, Any]:
    return dict(httpx.get(f"{server.base_url}/api/sessions/{session_id}", timeout=10).json())


def stored(server: ServeProcess, session_id: str) -> dict[str, dict[str, Any]]:
    answer = httpx.get(f"{server.base_url}/api/sessions/{session_id}/messages", timeout=10)
    return {m["id"]: m for m in answer.json()["items"]}


def test_another_instance_sees_the_live_run_and_refuses_a_second_message(
    fleet: FleetFactory, fake: FakeUpstreamThread
) -> None:
    a, b = fleet("a"), fleet("b")
    session_id = new_session(a)
    with live_run(a, session_id) as (message_id, events):
        wait_until(
            lambda: session(b, session_id)["active_run"] == {"message_id": message_id},
            what="B sees A's live run",
        )
        listed = httpx.get(f"{b.base_url}/api/sessions", timeout=10).json()["items"]
        assert [s["active_run"] for s in listed if s["id"] == session_id] == [
            {"message_id": message_id}
        ]
        refused = chat(b, session_id, "me too")
        assert refused.status_code == 409
        error = httpx.Response(409, content=refused.content).json()["error"]
        assert (error["code"], error["details"]) == ("run_in_progress", {"message_id": message_id})
        fake.fake.release(wait_for=1)
        assert read_stream(events).done["status"] == "complete"
    assert session(b, session_id)["active_run"] is None
    # Refused leaving no trace; and once `done` is seen, the session takes the next message.
    assert [m["role"] for m in stored(b, session_id).values()] == ["user", "assistant"]
    assert stream_of(chat(a, session_id, "next")).done["status"] == "complete"


def test_messages_sent_at_once_to_two_instances_start_one_run(
    fleet: FleetFactory, fake: FakeUpstreamThread
) -> None:
    a, b = fleet("a"), fleet("b")
    session_id = new_session(a)
    answered: list[int] = []

    def send_one(server: ServeProcess) -> int:
        with (
            httpx.Client(base_url=server.base_url, timeout=30) as client,
            client.stream(
                "POST", "/api/chat/stream", json={"message": STALLED, "session_id": session_id}
            ) as response,
        ):
            answered.append(response.status_code)
            if response.status_code == 200:
                wait_until(lambda: len(answered) == 8, what="every answer")
                fake.fake.release(wait_for=1)
            response.read()
            return response.status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = sorted(pool.map(send_one, [a, b] * 4))
    assert statuses == [200] + [409] * 7


def test_interrupt_on_another_instance_cancels_the_run_there(
    fleet: FleetFactory, fake: FakeUpstreamThread
) -> None:
    a, b = fleet("a"), fleet("b")
    session_id = new_session(a)
    with live_run(a, session_id) as (first_id, events):
        wait_until(lambda: session(b, session_id)["active_run"] is not None, what="B sees it")
        second = stream_of(chat(b, session_id, "this instead", if_busy="interrupt"))
        first = read_stream(events)
    assert first.done["status"] == "cancelled"
    assert second.done["status"] == "complete"
    rows = stored(a, session_id)
    assert rows[first_id]["status"] == "cancelled"
    assert rows[second.done["message_id"]]["status"] == "complete"


def test_enqueue_on_another_instance_answers_after_the_run_there(
    fleet: FleetFactory, fake: FakeUpstreamThread
) -> None:
    a, b = fleet("a"), fleet("b")
    session_id = new_session(a)
    with live_run(a, session_id) as (first_id, events), ThreadPoolExecutor(1) as pool:
        wait_until(lambda: session(b, session_id)["active_run"] is not None, what="B sees it")
        queued = pool.submit(chat, b, session_id, "after that", if_busy="enqueue")
        # B holds it: the model is asked nothing more while A's run is live.
        assert len(fake.fake.requests) == 1 and not queued.done()
        fake.fake.release(wait_for=1)
        first = Stream(events=[e for e in events if isinstance(e, SSEEvent)])
        second = stream_of(queued.result(timeout=30))
    assert (first.done["status"], second.done["status"]) == ("complete", "complete")
    asked = [(m["role"], m["content"]) for m in fake.fake.requests[-1]["messages"]]
    answer = stored(a, session_id)[first_id]
    assert answer["status"] == "complete"
    assert ("assistant", answer["content"]) in asked  # it started once the first had ended


def test_a_tab_on_another_instance_follows_the_session(
    fleet: FleetFactory, fake: FakeUpstreamThread
) -> None:
    a, b = fleet("a", **FAST), fleet("b", **FAST)
    session_id = new_session(a)
    with Watcher(b.base_url, session_id) as tab:
        with live_run(a, session_id) as (message_id, events):
            started = tab.seen(lambda es: len(es) >= 1, "run.started from A")[0]
            assert (started.type, started.data["message_id"]) == ("run.started", message_id)
            # A tab opened now, on B, is told of A's live run first.
            with Watcher(b.base_url, session_id) as late:
                first = late.seen(lambda es: len(es) >= 1, "the live run")[0]
                assert (first.type, first.data["message_id"]) == ("run.started", message_id)
            fake.fake.release(wait_for=1)
            read_stream(events)
        seen = tab.seen(
            lambda es: {"run.ended", "session.updated"} <= {e.type for e in es}, "end and title"
        )
        ended = next(e for e in seen if e.type == "run.ended").data
        assert (ended["message_id"], ended["status"]) == (message_id, "complete")
        title = next(e for e in seen if e.type == "session.updated").data["title"]
        assert title == session(a, session_id)["title"] == STALLED
        patched = httpx.patch(
            f"{a.base_url}/api/sessions/{session_id}", json={"title": "From A"}, timeout=10
        )
        assert patched.is_success
        tab.seen(lambda es: es[-1].data.get("title") == "From A", "A's rename, on B")
        assert httpx.delete(f"{a.base_url}/api/sessions/{session_id}", timeout=10).is_success
        assert tab.ended.wait(10)
    assert tab.types[-1] == "session.deleted"
    assert tab.types.count("run.started") == 1


def test_shutdown_ends_the_session_streams_it_serves(fleet: FleetFactory) -> None:
    a = fleet("a")  # default keepalive (15 s): only the shutdown can end the stream in time
    session_id = new_session(a)
    with Watcher(a.base_url, session_id) as tab:
        assert tab.status == 200
        # (uvicorn re-raises the SIGTERM it handled, once shut down)
        assert a.stop() in (0, -signal.SIGTERM)
        assert tab.ended.wait(10)
    assert "graceful shutdown exceeded" not in a.log_text()
