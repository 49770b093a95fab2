"""`create_app(settings)`: the one place where chatstream is wired together.

What needs no I/O is built here (listeners, metrics, quotas, auth), with
the routes and middleware; the lifespan opens the rest through
`assembly.open_server`, one opener per capability on one exit stack, in an
explicit order that is also the shutdown order reversed (see there).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import Receive, Scope, Send

from chatstream import __version__
from chatstream.api import (
    branches,
    chat,
    meta,
    openai_compat,
    playground,
    responses_api,
    runs,
    sessions,
    ui_stream,
    ws,
)
from chatstream.api import metrics as metrics_api
from chatstream.api import usage as usage_api
from chatstream.api.body_limit import BodyLimit
from chatstream.api.deps import get_principal
from chatstream.api.docs import install_docs
from chatstream.api.errors import install_error_handlers
from chatstream.api.instance import InstanceHeader
from chatstream.api.openai_schemas import document_openai_errors, openai_stream_schemas
from chatstream.api.quota import QuotaGate
from chatstream.api.responses_schemas import responses_schemas
from chatstream.api.schemas import document_errors, event_schemas
from chatstream.api.sse import SERVER_SEND
from chatstream.api.ui_schemas import ui_chunk_schemas
from chatstream.api.usage import QUOTA_HEADERS, document_quota_headers
from chatstream.assembly import Parts, open_server, open_tracing
from chatstream.auth import Authenticator, ClientAddress
from chatstream.bots.telegram import webhook_router
from chatstream.config import Settings
from chatstream.hooks import Hook, HookRunner, installed_hooks
from chatstream.limiting.quotas.quotas import Quotas
from chatstream.logs import Redactor, RequestIdMiddleware, secrets_of
from chatstream.metrics import HttpMetrics, Metrics
from chatstream.runs.lifecycle import RunListener, RunListeners
from chatstream.runs.session_events import SessionEvents
from chatstream.startup import StartupReport, database_location
from chatstream.tools import ToolRegistry

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)

DESCRIPTION = """\
chatstream streams a model's answer to you the moment it is generated, keeps
each conversation's history, and saves every answer whole once it ends.

Start a run with `POST /api/chat/stream` and read its Server-Sent Events;
follow, resume or cancel it by its `message_id` under `/api/runs`. Errors
are `{"error": {"code", "message"}}` JSON before a stream starts, and an
`error` event followed by `done` after.

