"""Run listeners: told of every start, end and refusal, and unable to hurt a run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from chatstream.runs.lifecycle import RunRecord, RunStarted
from tests.support.servers import AppServer
from tests.support.sse import read_stream
from tests.support.wait import wait_until


class Recorder:
    def __init__(self) -> None:
        self.started: list[RunStarted] = []
        self.finished: list[RunRecord] = []
        self.rejected: list[str] = []

    def run_started(self, run: RunStarted) -> None:
        self.started.append(run)

    def run_finished(self, record: RunRecord) -> None:
        self.finished.append(record)

    def chat_rejected(self, code: str) -> None:
        self.rejected.append(code)


class Exploding:
    def run_started(self, run: RunStarted) -> None:
        raise RuntimeError("boom on start")

    def run_finished(self, record: RunRecord) -> None:
        raise RuntimeError("boom on finish")

    def chat_rejected(self, code: str) -> None:
        raise RuntimeError("boom on rejection")


def test_listeners_hear_each_run_as_done_announced_it(
    make_server: Callable[..., AppServer],
) -> None:
    recorder = Recorder()
    server = make_server(listeners=[Exploding(), recorder], rate_limit="2/minute")
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        with client.stream(
            "POST", "/api/chat/stream", json={"message": "[[fake tokens=5]] hello"}
        ) as response:
            stream = read_stream(response)
        assert stream.done["status"] == "complete"
        failed = client.post("/api/chat", json={"message": "[[fake status=500]] hi"})
        assert failed.status_code == 502
        refused = client.post("/api/chat", json={"message": "one too many"})
        assert refused.status_code == 429

    wait_until(lambda: len(recorder.finished) == 2, what="both runs reported")
    first, second = recorder.finished
    start = stream.of("start")[0].data
    assert [s.message_id for s in recorder.started] == [first.message_id, second.message_id]
    assert str(first.message_id) == start["message_id"]
    assert str(first.session_id) == start["session_id"]
    done: dict[str, Any] = stream.done
    assert first.status == "complete" and first.persisted is True
    assert first.answer == stream.text
    assert dict(first.metrics) == done["metrics"]
    assert first.usage == done["usage"]
    assert first.messages[-1] == {"role": "user", "content": "[[fake tokens=5]] hello"}
    assert second.status == "error"
    assert second.error is not None and second.error["code"] == "upstream_error"
    assert recorder.rejected == ["rate_limited"]
