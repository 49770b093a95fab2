"""Post-run hooks and the built-in auto-title: after the commit and `done`, never in the way."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from importlib.metadata import EntryPoint
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest

import chatstream.hooks as hooks_module
from chatstream.runs.lifecycle import RunRecord
from tests.conftest import StatementLog
from tests.support.servers import AppServer
from tests.support.sse import iter_sse, read_stream
from tests.support.wait import wait_until

CALLED: list[RunRecord] = []


async def installed_hook(record: RunRecord) -> None:
    """A hook as a package would declare it (`chatstream.hooks` entry point)."""
    CALLED.append(record)


def chat(server: AppServer, message: str, **body: Any) -> Any:
    with (
        httpx.Client(base_url=server.base_url, timeout=20) as client,
        client.stream("POST", "/api/chat/stream", json={"message": message, **body}) as response,
    ):
        assert response.status_code == 200
        return read_stream(response)


def test_a_hook_runs_after_the_commit_and_done_and_delays_nothing(
    make_server: Callable[..., AppServer],
) -> None:
    release = threading.Event()
    seen: dict[str, Any] = {}
    servers: list[AppServer] = []

    async def slow_observer(record: RunRecord) -> None:
        state = servers[0].state
        # Read from the database and the run itself: the commit and `done` came first.
        seen["stored"] = await state.store.get_message(record.owner, record.message_id)
        seen["done_in_log"] = state.registry.local(record.message_id, record.owner).status
        seen["record"] = record
        await anyio.to_thread.run_sync(release.wait, 10)
        seen["returned"] = True

    servers.append(make_server(hooks=[slow_observer]))
    stream = chat(servers[0], "[[fake tokens=5]] hi")
    # The client had the whole stream while the hook was still busy.
    assert stream.types[-1] == "done"
    wait_until(lambda: "record" in seen, what="the hook is called")
    assert "returned" not in seen
    record: RunRecord = seen["record"]
    assert seen["stored"] is not None and seen["stored"].content == stream.text
    assert seen["done_in_log"] == "complete"
    assert (str(record.message_id), str(record.session_id)) == (
        stream.done["message_id"],
        stream.of("start")[0].data["session_id"],
    )
    assert (record.status, record.persisted, record.answer) == ("complete", True, stream.text)
    assert record.usage == stream.done["usage"] and record.metrics == stream.done["metrics"]
    assert [row.role for row in record.rows] == ["assistant"]
    release.set()
    wait_until(lambda: "returned" in seen, what="the hook returns")


def test_a_raising_hook_is_logged_and_isolated(
    make_server: Callable[..., AppServer], caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[uuid.UUID] = []

    async def broken(record: RunRecord) -> None:
        raise RuntimeError("hook bug")

    async def fine(record: RunRecord) -> None:
        calls.append(record.message_id)

    server = make_server(hooks=[broken, fine])
    with caplog.at_level(logging.ERROR, logger="chatstream.hooks"):
        first = chat(server, "one")
        second = chat(server, "two")
        wait_until(lambda: len(calls) == 2, what="the other hook ran for both runs")
    assert first.done["status"] == second.done["status"] == "complete"
    assert "hook" in caplog.text and "broken" in caplog.text and "RuntimeError" in caplog.text


def test_a_slow_hook_times_out_and_is_logged(
    make_server: Callable[..., AppServer], caplog: pytest.LogCaptureFixture
) -> None:
    outcome: list[str] = []

    async def stuck(record: RunRecord) -> None:
        try:
            await anyio.sleep(60)
        except anyio.get_cancelled_exc_class():
            outcome.append("cancelled")
            raise

    async def fine(record: RunRecord) -> None:
        outcome.append("fine")

    server = make_server(hooks=[stuck, fine], hook_timeout_s=0.3)
    with caplog.at_level(logging.ERROR, logger="chatstream.hooks"):
        stream = chat(server, "hello")
        wait_until(lambda: "cancelled" in outcome, what="the stuck hook is cancelled")
    assert stream.done["status"] == "complete"
    assert "fine" in outcome
    assert "timed out" in caplog.text
    # The next run's hooks run as usual.
    chat(server, "again")
    wait_until(lambda: outcome.count("fine") == 2)


def test_hooks_come_from_entry_points_by_default(
    make_server: Callable[..., AppServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    plugins = [
        EntryPoint(
            name="observer",
            value=f"{__name__}:installed_hook",
            group=hooks_module.ENTRY_POINT_GROUP,
        )
    ]
    monkeypatch.setattr(
        hooks_module,
        "entry_points",
        lambda group: plugins if group == hooks_module.ENTRY_POINT_GROUP else [],
    )
    CALLED.clear()
    server = make_server()
    stream = chat(server, "hello")
    wait_until(lambda: CALLED, what="the installed hook is called")
    assert str(CALLED[0].message_id) == stream.done["message_id"]


def test_a_session_is_titled_from_its_first_message(
    server: AppServer, client: httpx.Client, sql_log: StatementLog
) -> None:
    stream = read_stream(
        client.post("/api/chat/stream", json={"message": "  Plan   a trip\n to Lisbon  "})
    )
    session_id = stream.of("start")[0].data["session_id"]
    # Set with the user's message, by the statement that saves it: nothing more is written.
    assert client.get(f"/api/sessions/{session_id}").json()["title"] == "Plan a trip to Lisbon"
    assert not sql_log.matching("UPDATE sessions")
    # A title, the user's or the automatic one, is never replaced.
    created = client.post("/api/sessions", json={"title": "Mine"}).json()
    for sid, title in ((session_id, "Plan a trip to Lisbon"), (created["id"], "Mine")):
        read_stream(client.post("/api/chat/stream", json={"message": "other", "session_id": sid}))
        assert client.get(f"/api/sessions/{sid}").json()["title"] == title
    # A session whose title was cleared gets one again with its next message.
    client.patch(f"/api/sessions/{created['id']}", json={"title": None})
    read_stream(
        client.post(
            "/api/chat/stream", json={"message": "first words", "session_id": created["id"]}
        )
    )
    assert client.get(f"/api/sessions/{created['id']}").json()["title"] == "first words"


def test_titles_from_the_model_come_after_the_first_answer(
    make_server: Callable[..., AppServer], fake: Any
) -> None:
    server = make_server(auto_title="model")
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        with client.stream(
            "POST", "/api/chat/stream", json={"message": "[[fake stall_after=2]] Plan a trip"}
        ) as response:
            items = iter_sse(response)
            session_id = read_stream(items, stop_after=1).of("start")[0].data["session_id"]
            fake.fake.wait_for(lambda: fake.fake.stalled_streams >= 1)
            assert client.get(f"/api/sessions/{session_id}").json()["title"] is None
            fake.fake.release()
            assert read_stream(items).types[-1] == "done"
        fake.fake.release(wait_for=1)  # the title request carries the directive too
        title = wait_until(
            lambda: client.get(f"/api/sessions/{session_id}").json()["title"],
            what="the session is titled",
        )
        # A user's title is never replaced by the model's.
        created = client.post("/api/sessions", json={"title": "Mine"}).json()
        read_stream(
            client.post("/api/chat/stream", json={"message": "hi", "session_id": created["id"]})
        )
        assert client.get(f"/api/sessions/{created['id']}").json()["title"] == "Mine"
    # One background call, with the first message; the fake model echoes what it is given.
    asked = [r for r in fake.fake.requests if r["messages"][0]["role"] == "system"]
    assert len(asked) == 1 and asked[0]["max_tokens"] <= 32
    assert asked[0]["messages"][-1]["content"] == "[[fake stall_after=2]] Plan a trip"
    assert title == "You said: Plan a trip"


def test_auto_title_can_be_off(make_server: Callable[..., AppServer]) -> None:
    calls: list[RunRecord] = []

    async def after(record: RunRecord) -> None:
        calls.append(record)

    server = make_server(auto_title="off", hooks=[after])
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        stream = read_stream(client.post("/api/chat/stream", json={"message": "hello"}))
        wait_until(lambda: calls)
        session_id = stream.of("start")[0].data["session_id"]
        assert client.get(f"/api/sessions/{session_id}").json()["title"] is None
