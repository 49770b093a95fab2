"""A fake Telegram Bot API server over real HTTP, for the bot's tests.

It answers `POST /bot<token>/<method>` like the Bot API does for the
methods chatstream uses, keeps the chats' messages as a user would see them,
and records every call with the time it arrived. Tests script it:

    fake.fail("sendMessageDraft", status=429, retry_after=2)   # the next such call
    fake.fail("editMessageText", status=400, description="Bad Request: message is not modified")
    fake.delay("sendMessage", 2.0, times=3)                    # slow answers

Like the real API it refuses texts longer than 4096 UTF-16 units and empty
ones, entities outside the text, and an edit that changes nothing ("message
is not modified").
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.support.servers import START_TIMEOUT_S, free_socket

NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup "
    "are exactly the same as a current content and reply markup of the message"
)


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    at: float  # time.monotonic() on arrival
    chat_id: int | None = None


@dataclass
class Rule:
    method: str
    times: int
    status: int | None = None  # None: answer normally (after the delay)
    description: str = ""
    retry_after: float | None = None
    delay_s: float = 0.0


@dataclass
class Message:
    message_id: int
    chat_id: int
    text: str
    entities: list[dict[str, Any]] = field(default_factory=list)
    edits: int = 0


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


class FakeTelegram:
    def __init__(self, token: str) -> None:
        self.token = token
        self.calls: list[Call] = []
        self.messages: dict[int, Message] = {}
        self.changed = threading.Condition()
        self._rules: list[Rule] = []
        self._next_message_id = 1000
        self._sock = free_socket()
        self.port = self._sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        app = Starlette(routes=[Route("/bot{token}/{method}", self._endpoint, methods=["POST"])])
        config = uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False)
        self._server = _Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    # --- lifecycle ---------------------------------------------------------------

    def start(self) -> FakeTelegram:
        self._thread.start()
        if not self._server.ready.wait(START_TIMEOUT_S):
            raise RuntimeError("fake Telegram did not start")
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(START_TIMEOUT_S)
        self._sock.close()

    # --- scripting (thread-safe) -----------------------------------------------------

    def fail(
        self,
        method: str,
        *,
        status: int,
        description: str = "",
        retry_after: float | None = None,
        times: int = 1,
    ) -> None:
        if status == 429 and not description:
            description = f"Too Many Requests: retry after {retry_after}"
        with self.changed:
            self._rules.append(Rule(method, times, status, description, retry_after))

    def delay(self, method: str, seconds: float, times: int = 1) -> None:
        with self.changed:
            self._rules.append(Rule(method, times, delay_s=seconds))

    # --- reading (thread-safe) ------------------------------------------------------------

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 15.0) -> Any:
        with self.changed:
            result = self.changed.wait_for(predicate, timeout)
        if not result:
            raise AssertionError("fake Telegram: condition not reached in time")
        return result

    def calls_of(self, method: str | None = None, chat_id: int | None = None) -> list[Call]:
        with self.changed:
            return [
                c
                for c in self.calls
                if (method is None or c.method == method)
                and (chat_id is None or c.chat_id == chat_id)
            ]

    def chat(self, chat_id: int) -> list[Message]:
        """The chat's messages as its user sees them now, oldest first."""
        with self.changed:
            return sorted(
                (m for m in self.messages.values() if m.chat_id == chat_id),
                key=lambda m: m.message_id,
            )

    def texts(self, chat_id: int) -> list[str]:
        return [m.text for m in self.chat(chat_id)]

    # --- the API ----------------------------------------------------------------------------

    async def _endpoint(self, request: Request) -> JSONResponse:
        token, method = request.path_params["token"], request.path_params["method"]
        if token != self.token:
            return _error(401, "Unauthorized")
        params = await request.json()
        chat_id = params.get("chat_id")
        with self.changed:
            self.calls.append(Call(method, params, time.monotonic(), chat_id))
            rule = next((r for r in self._rules if r.method == method), None)
            if rule is not None:
                rule.times -= 1
                if rule.times <= 0:
                    self._rules.remove(rule)
            self.changed.notify_all()
        if rule is not None and rule.delay_s:
            await asyncio.sleep(rule.delay_s)
        if rule is not None and rule.status is not None:
            extra = {"retry_after": rule.retry_after} if rule.retry_after is not None else None
            return _error(rule.status, rule.description, extra)
        with self.changed:
            try:
                return self._answer(method, params)
            finally:
                self.changed.notify_all()

    def _answer(self, method: str, params: dict[str, Any]) -> JSONResponse:
        if method in ("sendChatAction", "setWebhook", "deleteWebhook"):
            return _ok(True)
        if method == "sendMessageDraft":
            if not params.get("draft_id"):
                return _error(400, "Bad Request: draft_id must be non-zero")
            problem = _text_problem(params.get("text", ""), [], allow_empty=True)
            return _error(400, problem) if problem else _ok(True)
        if method == "sendMessage":
            text, entities = params.get("text", ""), params.get("entities") or []
            problem = _text_problem(text, entities)
            if problem:
                return _error(400, problem)
            self._next_message_id += 1
            message = Message(self._next_message_id, params["chat_id"], text, entities)
            self.messages[message.message_id] = message
            return _ok({"message_id": message.message_id, "chat": {"id": message.chat_id}})
        if method == "editMessageText":
            message = self.messages.get(params.get("message_id", -1))
            if message is None or message.chat_id != params.get("chat_id"):
                return _error(400, "Bad Request: message to edit not found")
            text, entities = params.get("text", ""), params.get("entities") or []
            problem = _text_problem(text, entities)
            if problem:
                return _error(400, problem)
            if text == message.text and entities == message.entities:
                return _error(400, NOT_MODIFIED)
            message.text, message.entities = text, entities
            message.edits += 1
            return _ok({"message_id": message.message_id, "chat": {"id": message.chat_id}})
        return _error(404, "Not Found: method not found")


def _text_problem(text: str, entities: list[dict[str, Any]], allow_empty: bool = False) -> str:
    if not text.strip() and not allow_empty:
        return "Bad Request: message text is empty"
    if utf16_len(text) > 4096:
        return "Bad Request: message is too long"
    for entity in entities:
        if entity["offset"] < 0 or entity["offset"] + entity["length"] > utf16_len(text):
            return "Bad Request: can't parse entities: entity beyond the end of the text"
    return ""


def _ok(result: Any) -> JSONResponse:
    return JSONResponse({"ok": True, "result": result})


def _error(status: int, description: str, parameters: dict[str, Any] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if parameters:
        body["parameters"] = parameters
    return JSONResponse(body, status_code=status)


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = threading.Event()

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        self.ready.set()
