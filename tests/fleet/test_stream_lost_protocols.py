"""A run on A, followed on B in each protocol; B loses Redis (and so the run's stream) mid-answer.

Each client must get a clean end in its own protocol, never a hung or cut
stream, and what it was sent must be the start of the answer A saves:

    native SSE      `error` (retryable) + `done` `interrupted`, with no `id`
    WebSocket       an `error` frame + a `done` frame for the run, with no `seq`
    AI SDK          `error` chunk, `finish-step`, `finish` (error), `[DONE]`
    Responses       one `error` event (the SDK's typed event), numbered as the last
                    event sent: `starting_after` it resumes with nothing missed

`/v1/chat/completions` is not here: its stream always follows the run its
own request started, on the instance that took it, never a run of another
(its lost-stream bytes, and the SDK's `APIError` for them, are checked in
`tests/unit/test_encoders.py`).

B reaches Redis through a proxy the test cuts; A does not, so the run goes
on there and is saved whole once released.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy.engine import make_url

from tests.fleet.conftest import FleetFactory, last_seq
from tests.fleet.test_shared_runs import messages
from tests.support.process import ServeProcess
from tests.support.servers import FakeUpstreamThread
from tests.support.sse import SSEEvent, iter_sse, read_stream
from tests.support.tcp_proxy import TcpProxy
from tests.support.wait import wait_until
from tests.support.ws import open_socket_at, recv, recv_until, send

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

HEAD = 4  # the deltas the model sends before it stalls (until the test releases it)
PROMPT = f"[[fake tokens=12 stall_after={HEAD}]] go"
LOST_WITHIN_S = 15.0  # a lease (1 s) and a follower's patience, with room to spare
LOST_MESSAGE = "stream is not reachable"


@dataclass
class Pair:
    a: ServeProcess
    b: ServeProcess  # its Redis through `proxy`
    proxy: TcpProxy

    def b_knows(self, message_id: str) -> None:
        """Wait until B sees the run up to its stall (start and the head's deltas)."""
        wait_until(
            lambda: (
                last_seq(httpx.get(f"{self.b.base_url}/api/runs/{message_id}", timeout=5))
                >= 1 + HEAD
            ),
            what="the run's head mirrored to Redis",
        )

    def lose_redis_on_b(self) -> float:
        self.proxy.cut()
        return time.monotonic()


@pytest.fixture
def pair(fleet: FleetFactory, redis_url: str) -> Iterator[Pair]:
    target = make_url(redis_url)
    proxy = TcpProxy(target.host or "127.0.0.1", target.port or 6379)
    through = f"redis://127.0.0.1:{proxy.port}/{target.database or 0}"
    try:
        lease = {"run_lease_s": "1"}
        a = fleet("a", **lease)
        b = fleet("b", env={"CHATSTREAM_REDIS_URL": through}, **lease)
        yield Pair(a, b, proxy)
    finally:
        proxy.close()


def saved_answer(base_url: str, session_id: str, message_id: str) -> str:
    """The assistant message A saved, once the run has completed."""

    def stored() -> str | None:
        for message in messages(base_url, session_id):
            if message["id"] == message_id and message["status"] == "complete":
                return str(message["content"])
        return None

    return wait_until(stored, timeout=30, what="the whole answer saved")


@contextmanager
def native_on_a(pair: Pair) -> Iterator[tuple[Iterator[SSEEvent | str], dict[str, Any]]]:
    """A native chat stream on A, stalled after its head: the rest of it, and its `start`."""
    with (
        httpx.Client(base_url=pair.a.base_url, timeout=30) as client,
        client.stream("POST", "/api/chat/stream", json={"message": PROMPT}) as response,
    ):
        events = iter_sse(response)
        head = read_stream(events, stop_after=1 + HEAD)
        assert head.types == ["start"] + ["delta"] * HEAD
        yield events, head.events[0].data


def test_native_sse_follower_gets_error_and_done_then_resumes(
    pair: Pair, fake: FakeUpstreamThread
) -> None:
    with native_on_a(pair) as (on_a, start):
        message_id = start["message_id"]
        pair.b_knows(message_id)
        with httpx.stream(
            "GET", f"{pair.b.base_url}/api/runs/{message_id}/events", timeout=30
        ) as response:
            assert response.status_code == 200
            events = iter_sse(response)
            head = read_stream(events, stop_after=1 + HEAD)
            cut_at = pair.lose_redis_on_b()
            rest = read_stream(events)  # to the end of the response: it must end
        assert time.monotonic() - cut_at < LOST_WITHIN_S
        fake.fake.release()
        assert read_stream(on_a).done["status"] == "complete"
    assert rest.types == ["error", "done"], rest.types
    error, done = (event.data for event in rest.events)
    assert (error["code"], error["retryable"]) == ("server_shutdown", True)
    assert LOST_MESSAGE in error["message"]
    assert (done["status"], done["persisted"], done["message_id"]) == (
        "interrupted",
        False,
        message_id,
    )
    # Not the run's events: they carry no id, so the last event id (what an EventSource
    # resumes from) stays the run's last event's.
    assert [event.id for event in rest.events] == [head.events[-1].id] * 2
    answer = saved_answer(pair.a.base_url, start["session_id"], message_id)
    assert answer.startswith(head.text) and len(head.text) > 0

    pair.proxy.restore()
    wait_until(lambda: httpx.get(f"{pair.b.base_url}/readyz", timeout=5).status_code == 200)
    last_id = head.events[-1].id
    with httpx.stream(
        "GET",
        f"{pair.b.base_url}/api/runs/{message_id}/events",
        headers={"Last-Event-ID": str(last_id)},
        timeout=30,
    ) as response:
        resumed = read_stream(response)
    assert resumed.events[0].id == (last_id or 0) + 1 and resumed.done["status"] == "complete"
    assert head.text + resumed.text == answer


def test_websocket_follower_gets_an_error_and_a_done_frame(
    pair: Pair, fake: FakeUpstreamThread
) -> None:
    with native_on_a(pair) as (on_a, start):
        message_id = start["message_id"]
        pair.b_knows(message_id)
        with open_socket_at(pair.b.ws_url) as ws:
            send(ws, {"type": "resume", "message_id": message_id, "after": 0})
            head = [recv(ws) for _ in range(1 + HEAD)]
            cut_at = pair.lose_redis_on_b()
            rest = recv_until(ws, lambda frames: any(f["type"] == "done" for f in frames))
            assert time.monotonic() - cut_at < LOST_WITHIN_S
            # Only that run ended: the socket itself goes on.
            send(ws, {"type": "ping", "request_id": "p1"})
            assert recv(ws) == {"type": "pong", "request_id": "p1"}
        fake.fake.release()
        assert read_stream(on_a).done["status"] == "complete"
    assert [f["type"] for f in head] == ["start"] + ["delta"] * HEAD
    assert [f["seq"] for f in head] == list(range(1, 2 + HEAD))
    assert [f["type"] for f in rest] == ["error", "done"], rest
    error, done = rest
    assert error["message_id"] == done["message_id"] == message_id
    assert "seq" not in error and "seq" not in done
    assert (error["code"], error["retryable"]) == ("server_shutdown", True)
    assert LOST_MESSAGE in error["message"]
    assert (done["status"], done["persisted"]) == ("interrupted", False)
    answer = saved_answer(pair.a.base_url, start["session_id"], message_id)
    text = "".join(f["text"] for f in head if f["type"] == "delta")
    assert answer.startswith(text) and len(text) > 0


def ui_chunks(response: httpx.Response) -> Iterator[Any]:
    """The UI message stream's `data:` payloads: each chunk, then the string "[DONE]"."""
    for line in response.iter_lines():
        if line.startswith("data: "):
            value = line.removeprefix("data: ")
            yield value if value == "[DONE]" else json.loads(value)


def test_ai_sdk_stream_resumed_on_b_ends_with_error_finish_and_done(
    pair: Pair, fake: FakeUpstreamThread
) -> None:
    body = {
        "id": "lost-ui",
        "resume": True,  # the run goes on once its own request leaves
        "messages": [{"id": "u1", "role": "user", "parts": [{"type": "text", "text": PROMPT}]}],
    }
    with httpx.stream("POST", f"{pair.a.base_url}/api/ui/chat", json=body, timeout=30) as started:
        assert started.status_code == 200
        first = next(ui_chunks(started))
    assert first["type"] == "start"
    message_id = first["messageId"]
    pair.b_knows(message_id)
    with httpx.stream("GET", f"{pair.b.base_url}/api/ui/chat/lost-ui/stream", timeout=30) as on_b:
        assert on_b.status_code == 200
        assert on_b.headers["x-vercel-ai-ui-message-stream"] == "v1"
        chunks = ui_chunks(on_b)
        head: list[Any] = []
        while sum(1 for c in head if c["type"] == "text-delta") < HEAD:
            head.append(next(chunks))
        cut_at = pair.lose_redis_on_b()
        rest = list(chunks)  # to the end of the response: it must end
    assert time.monotonic() - cut_at < LOST_WITHIN_S
    fake.fake.release()
    assert [c["type"] for c in head] == ["start", "start-step", "text-start"] + [
        "text-delta"
    ] * HEAD
    assert [c if c == "[DONE]" else c["type"] for c in rest] == [
        "text-end",
        "error",
        "finish-step",
        "finish",
        "[DONE]",
    ], rest
    assert LOST_MESSAGE in rest[1]["errorText"] and rest[3]["finishReason"] == "error"
    state = httpx.get(f"{pair.a.base_url}/api/runs/{message_id}", timeout=10).json()
    answer = saved_answer(pair.a.base_url, state["session_id"], message_id)
    text = "".join(c["delta"] for c in head if c["type"] == "text-delta")
    assert answer.startswith(text) and len(text) > 0


def sdk(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=30)


def test_responses_retrieve_stream_on_b_ends_with_an_error_event_then_resumes(
    pair: Pair, fake: FakeUpstreamThread
) -> None:
    on_a, on_b = sdk(pair.a.base_url), sdk(pair.b.base_url)
    with on_a, on_b:
        created = on_a.responses.create(model="test-model", input=PROMPT, stream=True)
        events_on_a = iter(created)
        response_id = next(events_on_a).response.id  # type: ignore[union-attr]
        message_id = created.response.headers["x-chatstream-message-id"]
        pair.b_knows(message_id)
        followed = on_b.responses.retrieve(response_id, stream=True)
        events = iter(followed)
        head: list[Any] = []
        while sum(1 for e in head if e.type == "response.output_text.delta") < HEAD:
            head.append(next(events))
        cut_at = pair.lose_redis_on_b()
        rest = list(events)  # to the end of the stream: it must end
        assert time.monotonic() - cut_at < LOST_WITHIN_S
        fake.fake.release()
        completed = list(events_on_a)
        assert completed[-1].type == "response.completed"
        numbers = [e.sequence_number for e in head + rest[:-1]]
        assert numbers == list(range(len(numbers)))
        # One typed `error` event: not `response.failed` (the response goes on), and
        # numbered as the last event sent, so resuming after it misses nothing.
        lost = rest[-1]
        assert lost.type == "error", [e.type for e in rest]
        assert lost.code == "server_shutdown" and LOST_MESSAGE in lost.message
        assert lost.sequence_number == numbers[-1]
        text = "".join(e.delta for e in head + rest if e.type == "response.output_text.delta")
        answer = on_a.responses.retrieve(response_id)
        assert answer.status == "completed" and answer.output_text.startswith(text)
        assert len(text) > 0

        pair.proxy.restore()
        wait_until(lambda: httpx.get(f"{pair.b.base_url}/readyz", timeout=5).status_code == 200)
        resumed = list(
            on_b.responses.retrieve(response_id, stream=True, starting_after=lost.sequence_number)
        )
        assert resumed[0].sequence_number == lost.sequence_number + 1
        assert resumed[-1].type == "response.completed"
        more = "".join(e.delta for e in resumed if e.type == "response.output_text.delta")
        assert text + more == answer.output_text
