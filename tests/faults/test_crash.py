"""kill -9 with runs live: the next start-up leaves no conversation broken."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
from pathlib import Path

import httpx
import orjson

from tests.faults.conftest import ServeFactory
from tests.support.servers import FakeUpstreamThread
from tests.support.sse import Stream, iter_sse, read_stream
from tests.support.wait import wait_until


def test_kill_9_then_restart(
    serve: ServeFactory, fake: FakeUpstreamThread, database_file: Path, spool_path: Path
) -> None:
    server = serve(checkpoint_interval_s="0.05")
    client = httpx.Client(base_url=server.base_url, timeout=30)
    contexts = []
    seen: list[Stream] = []
    for n in range(4):  # mid-answer
        context = client.stream(
            "POST",
            "/api/chat/stream",
            json={"message": f"[[fake tokens=30 stall_after={n + 2}]] {n}"},
        )
        items = iter_sse(context.__enter__())
        contexts.append(context)
        seen.append(read_stream(items, stop_after=n + 3))
    # One that has produced nothing yet.
    context = client.stream(
        "POST", "/api/chat/stream", json={"message": "[[fake first_token_ms=60000]] silent"}
    )
    contexts.append(context)
    seen.append(read_stream(iter_sse(context.__enter__()), stop_after=1))

    # Wait for the four with text to have a checkpoint on disk holding what
    # their clients saw (checkpoints trail the stream by up to an interval).
    def checkpointed(stream: Stream) -> bool:
        try:
            live = orjson.loads((spool_path / "live.json").read_bytes())
        except (FileNotFoundError, orjson.JSONDecodeError):
            return False
        texts = {output["rows"][-1]["id"]: output["rows"][-1]["content"] for output in live}
        return str(texts.get(stream.events[0].data["message_id"], "")).startswith(stream.text) and (
            stream.events[0].data["message_id"] in texts
        )

    wait_until(lambda: all(checkpointed(stream) for stream in seen[:4]), timeout=10)

    server.process.send_signal(signal.SIGKILL)
    server.process.wait(10)
    for context in contexts:
        with contextlib.suppress(httpx.HTTPError):
            context.__exit__(None, None, None)
    client.close()

    restarted = serve()
    restarted.wait_for_line(
        "recovered 5 run(s) interrupted by the last stop: 4 with their saved text, 1 with none"
    )
    with sqlite3.connect(database_file) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        orphans = db.execute(
            "select count(*) from messages u where role = 'user' and not exists "
            "(select 1 from messages a where a.id = u.reply_id and a.role = 'assistant')"
        ).fetchone()[0]
        answers = dict(
            db.execute("select id, status || '|' || content from messages where role = 'assistant'")
        )
        # Recovered from a checkpoint or from nothing, each answer follows its question.
        unlinked = db.execute(
            "select count(*) from messages a where a.role = 'assistant' and not exists "
            "(select 1 from messages u where u.id = a.parent_id and u.reply_id = a.id)"
        ).fetchone()[0]
    assert orphans == 0
    assert unlinked == 0
    assert len(answers) == 5
    for stream in seen:
        message_id = stream.events[0].data["message_id"].replace("-", "")
        status, _, content = answers[message_id].partition("|")
        assert status == "interrupted"
        # What the client saw is saved (the checkpoint may hold a little more).
        assert content.startswith(stream.text)
        if stream.text:
            assert content
    assert orjson.loads((spool_path / "live.json").read_bytes()) == []
    restarted.stop()
