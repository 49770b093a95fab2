"""Clients that follow a run to its end, whatever happens to the instance they were on.

A `Follower` runs in a thread: it reads a run's SSE stream (the chat's own
answer, or `GET /api/runs/{id}/events`), and when the connection breaks it
resumes from the last id it received, on whichever instance answers, as an
EventSource would, until it has the run's `done` (or a 204: the run ended and
there is nothing after its position). It records every event it was sent, so
a test can compare what each client saw with what was saved.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.support.sse import SSEEvent, iter_sse

RECONNECT_S = 0.05  # an EventSource's reconnection delay, shortened
FOLLOW_DEADLINE_S = 60.0


@dataclass
class Seen:
    events: list[SSEEvent] = field(default_factory=list)
    connections: int = 0
    ended_with_204: bool = False
    failure: str | None = None

    @property
    def ids(self) -> list[int]:
        return [event.id for event in self.events if event.id is not None]

    @property
    def text(self) -> str:
        return "".join(e.data["text"] for e in self.events if e.type == "delta")

    @property
    def done(self) -> dict[str, Any] | None:
        dones = [e.data for e in self.events if e.type == "done"]
        return dones[-1] if dones else None


class Follower(threading.Thread):
    """Follows one run to its end.

    With `chat`, it starts the run on `client` (so on that client's worker);
    with `message_id`, it follows the run, first on `client` when given.
    """

    def __init__(
        self,
        base_url: str,
        *,
        client: httpx.Client | None = None,
        chat: dict[str, Any] | None = None,
        message_id: str | None = None,
    ) -> None:
        super().__init__(daemon=True, name="follower")
        self._base_url = base_url
        self._client = client
        self._chat = chat
        self.message_id = message_id
        self.session_id: str | None = None
        self.seen = Seen()
        self.started_run = threading.Event()  # the `start` event arrived (message id known)
        self._changed = threading.Condition()

    # --- what the test waits for --------------------------------------------------

    def wait_for(self, what: str, predicate: Any, timeout: float = 30.0) -> None:
        with self._changed:
            if not self._changed.wait_for(
                lambda: predicate(self.seen) or not self.is_alive(), timeout
            ):
                raise AssertionError(f"follower never saw {what}: {self.seen.events[-3:]}")

    def count(self, kind: str) -> int:
        with self._changed:
            return sum(1 for e in self.seen.events if e.type == kind)

    # --- the thread ---------------------------------------------------------------

    def run(self) -> None:
        try:
            if self._chat is not None:
                assert self._client is not None
                self._read_chat(self._client)
                self._client = None  # resumed on whichever instance answers
            deadline = time.monotonic() + FOLLOW_DEADLINE_S
            while not self._finished():
                if time.monotonic() > deadline:
                    self.seen.failure = "never reached the end of the run"
                    return
                self._resume()
        except Exception as exc:  # the test reads it from `seen.failure`
            self.seen.failure = f"{type(exc).__name__}: {exc}"
        finally:
            with self._changed:
                self._changed.notify_all()

    def _finished(self) -> bool:
        return self.seen.done is not None or self.seen.ended_with_204

    def _read_chat(self, client: httpx.Client) -> None:
        assert self._chat is not None
        try:
            with client.stream("POST", "/api/chat/stream", json=self._chat) as response:
                response.raise_for_status()
                self.seen.connections += 1
                self._read(response)
        except (httpx.TransportError, httpx.RemoteProtocolError):
            pass  # its instance died: resume elsewhere
        if self.message_id is None:
            raise AssertionError("the chat's stream broke before its start event")

    def _resume(self) -> None:
        headers = {}
        if self.seen.ids:
            headers["Last-Event-ID"] = str(self.seen.ids[-1])
        first, self._client = self._client, None
        try:
            with (
                contextlib.nullcontext(first)
                if first is not None
                else httpx.Client(base_url=self._base_url, timeout=30) as client,
                client.stream(
                    "GET", f"/api/runs/{self.message_id}/events", headers=headers
                ) as response,
            ):
                if response.status_code == 204:
                    self.seen.ended_with_204 = True
                    return
                if response.status_code == 200:
                    self.seen.connections += 1
                    self._read(response)
                    return
                # 404 before Redis has the run's first events; 503 while it is away.
                response.read()
        except (httpx.TransportError, httpx.RemoteProtocolError):
            pass
        threading.Event().wait(RECONNECT_S)

    def _read(self, response: httpx.Response) -> None:
        for item in iter_sse(response):
            if isinstance(item, str):
                continue
            with self._changed:
                self.seen.events.append(item)
                if item.type == "start":
                    self.message_id = str(item.data["message_id"])
                    self.session_id = str(item.data["session_id"])
                    self.started_run.set()
                self._changed.notify_all()
            if item.type == "done":
                return
