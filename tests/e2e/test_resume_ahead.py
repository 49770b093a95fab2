"""A resume whose position is ahead of the live run (a client that kept ids from elsewhere,
or a stale tab) is sent nothing it claims to have: only events after its position, once
the run gets there. Real uvicorn, the fake upstream stalled mid-answer."""

from __future__ import annotations

import httpx

from tests.support.servers import AppServer, FakeUpstreamThread
from tests.support.sse import iter_sse, read_stream
from tests.support.ws import dones, open_socket, recv_until, send

# start (1) and three deltas (2-4), then a stall; 20 deltas and done in all (ids 1-22).
STALLED = "[[fake tokens=20 stall_after=3]] go"
AHEAD = 10


def _started(client: httpx.Client) -> str:
    with client.stream("POST", "/api/chat/stream", json={"message": STALLED}) as response:
        head = read_stream(response, stop_after=4)
    return str(head.events[0].data["message_id"])


def test_sse_resume_ahead_of_the_live_position_sends_only_later_events(
    client: httpx.Client, fake: FakeUpstreamThread
) -> None:
    message_id = _started(client)
    with client.stream(
        "GET", f"/api/runs/{message_id}/events", headers={"Last-Event-ID": str(AHEAD)}
    ) as response:
        assert response.status_code == 200
        items = iter_sse(response)
        fake.fake.release(wait_for=1)
        rest = read_stream(items)
    ids = [event.id for event in rest.events]
    assert ids == list(range(AHEAD + 1, 23)), ids
    assert rest.types[-1] == "done"


def test_websocket_resume_ahead_of_the_live_position_sends_only_later_events(
    server: AppServer, client: httpx.Client, fake: FakeUpstreamThread
) -> None:
    message_id = _started(client)
    with open_socket(server) as ws:
        send(ws, {"type": "resume", "message_id": message_id, "after": AHEAD})
        fake.fake.release(wait_for=1)
        frames = recv_until(ws, lambda fs: dones(fs) == 1)
    seqs = [frame["seq"] for frame in frames if frame.get("message_id") == message_id]
    assert seqs == list(range(AHEAD + 1, 23)), seqs
