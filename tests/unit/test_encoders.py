"""Every encoder, fed recorded runs, checked byte for byte against its golden file.

One file per encoder under `tests/unit/golden/`, one section per recorded
run: what a client of that protocol receives, exactly (the response body of
an HTTP stream, one WebSocket frame per line, one Telegram Bot API call per
line). The HTTP streams are produced by the real response classes
(`RunEventStream`, `TranslatedStream`) driven sans network by a run that
replays the recording, so the keepalive, `[DONE]` and the end of a follow
whose run's stream was lost (`RunStreamLost`) are the served bytes too.
Nothing varies: ids, `created` and `created_at` are given to the encoders.

`tests/unit/test_protocol_translations.py` checks the translations' rules
case by case; this is the byte-level truth. After a deliberate change of
an encoder's output, write the files again and review their diff:

    CHATSTREAM_UPDATE_GOLDEN=1 PYTHONPATH=src .venv/bin/python -m pytest tests/unit/test_encoders.py
"""

from __future__ import annotations

import difflib
import itertools
import os
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import httpx2
import openai
import orjson
import pytest
from starlette.types import Message

from chatstream.api.follow import stream_lost
from chatstream.api.openai_translation import CompletionChunkTranslation
from chatstream.api.responses_encoder import ResponseEcho, ResponseEncoder
from chatstream.api.sse import RunEventStream
from chatstream.api.translated_stream import (
    DONE_LINE,
    NumberedTranslation,
    TranslatedStream,
    Translation,
)
from chatstream.api.ui_stream import UIMessageStreamTranslation
from chatstream.api.ws_frames import event_frame, frame_heads, unnumbered_frame
from chatstream.bots.telegram import delivery as telegram_delivery
from chatstream.bots.telegram.delivery import Delivery, Mode
from chatstream.bots.telegram.outbox import Outbox
from chatstream.fleet.redis_remote import RunStreamLost
from chatstream.runs.events import Event, EventPayload

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("CHATSTREAM_UPDATE_GOLDEN") == "1"

MESSAGE_ID = uuid.UUID("0193e4a2-7c1d-7b3e-9f20-5a6b7c8d9e0f")
SESSION_ID = uuid.UUID("0193e4a2-6b00-7a11-8c22-334455667788")
USER_MESSAGE_ID = "0193e4a2-6b01-7a11-8c22-334455667788"
MODEL = "test-model"
CREATED = 1765000000  # a /v1 chunk's `created`
CREATED_AT = 1765000000.25  # a response's `created_at`
REQUEST_ID = "req-7"  # a WebSocket chat's
CHAT_ID = 424242  # a Telegram chat's

# --- the recordings ---------------------------------------------------------------------


def _start() -> EventPayload:
    return {
        "type": "start",
        "session_id": str(SESSION_ID),
        "message_id": str(MESSAGE_ID),
        "user_message_id": USER_MESSAGE_ID,
        "model": MODEL,
    }


def _delta(text: str) -> EventPayload:
    return {"type": "delta", "text": text}


def _done(
    status: str, finish_reason: str | None, usage: tuple[int, int] | None = (21, 9)
) -> EventPayload:
    return {  # type: ignore[typeddict-item]
        "type": "done",
        "message_id": str(MESSAGE_ID),
        "status": status,
        "finish_reason": finish_reason,
        "persisted": True,
        "usage": None
        if usage is None
        else {
            "prompt_tokens": usage[0],
            "completion_tokens": usage[1],
            "total_tokens": usage[0] + usage[1],
        },
        "metrics": {"ttft_ms": 412, "duration_ms": 1830, "tokens_per_second": 6.43},
    }


# Each recording is the run's log as batches, the way a follower reads it: a
# batch is what was ready at once; an empty one is a keepalive tick.
Recording = list[list[EventPayload]]

