"""A second tab watching a session: `GET /api/sessions/{id}/events`, read in a thread."""

from __future__ import annotations

import threading
from collections.abc import Callable

import httpx

from tests.support.sse import SSEEvent, iter_sse
from tests.support.wait import wait_until


class Watcher:
    """A second tab: `GET /api/sessions/{id}/events`, read in a thread as events arrive."""

    def __init__(self, base_url: str, session_id: str, headers: dict[str, str] | None = None):
        self.events: list[SSEEvent] = []
        self.comments: list[str] = []
        self.status = 0
        self.ended = threading.Event()
        self._lock = threading.Lock()
        self._client = httpx.Client(base_url=base_url, timeout=20, headers=headers)
        self._thread = threading.Thread(target=self._read, args=(session_id,), daemon=True)
        self._open = threading.Event()
        self._closing = threading.Event()

    def _read(self, session_id: str) -> None:
        try:
            with self._client.stream("GET", f"/api/sessions/{session_id}/events") as response:
                self.status = response.status_code
                self.content_type = response.headers.get("content-type", "")
                self._open.set()
                for item in iter_sse(response):
                    if self._closing.is_set():
                        return
                    with self._lock:
                        if isinstance(item, str):
                            self.comments.append(item)
                        else:
                            self.events.append(item)
        except httpx.HTTPError:
            pass
        finally:
            self._open.set()
            self.ended.set()

    def __enter__(self) -> Watcher:
        self._thread.start()
        assert self._open.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        # The tab closes (at its next keepalive): its connection ends, and the server's stream.
        self._closing.set()
        self._thread.join(10)
        self._client.close()
        assert self.ended.is_set()

    def seen(self, predicate: Callable[[list[SSEEvent]], bool], what: str) -> list[SSEEvent]:
        def check() -> list[SSEEvent] | None:
            with self._lock:
                events = list(self.events)
            return events if predicate(events) else None

        return wait_until(check, what=what)

    @property
    def types(self) -> list[str]:
        with self._lock:
            return [e.type for e in self.events]
