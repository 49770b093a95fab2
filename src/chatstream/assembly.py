"""The server's lifespan: every capability opened by its own opener, in one explicit order.

`create_app` builds what needs no I/O (`Parts`: the run listeners, metrics,
quotas, auth) and the lifespan calls `open_server`, which opens the rest on
one exit stack. The stack closes them in the reverse order, so the order
below is also the shutdown order read bottom-up:

    1  observability   metrics, tracing     closed last: the last runs' figures count
    2  storage         database + schema, limits, quotas
    3  upstream        the model server's client
    4  hooks           post-run hooks, `store: false`, model titles
                                            they and Telegram outlive the registry: the
    5  telegram        the bot              runs it ends at shutdown get their hooks and
                                            reach their chats
    6  cache           the answer cache
    7  spool           the crash-safe journal's files, this instance's id
    8  runs            live sessions, the run registry (Redis-shared with a URL)
                                            closed first of the run machinery: live runs
                                            finish or are interrupted, and persist
    9  durability      metrics' gauges, the journal, the Redis sweeper
   10  chat            the chat service: what every transport starts runs with

A dependency that cannot be used (the database, its schema, Redis, the
spool directory) raises `StartupError` with one line for the operator,
which is logged here and stops the lifespan.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio.to_thread

from chatstream.api.deps import AppState
from chatstream.auth import Authenticator, ClientAddress
from chatstream.bots.telegram import TelegramBot
from chatstream.config import Settings
from chatstream.durability.journal import RunJournal
from chatstream.durability.spool import Spool
from chatstream.errors import StartupError
from chatstream.hooks import AutoTitle, HookRunner
from chatstream.limiting.quotas.quotas import Quotas
from chatstream.limiting.ratelimit import ChatLimits
from chatstream.logs import Redactor
from chatstream.metrics import Metrics
from chatstream.runs.handle import RunHost
from chatstream.runs.lifecycle import RunListeners
from chatstream.runs.registry import LocalRunRegistry
from chatstream.runs.service import ChatService
from chatstream.runs.session_events import SessionEvents
from chatstream.runs.session_gate import LiveSessions, local_sessions
from chatstream.runs.unstored import Unstored
from chatstream.startup import open_spool, prepare_database
from chatstream.storage.db import Database
from chatstream.storage.repository import Store
from chatstream.title_events import TitleAnnouncer
from chatstream.tools import ToolSet
from chatstream.upstream.cache import AnswerCache
from chatstream.upstream.client import open_client
from chatstream.upstream.stream import ChatUpstream

if TYPE_CHECKING:
    from chatstream.fleet.shared import SharedRunsLink
    from chatstream.tracing import Tracing

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Parts:
    """What `create_app` makes before anything is opened (no I/O)."""

    settings: Settings
    tools: ToolSet
    hook_runner: HookRunner
    run_listeners: RunListeners
    session_events: SessionEvents
    metrics: Metrics | None
    tracing: Tracing | None
    quotas: Quotas
    authenticator: Authenticator
    client_address: ClientAddress
    redactor: Redactor


@dataclass(frozen=True, slots=True)
class OpenedServer:
    state: AppState
    telegram: TelegramBot | None
    shared: bool  # runs shared through Redis


async def open_server(stack: AsyncExitStack, parts: Parts) -> OpenedServer:
    """Open every capability on `stack`, in the order of the module's table."""
    settings = parts.settings
    _open_observability(stack, parts)
    database, limits = await _open_storage(stack, parts)
    store = Store(database)
    upstream = ChatUpstream(await stack.enter_async_context(open_client(settings)), parts.redactor)
    unstored = await _open_hooks(stack, parts, store, upstream)
    telegram = None
    if settings.telegram_enabled:
        telegram = await stack.enter_async_context(TelegramBot(settings))
    run_upstream = upstream
    if settings.cache_ttl_s is not None:
        run_upstream = (await stack.enter_async_context(AnswerCache(settings))).wrap(upstream)
    spool = await _open_spool(stack, settings)
    live = await _open_live_sessions(stack, settings, parts.session_events, spool.instance_id)
    link, registry = await _open_registry(stack, settings, parts.run_listeners, spool.instance_id)
    registry.max_retained_bytes = settings.run_retention_bytes
    journal = await _open_durability(stack, parts, store, spool, registry, link)
    chat_service = ChatService(
        settings,
        store=store,
        registry=registry,
        upstream=run_upstream,
        tools=parts.tools,
        limits=limits,
        journal=journal,
        runner=spool.instance_id,
        listeners=parts.run_listeners,
        log_for=link.log_for if link is not None else None,
        live=live(registry),
    )
    state = AppState(
        settings=settings,
        database=database,
        store=store,
        registry=registry,
        chat=chat_service,
        authenticator=parts.authenticator,
        client_address=parts.client_address,
        journal=journal,
        limits=limits,
        instance=spool.instance_id,
        unstored=unstored,
        shared_redis_ping=link.ping if link is not None else None,
    )
    return OpenedServer(state, telegram, shared=link is not None)


