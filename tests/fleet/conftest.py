"""Several real `chatstream serve` processes sharing one PostgreSQL database and one Redis."""

from __future__ import annotations

import logging
import re
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from alembic import command

from chatstream.cli import alembic_config
from tests.support.process import ServeProcess, clean_env, free_port
from tests.support.sentinels import SENTINEL_API_KEY
from tests.support.servers import FakeUpstreamThread
from tests.support.services import fresh_postgres_database, redis_prefix, service_url

FleetFactory = Callable[..., ServeProcess]

logger = logging.getLogger("tests.fleet")

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
    started: list[tuple[str, ServeProcess]] = []
    prefix = redis_prefix()

    def start(name: str, env: dict[str, str] | None = None, **settings: str) -> ServeProcess:
        home = tmp_path / name
        home.mkdir(exist_ok=True)
        values = instance_env(fake, shared_database, redis_url, prefix, home)
        values.update({f"CHATSTREAM_{key.upper()}": value for key, value in settings.items()})
        values.update(env or {})
        process = ServeProcess(clean_env(**values), cwd=home)
        started.append((name, process))
        process.wait_ready()
        return process

    yield start
    for name, process in started:
        if process.process.poll() is None:
            process.process.kill()
        process.stop()
        # Shown by pytest only when the test failed: what each instance logged.
        logger.info(
            "instance %s (pid %d) logged:\n%s", name, process.process.pid, process.log_text()
        )


def last_seq(response: httpx.Response) -> int:
    """A `GET /api/runs/{id}` answer's `last_seq`; 0 while the run is not known there.

    Another instance learns of a run when its first events reach Redis, a
    few milliseconds after it starts, later under load: until then it
    answers 404. While Redis is restarting it answers from the database,
    which knows the run's row but not its events: `last_seq` is null.
    """
    if response.status_code == 404:
        return 0
    response.raise_for_status()
    return int(response.json()["last_seq"] or 0)


def instance_env(
    fake: FakeUpstreamThread, database_url: str, redis_url: str, prefix: str, home: Path
) -> dict[str, str]:
    """The settings every instance of a test's fleet shares (its own spool under `home`)."""
    return {
        "OPENAI_API_KEY": SENTINEL_API_KEY,
        "OPENAI_BASE_URL": fake.base_url,
        "CHATSTREAM_MODELS": "test-model",
        "CHATSTREAM_DATABASE_URL": database_url,
        "CHATSTREAM_REDIS_URL": redis_url,
        "CHATSTREAM_REDIS_KEY_PREFIX": prefix,
        "CHATSTREAM_SPOOL_DIR": str(home / "spool"),
        "CHATSTREAM_PORT": str(free_port()),
        "CHATSTREAM_RATE_LIMIT": "",
        "CHATSTREAM_MAX_CONCURRENT_RUNS": "10000",
        "CHATSTREAM_UPSTREAM_MAX_RETRIES": "0",
        "CHATSTREAM_RUN_RETENTION_S": "60",
    }


# Logged by the parent of `serve --workers N` once every worker serves.
WORKERS_READY_LINE = "chatstream running on"
_WORKER_READY = re.compile(r"worker (\d+) ready \(pid (\d+), instance (\w+)\)")


@dataclass
class WorkerInfo:
    index: int
    pid: int
    instance: str


class Workers(ServeProcess):
    """`chatstream serve --workers N`: the parent, and what it logged about its workers."""

    def ready_workers(self) -> list[WorkerInfo]:
        """Every worker that became ready, in order (a restarted one appears again)."""
        found = (_WORKER_READY.search(line) for line in self.log_text().splitlines())
        return [WorkerInfo(int(m[1]), int(m[2]), m[3]) for m in found if m is not None]

    def current(self) -> dict[str, WorkerInfo]:
        """The latest of each worker, by instance id."""
        return {info.instance: info for info in self.ready_workers()}


WorkersFactory = Callable[..., Workers]


@pytest.fixture
def workers(
    tmp_path: Path, fake: FakeUpstreamThread, shared_database: str, redis_url: str
) -> Iterator[WorkersFactory]:
    """`start(count=2, wait=True, env=None, **settings)`: `serve --workers count`, on the
    shared database and Redis (a prefix of its own), its spool under `tmp_path/workers`."""
    started: list[Workers] = []

    def start(
        count: int = 2, *, wait: bool = True, env: dict[str, str] | None = None, **settings: str
    ) -> Workers:
        home = tmp_path / "workers"
        home.mkdir(exist_ok=True)
        values = instance_env(fake, shared_database, redis_url, redis_prefix(), home)
        values["CHATSTREAM_SHUTDOWN_GRACE_S"] = "2"  # a test's stalled runs do not hold it up
        values.update({f"CHATSTREAM_{key.upper()}": value for key, value in settings.items()})
        values.update(env or {})
        process = Workers(
            clean_env(**values),
            cwd=home,
            args=["--workers", str(count)],
            ready_line=WORKERS_READY_LINE,
        )
        started.append(process)
        if wait:
            process.wait_ready()
        return process

    yield start
    for process in started:
        try:
            process.stop()  # SIGTERM: the parent stops its workers
        except subprocess.TimeoutExpired:
            process.process.kill()  # its workers stop by themselves when it is gone
            process.stop()
