"""`GET /api/models`, `GET /healthz`, `GET /readyz`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
from fastapi import APIRouter
from pydantic import Field
from starlette.responses import JSONResponse

from chatstream.api.deps import AppState, SettingsDep, State
from chatstream.api.schemas import Health, ModelItem, ModelList
from chatstream.storage.migrations import SchemaOutdated

router = APIRouter()  # health: open to anyone
api_router = APIRouter()  # under /api: behind auth like the rest of /api

READY_TIMEOUT_S = 2.0


class Readiness(Health):
    instance: str | None = Field(
        default=None,
        description="This instance's id: the same across its restarts (it is kept in its spool "
        "directory), different for every instance and every `serve --workers` worker. With "
        "CHATSTREAM_REDIS_URL, every answer names the instance that served it in the "
        "X-Chatstream-Instance header.",
    )


@api_router.get(
    "/api/models", response_model=ModelList, tags=["models"], summary="The models you may ask for"
)
async def list_models(settings: SettingsDep) -> ModelList:
    return ModelList(
        default=settings.default_model,
        demo=settings.demo,
        items=[ModelItem(id=model) for model in settings.models],
    )


@router.get(
    "/healthz",
    response_model=Health,
    response_model_exclude_none=True,
    tags=["health"],
    summary="Liveness",
)
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "A dependency is unreachable."}},
    tags=["health"],
    summary="Readiness: the database answers at the current schema (and Redis, when used); "
    "not shutting down",
)
async def readyz(state: State) -> JSONResponse:
    database = await _probe(state.database.ping)
    if database == "ok":
        database = await _schema(state)
    pings: list[Callable[[], Awaitable[object]]] = (
        [state.limits.ping] if state.limits.uses_redis else []
    )
    if state.shared_redis_ping is not None:
        pings.append(state.shared_redis_ping)  # when limits use another Redis, this one too
    answers = [await _probe(ping) for ping in pings]
    redis = next((a for a in answers if a != "ok"), "ok") if answers else None
    accepting = state.registry.accepting
    ready = database == "ok" and redis in (None, "ok") and accepting
    body = Readiness(
        status="ready" if ready else ("shutting_down" if not accepting else "unavailable"),
        database=database,
        redis=redis,
        live_runs=state.registry.live_count,
        spooled_runs=await state.journal.spooled_count(),
        instance=state.instance,
    )
    return JSONResponse(body.model_dump(exclude_none=True), status_code=200 if ready else 503)


async def _schema(state: AppState) -> str:
    """`ok`, or `outdated` when the schema is not this release's (`chatstream migrate`)."""
    try:
        with anyio.fail_after(READY_TIMEOUT_S):
            await state.database.check_schema()
    except SchemaOutdated:
        return "outdated"
    except Exception:
        return "unreachable"
    return "ok"


async def _probe(ping: Callable[[], Awaitable[object]]) -> str:
    """`ok` when `ping` answers in time; any failure means the dependency is unreachable."""
    try:
        with anyio.fail_after(READY_TIMEOUT_S):
            await ping()
    except Exception:
        return "unreachable"
    return "ok"