**Client protocols** over the same runs: `POST /api/ui/chat` speaks the
Vercel AI SDK's UI message stream (`useChat` with `DefaultChatTransport`);
`/v1` speaks OpenAI's Chat Completions and Responses APIs, errors included
(in OpenAI's shape there), for the OpenAI SDKs with `base_url` at `/v1`; a
response (`resp_<message_id>`) is a run, resumable after any
`sequence_number` from any instance.

**WebSocket `/ws/chat`** (not listed below: OpenAPI has no WebSocket
operations). JSON text frames. Client → server:
`{"type":"chat","request_id":"…", …ChatRequest fields…}`,
`{"type":"cancel","message_id":"…"}`,
`{"type":"resume","message_id":"…","after":N}`, `{"type":"ping"}`,
`{"type":"auth","token":"…"}`. Server → client: every `StreamEvent` of the
runs the socket follows, with `message_id` and `seq` added (and `request_id`
for runs started by `chat`); `{"type":"pong"}`; and
`{"type":"error","code","message","retryable"}` (plus `request_id`,
`retry_after` or `details` when they apply) for a frame that could not be
served, after which the socket stays open. Several runs may stream at once
(at most `CHATSTREAM_WS_MAX_RUNS`). Frames over `CHATSTREAM_MAX_BODY_BYTES`
close the socket with 1009; cross-origin upgrades not listed in
`CHATSTREAM_CORS_ORIGINS` are refused with 403; a client that stops reading is
dropped (1008) while its runs go on.
"""


def create_app(
    settings: Settings,
    *,
    tools: ToolRegistry | None = None,
    listeners: Iterable[RunListener] = (),
    hooks: Iterable[Hook] | None = None,
) -> FastAPI:
    """The application. `tools` defaults to the built-in tools plus installed plugins.

    `listeners` hear about every run that starts, ends or is refused
    (`chatstream.runs.lifecycle`); they must return at once.

    `hooks` are called with every finished run, in the background
    (`chatstream.hooks`); they default to the installed `chatstream.hooks`
    entry points. The built-in auto-title runs besides them.

    Configuration mistakes (an unknown tool, an unreadable public key) raise
    `ConfigurationError` here, before anything is served. A dependency that
    cannot be used (the database, its schema, Redis) stops the lifespan with
    one logged line (`chatstream.startup`).
    """
    # Metrics, post-run hooks and tracing hear about runs through these.
    hook_runner = HookRunner(
        installed_hooks() if hooks is None else hooks, timeout_s=settings.hook_timeout_s
    )
    run_listeners = RunListeners([*listeners, hook_runner])
    session_events = SessionEvents()  # who watches a session hears of its runs
    run_listeners.add(session_events)
    metrics = Metrics(settings) if settings.metrics else None
    if metrics is not None:
        run_listeners.add(metrics.listener)
    tracing = open_tracing(settings)
    if tracing is not None:
        run_listeners.add(tracing.listener)
    quota_metrics = metrics.listener if metrics is not None else None
    quotas = Quotas(settings, listeners=run_listeners, metrics=quota_metrics)
    run_listeners.add(quotas)
    parts = Parts(
        settings=settings,
        tools=(tools or ToolRegistry.default()).select(settings.tools),
        hook_runner=hook_runner,
        run_listeners=run_listeners,
        session_events=session_events,
        metrics=metrics,
        tracing=tracing,
        quotas=quotas,
        authenticator=Authenticator(settings),
        client_address=ClientAddress(settings.trusted_proxies),
        redactor=Redactor(secrets_of(settings)),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with AsyncExitStack() as stack:
            opened = await open_server(stack, parts)
            state = opened.state
            # Only now: the database answered at the current schema, and Redis, when used.
            logger.info(
                "chatstream %s ready: models %s%s; %s%s",
                __version__,
                ",".join(settings.models),
                " (offline demo upstream)" if settings.demo else "",
                database_location(settings.database_url),
                "; runs shared through Redis"
                if opened.shared
                else ("; limits in Redis" if state.limits.uses_redis else ""),
            )
            # Also on app.state, for whoever holds the app (operators' tooling, tests).
            app.state.chatstream = state
            lifespan_state: dict[str, Any] = {"chatstream": state}
            if opened.telegram is not None:
                # Through the quota gate, as every HTTP chat: over quota is refused there too.
                opened.telegram.serve(QuotaGate(state, quotas), state.store, state.registry)
                lifespan_state["telegram"] = opened.telegram
            yield lifespan_state

    app = ChatstreamApp(
        title="chatstream",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # ours, from files shipped with the package (api/docs.py)
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.quotas = quotas
    install_error_handlers(app)
    install_docs(app)
    v1 = (responses_api.router, openai_compat.router)
    # /v1's catch-all last: what none of them serves answers OpenAI's 404 or 405.
    protocol_adapters = (ui_stream.router, *v1, openai_compat.unknown_paths(*v1))
    natives = (chat.router, runs.router, sessions.router, branches.router, meta.api_router)
    for router in (*natives, *protocol_adapters):
        app.include_router(router, dependencies=[Depends(get_principal)])
    app.include_router(usage_api.router, dependencies=[Depends(get_principal)])
    for router in (ws.router, meta.router, playground.router()):
        app.include_router(router)
    if metrics is not None:
        app.include_router(metrics_api.router)
    if settings.telegram_webhook_secret is not None and settings.telegram_enabled:
        # Telegram proves itself with its secret header, not a bearer token.
        app.include_router(webhook_router(settings.telegram_webhook_secret.get_secret_value()))
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "Last-Event-ID",
                "X-Request-ID",
                openai_compat.SESSION_HEADER,
            ],
            expose_headers=[
                "X-Request-ID",
                "Retry-After",
                openai_compat.SESSION_HEADER,
                openai_compat.MESSAGE_HEADER,
                *QUOTA_HEADERS,
            ],
        )
    app.add_middleware(
        BodyLimit, max_body_bytes=settings.max_body_bytes, too_large=openai_compat.too_large
    )
    app.add_middleware(RequestIdMiddleware)
    if settings.redis_url is not None:
        # Several instances serve as one: each answer says which served it.
        app.add_middleware(InstanceHeader)
    if metrics is not None:
        # Outside the other layers: every answer counts, their 413s and 500s too.
        app.add_middleware(HttpMetrics, collectors=metrics.collectors)
    app.add_middleware(StartupReport)  # outermost: it watches the lifespan only
    _document(app, settings)
    return app


class ChatstreamApp(FastAPI):
    """FastAPI, keeping the server's own `send` in each HTTP scope for event streams.

    An event stream writes its events there directly (`api/sse.py`): every
    layer in between (error handling, request ids, metrics) only acts on a
    response's start and end, which still pass through them all.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope[SERVER_SEND] = send
        await super().__call__(scope, receive, send)


def from_environment() -> FastAPI:
    """For `uvicorn --factory chatstream.app:from_environment` (prefer `chatstream serve`)."""
    return create_app(Settings())


def _document(app: FastAPI, settings: Settings) -> None:
    """Add the SSE event schemas and the limits that come from settings to OpenAPI."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        document_errors(schema)
        document_quota_headers(schema)
        document_openai_errors(schema)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(event_schemas())
        components.update(ui_chunk_schemas())
        components.update(openai_stream_schemas())
        components.update(responses_schemas())
        for operation in (op for ops in schema["paths"].values() for op in ops.values()):
            content = operation.get("responses", {}).get("200", {}).get("content", {})
            # An event stream is described per event (itemSchema), not as one string.
            content.get("text/event-stream", {}).pop("schema", None)
            if settings.auth == "none":
                operation.pop("security", None)
        if settings.auth == "none":
            # Documented only when enforced: with auth off there is no scheme to use.
            schema["components"].pop("securitySchemes", None)
        chat_request = components.get("ChatRequest", {}).get("properties", {})
        if "message" in chat_request:
            chat_request["message"]["maxLength"] = settings.max_message_chars
        for name in ("ChatRequest", "UIChatRequest"):
            max_tokens = components.get(name, {}).get("properties", {}).get("max_tokens", {})
            for option in max_tokens.get("anyOf", []):
                if option.get("type") == "integer":
                    option["maximum"] = settings.max_tokens
        for name in ("ChatRequest", "SessionCreate", "SessionPatch", "UIChatRequest"):
            model = components.get(name, {}).get("properties", {}).get("model", {})
            for option in model.get("anyOf", []):
                if option.get("type") == "string":
                    option["enum"] = list(settings.models)
        completion_model = components.get("CompletionRequest", {}).get("properties", {})
        if "model" in completion_model:  # OpenAI's `model` is required, never null
            completion_model["model"]["enum"] = list(settings.models)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
