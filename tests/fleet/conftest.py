"""Several real `chatstream serve` processes sharing one PostgreSQL database and one Redis."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from alembic import command

from chatstream.cli import alembic_config
from tests.support.process import ServeProcess, clean_env, free_port
from tests.support.sentinels import SENTINEL_API_KEY
from tests.support.servers import FakeUpstreamThread
from tests.support.services import fresh_postgres_database, redis_prefix, service_url

FleetFactory = Callable[..., ServeProcess]

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
def redis_url() -> str:
    return service_url("CHATSTREAM_TEST_REDIS_URL")


@pytest.fixture
def shared_database() -> Iterator[str]:
    with fresh_postgres_database(service_url("CHATSTREAM_TEST_POSTGRES_URL")) as url:
        command.upgrade(alembic_config(url), "head")  # type: ignore[arg-type]
        yield url


@pytest.fixture
def fleet(
    tmp_path: Path, fake: FakeUpstreamThread, shared_database: str, redis_url: str
) -> Iterator[FleetFactory]:
    """`start(name, **settings)`: an instance; every one shares the database, Redis and prefix.

    Each instance has its own spool directory (one process per spool), kept
    across restarts of the same name.
    """
    started: list[ServeProcess] = []
    prefix = redis_prefix()

    def start(name: str, env: dict[str, str] | None = None, **settings: str) -> ServeProcess:
        home = tmp_path / name
        home.mkdir(exist_ok=True)
        values = {
            "OPENAI_API_KEY": SENTINEL_API_KEY,
            "OPENAI_BASE_URL": fake.base_url,
            "CHATSTREAM_MODELS": "test-model",
            "CHATSTREAM_DATABASE_URL": shared_database,
            "CHATSTREAM_REDIS_URL": redis_url,
            "CHATSTREAM_REDIS_KEY_PREFIX": prefix,
            "CHATSTREAM_SPOOL_DIR": str(home / "spool"),
            "CHATSTREAM_PORT": str(free_port()),
            "CHATSTREAM_RATE_LIMIT": "",
            "CHATSTREAM_MAX_CONCURRENT_RUNS": "10000",
            "CHATSTREAM_UPSTREAM_MAX_RETRIES": "0",
            "CHATSTREAM_RUN_RETENTION_S": "60",
        }
        values.update({f"CHATSTREAM_{key.upper()}": value for key, value in settings.items()})
        values.update(env or {})
        process = ServeProcess(clean_env(**values), cwd=home)
        started.append(process)
        process.wait_ready()
        return process

    yield start
    for process in started:
        if process.process.poll() is None:
            process.process.kill()
        process.stop()