def _refuse_to_start(exc: StartupError) -> None:
    # The one line an operator needs; StartupReport keeps the traceback out.
    logger.error("chatstream cannot start: %s", exc)


def _open_observability(stack: AsyncExitStack, parts: Parts) -> None:
    if parts.metrics is not None:
        stack.callback(parts.metrics.close)
    if parts.tracing is not None:
        stack.push_async_callback(parts.tracing.aclose)


async def _open_storage(stack: AsyncExitStack, parts: Parts) -> tuple[Database, ChatLimits]:
    settings = parts.settings
    database = await stack.enter_async_context(Database.from_settings(settings))
    try:
        await prepare_database(database, auto_migrate=settings.auto_migrate, redact=parts.redactor)
        limits = await stack.enter_async_context(ChatLimits(settings))
        await stack.enter_async_context(parts.quotas)
    except StartupError as exc:
        _refuse_to_start(exc)
        raise
    return database, limits


async def _open_hooks(
    stack: AsyncExitStack, parts: Parts, store: Store, upstream: ChatUpstream
) -> Unstored:
    hooks = parts.hook_runner
    await stack.enter_async_context(hooks)
    unstored = Unstored(store)
    hooks.add(unstored)
    stack.callback(hooks.remove, unstored)
    if parts.settings.auto_title == "model":
        # Its sessions' watchers are told the title it sets.
        auto_title = TitleAnnouncer(AutoTitle(store, upstream), store, parts.session_events)
        hooks.add(auto_title)
        stack.callback(hooks.remove, auto_title)
    return unstored


async def _open_spool(stack: AsyncExitStack, settings: Settings) -> Spool:
    try:
        spool = await anyio.to_thread.run_sync(open_spool, settings.spool_dir)
    except StartupError as exc:
        _refuse_to_start(exc)
        raise
    stack.callback(spool.close)
    spool.max_bytes = settings.spool_max_bytes
    return spool


async def _open_live_sessions(
    stack: AsyncExitStack, settings: Settings, events: SessionEvents, instance: str
) -> Callable[[RunHost], LiveSessions]:
    """Sessions' live state, given the registry: this process's, or every instance's (Redis).

    Opened before the registry and closed after it, so that the ends of the
    runs interrupted at shutdown still reach the other instances. A message
    that waits its turn (`if_busy: enqueue`) waits at most a run's longest.
    """
    wait_s = settings.max_run_duration_s
    if settings.redis_url is None:
        return lambda registry: local_sessions(events, registry, wait_s=wait_s)
    from chatstream.fleet.redis_sessions import RedisSessions

    shared = await stack.enter_async_context(RedisSessions(settings, instance, events))
    return lambda registry: shared.sessions(registry, wait_s=wait_s)


async def _open_registry(
    stack: AsyncExitStack, settings: Settings, listeners: RunListeners, instance: str
) -> tuple[SharedRunsLink | None, RunHost]:
    """This instance's runs: its own only, or shared with every instance through Redis."""
    here = LocalRunRegistry(
        max_live_runs=settings.max_live_runs,
        retention_s=settings.run_retention_s,
        max_retained=settings.max_retained_runs,
        listeners=listeners,
    )
    if settings.redis_url is None:
        return None, await stack.enter_async_context(here)
    # Imported here: redis-py stays out of a process that does not use it.
    from chatstream.fleet.redis_registry import SharedRunRegistry
    from chatstream.fleet.shared import SharedRunsLink

    try:
        link = await stack.enter_async_context(SharedRunsLink(settings, instance))
    except StartupError as exc:
        _refuse_to_start(exc)
        raise
    shared = SharedRunRegistry(here, link.shared)
    link.stop_local = shared.stop_local
    return link, await stack.enter_async_context(shared)


async def _open_durability(
    stack: AsyncExitStack,
    parts: Parts,
    store: Store,
    spool: Spool,
    registry: RunHost,
    link: SharedRunsLink | None,
) -> RunJournal:
    if parts.metrics is not None:
        await stack.enter_async_context(
            parts.metrics.watching(
                live_runs=lambda: registry.live_count, spool_pending=spool.pending_count
            )
        )
    journal = await stack.enter_async_context(
        RunJournal(
            store,
            spool,
            checkpoint_interval_s=parts.settings.checkpoint_interval_s,
            live_runs=registry.live_runs,
            known=registry.known,
            shared_status=link.statuses if link is not None else None,
        )
    )
    if link is not None:
        await stack.enter_async_context(link.sweeping(journal, store))
    return journal


def open_tracing(settings: Settings) -> Tracing | None:
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
