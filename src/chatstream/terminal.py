"""`chatstream chat`: a terminal client of a running server, over its public HTTP API.

    chatstream chat "Hello!"     one answer, streamed to stdout; the exit status says how it ended
    chatstream chat              an interactive loop: one session, its history kept there;
                                 Ctrl-C stops the answer being written, Ctrl-D quits

Only the answer's text goes to stdout; everything else (the session id,
errors, the prompt) goes to stderr, one line each, so `> answer.txt` keeps
just the answer. Exit statuses: 0 complete; 1 the answer ended in error or
the server refused the request; 3 the server could not be reached;
130 stopped with Ctrl-C; 141 (128 + SIGPIPE, as `cat` would end) the reader
of stdout went away (`chatstream chat … | head`), silently.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import httpx2
import orjson

COMPLETE, FAILED, UNREACHABLE, INTERRUPTED = 0, 1, 3, 130
READER_GONE = 128 + signal.SIGPIPE
DEFAULT_URL = "http://127.0.0.1:8000"
PROMPT = "you> "


def add_chat_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "message", nargs="?", help="the message; without it, an interactive loop (Ctrl-D quits)"
    )
    parser.add_argument(
        "--url",
        default=os.environ.get("CHATSTREAM_URL", DEFAULT_URL),
        help=f"the server (default: $CHATSTREAM_URL or {DEFAULT_URL})",
    )
    parser.add_argument(
        "--token",
        help="bearer token when the server has CHATSTREAM_AUTH=jwt (default: $CHATSTREAM_TOKEN)",
    )
    parser.add_argument("--session", help="continue this session id")
    parser.add_argument("--model", help="one of the server's GET /api/models")


def chat(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get("CHATSTREAM_TOKEN") or None
    try:
        with Client(args.url, token, session=args.session, model=args.model) as client:
            if args.message is not None:
                return client.send(args.message)
            return client.interactive()
    except BrokenPipeError:
        # `| head` has read what it wanted. Nothing more to say, and nowhere to say it:
        # point stdout and stderr at /dev/null, so that the interpreter's last flush
        # of what is still buffered does not print its own complaint.
        devnull = os.open(os.devnull, os.O_WRONLY)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                os.dup2(devnull, stream.fileno())
        os.close(devnull)
        return READER_GONE


class Unreachable(Exception):
    """The server could not be reached, or the connection was lost."""


@dataclass
class _Run:
    """What one send has seen so far."""

    message_id: str | None = None
    last_seq: int = 0
    status: str | None = None
    wrote_text: bool = False
    cancel_requested: bool = False
    cancel_threads: list[threading.Thread] = field(default_factory=list)


class Client:
    def __init__(
        self, url: str, token: str | None, *, session: str | None, model: str | None
    ) -> None:
        self._url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.session = session
        self._model = model
        self._http = httpx2.Client(
            base_url=self._url,
            headers=self._headers,
            timeout=httpx2.Timeout(10.0, read=None),  # an answer may pause for long
        )
        self._run: _Run | None = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._http.close()

    # --- modes -----------------------------------------------------------------

    def send(self, message: str) -> int:
        """Stream one answer; the exit status for how it ended."""
        try:
            with self._interruptible() as run:
                self._stream(message, run)
        except Unreachable as exc:
            _say(str(exc))
            return UNREACHABLE
        except _Refused as exc:
            _say(str(exc))
            return FAILED
        except KeyboardInterrupt:  # a second Ctrl-C: stop waiting
            _say("stopped; the answer may still be written on the server")
            return INTERRUPTED
        return {"complete": COMPLETE, "cancelled": INTERRUPTED}.get(run.status or "", FAILED)

    def interactive(self) -> int:
        _say("type a message and press Enter; Ctrl-C stops an answer, Ctrl-D quits")
        while True:
            try:
                sys.stderr.write(PROMPT)
                sys.stderr.flush()
                line = sys.stdin.readline()
            except KeyboardInterrupt:  # at the prompt: a fresh line, like a shell
                sys.stderr.write("\n")
                continue
            if not line:  # Ctrl-D
                sys.stderr.write("\n")
                return COMPLETE
            message = line.strip()
            if not message:
                continue
            if self.send(message) == UNREACHABLE:
                return UNREACHABLE

    # --- one exchange -------------------------------------------------------------

    def _stream(self, message: str, run: _Run) -> None:
        body: dict[str, Any] = {"message": message}
        if self.session:
            body["session_id"] = self.session
        if self._model:
            body["model"] = self._model
        try:
            with self._http.stream("POST", "/api/chat/stream", json=body) as response:
                if response.status_code != 200:
                    raise _Refused.from_response(response)
                self._read_events(response, run)
        except httpx2.TransportError as exc:
            raise self._unreachable(exc, run) from None
        if run.status is None:  # the stream ended before `done`
            raise self._unreachable(None, run)

    def _read_events(self, response: httpx2.Response, run: _Run) -> None:
        for event in _events(response.iter_lines()):
            kind = event.get("type")
            seq = event.get("_seq")
            if isinstance(seq, int):
                run.last_seq = seq
            if kind == "start":
                run.message_id = str(event["message_id"])
                if self.session != event["session_id"]:
                    self.session = str(event["session_id"])
                    _say(f"session {self.session}")
                if run.cancel_requested:  # Ctrl-C came before the run had an id
                    self._cancel_in_background(run)
            elif kind == "delta":
                sys.stdout.write(str(event["text"]))
                sys.stdout.flush()
                run.wrote_text = True
            elif kind == "error":
                self._end_text(run)
                _say(f"[{event.get('code')}] {event.get('message')}")
            elif kind == "done":
                self._end_text(run)
                run.status = str(event["status"])
                if run.status == "cancelled":
                    _say("[cancelled]")
                return

    @staticmethod
    def _end_text(run: _Run) -> None:
        if run.wrote_text:
            sys.stdout.write("\n")
            sys.stdout.flush()
            run.wrote_text = False

    # --- Ctrl-C while an answer streams: cancel the run, keep reading to its `done` --------

    @contextlib.contextmanager
    def _interruptible(self) -> Iterator[_Run]:
        run = _Run()
        self._run = run

        def on_interrupt(signum: int, frame: FrameType | None) -> None:
            if run.cancel_requested:
                raise KeyboardInterrupt
            run.cancel_requested = True
            _say("cancelling… (Ctrl-C again to stop waiting)")
            if run.message_id is not None:
                self._cancel_in_background(run)

        is_main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, on_interrupt) if is_main else None
        try:
            yield run
        finally:
            if is_main:
                signal.signal(signal.SIGINT, previous)
            for thread in run.cancel_threads:
                thread.join(10)
            self._run = None

    def _cancel_in_background(self, run: _Run) -> None:
        """POST the cancel from a thread: the main thread is inside a read of the stream."""
        message_id = run.message_id

        def cancel() -> None:
            with contextlib.suppress(httpx2.HTTPError):
                httpx2.post(
                    f"{self._url}/api/runs/{message_id}/cancel",
                    headers=self._headers,
                    timeout=10,
                )

        thread = threading.Thread(target=cancel, daemon=True, name="chatstream-cancel")
        run.cancel_threads.append(thread)
        thread.start()

    def _unreachable(self, exc: Exception | None, run: _Run) -> Unreachable:
        if run.message_id is None:
            return Unreachable(
                f"cannot reach the server at {self._url}: {_reason(exc)} "
                "(is `chatstream serve` running? check --url)"
            )
        self._end_text(run)
        return Unreachable(
            f"lost the connection to {self._url} mid-answer ({_reason(exc)}); the answer goes "
            f"on there: GET /api/runs/{run.message_id}/events with Last-Event-ID: {run.last_seq}"
        )


class _Refused(Exception):
    """The server answered the request with an error status."""

    @classmethod
    def from_response(cls, response: httpx2.Response) -> _Refused:
        response.read()
        try:
            error = orjson.loads(response.content)["error"]
            text = f"[{error['code']}] {error['message']}"
        except (orjson.JSONDecodeError, KeyError, TypeError):
            text = f"the server answered HTTP {response.status_code}"
        if response.status_code == 401:
            text += " (pass --token or set CHATSTREAM_TOKEN)"
        return cls(text)


def _events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """The JSON of each SSE event, with its id as `_seq`."""
    seq: int | None = None
    for line in lines:
        if line.startswith("id: "):
            with contextlib.suppress(ValueError):
                seq = int(line[4:])
        elif line.startswith("data: "):
            event = orjson.loads(line[6:])
            if isinstance(event, dict):
                event["_seq"] = seq
                yield event


def _reason(exc: BaseException | None) -> str:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError):
            return "connection refused"
        if isinstance(seen, socket.gaierror):
            return "host name not found"
        if isinstance(seen, httpx2.TimeoutException | TimeoutError):
            return "no answer in time"
        seen = seen.__cause__ or seen.__context__
    if exc is None:
        return "the stream ended before the answer did"
    text = str(exc).strip()
    if "refused" in text.lower():
        return "connection refused"
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _say(text: str) -> None:
    sys.stderr.write(f"chatstream: {text}\n")
    sys.stderr.flush()
