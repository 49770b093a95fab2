"""A small, independent SSE reader for tests.

Independent so that the product's decoder is never tested with itself.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class SSEEvent:
    id: int | None
    event: str
    data: dict[str, Any]
    raw_data: str = ""

    @property
    def type(self) -> str:
        return str(self.data.get("type"))


@dataclass
class Stream:
    """Everything a client saw on one SSE response."""

    events: list[SSEEvent] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)

    @property
    def types(self) -> list[str]:
        return [e.type for e in self.events]

    @property
    def text(self) -> str:
        return "".join(e.data["text"] for e in self.events if e.type == "delta")

    def of(self, kind: str) -> list[SSEEvent]:
        return [e for e in self.events if e.type == kind]

    @property
    def done(self) -> dict[str, Any]:
        return self.of("done")[-1].data


def iter_sse(response: httpx.Response) -> Iterator[SSEEvent | str]:
    """Yield events, and comment lines as plain strings, as they arrive."""
    event_id: int | None = None
    event = "message"
    data: list[str] = []
    for line in response.iter_lines():
        if line == "":
            if data:
                raw = "\n".join(data)
                yield SSEEvent(event_id, event, json.loads(raw), raw)
            event, data = "message", []
            continue
        if line.startswith(":"):
            yield line
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "id":
            event_id = int(value)
        elif name == "event":
            event = value
        elif name == "data":
            data.append(value)


def read_stream(
    source: httpx.Response | Iterator[SSEEvent | str], *, stop_after: int | None = None
) -> Stream:
    """Read to the end of the stream (or until `stop_after` events have arrived).

    `source` is a response, or the iterator of one already being read.
    """
    stream = Stream()
    items = iter_sse(source) if isinstance(source, httpx.Response) else source
    for item in items:
        if isinstance(item, str):
            stream.comments.append(item)
            continue
        stream.events.append(item)
        if stop_after is not None and len(stream.events) >= stop_after:
            break
    return stream
