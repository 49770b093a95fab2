"""The chat service behind the token quota, for every transport that starts chats.

`QuotaGate.start` is `ChatService.start` with the quota checked first: a
caller whose tokens for the window are used up is refused (429
`quota_exceeded`, `Retry-After`, X-Quota-* headers) before anything is
written, and every answer, refusals from the service included, carries the
X-Quota-* headers of the limit the run counts toward. A repeat of an earlier
request (same `client_message_id`) is never refused: it starts nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from chatstream.api.deps import AppState, State
from chatstream.auth import Principal
from chatstream.errors import ChatstreamError, NotFound
from chatstream.limiting.quotas.quotas import Quotas
from chatstream.limiting.ratelimit import RateWindow
from chatstream.runs.handle import RunHandle
from chatstream.runs.service import PLAIN_TURN, ChatInput, TurnShape


@dataclass(frozen=True, slots=True)
class GatedRun:
    run: RunHandle
    window: RateWindow | None
    headers: dict[str, str]  # X-RateLimit-* and X-Quota-*, for the answer


class QuotaGate:
    def __init__(self, state: AppState, quotas: Quotas | None) -> None:
        self._state = state
        self._quotas = quotas

    async def start(
        self, principal: Principal, chat: ChatInput, shape: TurnShape = PLAIN_TURN
    ) -> GatedRun:
        service = self._state.chat
        quota: dict[str, str] = {}
        quotas = self._quotas
        if quotas is not None and quotas.enabled:
            service.check(chat)  # a request that is not valid is a 422 before it is a 429
            model = await self._model_of(quotas, principal.owner, chat)
            standing = await quotas.standing(principal.owner, model)
            if standing is not None:
                quota = standing.headers()
                if standing.exhausted and not await self._is_repeat(principal.owner, chat):
                    raise quotas.exceeded(model, standing)
        try:
            started = await service.start(principal, chat, shape)
        except ChatstreamError as exc:
            exc.headers.update({k: v for k, v in quota.items() if k not in exc.headers})
            raise
        window = started.window
        return GatedRun(started.run, window, {**(window.headers() if window else {}), **quota})

    async def _model_of(self, quotas: Quotas, owner: str, chat: ChatInput) -> str:
        """The model the run will use: the request's, else its session's, else the default."""
        settings = self._state.settings
        if chat.model is not None:
            return chat.model
        if chat.session_id is not None and quotas.per_model:
            try:
                row, _ = await self._state.store.get_session(owner, chat.session_id)
            except NotFound:
                pass  # the service answers 404
            else:
                if row.model in settings.models:
                    return row.model
        return settings.default_model

    async def _is_repeat(self, owner: str, chat: ChatInput) -> bool:
        if chat.client_message_id is None:
            return False
        return await self._state.store.find_request(owner, chat.client_message_id) is not None


def quota_gate(state: AppState, connection: HTTPConnection) -> QuotaGate:
    quotas: Quotas | None = getattr(connection.app.state, "quotas", None)
    return QuotaGate(state, quotas)


async def get_quota_gate(connection: HTTPConnection, state: State) -> QuotaGate:
    return quota_gate(state, connection)


GatedChatDep = Annotated[QuotaGate, Depends(get_quota_gate)]
