"""A server loads only what its settings use: optional parts stay out of its memory.

Alembic (with Mako and Pygments), redis-py and PyJWT with cryptography were
together ~27 MB of an idle server's ~125 MB of imports. Each is now loaded
only by the setting that needs it; these tests hold that, and hold the
written-down schema revision that lets a current database skip Alembic.
"""

from __future__ import annotations

from pathlib import Path

import httpx
from alembic.script import ScriptDirectory

from chatstream.storage.migrations import HEAD_REVISION, alembic_config
from tests.support.process import ServeProcess, clean_env, free_port, migrate
from tests.support.sentinels import SENTINEL_API_KEY
from tests.support.servers import FakeUpstreamThread

OPTIONAL = {"alembic", "mako", "pygments", "redis", "jwt", "cryptography"}


def test_the_written_down_revision_is_the_head_of_the_migrations() -> None:
    script = ScriptDirectory.from_config(alembic_config("unused://"))
    assert script.get_current_head() == HEAD_REVISION, (
        "a migration was added: set storage/migrations.py HEAD_REVISION to its revision"
    )


def imported_packages(log: str) -> set[str]:
    """Top-level packages named by `-X importtime` lines (PYTHONPROFILEIMPORTTIME)."""
    names = set()
    for line in log.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            name = line.rsplit("|", 1)[1].strip()
            names.add(name.split(".")[0])
    return names


def serve_env(tmp_path: Path, fake: FakeUpstreamThread) -> dict[str, str]:
    """A server on SQLite with its defaults: no Redis, no JWT."""
    return clean_env(
        OPENAI_API_KEY=SENTINEL_API_KEY,
        OPENAI_BASE_URL=fake.base_url,
        CHATSTREAM_MODELS="test-model",
        CHATSTREAM_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/chatstream.db",
        CHATSTREAM_SPOOL_DIR=str(tmp_path / "spool"),
        CHATSTREAM_PORT=str(free_port()),
    )


def test_a_server_without_redis_or_jwt_never_loads_them(
    tmp_path: Path, fake: FakeUpstreamThread
) -> None:
    env = serve_env(tmp_path, fake)
    migrate(env)  # in its own process: a current schema is what a server usually finds
    server = ServeProcess({**env, "PYTHONPROFILEIMPORTTIME": "1"}, cwd=tmp_path)
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.base_url, timeout=10) as client:
            assert client.get("/readyz").json()["database"] == "ok"
            answer = client.post("/api/chat", json={"message": "hello"})
            assert answer.status_code == 200, answer.text
            assert answer.json()["persisted"] is True
    finally:
        server.stop()
    loaded = imported_packages(server.log_text())
    assert {"sqlalchemy", "openai", "uvicorn"} <= loaded  # the import log is being read
    assert loaded & OPTIONAL == set()


def test_a_server_migrating_an_empty_database_loads_alembic_for_it(
    tmp_path: Path, fake: FakeUpstreamThread
) -> None:
    env = {**serve_env(tmp_path, fake), "PYTHONPROFILEIMPORTTIME": "1"}
    server = ServeProcess(env, cwd=tmp_path)  # no `migrate` first: it upgrades at start
    try:
        server.wait_ready()
        assert httpx.get(f"{server.base_url}/readyz", timeout=10).json()["database"] == "ok"
    finally:
        server.stop()
    assert "alembic" in imported_packages(server.log_text())
