"""Upstream faults against a real server: the right events, the partial saved, nothing leaked."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import httpx
import pytest

from tests.faults.conftest import ServeFactory
from tests.support.servers import FakeUpstreamThread
from tests.support.sse import Stream, read_stream


def chat(base_url: str, message: str) -> Stream:
    with (
        httpx.Client(base_url=base_url, timeout=30) as client,
        client.stream("POST", "/api/chat/stream", json={"message": message}) as response,
    ):
        assert response.status_code == 200
        return read_stream(response)


def saved(base_url: str, stream: Stream) -> dict[str, object]:
    session = stream.events[0].data["session_id"]
    items = httpx.get(f"{base_url}/api/sessions/{session}/messages", timeout=10).json()["items"]
    return dict(items[-1])


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A port that never completes a TCP handshake: its accept queue is full and never served."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = int(listener.getsockname()[1])
    held = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        held.append(filler)
    yield port
    for sock in held:
        sock.close()
    listener.close()


def test_a_connect_timeout_is_upstream_timeout(serve: ServeFactory, blackhole: int) -> None:
    server = serve(
        env={"OPENAI_BASE_URL": f"http://127.0.0.1:{blackhole}/v1"},
        upstream_connect_timeout_s="0.5",
    )
    stream = chat(server.base_url, "hello")
    assert stream.types == ["start", "error", "done"]
    error = stream.of("error")[0].data
    assert (error["code"], error["retryable"]) == ("upstream_timeout", True)
    assert stream.done["status"] == "error" and stream.done["persisted"] is True


FAULTS = [
    # (directive, error code, retryable, deltas the client sees)
    ("tokens=9 drop_after=3", "upstream_error", True, 3),
    ("tokens=9 rst_after=4", "upstream_error", True, 4),
    ("tokens=9 stall_after=2", "upstream_timeout", True, 2),
    ("tokens=5 no_finish=1", "upstream_error", True, 5),
    ("tokens=9 error_after=2", "upstream_error", True, 2),
    ("status=500", "upstream_error", True, 0),
    ("status=429 retry_after=1", "upstream_rate_limited", True, 0),
    ("status=400", "upstream_error", False, 0),
]


def test_every_fault_ends_cleanly_and_leaks_no_upstream_connection(
    serve: ServeFactory, fake: FakeUpstreamThread
) -> None:
    server = serve(upstream_idle_timeout_s="0.3")
    for _ in range(3):
        for directive, code, retryable, deltas in FAULTS:
            stream = chat(server.base_url, f"[[fake {directive}]] go")
            assert stream.types[-2:] == ["error", "done"], directive
            error = stream.of("error")[0].data
            assert (error["code"], error["retryable"]) == (code, retryable), directive
            assert stream.types.count("delta") == deltas, directive
            answer = saved(server.base_url, stream)
            assert (answer["status"], answer["content"]) == ("error", stream.text), directive
    # A healthy answer still flows through the same pool.
    assert chat(server.base_url, "[[fake tokens=3]] fine").done["status"] == "complete"
    # Sequential requests reuse one pooled connection at most; every stream
    # abandoned mid-answer (24 of them) was closed, not kept or leaked.
    fake.fake.wait_for(lambda: fake.fake.active_streams == 0 and fake.fake.open_connections <= 1)
