"""`WS /ws/chat` with the `websockets` client against real uvicorn and the fake upstream."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import uuid
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.support.servers import AppServer, FakeUpstreamThread
from tests.support.sse import read_stream
from tests.support.ws import by_run, dones, open_socket, recv, recv_until, send, text_of


def persisted(server: AppServer, session_id: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{server.base_url}/api/sessions/{session_id}/messages", timeout=10)
    return list(response.json()["items"])


def chat(request_id: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"type": "chat", "request_id": request_id, "message": message, **extra}


def test_two_chats_on_one_socket_interleave_and_match_what_is_persisted(server: AppServer) -> None:
    with open_socket(server) as ws:
        send(ws, chat("a", "[[fake tokens=30 interval_ms=10]] first"))
        send(ws, chat("b", "[[fake tokens=25 interval_ms=12]] second"))
        frames = recv_until(ws, lambda fs: dones(fs) == 2)

    runs = by_run(frames)
    assert len(runs) == 2
    order = [f["request_id"] for f in frames]
    first_b, last_a = order.index("b"), len(order) - 1 - order[::-1].index("a")
    assert first_b < last_a, "the two runs did not interleave"
    for run_frames in runs.values():
        assert [f["seq"] for f in run_frames] == list(range(1, len(run_frames) + 1))
        assert len({f["request_id"] for f in run_frames}) == 1
        start, done = run_frames[0], run_frames[-1]
        assert start["type"] == "start" and done["type"] == "done"
        assert done["status"] == "complete"
        answer = persisted(server, start["session_id"])[-1]
        assert answer["id"] == start["message_id"]
        assert answer["content"] == text_of(run_frames)
        assert all(f["message_id"] == start["message_id"] for f in run_frames)
    # A frame is the SSE event object plus request_id, message_id and seq: no key twice.
    raw = json.dumps(frames[0])
    assert raw.count('"message_id"') == 1


def test_cancel_one_run_mid_stream_while_the_other_completes(
    server: AppServer, fake: FakeUpstreamThread
) -> None:
    with open_socket(server) as ws:
        send(ws, chat("slow", "[[fake tokens=10 stall_after=3]] a"))
        send(ws, chat("fast", "[[fake tokens=15 interval_ms=5]] b"))
        frames = recv_until(
            ws,
            lambda fs: (
                sum(1 for f in fs if f.get("request_id") == "slow" and f["type"] == "delta") == 3
            ),
        )
        slow_id = next(f["message_id"] for f in frames if f.get("request_id") == "slow")
        send(ws, {"type": "cancel", "message_id": slow_id})
        frames += recv_until(ws, lambda fs: dones(frames + fs) == 2)
    runs = by_run(frames)
    slow, fast = runs[slow_id], next(v for k, v in runs.items() if k != slow_id)
    assert slow[-1]["status"] == "cancelled"
    assert "error" not in [f["type"] for f in slow]
    assert fast[-1]["status"] == "complete"
    answer = persisted(server, slow[0]["session_id"])[-1]
    assert (answer["status"], answer["content"]) == ("cancelled", text_of(slow))


def test_resume_after_n_yields_exactly_the_later_events(
    server: AppServer, fake: FakeUpstreamThread
) -> None:
    with open_socket(server) as first:
        send(first, chat("r", "[[fake tokens=12 stall_after=6]] resume me"))
        head = recv_until(first, lambda fs: len(fs) == 5)
    message_id = head[0]["message_id"]
    with open_socket(server) as second:
        send(second, {"type": "resume", "message_id": message_id, "after": 4})
        first_resumed = recv(second)
        assert first_resumed["seq"] == 5
        assert "request_id" not in first_resumed
        fake.fake.release(wait_for=1)
        rest = [first_resumed, *recv_until(second, lambda fs: dones(fs) == 1)]
    with httpx.stream(
        "GET", f"{server.base_url}/api/runs/{message_id}/events", timeout=10
    ) as response:
        full = read_stream(response)
    assert [f["seq"] for f in rest] == [e.id for e in full.events[4:]]
    for frame, event in zip(rest, full.events[4:], strict=True):
        assert {k: v for k, v in frame.items() if k not in ("seq", "message_id")} == {
            k: v for k, v in event.data.items() if k != "message_id"
        }


def test_ping_is_answered_while_runs_stream(server: AppServer, fake: FakeUpstreamThread) -> None:
    with open_socket(server) as ws:
        send(ws, chat("s", "[[fake tokens=10 stall_after=2]] hold"))
        recv_until(ws, lambda fs: len(fs) == 3)
        send(ws, {"type": "ping"})
        assert recv(ws) == {"type": "pong"}
        fake.fake.release(wait_for=1)
        assert recv_until(ws, lambda fs: dones(fs) == 1)[-1]["status"] == "complete"


@pytest.mark.parametrize(
    "frame",
    [
        "not json at all",
        "[1, 2, 3]",
        '{"type": "dance"}',
        '{"no": "type"}',
        '{"type": "chat", "request_id": "x", "message": ""}',
        '{"type": "chat", "request_id": "x", "message": "hi", "surprise": 1}',
        '{"type": "chat", "message": "hi"}',
        '{"type": "cancel", "message_id": "not-a-uuid"}',
        '{"type": "resume", "message_id": "00000000-0000-4000-8000-000000000000", "after": -1}',
    ],
)
def test_bad_frames_get_invalid_request_and_the_socket_stays_open(
    server: AppServer, frame: str
) -> None:
    with open_socket(server) as ws:
        ws.send(frame)
        error = recv(ws)
        assert error["type"] == "error"
        assert error["code"] == "invalid_request"
        assert error["retryable"] is False
        assert isinstance(error["message"], str) and error["message"]
        send(ws, {"type": "ping"})
        assert recv(ws) == {"type": "pong"}


def test_invalid_chat_echoes_its_request_id(server: AppServer) -> None:
    with open_socket(server) as ws:
        send(ws, chat("mine", "   "))
        error = recv(ws)
    assert (error["code"], error["request_id"]) == ("invalid_request", "mine")
    assert any("message" in d["loc"] for d in error["details"])


@pytest.mark.parametrize("kind", ["cancel", "resume"])
def test_unknown_message_id_is_invalid_request(server: AppServer, kind: str) -> None:
    unknown = str(uuid.uuid4())
    with open_socket(server) as ws:
        send(ws, {"type": kind, "message_id": unknown})
        error = recv(ws)
    assert (error["type"], error["code"], error["message_id"]) == (
        "error",
        "invalid_request",
        unknown,
    )


def test_binary_frames_are_invalid_requests(server: AppServer) -> None:
    with open_socket(server) as ws:
        ws.send(b"\x00\x01")
        assert recv(ws)["code"] == "invalid_request"


def test_chat_errors_before_the_run_come_as_error_frames(server: AppServer) -> None:
    with open_socket(server) as ws:
        send(ws, chat("gone", "hi", session_id=str(uuid.uuid4())))
        error = recv(ws)
        assert (error["code"], error["request_id"]) == ("invalid_request", "gone")
        send(ws, chat("model", "hi", model="nope"))
        assert recv(ws)["code"] == "invalid_request"


def test_upstream_failure_arrives_as_error_then_done(server: AppServer) -> None:
    with open_socket(server) as ws:
        send(ws, chat("e", "[[fake tokens=8 drop_after=3]] x"))
        frames = recv_until(ws, lambda fs: dones(fs) == 1)
    assert [f["type"] for f in frames][-2:] == ["error", "done"]
    assert frames[-2]["code"] == "upstream_error" and "seq" in frames[-2]
    assert frames[-1]["status"] == "error"


def test_auth_frame_is_accepted_and_ignored_with_auth_off(server: AppServer) -> None:
    with open_socket(server) as ws:
        send(ws, {"type": "auth", "token": "anything"})
        send(ws, {"type": "ping"})
        assert recv(ws) == {"type": "pong"}


def test_oversized_frame_closes_1009_and_others_are_served(server: AppServer) -> None:
    with open_socket(server) as other, open_socket(server, max_size=None) as big:
        big.send(json.dumps(chat("big", "x" * 70_000)))
        with pytest.raises(ConnectionClosed) as closed:
            recv(big)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
        send(other, {"type": "ping"})
        assert recv(other) == {"type": "pong"}


def test_cross_origin_upgrade_is_refused_403(make_server: Any) -> None:
    server: AppServer = make_server()
    with pytest.raises(InvalidStatus) as refused:
        open_socket(server, origin="https://evil.example")  # type: ignore[arg-type]
    assert refused.value.response.status_code == 403
    assert json.loads(refused.value.response.body)["error"]["code"] == "forbidden"
    with open_socket(server, origin=f"http://127.0.0.1:{server.port}") as same:  # type: ignore[arg-type]
        send(same, {"type": "ping"})
        assert recv(same) == {"type": "pong"}


def test_listed_cors_origin_may_upgrade(make_server: Any) -> None:
    server: AppServer = make_server(cors_origins=["https://app.example"])
    with open_socket(server, origin="https://app.example") as ws:  # type: ignore[arg-type]
        send(ws, {"type": "ping"})
        assert recv(ws) == {"type": "pong"}


def test_closing_the_socket_leaves_a_run_that_completes(server: AppServer) -> None:
    with open_socket(server) as ws:
        send(ws, chat("c", "[[fake tokens=40 interval_ms=10]] keep going"))
        head = recv_until(ws, lambda fs: len(fs) == 3)
    message_id = head[0]["message_id"]
    run = server.state.registry.local(uuid.UUID(message_id), "anonymous")
    server.call(run.wait)
    assert run.status == "complete"
    answer = persisted(server, head[0]["session_id"])[-1]
    assert answer["status"] == "complete" and answer["content"].count(" ") == 40


def test_closing_the_socket_cancels_the_run_with_the_cancel_policy(
    make_server: Any, fake: FakeUpstreamThread
) -> None:
    server: AppServer = make_server(on_disconnect="cancel")
    with open_socket(server) as ws:
        send(ws, chat("c", "[[fake tokens=10 stall_after=3]] stop when I go"))
        head = recv_until(ws, lambda fs: len(fs) == 3)
    run = server.state.registry.local(uuid.UUID(head[0]["message_id"]), "anonymous")
    server.call(run.wait)
    assert run.status == "cancelled"
    answer = persisted(server, head[0]["session_id"])[-1]
    assert answer["status"] == "cancelled" and answer["content"].startswith(text_of(head))


def test_runs_per_socket_are_capped(make_server: Any, fake: FakeUpstreamThread) -> None:
    server: AppServer = make_server(ws_max_runs=2)
    with open_socket(server) as ws:
        for n in range(3):
            send(ws, chat(f"r{n}", "[[fake tokens=5 stall_after=1]] hold"))
        refused = recv_until(ws, lambda fs: any(f["type"] == "error" for f in fs))[-1]
        assert (refused["code"], refused["request_id"], refused["retryable"]) == (
            "too_many_runs",
            "r2",
            True,
        )
        assert refused["retry_after"] > 0
        fake.fake.release(wait_for=2)
        frames = recv_until(ws, lambda fs: dones(fs) == 2)
    assert {f["request_id"] for f in frames if f["type"] == "done"} == {"r0", "r1"}


def test_a_socket_that_stops_reading_is_closed_and_its_run_persists(make_server: Any) -> None:
    server: AppServer = make_server(send_timeout_s=0.5)
    with open_socket(server) as watcher:
        send(watcher, {"type": "ping"})
        assert recv(watcher) == {"type": "pong"}
        # A client with a tiny receive buffer that reads nothing.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        registry = server.state.registry
        with open_socket(server, sock=sock, max_queue=1) as slow:  # type: ignore[arg-type]
            send(slow, chat("big", "[[fake tokens=2500 token_chars=4000]] flood"))

            async def stalled_socket_dropped() -> str:
                while True:
                    runs = list(registry._runs.values())
                    if runs and runs[0].followers == 0:
                        return str(runs[0].id)
                    await asyncio.sleep(0.05)

            message_id = server.call(stalled_socket_dropped, timeout=30)
            # The other socket was served all along.
            send(watcher, {"type": "ping"})
            assert recv(watcher) == {"type": "pong"}
            run = registry.local(uuid.UUID(message_id), "anonymous")
            server.call(run.wait, timeout=60)
            assert run.status == "complete"
            with pytest.raises(ConnectionClosed):
                while True:
                    slow.recv(10)
    stored = persisted(server, str(run.session_id))[-1]
    assert stored["status"] == "complete" and len(stored["content"]) == 2500 * 4000


def test_two_hundred_sockets_closed_mid_run_leak_nothing(
    server: AppServer, fake: FakeUpstreamThread
) -> None:
    registry = server.state.registry

    async def tasks_now() -> int:
        return len(asyncio.all_tasks())

    baseline_tasks = server.call(tasks_now)
    baseline_followers = registry.follower_count
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(open_socket(server)) for _ in range(200)]
        for n, ws in enumerate(sockets):
            send(ws, chat(f"r{n}", "[[fake tokens=6 stall_after=2]] hold"))
        for ws in sockets:
            recv_until(ws, lambda fs: len(fs) == 3)
        assert registry.follower_count == baseline_followers + 200
    # Every socket is closed here, mid-run.

    async def all_sockets_gone() -> None:
        while registry.follower_count != baseline_followers:
            await asyncio.sleep(0.02)

    server.call(all_sockets_gone, timeout=30)
    fake.fake.release(wait_for=200)

    async def runs_finished() -> None:
        while registry.live_count:
            await asyncio.sleep(0.02)
        # Let finished tasks be collected by the loop.
        await asyncio.sleep(0)

    server.call(runs_finished, timeout=60)
    assert server.call(tasks_now) <= baseline_tasks + 1  # the inspecting coroutine itself
    assert registry.follower_count == baseline_followers


def test_two_resumes_back_to_back_send_each_event_once(
    server: AppServer, fake: FakeUpstreamThread
) -> None:
    with open_socket(server) as first:
        send(first, chat("r", "[[fake tokens=12 stall_after=6]] resume me twice"))
        head = recv_until(first, lambda fs: len(fs) == 5)
    message_id = head[0]["message_id"]
    with open_socket(server) as second:
        resume = {"type": "resume", "message_id": message_id, "after": 2}
        send(second, resume)
        send(second, {**resume, "after": 0})  # the later one replaces the first
        fake.fake.release(wait_for=1)
        frames = recv_until(second, lambda fs: dones(fs) == 1)
    seqs = [f["seq"] for f in frames]
    assert seqs == sorted(set(seqs)), seqs  # no event twice, in order
    assert seqs[-1] == frames[-1]["seq"] and frames[-1]["type"] == "done"
    assert seqs == list(range(seqs[0], seqs[-1] + 1))  # and none missing


def test_resumes_count_against_the_socket_cap(make_server: Any, fake: FakeUpstreamThread) -> None:
    server: AppServer = make_server(ws_max_runs=2)
    ids = []
    for n in range(3):
        with open_socket(server) as starter:  # closing it leaves the run going
            send(starter, chat(f"s{n}", "[[fake tokens=5 stall_after=1]] hold"))
            ids.append(recv(starter)["message_id"])
    with open_socket(server) as ws:
        for message_id in ids[:2]:
            send(ws, {"type": "resume", "message_id": message_id})
        send(ws, {"type": "resume", "message_id": ids[2], "request_id": "third"})
        refused = recv_until(ws, lambda fs: any(f["type"] == "error" for f in fs))[-1]
        assert (refused["code"], refused["request_id"]) == ("too_many_runs", "third")
        # A chat is one more run too.
        send(ws, chat("c", "[[fake tokens=2]] and a chat"))
        refused = recv_until(ws, lambda fs: any(f.get("request_id") == "c" for f in fs))[-1]
        assert refused["code"] == "too_many_runs"
        # Resuming a run it already follows replaces that follow: not one more.
        send(ws, {"type": "resume", "message_id": ids[0], "request_id": "again"})
        fake.fake.release(wait_for=3)
        frames = recv_until(ws, lambda fs: dones(fs) == 2)
    assert not any(f.get("request_id") == "again" for f in frames)


def test_every_frame_may_carry_a_request_id_to_echo(server: AppServer) -> None:
    with open_socket(server) as ws:
        send(ws, {"type": "ping", "request_id": "p1"})
        assert recv(ws) == {"type": "pong", "request_id": "p1"}
        unknown = str(uuid.uuid4())
        for kind in ("cancel", "resume"):
            send(ws, {"type": kind, "message_id": unknown, "request_id": f"{kind}-1"})
            error = recv(ws)
            assert (error["type"], error["code"], error["request_id"]) == (
                "error",
                "invalid_request",
                f"{kind}-1",
            )
        send(ws, {"type": "ping", "request_id": "x" * 201})
        assert recv(ws)["code"] == "invalid_request"
