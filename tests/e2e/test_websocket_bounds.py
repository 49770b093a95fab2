"""`WS /ws/chat` bounds: a client that stops reading is really disconnected, an idle socket is
closed, and what a stuck socket queues in the server is bounded."""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection

from chatstream.api.ws_transport import WRITE_BUFFER_BYTES, BoundedWebSocketProtocol
from tests.support.servers import AppServer, FakeUpstreamThread
from tests.support.wait import wait_until
from tests.support.ws import dones, open_socket, recv, recv_until, send

TOKEN_CHARS = 4000
# More than the kernel's buffers hold (a few MB on loopback), then the upstream stalls.
FLOOD = f"[[fake tokens=3000 token_chars={TOKEN_CHARS} stall_after=1500]] flood"
DROPPED = "dropped a WebSocket whose client read nothing"
TCP_GONE_STATES = {"06", "07"}  # TIME_WAIT, CLOSE: nothing left to send to the client


def chat(request_id: str, message: str) -> dict[str, Any]:
    return {"type": "chat", "request_id": request_id, "message": message}


def tcp_states(local_port: int, remote_port: int) -> set[str]:
    """The states of the sockets from `local_port` to `remote_port`, as the kernel lists them."""
    states = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local, remote = fields[1].rsplit(":", 1)[1], fields[2].rsplit(":", 1)[1]
            if int(local, 16) == local_port and int(remote, 16) == remote_port:
                states.add(fields[3])
    return states


def stuck_client(server: AppServer) -> tuple[ClientConnection, int]:
    """A socket with a tiny receive buffer whose client reads only what it is told to."""
    if not Path("/proc/net/tcp").exists():
        pytest.skip("needs /proc/net/tcp to see the server's side of a connection")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    # (Its own close would wait for the server's echo, queued behind all it has not read.)
    ws = open_socket(server, sock=sock, max_queue=1, close_timeout=0.2)  # type: ignore[arg-type]
    return ws, sock.getsockname()[1]


@pytest.mark.parametrize("policy", ["continue", "cancel"])
def test_a_client_that_stops_reading_is_disconnected_and_its_run_follows_the_policy(
    make_server: Any, fake: FakeUpstreamThread, caplog: pytest.LogCaptureFixture, policy: str
) -> None:
    server: AppServer = make_server(send_timeout_s=0.5, on_disconnect=policy)
    with caplog.at_level(logging.INFO, logger="chatstream.api.ws"):
        slow, client_port = stuck_client(server)
        with slow:
            send(slow, chat("big", FLOOD))
            message_id = uuid.UUID(recv(slow)["message_id"])  # its start; then it reads no more
            # The server's end of the connection goes: not merely "closed" while the
            # megabytes queued for the client keep it open.
            wait_until(
                lambda: not tcp_states(server.port, client_port) - TCP_GONE_STATES,
                timeout=15,
                what="the server's side of the stuck connection is gone",
            )
            # The client, reading on, finds the connection ended.
            with pytest.raises(ConnectionClosed):
                while True:
                    slow.recv(10)
        run = server.state.registry.local(message_id, "anonymous")
        assert run is not None
        if policy == "continue":
            assert run.live
            fake.fake.release(wait_for=1)
            server.call(run.wait, timeout=30)
            assert run.status == "complete"
        else:
            server.call(run.wait, timeout=30)
            assert run.status == "cancelled"
    dropped = [r for r in caplog.records if DROPPED in r.getMessage()]
    assert len(dropped) == 1, [r.getMessage() for r in dropped]


def test_what_a_stuck_socket_queues_in_the_server_is_bounded(
    make_server: Any, fake: FakeUpstreamThread
) -> None:
    """Not the kernel's buffers: what this process holds for a client that reads nothing."""
    runs = 4
    server: AppServer = make_server(send_timeout_s=60, ws_max_runs=runs)
    slow, _ = stuck_client(server)
    with slow:
        for n in range(runs):
            send(slow, chat(f"r{n}", FLOOD))

        def queued() -> list[int]:
            sockets = [c for c in server.connections() if isinstance(c, BoundedWebSocketProtocol)]

            async def sizes() -> list[int]:
                return [c.transport.get_write_buffer_size() for c in sockets]

            return list(server.call(sizes))

        # Stuck: the transport holds more than its limit, so every send waits.
        wait_until(lambda: queued() and queued()[0] > WRITE_BUFFER_BYTES, timeout=30)
        # At most the limit plus one frame from each task sending on the socket (each
        # run's follow, and the reader's answers).
        frame = TOKEN_CHARS + 200
        assert queued()[0] <= WRITE_BUFFER_BYTES + (runs + 1) * frame
    fake.fake.release(wait_for=runs)


def test_an_idle_socket_is_closed_with_1000(make_server: Any) -> None:
    server: AppServer = make_server(ws_idle_timeout_s=0.3)
    with open_socket(server) as ws, pytest.raises(ConnectionClosed) as closed:
        recv(ws, timeout=10)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1000, "idle")


def test_pings_keep_a_socket_from_being_idle(make_server: Any) -> None:
    idle_s = 0.3
    server: AppServer = make_server(ws_idle_timeout_s=idle_s)
    pace = threading.Event()
    with open_socket(server) as ws:
        started = time.monotonic()
        while time.monotonic() - started < 4 * idle_s:
            send(ws, {"type": "ping"})
            assert recv(ws) == {"type": "pong"}
            pace.wait(idle_s / 3)  # the pace of this client, not a wait for the server
        with pytest.raises(ConnectionClosed) as closed:
            recv(ws, timeout=10)  # once it stops pinging
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000


def test_a_socket_following_a_run_is_not_idle(make_server: Any, fake: FakeUpstreamThread) -> None:
    idle_s = 0.3
    server: AppServer = make_server(ws_idle_timeout_s=idle_s, thinking_interval_s=60)
    with open_socket(server) as ws:
        send(ws, chat("s", "[[fake tokens=6 stall_after=2]] hold"))
        recv_until(ws, lambda fs: len(fs) == 3)
        # The run is live but sends nothing: the socket stays open.
        with pytest.raises(TimeoutError):
            ws.recv(4 * idle_s)
        fake.fake.release(wait_for=1)
        assert recv_until(ws, lambda fs: dones(fs) == 1)[-1]["status"] == "complete"
        # Its run done, the socket is idle from then on.
        with pytest.raises(ConnectionClosed) as closed:
            recv(ws, timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
