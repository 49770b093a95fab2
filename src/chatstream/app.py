"""`create_app(settings)`: the one place where chatstream is wired together.

The lifespan opens every resource on one exit stack, in dependency order,
and closes them in reverse: the run registry closes first (live runs finish
or are interrupted, and persist), then the upstream client, then the
database.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio.to_thread
from fastapi import Depends, FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import Receive, Scope, Send

from chatstream import __version__
from chatstream.api import (
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
from chatstream.api.deps import AppState, get_principal
from chatstream.api.docs import install_docs
from chatstream.api.errors import install_error_handlers
from chatstream.api.instance import InstanceHeader
from chatstream.api.openai_schemas import document_openai_errors, openai_stream_schemas
from chatstream.api.quota import QuotaGate
from chatstream.api.schemas import document_errors, event_schemas
from chatstream.api.sse import SERVER_SEND
from chatstream.api.ui_schemas import ui_chunk_schemas
from chatstream.api.usage import QUOTA_HEADERS, document_quota_headers
from chatstream.auth import Authenticator, ClientAddress
from chatstream.bots.telegram import TelegramBot, webhook_router
from chatstream.config import Settings
from chatstream.errors import StartupError
from chatstream.hooks import AutoTitle, Hook, HookRunner, installed_hooks
from chatstream.logs import Redactor, RequestIdMiddleware, secrets_of
from chatstream.metrics import HttpMetrics, Metrics
from chatstream.quotas.quotas import Quotas
from chatstream.ratelimit import ChatLimits
from chatstream.runs.handle import RunHost
from chatstream.runs.journal import RunJournal
from chatstream.runs.lifecycle import RunListener, RunListeners
from chatstream.runs.registry import LocalRunRegistry
from chatstream.runs.service import ChatService
from chatstream.runs.session_events import SessionEvents
from chatstream.runs.session_gate import LiveSessions, local_sessions
from chatstream.runs.unstored import Unstored
from chatstream.startup import StartupReport, database_location, open_spool, prepare_database
from chatstream.storage.db import Database
from chatstream.storage.repository import Store
from chatstream.title_events import TitleAnnouncer
from chatstream.tools import ToolRegistry
from chatstream.upstream.cache import AnswerCache
from chatstream.upstream.client import open_client
from chatstream.upstream.stream import ChatUpstream

if TYPE_CHECKING:
    from chatstream.runs.shared import SharedRunsLink
    from chatstream.tracing import Tracing

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
`/v1` speaks OpenAI's Chat Completions API, errors included (in OpenAI's
shape there), for the OpenAI SDKs with `base_url` at `/v1`.

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
    offered = (tools or ToolRegistry.default()).select(settings.tools)
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
    tracing = _tracing(settings)
    if tracing is not None:
        run_listeners.add(tracing.listener)
    quota_metrics = metrics.listener if metrics is not None else None
    quotas = Quotas(settings, listeners=run_listeners, metrics=quota_metrics)
    run_listeners.add(quotas)
    authenticator = Authenticator(settings)
    client_address = ClientAddress(settings.trusted_proxies)
    redactor = Redactor(secrets_of(settings))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with AsyncExitStack() as stack:
            # Closed after the runs have ended, so that their last figures count.
            if metrics is not None:
                stack.callback(metrics.close)
            if tracing is not None:
                stack.push_async_callback(tracing.aclose)
            database = await stack.enter_async_context(Database.from_settings(settings))
            try:
                await prepare_database(
                    database, auto_migrate=settings.auto_migrate, redact=redactor
                )
                limits = await stack.enter_async_context(ChatLimits(settings))
                await stack.enter_async_context(quotas)
            except StartupError as exc:
                # The one line an operator needs; StartupReport keeps the traceback out.
                logger.error("chatstream cannot start: %s", exc)
                raise
            client = await stack.enter_async_context(open_client(settings))
            store = Store(database)
            upstream = ChatUpstream(client, redactor)
            # Hooks and the Telegram deliveries outlive the registry: the runs it
            # ends at shutdown still get their hooks and reach their chats.
            await stack.enter_async_context(hook_runner)
            unstored = Unstored(store)
            hook_runner.add(unstored)
            stack.callback(hook_runner.remove, unstored)
            if settings.auto_title == "model":
                # Its sessions' watchers are told the title it sets.
                auto_title = TitleAnnouncer(AutoTitle(store, upstream), store, session_events)
                hook_runner.add(auto_title)
                stack.callback(hook_runner.remove, auto_title)
            telegram = None
            if settings.telegram_enabled:
                telegram = await stack.enter_async_context(TelegramBot(settings))
            run_upstream = upstream
            if settings.cache_ttl_s is not None:
                cache = await stack.enter_async_context(AnswerCache(settings))
                run_upstream = cache.wrap(upstream)
            try:
                spool = await anyio.to_thread.run_sync(open_spool, settings.spool_dir)
            except StartupError as exc:
                logger.error("chatstream cannot start: %s", exc)
                raise
            stack.callback(spool.close)
            spool.max_bytes = settings.spool_max_bytes
            live = await _open_live_sessions(stack, settings, session_events, spool.instance_id)
            link, registry = await _open_registry(stack, settings, run_listeners, spool.instance_id)
            registry.max_retained_bytes = settings.run_retention_bytes
            live_sessions = live(registry)
            if metrics is not None:
                await stack.enter_async_context(
                    metrics.watching(
                        live_runs=lambda: registry.live_count, spool_pending=spool.pending_count
                    )
                )
            journal = await stack.enter_async_context(
                RunJournal(
                    store,
                    spool,
                    checkpoint_interval_s=settings.checkpoint_interval_s,
                    live_runs=registry.live_runs,
                    known=registry.known,
                    shared_status=link.statuses if link is not None else None,
                )
            )
            if link is not None:
                await stack.enter_async_context(link.sweeping(journal, store))
            chat_service = ChatService(
                settings,
                store=store,
                registry=registry,
                upstream=run_upstream,
                tools=offered,
                limits=limits,
                journal=journal,
                runner=spool.instance_id,
                listeners=run_listeners,
                log_for=link.log_for if link is not None else None,
                live=live_sessions,
            )
            state = AppState(
                settings=settings,
                database=database,
                store=store,
                registry=registry,
                chat=chat_service,
                authenticator=authenticator,
                client_address=client_address,
                journal=journal,
                limits=limits,
                instance=spool.instance_id,
                unstored=unstored,
                shared_redis_ping=link.ping if link is not None else None,
            )
            # Only now: the database answered at the current schema, and Redis, when used.
            logger.info(
                "chatstream %s ready: models %s%s; %s%s",
                __version__,
                ",".join(settings.models),
                " (offline demo upstream)" if settings.demo else "",
                database_location(settings.database_url),
                "; runs shared through Redis"
                if link is not None
                else ("; limits in Redis" if limits.uses_redis else ""),
            )
            # Also on app.state, for whoever holds the app (operators' tooling, tests).
            app.state.chatstream = state
            lifespan_state: dict[str, Any] = {"chatstream": state}
            if telegram is not None:
                # Through the quota gate, as every HTTP chat: over quota is refused there too.
                telegram.serve(QuotaGate(state, quotas), store, registry)
                lifespan_state["telegram"] = telegram
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
    for router in (chat.router, runs.router, sessions.router, meta.api_router, *protocol_adapters):
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


async def _open_live_sessions(
    stack: AsyncExitStack, settings: Settings, events: SessionEvents, instance: str
) -> Callable[[RunHost], LiveSessions]:
    """Sessions' live state, given the registry: this process's, or every instance's (Redis).

    Opened before the registry and closed after it, so that the ends of the
    runs interrupted at shutdown still reach the other instances.
    """
    wait_s = settings.max_run_duration_s
    if settings.redis_url is None:
        return lambda registry: local_sessions(events, registry, wait_s=wait_s)
    from chatstream.runs.redis_sessions import RedisSessions

    shared = await stack.enter_async_context(RedisSessions(settings, instance, events))
    return lambda registry: shared.sessions(registry, wait_s=wait_s)


async def _open_registry(
    stack: AsyncExitStack, settings: Settings, listeners: RunListeners, instance: str
) -> tuple[SharedRunsLink | None, RunHost]:
    """This instance's runs: its own only, or shared with every instance through Redis."""
    if settings.redis_url is None:
        registry = LocalRunRegistry(
            max_live_runs=settings.max_live_runs,
            retention_s=settings.run_retention_s,
            max_retained=settings.max_retained_runs,
            listeners=listeners,
        )
        return None, await stack.enter_async_context(registry)
    # Imported here: redis-py stays out of a process that does not use it.
    from chatstream.runs.redis_registry import SharedRunRegistry
    from chatstream.runs.shared import SharedRunsLink

    try:
        link = await stack.enter_async_context(SharedRunsLink(settings, instance))
    except StartupError as exc:
        logger.error("chatstream cannot start: %s", exc)
        raise
    here = LocalRunRegistry(
        max_live_runs=settings.max_live_runs,
        retention_s=settings.run_retention_s,
        max_retained=settings.max_retained_runs,
        listeners=listeners,
    )
    shared = SharedRunRegistry(here, link.shared)
    link.stop_local = shared.stop_local
    return link, await stack.enter_async_context(shared)


def _tracing(settings: Settings) -> Tracing | None:
    """OpenTelemetry, when its endpoint is set; otherwise not even imported."""
    if not settings.otel_exporter_otlp_endpoint:
        return None
    try:
        from chatstream.tracing import Tracing
    except ImportError:
        raise RuntimeError(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set, but tracing needs the OpenTelemetry SDK: "
            "pip install 'chatstream[otel]' (or unset the variable)"
        ) from None
    return Tracing.from_settings(settings)


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
