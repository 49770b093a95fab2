"""One fault ends one run, never the server.

A malformed upstream chunk is an `upstream_error` for its own run; a fault
anywhere in a run (a bug, injected here at each stage) is an `internal`
error for that run alone, logged once with its traceback. Around each, runs
of other clients stream to their end and the server goes on serving.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from chatstream.durability.journal import RunJournal
from chatstream.logs import FAULT
from chatstream.runs.accumulator import ChunkAccumulator
from chatstream.storage.records import RunOutput
from chatstream.storage.repository import Store
from chatstream.tools.registry import ToolSet
from chatstream.upstream.stream import ChatUpstream, UpstreamRequest
from tests.e2e.test_lifecycle import Recorder
from tests.support.servers import AppServer
from tests.support.sse import Stream, read_stream
from tests.support.wait import wait_until
from tests.support.ws import dones, open_socket, recv, recv_until, send

HEALTHY = "[[fake tokens=30 interval_ms=15]] a healthy question"
MALFORMED_KINDS = [
    "not_json",
    "chunk_array",
    "usage_string",
    "choices_null",
    "choice_string",
    "delta_string",
    "content_number",
    "finish_number",
    "tool_types",
]


def stream_chat(base_url: str, body: dict[str, Any]) -> Stream:
    with (
        httpx.Client(base_url=base_url, timeout=30) as client,
        client.stream("POST", "/api/chat/stream", json=body) as response,
    ):
        assert response.status_code == 200, response.read()
        return read_stream(response)


def stored(database_path: Path, message_id: str) -> tuple[str, str] | None:
    with sqlite3.connect(database_path) as db:
        row = db.execute(
            "select content, status from messages where id = ?",
            (message_id.replace("-", ""),),
        ).fetchone()
    return None if row is None else (row[0], row[1])


def assert_healthy(streams: list[Stream], database_path: Path) -> None:
    for stream in streams:
        assert stream.types[0] == "start" and stream.types[-1] == "done"
        assert stream.done["status"] == "complete" and stream.done["persisted"] is True
        assert stored(database_path, stream.done["message_id"]) == (stream.text, "complete")


def test_malformed_chunks_end_their_own_run_only(server: AppServer, database_path: Path) -> None:
    with ThreadPoolExecutor(max_workers=len(MALFORMED_KINDS) + 3) as pool:
        healthy = [
            pool.submit(stream_chat, server.base_url, {"message": HEALTHY}) for _ in range(3)
        ]
        broken = {
            kind: pool.submit(
                stream_chat,
                server.base_url,
                {"message": f"[[fake tokens=6 malformed={kind} malformed_after=3]] q"},
            )
            for kind in MALFORMED_KINDS
        }
        assert_healthy([future.result() for future in healthy], database_path)
        for kind, future in broken.items():
            stream = future.result()
            assert stream.types[-2:] == ["error", "done"], kind
            assert stream.of("error")[0].data["code"] == "upstream_error", kind
            assert "malformed" in stream.of("error")[0].data["message"], kind
            assert stream.done["status"] == "error" and stream.done["persisted"] is True
            # The three tokens before the bad event streamed and were saved.
            assert stream.text == "stream every token ", kind
            assert stored(database_path, stream.done["message_id"]) == (stream.text, "error")
    after = stream_chat(server.base_url, {"message": "[[fake tokens=3]] still there?"})
    assert after.done["status"] == "complete"


def test_content_given_as_parts_is_read_as_their_text(
    server: AppServer, database_path: Path
) -> None:
    stream = stream_chat(server.base_url, {"message": "[[fake tokens=5 content_parts=1]] q"})
    assert stream.done["status"] == "complete"
    assert stream.text == "stream every token the moment "
    assert stored(database_path, stream.done["message_id"]) == (stream.text, "complete")


# --- faults injected at each stage of a run -------------------------------------------------


class Boom(RuntimeError):
    """The injected bug."""


MARK = "explode-here"


def _is_marked(messages: list[dict[str, Any]]) -> bool:
    return any(MARK in str(m.get("content")) for m in messages)


def inject_before_first_token(monkeypatch: pytest.MonkeyPatch) -> None:
    original = ChatUpstream.stream

    @asynccontextmanager
    async def stream(self: ChatUpstream, request: UpstreamRequest) -> Any:
        if _is_marked(request.messages):
            raise Boom("before the first token")
        async with original(self, request) as batches:
            yield batches

    monkeypatch.setattr(ChatUpstream, "stream", stream)


def inject_mid_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    original = ChunkAccumulator.feed

    def feed(self: ChunkAccumulator, chunk: Any) -> str | None:
        # The marked run asks for the other model; the emulator names it in each chunk.
        if (
            isinstance(chunk, dict)
            and chunk.get("model") == "other-model"
            and self.content_chunks >= 3
        ):
            raise Boom("mid-stream")
        return original(self, chunk)

    monkeypatch.setattr(ChunkAccumulator, "feed", feed)


def inject_in_tool_round(monkeypatch: pytest.MonkeyPatch) -> None:
    original = ToolSet.run

    async def run(self: ToolSet, name: str, arguments: str, timeout_s: float) -> str:
        if MARK in arguments:
            raise Boom("in a tool round")
        return await original(self, name, arguments, timeout_s)

    monkeypatch.setattr(ToolSet, "run", run)


def inject_while_persisting(monkeypatch: pytest.MonkeyPatch) -> None:
    original = RunJournal.save

    async def save(self: RunJournal, output: RunOutput) -> bool:
        if MARK in output.rows[-1].content:
            raise Boom("while persisting")
        return await original(self, output)

    monkeypatch.setattr(RunJournal, "save", save)


STAGES: dict[str, tuple[Callable[[pytest.MonkeyPatch], None], dict[str, Any]]] = {
    "before_first_token": (inject_before_first_token, {"message": f"{MARK} [[fake tokens=5]]"}),
    "mid_stream": (
        inject_mid_stream,
        {"message": "[[fake tokens=8]] q", "model": "other-model"},
    ),
    "tool_round": (
        inject_in_tool_round,
        {"message": f'[[fake tool=get_current_time tool_args={{"timezone":"{MARK}"}}]]'},
    ),
    # No tokens= directive: the emulator echoes the message, so the answer carries the mark.
    "persisting": (inject_while_persisting, {"message": f"please {MARK}"}),
}


@pytest.fixture
def fault_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.ERROR, logger="chatstream"):
        yield caplog


@pytest.mark.parametrize("stage", list(STAGES))
def test_a_fault_at_any_stage_ends_that_run_alone(
    stage: str,
    monkeypatch: pytest.MonkeyPatch,
    make_server: Callable[..., AppServer],
    database_path: Path,
    fault_log: pytest.LogCaptureFixture,
) -> None:
    inject, body = STAGES[stage]
    inject(monkeypatch)
    recorder = Recorder()
    server = make_server(listeners=[recorder])
    with ThreadPoolExecutor(max_workers=4) as pool:
        healthy = [
            pool.submit(stream_chat, server.base_url, {"message": HEALTHY}) for _ in range(3)
        ]
        faulty = stream_chat(server.base_url, body)
        assert_healthy([future.result() for future in healthy], database_path)

    assert faulty.types[0] == "start" and faulty.types[-2:] == ["error", "done"]
    error = faulty.of("error")[0].data
    assert error["code"] == "internal"
    assert faulty.done["status"] == "error"
    message_id = faulty.done["message_id"]
    if stage == "persisting":
        assert faulty.done["persisted"] is False
        assert stored(database_path, message_id) is None
    else:
        assert faulty.done["persisted"] is True
        assert stored(database_path, message_id) == (faulty.text, "error")
    if stage == "mid_stream":
        assert faulty.text == "stream every token "

    faults = [r for r in fault_log.records if getattr(r, FAULT, False)]
    assert len(faults) == 1, [r.getMessage() for r in faults]
    assert message_id in faults[0].getMessage()
    assert faults[0].exc_info is not None
    raised = faults[0].exc_info[1]
    if isinstance(raised, BaseExceptionGroup):  # from a task group (the tool round)
        raised = raised.exceptions[0]
    assert isinstance(raised, Boom)

    # Listeners (metrics, hooks) hear of the faulty run like any other.
    finished = wait_until(
        lambda: [r for r in recorder.finished if str(r.message_id) == message_id],
        what="the faulty run reported to listeners",
    )
    assert finished[0].status == "error" and finished[0].error is not None
    assert finished[0].error["code"] == "internal"

    after = stream_chat(server.base_url, {"message": "[[fake tokens=3]] still serving?"})
    assert after.done["status"] == "complete"


def test_a_websocket_chat_that_fails_unexpectedly_is_an_internal_frame(
    server: AppServer, monkeypatch: pytest.MonkeyPatch, fault_log: pytest.LogCaptureFixture
) -> None:
    """A fault while starting a chat (here, in the store) ends that chat, not the socket."""
    original = Store.begin_turn

    async def begin_turn(self: Store, owner: str, **values: Any) -> Any:
        if MARK in values["message"]:
            raise Boom("while starting a chat")
        return await original(self, owner, **values)

    monkeypatch.setattr(Store, "begin_turn", begin_turn)
    with open_socket(server) as ws:
        send(ws, {"type": "chat", "request_id": "bad", "message": f"{MARK} hi"})
        error = recv(ws)
        assert (error["type"], error["code"], error["request_id"]) == ("error", "internal", "bad")
        assert "Boom" not in str(error)
        send(ws, {"type": "chat", "request_id": "good", "message": "[[fake tokens=4]] hi"})
        frames = recv_until(ws, lambda fs: dones(fs) == 1)
    assert frames[-1]["status"] == "complete"
    faults = [r for r in fault_log.records if getattr(r, FAULT, False)]
    assert len(faults) == 1 and faults[0].exc_info is not None
