"""WebSocket helpers for tests: the real `websockets` client against real uvicorn."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from websockets.sync.client import ClientConnection, connect

from tests.support.servers import AppServer

RECV_TIMEOUT_S = 15.0


def open_socket(server: AppServer, **kwargs: Any) -> ClientConnection:
    return open_socket_at(server.ws_url, **kwargs)


def open_socket_at(ws_url: str, **kwargs: Any) -> ClientConnection:
    """A socket to `/ws/chat` of the server at `ws_url` (ws://host:port)."""
    return connect(f"{ws_url}/ws/chat", open_timeout=10, **kwargs)


def send(ws: ClientConnection, frame: dict[str, Any]) -> None:
    ws.send(json.dumps(frame))


def recv(ws: ClientConnection, timeout: float = RECV_TIMEOUT_S) -> dict[str, Any]:
    frame = json.loads(ws.recv(timeout))
    assert isinstance(frame, dict)
    return frame


def recv_until(
    ws: ClientConnection,
    done: Callable[[list[dict[str, Any]]], bool],
    timeout: float = RECV_TIMEOUT_S,
) -> list[dict[str, Any]]:
    """Frames until `done(frames)` holds."""
    frames: list[dict[str, Any]] = []
    while not done(frames):
        frames.append(recv(ws, timeout))
    return frames


def dones(frames: list[dict[str, Any]]) -> int:
    return sum(1 for f in frames if f["type"] == "done")


def by_run(frames: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for frame in frames:
        if "seq" in frame:
            runs[frame["message_id"]].append(frame)
    return runs


def text_of(frames: list[dict[str, Any]]) -> str:
    return "".join(f["text"] for f in frames if f["type"] == "delta")