RECORDINGS: dict[str, Recording] = {
    # Thinking, reasoning, text with what JSON and SSE must escape, a built-in tool's round,
    # more text (with Markdown code), and the end with usage and metrics.
    "answered": [
        [_start()],
        [{"type": "thinking", "elapsed_ms": 250}],
        [],
        [{"type": "thinking", "elapsed_ms": 1250}],
        [{"type": "reasoning", "text": "The user greets; "}],
        [{"type": "reasoning", "text": 'answer "warmly".\n'}],
        [_delta("Héllo, wörld — 世界 🎉!")],
        [_delta('\n\nShe said "hi" \\ and left.\r\n'), _delta("Line two:\n")],
        [
            {
                "type": "tool_call",
                "call_id": "call_T1",
                "name": "get_time",
                "arguments": '{"tz": "Europe/Zürich"}',
            }
        ],
        [
            {
                "type": "tool_result",
                "call_id": "call_T1",
                "name": "get_time",
                "content": '{"time": "12:00", "note": "\\"noon\\""}',
            }
        ],
        [_delta("It is `12:00` — noon.\n\n```py\nprint('</script>')\n```")],
        [_done("complete", "stop")],
    ],
    # The model calls the client's own tool: the answer ends there, for the client to run it.
    "client_tool": [
        [_start(), _delta("Let me check the weather.")],
        [
            {
                "type": "tool_call",
                "call_id": "call_W1",
                "name": "weather",
                "arguments": '{"city": "Zürich", "unit": "°C"}',
                "client": True,
            }
        ],
        [_done("complete", "tool_calls")],
    ],
    # Stopped by its user mid-answer: what it generated is saved.
    "cancelled": [
        [_start(), {"type": "thinking", "elapsed_ms": 300}],
        [_delta("Once upon")],
        [_delta(" a time…")],
        [_done("cancelled", None, usage=(21, 3))],
    ],
    # The model server fails mid-answer.
    "failed": [
        [_start(), _delta("Partial ")],
        [_delta("answer")],
        [
            {
                "type": "error",
                "code": "upstream_error",
                "message": 'The model server failed: "502 Bad Gateway".',
                "retryable": True,
            },
            _done("error", None, usage=None),
        ],
    ],
    # Followed from another instance, whose run's stream is lost mid-answer (the
    # follow raises `RunStreamLost` after these): the run itself goes on there.
    "stream_lost": [
        [_start(), _delta("The first")],
        [_delta(" half, and")],
    ],
}
LOST = {"stream_lost"}


def numbered(recording: Recording) -> list[list[Event]]:
    counter = itertools.count(1)
    return [[Event(next(counter), payload) for payload in batch] for batch in recording]


def events_of(recording: Recording) -> list[Event]:
    return [event for batch in numbered(recording) for event in batch]


class RecordedRun:
    """A `RunHandle` that replays a recording, batch by batch (then loses its stream, if so)."""

    def __init__(self, name: str, *, between: Callable[[], Any] | None = None) -> None:
        self.id = MESSAGE_ID
        self.session_id = SESSION_ID
        self._batches = numbered(RECORDINGS[name])
        self._lost = name in LOST
        self._between = between  # awaited after each batch
        self.cancelled = False

    @asynccontextmanager
    async def follow(
        self, after: int = 0, idle_timeout: float | None = None, push: Any = None
    ) -> AsyncIterator[AsyncIterator[list[Event]]]:
        yield self._read(after)

    async def _read(self, after: int) -> AsyncIterator[list[Event]]:
        for batch in self._batches:
            yield [event for event in batch if event.seq > after]
            if self._between is not None:
                await self._between()
        if self._lost:
            raise RunStreamLost()

    async def cancel(self, status: str = "cancelled") -> bool:
        self.cancelled = True
        return True


# --- golden files -------------------------------------------------------------------------


def section(title: str, body: bytes) -> bytes:
    return b"### " + title.encode() + b"\n" + body + (b"" if body.endswith(b"\n") else b"\n")


def check_golden(name: str, sections: list[bytes]) -> None:
    path = GOLDEN / name
    actual = b"".join(sections)
    if UPDATE:
        GOLDEN.mkdir(exist_ok=True)
        path.write_bytes(actual)
        return
    expected = path.read_bytes()
    if actual != expected:
        diff = difflib.unified_diff(
            expected.decode().splitlines(keepends=True),
            actual.decode().splitlines(keepends=True),
            f"{path} (golden)",
            "encoded now",
        )
        pytest.fail(
            f"{name} differs from its golden file (CHATSTREAM_UPDATE_GOLDEN=1 writes it):\n"
            + "".join(diff),
            pytrace=False,
        )


# --- HTTP streams, served sans network ----------------------------------------------------


