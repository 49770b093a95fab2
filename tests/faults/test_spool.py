"""The spool never stalls on one bad entry, and only one process ever uses it."""

from __future__ import annotations

import logging
import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson
import pytest

from tests.faults.conftest import ServeFactory
from tests.support.process import ServeProcess, clean_env, free_port
from tests.support.servers import AppServer
from tests.support.wait import wait_until


def output_file(
    folder: Path, session_id: str, content: object, *, role: object = "assistant"
) -> str:
    """A spool file as chatstream writes it; returns the run's (final row's) id."""
    folder.mkdir(parents=True, exist_ok=True)
    run_id = str(uuid.uuid4())
    row = {"id": run_id, "role": role, "content": content, "status": "complete"}
    body = {"owner": "anonymous", "session_id": session_id, "rows": [row]}
    (folder / f"{run_id}.json").write_bytes(orjson.dumps(body))
    return run_id


def stored_ids(database_path: Path) -> set[str]:
    with sqlite3.connect(database_path) as db:
        return {str(uuid.UUID(row[0])) for row in db.execute("select id from messages")}


def test_a_refused_entry_is_set_aside_and_blocks_nothing(
    make_server: Callable[..., AppServer],
    database_path: Path,
    spool_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = make_server()
    session_id = httpx.post(f"{first.base_url}/api/sessions", json={}).json()["id"]
    first.stop()
    pending = spool_dir / "pending"
    good_before = output_file(pending, session_id, "kept before")
    # A row the database refuses for what it holds (a NOT NULL column left empty).
    bad = output_file(pending, session_id, "refused", role=None)
    good_after = output_file(pending, session_id, "kept after")
    gone = output_file(pending, str(uuid.uuid4()), "for a session deleted meanwhile")

    with caplog.at_level(logging.INFO, logger="chatstream"):
        server = make_server()
        wait_until(lambda: (spool_dir / "broken" / f"{bad}.json").exists(), timeout=20)
        ready = wait_until(
            lambda: (r := httpx.get(f"{server.base_url}/readyz").json())["spooled_runs"] == 0 and r,
            what="spool drained",
        )
    assert ready["status"] == "ready"
    assert {good_before, good_after} <= stored_ids(database_path)
    assert not {bad, gone} & stored_ids(database_path)
    assert not list(pending.glob("*.json"))
    set_aside = [r for r in caplog.records if "set aside" in r.getMessage()]
    assert len(set_aside) == 1 and bad in set_aside[0].getMessage()
    # The server is none the worse for it.
    assert (
        httpx.post(f"{server.base_url}/api/chat", json={"message": "[[fake tokens=2]] hi"}).json()[
            "message"
        ]["status"]
        == "complete"
    )


def test_recovery_treats_a_checkpoint_of_a_deleted_session_as_gone(
    make_server: Callable[..., AppServer], database_path: Path, spool_dir: Path
) -> None:
    first = make_server()
    session_id = httpx.post(f"{first.base_url}/api/sessions", json={}).json()["id"]
    first.stop()
    orphan = output_file(spool_dir / "live", str(uuid.uuid4()), "its session was deleted")
    kept = output_file(spool_dir / "live", session_id, "its session is here")
    waiting = output_file(spool_dir / "pending", session_id, "spooled")

    server = make_server()
    wait_until(lambda: not list((spool_dir / "live").glob("*.json")), timeout=20)
    wait_until(lambda: httpx.get(f"{server.base_url}/readyz").json()["spooled_runs"] == 0)
    assert {kept, waiting} <= stored_ids(database_path)
    assert orphan not in stored_ids(database_path)


def test_a_second_process_on_the_same_spool_refuses_to_start(
    serve: ServeFactory, tmp_path: Path
) -> None:
    first = serve()
    env = clean_env(
        **{
            "OPENAI_API_KEY": "unused-key-value",
            "CHATSTREAM_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/chatstream.db",
            "CHATSTREAM_SPOOL_DIR": str(tmp_path / "spool"),
            "CHATSTREAM_PORT": str(free_port()),
        }
    )
    second = ServeProcess(env, cwd=tmp_path)
    code = second.process.wait(30)
    second.stop()
    assert code != 0
    assert "is in use by another chatstream process" in second.log_text()
    assert "Traceback" not in second.log_text()  # one line says why
    assert f"pid {first.process.pid}" in second.log_text()
    # The first one never noticed.
    answer = httpx.post(f"{first.base_url}/api/chat", json={"message": "[[fake tokens=2]] hi"})
    assert answer.json()["message"]["status"] == "complete"
