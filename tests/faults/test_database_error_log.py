"""A database that refuses a write: the failure is logged, what the user wrote is not.

SQLAlchemy puts a statement's parameters in its errors' text, and
PostgreSQL the failing row; both are the user's message, and an error's
text is what the log keeps (uvicorn logs an unhandled one with its
traceback). The server's own log, as `chatstream serve` writes it, is read.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import asyncpg
import httpx
from sqlalchemy.engine import make_url

from tests.faults.conftest import ServeFactory
from tests.support.process import ServeProcess
from tests.support.servers import FakeUpstreamThread
from tests.support.services import fresh_postgres_database
from tests.support.ws import open_socket_at, recv, send

# What the user wrote; the database is made to refuse the rows that hold it.
PROMPT = "refuse-me: my private words about kiwis"


def log_after(server: ServeProcess, trace: str) -> str:
    """The whole log once the server has logged everything about the request before."""
    httpx.get(f"{server.base_url}/healthz", headers={"X-Request-ID": trace}, timeout=10)
    server.wait_for_line(f"[{trace}]")
    return server.log_text()


def test_a_refused_write_is_logged_without_the_users_words_on_sqlite(
    serve: ServeFactory, fake: FakeUpstreamThread, database_file: Path
) -> None:
    server = serve()
    with sqlite3.connect(database_file) as db:
        db.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON messages WHEN NEW.content LIKE '%refuse-me%'"
            " BEGIN SELECT RAISE(ABORT, 'forced failure'); END"
        )
    response = httpx.post(
        f"{server.base_url}/api/chat/stream", json={"message": PROMPT}, timeout=30
    )
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal"
    log = log_after(server, "barrier-sqlite")
    assert "unhandled IntegrityError on POST /api/chat/stream" in log
    assert "forced failure" in log  # the database's own reason
    assert "kiwis" not in log


def test_a_refused_write_is_logged_without_the_failing_row_on_postgres(
    serve: ServeFactory, fake: FakeUpstreamThread, postgres_url: str
) -> None:
    with fresh_postgres_database(postgres_url) as url:
        server = serve(env={"CHATSTREAM_DATABASE_URL": url})
        plain = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)

        async def refuse() -> None:
            connection = await asyncpg.connect(plain, timeout=10)
            try:
                # PostgreSQL's error then details the row it refused, the message with it.
                await connection.execute(
                    "ALTER TABLE messages ADD CONSTRAINT refuse"
                    " CHECK (content NOT LIKE '%refuse-me%')"
                )
            finally:
                await connection.close()

        asyncio.run(refuse())
        response = httpx.post(
            f"{server.base_url}/api/chat/stream", json={"message": PROMPT}, timeout=30
        )
        assert response.status_code == 500
        # Over a WebSocket the same failure is a fault, logged with its whole
        # traceback: PostgreSQL's own exception, row details and all, in it.
        with open_socket_at(server.ws_url) as ws:
            send(ws, {"type": "chat", "request_id": "r1", "message": PROMPT})
            frame = recv(ws)
        assert (frame["type"], frame["code"], frame["request_id"]) == ("error", "internal", "r1")
        log = log_after(server, "barrier-postgres")
        server.stop()
    assert "unhandled IntegrityError on POST /api/chat/stream" in log
    assert "a WebSocket chat failed unexpectedly" in log
    assert "asyncpg.exceptions.CheckViolationError" in log  # the traceback, cause and all
    assert 'violates check constraint "refuse"' in log  # the database's own reason
    assert "kiwis" not in log
    assert "Failing row contains" not in log