def served(response: Any) -> bytes:
    """The body an ASGI response sends (the client never disconnects)."""
    messages: list[Message] = []

    async def receive() -> Message:
        await anyio.sleep_forever()
        raise AssertionError

    async def send(message: Message) -> None:
        messages.append(message)
        await anyio.lowlevel.checkpoint()

    async def main() -> None:
        with anyio.fail_after(10):
            await response({"type": "http"}, receive, send)

    anyio.run(main)
    assert messages[0]["type"] == "http.response.start" and messages[0]["status"] == 200
    assert messages[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    return b"".join(m["body"] for m in messages[1:])


def sse_body(name: str) -> bytes:
    run = RecordedRun(name)
    return served(RunEventStream(run, after=0, keepalive_s=15, send_timeout_s=5))  # type: ignore[arg-type]


def translated_body(name: str, translation: Translation, *, closing: bytes = DONE_LINE) -> bytes:
    run = RecordedRun(name)
    body = served(
        TranslatedStream(
            run,  # type: ignore[arg-type]
            translation,
            keepalive_s=15,
            send_timeout_s=5,
            closing=closing,
        )
    )
    assert not run.cancelled
    return body


def in_one_batch(translation: Translation, name: str) -> bytes:
    """The same run handed over as one batch: a translation must not depend on batching."""
    body = translation.encode(events_of(RECORDINGS[name]))
    if name in LOST:
        error, done = stream_lost(MESSAGE_ID, RunStreamLost())
        last = len(events_of(RECORDINGS[name]))
        if isinstance(translation, NumberedTranslation):
            return body + translation.lost(error)
        body += translation.encode([Event(last + 1, error), Event(last + 2, done)])
    return body


def without_keepalives(body: bytes) -> bytes:
    return body.replace(b": keepalive\n\n", b"")


def test_native_sse() -> None:
    bodies = {name: sse_body(name) for name in RECORDINGS}
    check_golden("sse.txt", [section(name, body) for name, body in bodies.items()])
    assert bodies["answered"].count(b": keepalive\n\n") == 1
    # The lost stream's end is not numbered: Last-Event-ID stays at the run's last event.
    tail = bodies["stream_lost"].split(b"\n\n")[-4:-1]
    assert tail[0].startswith(b"id: 3\n") and tail[1].startswith(b"event: error\ndata: ")
    assert tail[2].startswith(b"event: done\ndata: ")


def ws_frames(name: str) -> list[str]:
    """The frames a socket sends for a run it follows (`ChatSocket._follow`)."""
    heads = frame_heads(MESSAGE_ID, REQUEST_ID)
    frames = [event_frame(heads, event) for event in events_of(RECORDINGS[name])]
    if name in LOST:
        for payload in stream_lost(MESSAGE_ID, RunStreamLost()):
            frames.append(unnumbered_frame(MESSAGE_ID, REQUEST_ID, payload))
    return frames


def test_websocket_frames() -> None:
    frames = {name: ws_frames(name) for name in RECORDINGS}
    check_golden(
        "ws.txt",
        [section(name, "".join(f + "\n" for f in fs).encode()) for name, fs in frames.items()],
    )
    for fs in frames.values():
        for frame in fs:
            decoded = orjson.loads(frame)  # each frame is one JSON object, keys unique
            assert decoded["message_id"] == str(MESSAGE_ID) and decoded["request_id"] == REQUEST_ID
    *_, error, done = (orjson.loads(f) for f in frames["stream_lost"])
    assert "seq" not in error and "seq" not in done
    assert (error["type"], done["type"], done["status"]) == ("error", "done", "interrupted")
    # Without a request id (a `resume`), frames start with the run's fields.
    assert event_frame(frame_heads(MESSAGE_ID, None), Event(2, _delta("x"))) == (
        f'{{"message_id":"{MESSAGE_ID}","seq":2,"type":"delta","text":"x"}}'
    )


def test_ai_sdk_ui_message_stream() -> None:
    bodies = {name: translated_body(name, UIMessageStreamTranslation()) for name in RECORDINGS}
    check_golden("ui_stream.txt", [section(name, body) for name, body in bodies.items()])
    for name, body in bodies.items():
        one_batch = in_one_batch(UIMessageStreamTranslation(), name) + DONE_LINE
        assert without_keepalives(body) == one_batch, name


def chunks(include_usage: bool) -> CompletionChunkTranslation:
    return CompletionChunkTranslation(created=CREATED, include_usage=include_usage)


def test_openai_chat_completion_chunks() -> None:
    bodies = {name: translated_body(name, chunks(True)) for name in RECORDINGS}
    plain = translated_body("answered", chunks(False))
    check_golden(
        "openai_chunks.txt",
        [
            *(section(f"{name} (include_usage)", body) for name, body in bodies.items()),
            section("answered (no include_usage)", plain),
        ],
    )
    for name, body in bodies.items():
        assert without_keepalives(body) == in_one_batch(chunks(True), name) + DONE_LINE, name


def response_encoder(starting_after: int = -1, *, retrieved: bool = False) -> ResponseEncoder:
    if retrieved:  # as `GET /v1/responses/{id}?stream=true` makes it: the model from `start`
        return ResponseEncoder(
            message_id=str(MESSAGE_ID),
            model="",
            created_at=CREATED_AT,
            starting_after=starting_after,
        )
    return ResponseEncoder(
        message_id=str(MESSAGE_ID),
        model=MODEL,
        created_at=CREATED_AT,
        echo=ResponseEcho(instructions="Be brief.", metadata={"ticket": "T-1"}, temperature=0.2),
    )


def sse_frames(body: bytes) -> list[bytes]:
    return [frame + b"\n\n" for frame in body.split(b"\n\n") if frame and frame[:1] != b":"]


def sequence_number(frame: bytes) -> int:
    return int(orjson.loads(frame.split(b"\ndata: ", 1)[1])["sequence_number"])


def test_responses_stream_and_its_resumes() -> None:
    bodies = {name: translated_body(name, response_encoder(), closing=b"") for name in RECORDINGS}
    resumed = translated_body("answered", response_encoder(9, retrieved=True), closing=b"")
    check_golden(
        "responses.txt",
        [
            *(section(name, body) for name, body in bodies.items()),
            section("answered (retrieved, starting_after=9)", resumed),
        ],
    )
    for name, body in bodies.items():
        assert without_keepalives(body) == in_one_batch(response_encoder(), name), name
        frames = sse_frames(body)
        if name in LOST:
            # The lost follow's `error` uses up no number: it repeats the last one sent.
            *frames, lost = frames
            assert sequence_number(lost) == sequence_number(frames[-1]), name
        assert [sequence_number(f) for f in frames] == list(range(len(frames))), name
    # A stream resumed after N, from any instance, is the run encoded again minus 0..N.
    for name in RECORDINGS.keys() - LOST:
        whole = sse_frames(translated_body(name, response_encoder(retrieved=True), closing=b""))
        for after in range(len(whole) + 1):
            again = translated_body(name, response_encoder(after, retrieved=True), closing=b"")
            rest = b"".join(f for f in whole if sequence_number(f) > after)
            assert without_keepalives(again) == rest, (name, after)


# --- the clients' own libraries read these bytes as meant ---------------------------------


def sdk_over(body: bytes) -> openai.OpenAI:
    def answer(request: httpx2.Request) -> httpx2.Response:
        headers = {"content-type": "text/event-stream"}
        return httpx2.Response(200, headers=headers, content=body, request=request)

    return openai.OpenAI(
        api_key="unused",
        base_url="http://chatstream.test/v1",
        http_client=httpx2.Client(transport=httpx2.MockTransport(answer)),
        max_retries=0,
    )


def read_chunks(body: bytes) -> tuple[list[Any], openai.APIError | None]:
    client = sdk_over(body)
    received: list[Any] = []
    try:
        stream = client.chat.completions.create(model=MODEL, messages=[], stream=True)
        for chunk in stream:
            received.append(chunk)
    except openai.APIError as exc:
        return received, exc
    finally:
        client.close()
    return received, None


def chunk_text(received: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in received if c.choices)


def test_the_openai_sdk_reads_the_chunk_streams_and_raises_for_failures() -> None:
    answered, error = read_chunks(translated_body("answered", chunks(True)))
    assert error is None and answered[-1].usage.total_tokens == 30
    assert chunk_text(answered) == "".join(
        e.data["text"]  # type: ignore[typeddict-item]
        for e in events_of(RECORDINGS["answered"])
        if e.type == "delta"
    )
    called, error = read_chunks(translated_body("client_tool", chunks(False)))
    assert error is None and called[-1].choices[0].finish_reason == "tool_calls"
    assert called[-2].choices[0].delta.tool_calls[0].function.name == "weather"
    for name, code in (
        ("cancelled", "cancelled"),
        ("failed", "upstream_error"),
        ("stream_lost", "server_shutdown"),
    ):
        received, error = read_chunks(translated_body(name, chunks(True)))
        assert error is not None, name
        assert isinstance(error.body, dict) and error.body["code"] == code, name
        assert received and received[0].choices[0].delta.role == "assistant"
    assert chunk_text(received) == "The first half, and"
    assert "resume it from its last event" in error.message


def test_the_openai_sdk_reads_the_responses_streams_as_typed_events() -> None:
    for name, last in (
        ("answered", "response.completed"),
        ("client_tool", "response.completed"),
        ("cancelled", "response.incomplete"),
        ("failed", "response.failed"),
        ("stream_lost", "error"),
    ):
        client = sdk_over(translated_body(name, response_encoder(), closing=b""))
        with client:
            events = list(client.responses.create(model=MODEL, input="x", stream=True))
        if name == "stream_lost":
            # Numbered as the last event sent: resuming after it misses nothing.
            *events, lost = events
            assert lost.type == "error" and lost.code == "server_shutdown"
            assert lost.sequence_number == events[-1].sequence_number
            assert "".join(getattr(e, "delta", "") for e in events) == "The first half, and"
            continue
        assert [e.sequence_number for e in events] == list(range(len(events))), name
        assert events[-1].type == last, name


# --- Telegram: the Bot API calls one run's delivery makes ---------------------------------


class RecordingBotApi:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self._ids = itertools.count(1001)

    async def call(self, method: str, params: dict[str, Any]) -> Any:
        self.calls.append((method, params))
        await anyio.lowlevel.checkpoint()
        return {"message_id": next(self._ids)} if method.endswith("Message") else True


def telegram_calls(name: str, mode: Mode, chunk_chars: int) -> list[tuple[str, dict[str, Any]]]:
    api = RecordingBotApi()
    # Time moves 10 s between two looks at the clock: every send is in its turn.
    ticks = itertools.count(0, 10)
    outbox = Outbox(api, clock=lambda: float(next(ticks)))  # type: ignore[arg-type]
    # Each batch is shown before the next arrives (the delivery waits for nothing else).
    run = RecordedRun(name, between=anyio.wait_all_tasks_blocked)

    async def main() -> None:
        with anyio.fail_after(10):
            await Delivery(
                run,  # type: ignore[arg-type]
                CHAT_ID,
                outbox,
                mode=mode,
                chunk_chars=chunk_chars,
                reply_to=77,
            ).deliver()

    anyio.run(main)
    return api.calls


TELEGRAM_CASES: list[tuple[str, Mode, int]] = [
    ("answered", "draft", 4096),
    ("answered", "edit", 4096),
    ("answered", "chunks", 40),
    ("cancelled", "draft", 4096),
    ("failed", "edit", 4096),
]


def test_telegram_delivery(monkeypatch: pytest.MonkeyPatch) -> None:
    # "typing" again whenever tools start running, however soon after the last one, and
    # never because time passed (a slow machine would add some): only the events decide.
    monkeypatch.setattr(telegram_delivery, "TYPING_MIN_GAP_S", 0.0)
    monkeypatch.setattr(telegram_delivery, "TYPING_INTERVAL_S", 3600.0)
    sections = []
    for name, mode, chunk_chars in TELEGRAM_CASES:
        calls = telegram_calls(name, mode, chunk_chars)
        lines = b"".join(
            orjson.dumps({"method": method, "params": params}) + b"\n" for method, params in calls
        )
        sections.append(section(f"{name} ({mode}, chunk_chars={chunk_chars})", lines))
        if mode != "edit":
            # The answer's messages, joined, are its text (at whitespace: `split.py`).
            answer = "".join(
                e.data["text"]  # type: ignore[typeddict-item]
                for e in events_of(RECORDINGS[name])
                if e.type == "delta"
            )
            sent = [
                p["text"]
                for m, p in calls
                if m == "sendMessage" and not p["text"].startswith(("⏹", "⚠️"))
            ]
            assert len(sent) > (mode == "chunks") and "".join(answer.split()) == "".join(
                "".join(sent).split()
            ), (name, mode)
    check_golden("telegram.txt", sections)


def test_golden_files_are_all_in_use() -> None:
    names: Sequence[str] = sorted(p.name for p in GOLDEN.iterdir())
    assert names == [
        "openai_chunks.txt",
        "responses.txt",
        "sse.txt",
        "telegram.txt",
        "ui_stream.txt",
        "ws.txt",
    ]
