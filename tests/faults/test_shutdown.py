"""SIGTERM with streams open: nobody's answer is lost, and the process exits in time."""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.faults.conftest import ServeFactory
from tests.support.sse import Stream, iter_sse, read_stream

GRACE_S = 1.0


def test_sigterm_with_twenty_streams_open(serve: ServeFactory, database_file: Path) -> None:
    server = serve(shutdown_grace_s=str(GRACE_S))
    client = httpx.Client(base_url=server.base_url, timeout=30)
    streams: list[tuple[Any, Any, Stream]] = []

    def open_stream(message: str, head: int) -> None:
        context = client.stream("POST", "/api/chat/stream", json={"message": message})
        response = context.__enter__()
        items = iter_sse(response)
        streams.append((context, items, read_stream(items, stop_after=head)))

    for n in range(20):  # stuck mid-answer: they outlive the grace period
        open_stream(f"[[fake tokens=50 stall_after={n % 5 + 1}]] stream {n}", head=n % 5 + 2)
    for n in range(2):  # these finish within it
        open_stream(f"[[fake tokens=20 interval_ms=20]] quick {n}", head=1)
    # And a WebSocket, following a run that will not finish either.
    closing = contextlib.ExitStack()
    socket_client = closing.enter_context(
        connect(f"ws://127.0.0.1:{server.port}/ws/chat", open_timeout=10)
    )
    socket_client.send(
        json.dumps(
            {"type": "chat", "request_id": "ws", "message": "[[fake tokens=50 stall_after=2]] ws"}
        )
    )
    socket_frames = [json.loads(socket_client.recv(10)) for _ in range(3)]

    rest: list[Stream] = [Stream() for _ in streams]

    def read_rest(index: int) -> None:
        rest[index] = read_stream(streams[index][1])

    readers = [threading.Thread(target=read_rest, args=(i,)) for i in range(len(streams))]
    for reader in readers:
        reader.start()

    sent_at = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    # While it drains: not ready, and no new run starts.
    deadline = time.monotonic() + 5
    while httpx.get(f"{server.base_url}/readyz", timeout=5).status_code != 503:
        assert time.monotonic() < deadline
    refused = httpx.post(f"{server.base_url}/api/chat", json={"message": "too late"}, timeout=5)
    assert (refused.status_code, refused.json()["error"]["code"]) == (503, "server_shutdown")
    socket_client.send(json.dumps({"type": "chat", "request_id": "late", "message": "too late"}))
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            socket_frames.append(json.loads(socket_client.recv(10)))
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
    closing.close()
    late = [f for f in socket_frames if f.get("request_id") == "late"]
    assert [(f["type"], f["code"]) for f in late] == [("error", "server_shutdown")]
    run_frames = [f for f in socket_frames if f.get("request_id") == "ws"]
    assert [f["type"] for f in run_frames][-2:] == ["error", "done"]
    assert run_frames[-2]["code"] == "server_shutdown" and run_frames[-1]["status"] == "interrupted"

    assert server.process.wait(GRACE_S + 10) in (0, -signal.SIGTERM)
    exited_after = time.monotonic() - sent_at
    assert exited_after < GRACE_S + 2, f"took {exited_after:.1f} s to exit"
    for reader in readers:
        reader.join(10)
    for context, _items, _head in streams:
        context.__exit__(None, None, None)
    client.close()

    saw: dict[str, tuple[str, str]] = {}
    for (_, _, head), tail in zip(streams, rest, strict=True):
        whole = Stream(events=head.events + tail.events)
        message_id = whole.events[0].data["message_id"]
        saw[message_id] = (whole.done["status"], whole.text)
    statuses = sorted(status for status, _ in saw.values())
    assert statuses == ["complete"] * 2 + ["interrupted"] * 20
    saw[run_frames[0]["message_id"]] = (
        "interrupted",
        "".join(f["text"] for f in run_frames if f["type"] == "delta"),
    )
    for (_, _, head), tail in zip(streams[:20], rest[:20], strict=True):
        whole = Stream(events=head.events + tail.events)
        assert whole.types[-2:] == ["error", "done"]
        error = whole.of("error")[0].data
        assert (error["code"], error["retryable"]) == ("server_shutdown", True)
        assert whole.done["persisted"] is True

    # After the restart every partial is in the database, exactly as the clients saw it.
    restarted = serve()
    with sqlite3.connect(database_file) as db:
        stored = dict(
            db.execute("select id, status || '|' || content from messages where role = 'assistant'")
        )
        orphans = db.execute(
            "select count(*) from messages u where role = 'user' and not exists "
            "(select 1 from messages a where a.id = u.reply_id)"
        ).fetchone()[0]
    assert orphans == 0
    for message_id, (status, text) in saw.items():
        assert stored[message_id.replace("-", "")] == f"{status}|{text}"
    restarted.stop()
