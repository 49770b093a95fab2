"""Shared fixtures: a fake upstream over real HTTP, a migrated SQLite file, real uvicorn."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from alembic import command
from sqlalchemy import event
from sqlalchemy.engine import Engine

from chatstream.app import create_app
from chatstream.cli import alembic_config
from chatstream.config import Settings
from chatstream.hooks import Hook
from chatstream.runs.lifecycle import RunListener
from chatstream.tools import ToolRegistry
from tests.support.sentinels import SENTINEL_API_KEY, WATCH, WatchingHandler
from tests.support.servers import AppServer, FakeUpstreamThread
from tests.support.services import HANDED_OUT, SESSION_REDIS_PREFIX, sweep_redis_keys


@pytest.fixture(scope="session", autouse=True)
def _clean_environment() -> Iterator[None]:
    """Settings in tests come from the tests alone, never from the developer's shell."""
    saved = {
        key: os.environ.pop(key)
        for key in list(os.environ)
        if (key.startswith("CHATSTREAM_") and not key.startswith("CHATSTREAM_TEST_"))
        or key.startswith(("OPENAI_", "OTEL_"))
    }
    yield
    os.environ.update(saved)


@pytest.fixture(scope="session", autouse=True)
def _no_secret_ever_leaks() -> Iterator[None]:
    """Across the whole session: no sentinel in a response, a frame or a log record."""
    handler = WatchingHandler(level=logging.INFO)
    root = logging.getLogger()
    previous_level = root.level
    root.addHandler(handler)
    root.setLevel(min(previous_level or logging.INFO, logging.INFO))
    yield
    root.removeHandler(handler)
    root.setLevel(previous_level)
    assert not WATCH.violations, "secrets leaked:\n" + "\n".join(WATCH.violations)


def _forever(ttls: dict[str, int]) -> list[str]:
    return sorted(key for key, ttl in ttls.items() if ttl == -1)


@pytest.fixture(scope="session", autouse=True)
def _redis_keys_all_cleaned() -> Iterator[None]:
    """After the run: nothing is left under its Redis prefix (each test deleted its keys)."""
    yield
    url = os.environ.get("CHATSTREAM_TEST_REDIS_URL")
    if url:
        left = sweep_redis_keys(url, f"{SESSION_REDIS_PREFIX}*")
        # Only a writer that outlived its test (or a prefix not from redis_prefix()) leaves any.
        assert not left, f"Redis keys left after the run (key: TTL s): {dict(sorted(left.items()))}"


@pytest.fixture(autouse=True)
def _redis_keys_expire() -> Iterator[None]:
    """After each test, its servers stopped: every key under the Redis prefixes it was
    handed has an expiry (even those of a process killed mid-run); then they are deleted."""
    HANDED_OUT.clear()
    yield
    prefixes, url = list(HANDED_OUT), os.environ.get("CHATSTREAM_TEST_REDIS_URL")
    HANDED_OUT.clear()
    if not (prefixes and url):
        return
    forever = [key for p in prefixes for key in _forever(sweep_redis_keys(url, f"{p}:*"))]
    assert not forever, f"Redis keys written without an expiry: {forever}"


@pytest.fixture(scope="session")
def fake_upstream_thread() -> Iterator[FakeUpstreamThread]:
    thread = FakeUpstreamThread().start()
    yield thread
    thread.stop()


@pytest.fixture
def fake(fake_upstream_thread: FakeUpstreamThread) -> Iterator[FakeUpstreamThread]:
    fake_upstream_thread.fake.reset()
    yield fake_upstream_thread
    fake_upstream_thread.fake.release()  # nothing stays stalled into the next test


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite file brought to head by Alembic; each test gets a copy."""
    path = tmp_path_factory.mktemp("template") / "chatstream.db"
    command.upgrade(alembic_config(f"sqlite+aiosqlite:///{path}"), "head")  # type: ignore[arg-type]
    return path


@pytest.fixture
def database_path(tmp_path: Path, migrated_sqlite: Path) -> Path:
    path = tmp_path / "chatstream.db"
    shutil.copyfile(migrated_sqlite, path)
    return path


@pytest.fixture
def database_url(database_path: Path) -> str:
    return f"sqlite+aiosqlite:///{database_path}"


def settings_for_tests(**values: Any) -> Settings:
    defaults: dict[str, Any] = {
        "openai_api_key": SENTINEL_API_KEY,
        "upstream_max_retries": 0,
        "run_retention_s": 60,
        "models": ["test-model", "other-model"],
        # Limits are tested on their own; elsewhere they must not get in the way.
        "rate_limit": "100000/minute",
        "max_concurrent_runs": 100000,
    }
    return Settings(**{**defaults, **values})


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def make_server(
    fake: FakeUpstreamThread, database_url: str, spool_dir: Path
) -> Iterator[Callable[..., AppServer]]:
    started: list[AppServer] = []

    def make(
        tool_registry: ToolRegistry | None = None,
        listeners: Sequence[RunListener] = (),
        hooks: Sequence[Hook] | None = None,
        **overrides: Any,
    ) -> AppServer:
        settings = settings_for_tests(
            **{
                "database_url": database_url,
                "openai_base_url": fake.base_url,
                "spool_dir": spool_dir,
                **overrides,
            }
        )
        app = create_app(settings, tools=tool_registry, listeners=listeners, hooks=hooks)
        server = AppServer(app).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def server(make_server: Callable[..., AppServer]) -> AppServer:
    return make_server()


@pytest.fixture
def client(server: AppServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=20) as http:
        yield http


class StatementLog:
    """Every SQL statement sent to one database file, as the driver received it."""

    def __init__(self, database_path: Path) -> None:
        self._path = str(database_path)
        self.statements: list[str] = []

    def __call__(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if conn.engine.url.database == self._path:
            self.statements.append(" ".join(statement.split()))

    def matching(self, prefix: str) -> list[str]:
        return [s for s in self.statements if s.upper().startswith(prefix.upper())]


@pytest.fixture
def sql_log(database_path: Path) -> Iterator[StatementLog]:
    log = StatementLog(database_path)
    event.listen(Engine, "before_cursor_execute", log)
    yield log
    event.remove(Engine, "before_cursor_execute", log)
