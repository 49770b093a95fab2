"""FastAPI dependencies: small readers of the state the lifespan built."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from chatstream.auth import Authenticator, ClientAddress, Principal
from chatstream.config import Settings
from chatstream.durability.journal import RunJournal
from chatstream.limiting.ratelimit import ChatLimits
from chatstream.runs.handle import RunRegistry
from chatstream.runs.service import ChatService
from chatstream.runs.unstored import Unstored
from chatstream.storage.branches import Branches
from chatstream.storage.db import Database
from chatstream.storage.repository import Store


@dataclass(slots=True)
class AppState:
    """Everything a request may need, opened by the lifespan and closed after it."""

    settings: Settings
    database: Database
    store: Store
    registry: RunRegistry
    chat: ChatService
    authenticator: Authenticator
    client_address: ClientAddress
    journal: RunJournal
    limits: ChatLimits
    # This instance's id, kept in its spool (so the same across restarts):
    # /readyz, and X-Chatstream-Instance on every answer.
    instance: str
    # Answers not to be kept (the Responses API's `store: false`), deleted once ended.
    unstored: Unstored
    # With CHATSTREAM_REDIS_URL: reach the Redis runs are shared through.
    shared_redis_ping: Callable[[], Awaitable[object]] | None = None


async def get_state(connection: HTTPConnection) -> AppState:
    state: AppState = connection.state.chatstream
    return state


State = Annotated[AppState, Depends(get_state)]

# Documents the bearer scheme in OpenAPI; the checks are the Authenticator's.
_bearer = HTTPBearer(auto_error=False, description="A JWT, when CHATSTREAM_AUTH=jwt.")


def principal_of(
    state: AppState, connection: HTTPConnection, authorization: str | None
) -> Principal:
    owner = state.authenticator.owner_from_header(authorization)
    if state.authenticator.enabled:
        return Principal(owner=owner, limit_key=f"owner:{owner}")
    peer = connection.client.host if connection.client else None
    return Principal(
        owner=owner, limit_key=f"ip:{state.client_address.of(peer, connection.headers)}"
    )


async def get_principal(
    connection: HTTPConnection,
    state: State,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)] = None,
) -> Principal:
    """The caller; 401 when auth is on and the bearer token is missing or not valid."""
    return principal_of(state, connection, connection.headers.get("authorization"))


async def get_settings(state: State) -> Settings:
    return state.settings


async def get_store(state: State) -> Store:
    return state.store


async def get_registry(state: State) -> RunRegistry:
    return state.registry


async def get_branches(state: State) -> Branches:
    return Branches(state.database)


async def get_chat(state: State) -> ChatService:
    return state.chat


async def get_owner(principal: Annotated[Principal, Depends(get_principal)]) -> str:
    return principal.owner


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[Store, Depends(get_store)]
BranchesDep = Annotated[Branches, Depends(get_branches)]
RegistryDep = Annotated[RunRegistry, Depends(get_registry)]
ChatDep = Annotated[ChatService, Depends(get_chat)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
Owner = Annotated[str, Depends(get_owner)]
