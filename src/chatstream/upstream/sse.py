"""Sans-I/O decoder: upstream `text/event-stream` bytes → the `data` of each event.

Works on bytes end to end (the JSON parser takes bytes), handles `\\n`,
`\\r\\n` and `\\r` line ends, events split across any read boundaries,
multi-line `data`, comments and the fields OpenAI-compatible servers never
send. The common case, one `data: {...}` line per event, takes a fast path.
"""

from __future__ import annotations


class EventTooLarge(ValueError):
    pass


class SSEDecoder:
    __slots__ = ("_buffer", "_max_event_bytes")

    def __init__(self, max_event_bytes: int = 4 * 1024 * 1024) -> None:
        self._buffer = b""
        self._max_event_bytes = max_event_bytes

    @property
    def holding(self) -> bool:
        """Whether part of an event is held back: the next one `feed` completes began earlier."""
        return bool(self._buffer)

    def feed(self, chunk: bytes) -> list[bytes]:
        """Add bytes; return the data payloads of the events they completed."""
        buffer = self._buffer + chunk if self._buffer else chunk
        if b"\r" in buffer:
            # A lone trailing \r may be the first half of \r\n: keep it back.
            held = b"\r" if buffer.endswith(b"\r") else b""
            if held:
                buffer = buffer[:-1]
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n") + held
        blocks = buffer.split(b"\n\n")
        self._buffer = blocks.pop()
        if len(self._buffer) > self._max_event_bytes:
            raise EventTooLarge(f"an upstream event exceeded {self._max_event_bytes} bytes")
        payloads: list[bytes] = []
        for block in blocks:
            if block.startswith(b"data: ") and b"\n" not in block:
                payloads.append(block[6:])
                continue
            data = _data_of(block)
            if data is not None:
                payloads.append(data)
        return payloads

    def flush(self) -> list[bytes]:
        """The stream ended: an unterminated last event still counts (as browsers do not)."""
        rest, self._buffer = self._buffer, b""
        data = _data_of(rest.rstrip(b"\r\n")) if rest.strip() else None
        return [data] if data is not None else []


def _data_of(block: bytes) -> bytes | None:
    data_lines: list[bytes] = []
    for line in block.split(b"\n"):
        if not line or line.startswith(b":"):
            continue
        field, _, value = line.partition(b":")
        if field == b"data":
            data_lines.append(value[1:] if value.startswith(b" ") else value)
    if not data_lines:
        return None
    return b"\n".join(data_lines)
