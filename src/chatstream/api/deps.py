"""FastAPI dependencies: small readers of the state the lifespan built."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from chatstream.config import Settings
from chatstream.runs.handle import RunRegistry
from chatstream.runs.service import ChatService
from chatstream.storage.db import Database
from chatstream.storage.repository import Store

ANONYMOUS = "anonymous"


@dataclass(slots=True)
class AppState:
    """Everything a request may need, opened by the lifespan and closed after it."""

    settings: Settings
    database: Database
    store: Store
    registry: RunRegistry
    chat: ChatService


async def get_state(connection: HTTPConnection) -> AppState:
    state: AppState = connection.state.chatstream
    return state


State = Annotated[AppState, Depends(get_state)]


async def get_settings(state: State) -> Settings:
    return state.settings


async def get_store(state: State) -> Store:
    return state.store


async def get_registry(state: State) -> RunRegistry:
    return state.registry


async def get_chat(state: State) -> ChatService:
    return state.chat


async def get_owner(connection: HTTPConnection) -> str:
    """The caller's owner id. Auth off: everyone is `anonymous`."""
    return ANONYMOUS


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[Store, Depends(get_store)]
RegistryDep = Annotated[RunRegistry, Depends(get_registry)]
ChatDep = Annotated[ChatService, Depends(get_chat)]
Owner = Annotated[str, Depends(get_owner)]
