"""Fault injection against a real `chatstream serve` subprocess."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.process import ServeProcess, clean_env, free_port, migrate
from tests.support.sentinels import SENTINEL_API_KEY
from tests.support.servers import FakeUpstreamThread

ServeFactory = Callable[..., ServeProcess]


@pytest.fixture
def serve(tmp_path: Path, fake: FakeUpstreamThread) -> Iterator[ServeFactory]:
    """Start `chatstream serve` (migrated first); the same database and spool on every call."""
    started: list[ServeProcess] = []
    database_url = f"sqlite+aiosqlite:///{tmp_path}/chatstream.db"

    def start(env: dict[str, str] | None = None, **settings: str) -> ServeProcess:
        """`settings` become CHATSTREAM_* variables; `env` sets variables as given."""
        values = {
            "OPENAI_API_KEY": SENTINEL_API_KEY,
            "OPENAI_BASE_URL": fake.base_url,
            "CHATSTREAM_MODELS": "test-model",
            "CHATSTREAM_DATABASE_URL": database_url,
            "CHATSTREAM_SPOOL_DIR": str(tmp_path / "spool"),
            "CHATSTREAM_PORT": str(free_port()),
            "CHATSTREAM_RATE_LIMIT": "",
            "CHATSTREAM_MAX_CONCURRENT_RUNS": "10000",
            "CHATSTREAM_UPSTREAM_MAX_RETRIES": "0",
        }
        values.update({f"CHATSTREAM_{name.upper()}": value for name, value in settings.items()})
        values.update(env or {})
        environment = clean_env(**values)
        migrate(environment)
        process = ServeProcess(environment, cwd=tmp_path)
        started.append(process)
        process.wait_ready()
        return process

    yield start
    for process in started:
        if process.process.poll() is None:
            process.process.kill()
        process.stop()


@pytest.fixture
def database_file(tmp_path: Path) -> Path:
    return tmp_path / "chatstream.db"


@pytest.fixture
def spool_path(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def postgres_url() -> str:
    from tests.support.services import service_url

    return service_url("CHATSTREAM_TEST_POSTGRES_URL")
