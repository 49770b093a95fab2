"""Start-up tells the truth: real `chatstream serve` and `chatstream migrate` processes.

A configuration error is one line on stderr and exit status 2; a dependency
that cannot be used is one line naming it (host:port, never a password) and
what to do, and exit status 3; "ready" comes only after the database (and
Redis, when configured) answered at the current schema.
"""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy.engine import make_url

from chatstream.storage.migrations import HEAD_REVISION
from tests.support.process import ServeProcess, clean_env, free_port
from tests.support.sentinels import SENTINEL_API_KEY, SENTINEL_DB_PASSWORD
from tests.support.servers import FakeUpstreamThread
from tests.support.services import fresh_postgres_database, service_url

READY = "ready: models"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_command(command: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chatstream", command],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def base_env(tmp_path: Path, fake: FakeUpstreamThread, **values: str) -> dict[str, str]:
    defaults = {
        "OPENAI_API_KEY": SENTINEL_API_KEY,
        "OPENAI_BASE_URL": fake.base_url,
        "CHATSTREAM_MODELS": "test-model",
        "CHATSTREAM_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/chatstream.db",
        "CHATSTREAM_SPOOL_DIR": str(tmp_path / "spool"),
        "CHATSTREAM_PORT": str(free_port()),
    }
    return clean_env(**{**defaults, **values})


def assert_one_clean_line(text: str, *needles: str) -> str:
    """Exactly one line says it, no traceback, no secret."""
    assert "Traceback" not in text and 'File "' not in text, text
    assert SENTINEL_DB_PASSWORD not in text and SENTINEL_API_KEY not in text, text
    lines = [line for line in text.splitlines() if all(needle in line for needle in needles)]
    assert len(lines) == 1, text
    return lines[0]


CONFIGURATION_ERRORS = [
    pytest.param(
        {"CHATSTREAM_DATABASE_URL": f"postgres://chat:{SENTINEL_DB_PASSWORD}@db:5432/chat"},
        "use postgresql+asyncpg://",
        id="postgres scheme",
    ),
    pytest.param(
        {"CHATSTREAM_DATABASE_URL": f"postgresql://chat:{SENTINEL_DB_PASSWORD}@db:5432/chat"},
        "use postgresql+asyncpg://",
        id="postgresql without driver",
    ),
    pytest.param(
        {"CHATSTREAM_TOOLS": "get_curent_time"},
        "did you mean 'get_current_time'?",
        id="mistyped tool",
    ),
    pytest.param(
        {"CHATSTREAM_RATE_LIMIT": "30/fortnight"},
        "CHATSTREAM_RATE_LIMIT: must look like 30/minute",
        id="bad rate limit",
    ),
    pytest.param(
        # Taken as is, the client would fail on the first chat, not at start-up.
        {"OPENAI_BASE_URL": "localhost:8000/v1"},
        "OPENAI_BASE_URL: must be a URL with a scheme and a host: include http:// or https://",
        id="base url without scheme",
    ),
    pytest.param(
        # redis-py would quietly use database 0 (another application's, perhaps).
        {"CHATSTREAM_REDIS_URL": "redis://127.0.0.1:6379/abc"},
        "CHATSTREAM_REDIS_URL: the database after the port must be a number, "
        "as in redis://host:6379/0, not '/abc'",
        id="redis database not a number",
    ),
    pytest.param(
        {"CHATSTREAM_RATE_LIMIT_STORAGE": "redis://127.0.0.1:6379/abc"},
        "CHATSTREAM_RATE_LIMIT_STORAGE: the database after the port must be a number",
        id="limits redis database not a number",
    ),
]


@pytest.mark.parametrize("command", ["serve", "migrate"])
@pytest.mark.parametrize(("values", "says"), CONFIGURATION_ERRORS)
def test_a_configuration_error_is_one_line_and_exit_status_2(
    tmp_path: Path,
    fake: FakeUpstreamThread,
    command: str,
    values: dict[str, str],
    says: str,
) -> None:
    result = run_command(command, base_env(tmp_path, fake, **values), tmp_path)
    assert result.returncode == 2, result
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert_one_clean_line(result.stderr, "chatstream: ", says)
    assert not (tmp_path / "chatstream.db").exists()  # nothing was started or created


@pytest.mark.parametrize("command", ["serve", "migrate"])
def test_an_unreachable_database_is_named_and_never_ready(
    tmp_path: Path, fake: FakeUpstreamThread, command: str
) -> None:
    port = closed_port()
    url = f"postgresql+asyncpg://chat:{SENTINEL_DB_PASSWORD}@127.0.0.1:{port}/chat"
    result = run_command(command, base_env(tmp_path, fake, CHATSTREAM_DATABASE_URL=url), tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 3, output
    line = assert_one_clean_line(output, f"the database at 127.0.0.1:{port}")
    assert "is unreachable (connection refused)" in line
    assert "CHATSTREAM_DATABASE_URL" in line  # what to do
    assert READY not in output and "Uvicorn running" not in output


def test_an_unreachable_redis_is_named_and_never_ready(
    tmp_path: Path, fake: FakeUpstreamThread
) -> None:
    port = closed_port()
    env = base_env(
        tmp_path,
        fake,
        CHATSTREAM_RATE_LIMIT_STORAGE=f"redis://:{SENTINEL_DB_PASSWORD}@127.0.0.1:{port}/0",
    )
    result = run_command("serve", env, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 3, output
    line = assert_one_clean_line(output, f"Redis at 127.0.0.1:{port}")
    assert "(CHATSTREAM_RATE_LIMIT_STORAGE) is unreachable (connection refused)" in line
    assert READY not in output


@pytest.mark.redis
@pytest.mark.parametrize("variable", ["CHATSTREAM_REDIS_URL", "CHATSTREAM_RATE_LIMIT_STORAGE"])
def test_a_redis_database_the_server_lacks_is_named_with_what_to_fix(
    tmp_path: Path, fake: FakeUpstreamThread, variable: str
) -> None:
    base = make_url(service_url("CHATSTREAM_TEST_REDIS_URL"))
    with redis.Redis(host=base.host or "localhost", port=base.port or 6379) as probe:
        missing = int(probe.config_get("databases")["databases"])  # the first it lacks
    url = base.set(database=str(missing)).render_as_string(hide_password=False)
    result = run_command("serve", base_env(tmp_path, fake, **{variable: url}), tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 3, output
    line = assert_one_clean_line(output, f"Redis at {base.host}:{base.port} ({variable})")
    assert f"has no database {missing} (Redis: DB index is out of range)" in line
    assert f"correct the number after the port in {variable} (redis://host:6379/0)" in line
    assert READY not in output


@pytest.mark.parametrize("args", [[], ["--workers", "2"]], ids=["one process", "workers"])
@pytest.mark.parametrize("under", ["afile/spool", "afile"], ids=["under a file", "a file"])
def test_an_unusable_spool_directory_is_named_with_what_to_fix(
    tmp_path: Path, fake: FakeUpstreamThread, under: str, args: list[str]
) -> None:
    (tmp_path / "afile").write_text("not a directory")  # as root too: no permission to lack
    spool = tmp_path / under
    env = base_env(
        tmp_path,
        fake,
        CHATSTREAM_SPOOL_DIR=str(spool),
        CHATSTREAM_REDIS_URL="redis://127.0.0.1:6379/0",  # --workers needs one; never reached
    )
    result = subprocess.run(
        [sys.executable, "-m", "chatstream", "serve", *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 3, output
    line = assert_one_clean_line(output, "CHATSTREAM_SPOOL_DIR")
    assert (
        f"the spool directory {spool} (CHATSTREAM_SPOOL_DIR) cannot be used: "
        f"{tmp_path / 'afile'} is a file, not a directory; point CHATSTREAM_SPOOL_DIR at a "
        "directory this process can create and write"
    ) in line
    assert READY not in output and "Uvicorn running" not in output


def migration_lines(lines: list[str], tmp_path: Path) -> list[str]:
    """The lines about the schema (the test's own directory, named after it, left out)."""
    words = ("alembic", "migrat", "schema", "upgrade", "revision")
    return [
        line
        for line in lines
        if any(word in line.replace(str(tmp_path), "").lower() for word in words)
    ]


def test_migrate_says_what_it_did_in_one_line(tmp_path: Path, fake: FakeUpstreamThread) -> None:
    env = base_env(tmp_path, fake)
    first = run_command("migrate", env, tmp_path)  # a fresh SQLite file
    assert first.returncode == 0, first
    (line,) = (first.stdout + first.stderr).splitlines()
    assert line.endswith(f"database schema upgraded from an empty database to {HEAD_REVISION}")
    again = run_command("migrate", env, tmp_path)
    assert again.returncode == 0, again
    (line,) = (again.stdout + again.stderr).splitlines()
    assert line.endswith(f"database schema is up to date (revision {HEAD_REVISION})")


def test_without_auto_migrate_an_old_schema_refuses_to_start_naming_migrate(
    tmp_path: Path, fake: FakeUpstreamThread
) -> None:
    env = base_env(tmp_path, fake, CHATSTREAM_AUTO_MIGRATE="false")
    result = run_command("serve", env, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 3, output
    line = assert_one_clean_line(output, "has an older schema")
    assert "run `chatstream migrate`" in line
    assert READY not in output
    # `chatstream migrate` does what the line says; then the same server starts.
    migrated = run_command("migrate", env, tmp_path)
    assert migrated.returncode == 0, migrated
    server = ServeProcess(env, cwd=tmp_path)
    try:
        server.wait_for_line(READY)
        server.wait_ready()  # the app's line comes before uvicorn has bound its socket
        assert httpx.get(f"{server.base_url}/readyz", timeout=10).json()["database"] == "ok"
    finally:
        server.stop()


def test_serve_migrates_an_old_schema_before_it_says_ready(
    tmp_path: Path, fake: FakeUpstreamThread
) -> None:
    server = ServeProcess(base_env(tmp_path, fake), cwd=tmp_path)  # an empty database
    try:
        server.wait_ready()
        lines = server.lines
        # One line says it (not Alembic's plugins, its "Context impl", each revision run).
        (said,) = migration_lines(lines, tmp_path)
        assert said.endswith(f"database schema upgraded from an empty database to {HEAD_REVISION}")
        upgraded = lines.index(said)
        ready = next(i for i, line in enumerate(lines) if READY in line)
        assert upgraded < ready
        with httpx.Client(base_url=server.base_url, timeout=10) as client:
            assert client.get("/readyz").json()["database"] == "ok"
            assert client.post("/api/chat", json={"message": "hi"}).status_code == 200
    finally:
        server.stop()
    with sqlite3.connect(tmp_path / "chatstream.db") as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [
            (HEAD_REVISION,)
        ]


# --- PostgreSQL -----------------------------------------------------------------------


@pytest.fixture
def empty_postgres_database(postgres_url: str) -> Iterator[str]:
    """A new, empty database on the real PostgreSQL (no schema at all)."""
    with fresh_postgres_database(postgres_url, "chatstream_start") as url:
        yield url


@pytest.mark.postgres
def test_instances_starting_together_on_postgres_migrate_once(
    tmp_path: Path, fake: FakeUpstreamThread, empty_postgres_database: str
) -> None:
    servers = [
        ServeProcess(
            base_env(
                tmp_path / str(index),
                fake,
                CHATSTREAM_DATABASE_URL=empty_postgres_database,
            ),
            cwd=tmp_path,
        )
        for index in range(3)
    ]
    try:
        for server in servers:
            server.wait_ready()
        upgrades = [
            line for server in servers for line in server.lines if "schema upgraded" in line
        ]
        assert len(upgrades) == 1, upgrades
        for server in servers:
            ready = httpx.get(f"{server.base_url}/readyz", timeout=10)
            assert (ready.status_code, ready.json()["database"]) == (200, "ok")
    finally:
        for server in servers:
            server.stop()
