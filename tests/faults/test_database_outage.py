"""The database is down at the final write: the stream completes; the answer lands once, later."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.faults.conftest import ServeFactory
from tests.support.process import ServeProcess
from tests.support.servers import FakeUpstreamThread
from tests.support.sse import Stream, iter_sse, read_stream
from tests.support.tcp_proxy import TcpProxy
from tests.support.wait import wait_until


def start_stalled(server: ServeProcess, client: httpx.Client) -> tuple[Any, Any, Stream]:
    context = client.stream(
        "POST", "/api/chat/stream", json={"message": "[[fake tokens=12 stall_after=4]] x"}
    )
    response = context.__enter__()
    items = iter_sse(response)
    return context, items, read_stream(items, stop_after=5)


def wait_until_spool_is_empty(server: ServeProcess, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        ready = httpx.get(f"{server.base_url}/readyz", timeout=10).json()
        if ready["spooled_runs"] == 0 and ready["database"] == "ok":
            return dict(ready)
        assert time.monotonic() < deadline, ready


def test_sqlite_locked_at_the_final_write(
    serve: ServeFactory, fake: FakeUpstreamThread, database_file: Path, spool_path: Path
) -> None:
    server = serve(database_busy_timeout_s="0.3")
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        context, items, head = start_stalled(server, client)
        lock = sqlite3.connect(database_file, timeout=10, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            # While it is locked: new chats are refused cleanly, and readiness says so.
            refused = client.post("/api/chat", json={"message": "now?"})
            assert (refused.status_code, refused.json()["error"]["code"]) == (
                503,
                "database_unavailable",
            )
            fake.fake.release(wait_for=1)
            whole = Stream(events=head.events + read_stream(items).events)
            context.__exit__(None, None, None)
            assert whole.done["status"] == "complete"
            assert whole.done["persisted"] is False
            assert len(list((spool_path / "pending").glob("*.json"))) == 1
            assert client.get("/readyz").json()["spooled_runs"] == 1
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        wait_until_spool_is_empty(server)
        message_id = whole.done["message_id"]
        session = whole.events[0].data["session_id"]
        stored = client.get(f"/api/sessions/{session}/messages").json()["items"]
    assert [m["role"] for m in stored] == ["user", "assistant"]
    assert (stored[1]["id"], stored[1]["content"], stored[1]["status"]) == (
        message_id,
        whole.text,
        "complete",
    )
    assert server.wait_for_line("written to the database")


def test_spool_full_while_the_database_is_down_keeps_the_answers_in_memory(
    serve: ServeFactory, fake: FakeUpstreamThread, database_file: Path, spool_path: Path
) -> None:
    """Neither the database nor the spool (at its size cap) takes the answers: they are
    held, retried, and written once the database is back; one CRITICAL line says so."""
    server = serve(database_busy_timeout_s="0.3", spool_max_bytes="64")  # less than an answer
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        streams = [start_stalled(server, client) for _ in range(2)]
        lock = sqlite3.connect(database_file, timeout=10, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            fake.fake.release(wait_for=2)
            wholes = []
            for context, items, head in streams:
                wholes.append(Stream(events=head.events + read_stream(items).events))
                context.__exit__(None, None, None)
            for whole in wholes:
                assert (whole.done["status"], whole.done["persisted"]) == ("complete", False)
            assert not list((spool_path / "pending").glob("*.json"))
            assert client.get("/readyz").json()["spooled_runs"] == 2  # held, and counted
            # Retried while the database stays locked (each pass offers them to the spool too).
            wait_until(
                lambda: server.log_text().count("database still unavailable for the spool") >= 2,
                timeout=30,
                what="two retries",
            )
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        wait_until_spool_is_empty(server)
        for whole in wholes:
            session = whole.events[0].data["session_id"]
            stored = client.get(f"/api/sessions/{session}/messages").json()["items"]
            assert (stored[-1]["id"], stored[-1]["content"], stored[-1]["status"]) == (
                whole.done["message_id"],
                whole.text,
                "complete",
            )
    log = server.log_text()
    assert log.count(" CRITICAL ") == 1, log
    assert "CHATSTREAM_SPOOL_MAX_BYTES" in next(
        line for line in log.splitlines() if " CRITICAL " in line
    )
    assert not [p for p in spool_path.rglob("*") if p.name.endswith(".tmp")]


@pytest.fixture
def postgres_behind_a_proxy(postgres_url: str) -> Iterator[tuple[str, TcpProxy]]:
    """A fresh database on the real PostgreSQL, reached through a proxy the test can cut."""
    url = make_url(postgres_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    name = f"chatstream_outage_{uuid.uuid4().hex[:10]}"
    plain = url.set(drivername="postgresql").render_as_string(hide_password=False)

    async def sql(statement: str) -> None:
        connection = await asyncpg.connect(plain)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(sql(f'CREATE DATABASE "{name}"'))
    proxied = url.set(port=proxy.port, database=name).render_as_string(hide_password=False)
    yield proxied, proxy
    proxy.close()
    asyncio.run(sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.mark.postgres
def test_postgres_cut_at_the_final_write(
    serve: ServeFactory, fake: FakeUpstreamThread, postgres_behind_a_proxy: tuple[str, TcpProxy]
) -> None:
    url, proxy = postgres_behind_a_proxy
    server = serve(database_url=url)
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        context, items, head = start_stalled(server, client)
        proxy.cut()
        fake.fake.release(wait_for=1)
        whole = Stream(events=head.events + read_stream(items).events)
        context.__exit__(None, None, None)
        assert whole.done["status"] == "complete" and whole.done["persisted"] is False
        down = client.get("/readyz")
        assert down.status_code == 503
        assert (down.json()["database"], down.json()["spooled_runs"]) == ("unreachable", 1)
        proxy.restore()
        wait_until_spool_is_empty(server)
        session = whole.events[0].data["session_id"]
        stored = client.get(f"/api/sessions/{session}/messages").json()["items"]
    assert [m["role"] for m in stored] == ["user", "assistant"]
    assert (stored[1]["id"], stored[1]["content"]) == (whole.done["message_id"], whole.text)


@pytest.mark.postgres
def test_post_chat_returns_the_answer_it_spooled(
    serve: ServeFactory, fake: FakeUpstreamThread, postgres_behind_a_proxy: tuple[str, TcpProxy]
) -> None:
    """Not a 503 that invites a duplicate send: the text, with `persisted: false`."""
    url, proxy = postgres_behind_a_proxy
    server = serve(database_url=url)
    with (
        ThreadPoolExecutor(max_workers=1) as pool,
        httpx.Client(base_url=server.base_url, timeout=30) as client,
    ):
        pending = pool.submit(
            client.post, "/api/chat", json={"message": "[[fake tokens=12 stall_after=4]] x"}
        )
        fake.fake.wait_for(lambda: fake.fake.stalled_streams >= 1)
        proxy.cut()
        fake.fake.release(wait_for=1)
        answer = pending.result(timeout=30)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["persisted"] is False
        assert body["message"]["status"] == "complete"
        assert body["message"]["content"].startswith("stream every token")
        assert len(body["message"]["content"].split()) == 12
        proxy.restore()
        wait_until_spool_is_empty(server)
        stored = client.get(f"/api/sessions/{body['session_id']}/messages").json()["items"]
    assert stored[-1]["id"] == body["message"]["id"]
    assert stored[-1]["content"] == body["message"]["content"]
