"""Post-run hooks: work on a finished answer that must never delay or break a stream.

    registry ── run_finished(record) ──▶ HookRunner ──▶ every hook, each in its own task
               (after the commit, after `done`)         with a timeout; failures logged

A hook is an async callable taking the finished run's `RunRecord` (its
session, the rows it wrote, status, usage, metrics, the context it was
given). Hooks come from `create_app(settings, hooks=[...])`, or, when that
is not given, from the installed packages' `chatstream.hooks` entry points.
They run after the run's rows are committed and its `done` is in the log, on
the runner's own task group: a slow hook delays nothing (it is cancelled after
`CHATSTREAM_HOOK_TIMEOUT_S`), a hook that raises is logged and the other
hooks and runs go on. On shutdown, running hooks get the same timeout to
finish before they are cancelled.

Titles. The contract promises an untitled session a title after its first
answer: from its first user message (`CHATSTREAM_AUTO_TITLE=message`, the
default) or from the model (`model`). From the message, the title needs
nothing the answer brings, so the storage sets it with the user message, in
the statement that saves it (`Store.begin_turn`): no extra write, and the
title is there even before the answer. From the model, sessions start
untitled and the built-in `AutoTitle` hook asks the model after the first
answer. Either way a title set through the API is never replaced, and one
cleared is set again after the next message.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from importlib.metadata import entry_points
from types import TracebackType

import anyio
from anyio.abc import TaskGroup

from chatstream.runs.accumulator import ChunkAccumulator
from chatstream.runs.lifecycle import RunRecord, RunStarted
from chatstream.storage.repository import Store
from chatstream.storage.writes import TITLE_CHARS, title_from
from chatstream.upstream.stream import ChatUpstream, UpstreamRequest

logger = logging.getLogger(__name__)

Hook = Callable[[RunRecord], Awaitable[None]]

ENTRY_POINT_GROUP = "chatstream.hooks"


def installed_hooks() -> list[Hook]:
    """The hooks installed packages declare in the `chatstream.hooks` entry-point group."""
    hooks: list[Hook] = []
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        loaded = entry.load()
        if not callable(loaded):
            raise TypeError(f"entry point {entry.name!r} ({entry.value}) is not callable")
        hooks.append(loaded)
    return hooks


def _name(hook: Hook) -> str:
    return getattr(hook, "__qualname__", None) or type(hook).__name__


class HookRunner:
    """A `RunListener` that calls every hook with each finished run, in the background.

    Enter it (`async with`) for its task group before the run registry, so
    that it outlives the registry: the runs interrupted at shutdown still get
    their hooks.
    """

    def __init__(self, hooks: Iterable[Hook] = (), *, timeout_s: float) -> None:
        self._hooks = list(hooks)
        self._timeout_s = timeout_s
        self._tasks: TaskGroup | None = None

    def add(self, hook: Hook) -> None:
        self._hooks.append(hook)

    def remove(self, hook: Hook) -> None:
        self._hooks.remove(hook)

    async def __aenter__(self) -> HookRunner:
        self._tasks = anyio.create_task_group()
        await self._tasks.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        tasks, self._tasks = self._tasks, None
        assert tasks is not None
        # Each running hook has its own timeout, so this wait is bounded by it.
        await tasks.__aexit__(exc_type, exc, tb)

    # --- RunListener ---------------------------------------------------------------

    def run_started(self, run: RunStarted) -> None:
        pass

    def chat_rejected(self, code: str) -> None:
        pass

    def run_finished(self, record: RunRecord) -> None:
        if self._tasks is None:
            logger.warning(
                "run %s finished outside the hooks' lifespan; hooks skipped", record.message_id
            )
            return
        for hook in self._hooks:
            self._tasks.start_soon(self._call, hook, record, name=f"hook {_name(hook)}")

    async def _call(self, hook: Hook, record: RunRecord) -> None:
        with anyio.move_on_after(self._timeout_s) as scope:
            try:
                await hook(record)
            except Exception as exc:
                logger.error(
                    "hook %s failed on run %s (%s: %s)",
                    _name(hook),
                    record.message_id,
                    type(exc).__name__,
                    exc,
                )
        if scope.cancelled_caught:
            logger.error(
                "hook %s on run %s timed out after %s s",
                _name(hook),
                record.message_id,
                self._timeout_s,
            )


TITLE_PROMPT = (
    "Write a title of at most six words for the conversation that starts with the user's "
    "message below. Answer with the title alone: no quotes, no punctuation at the end."
)
TITLE_MAX_TOKENS = 24


class AutoTitle:
    """Title an untitled session after its first answer, by the model (the built-in hook).

    If the model gives no usable title, the first user message's is used.
    """

    def __init__(self, store: Store, upstream: ChatUpstream) -> None:
        self._store = store
        self._upstream = upstream

    async def __call__(self, record: RunRecord) -> None:
        if not record.persisted:
            return  # its rows are in the spool; the session is titled after a later answer
        first = await self._store.untitled_first_message(record.owner, record.session_id)
        if first is None:
            return
        title = await self._ask_model(record.model, first) or title_from(first)
        await self._store.set_title_if_untitled(record.owner, record.session_id, title)

    async def _ask_model(self, model: str, message: str) -> str | None:
        """The model's title for the conversation, or None if it gave none usable."""
        request = UpstreamRequest(
            model=model,
            messages=[
                {"role": "system", "content": TITLE_PROMPT},
                {"role": "user", "content": message},
            ],
            max_tokens=TITLE_MAX_TOKENS,
            temperature=0,
        )
        accumulator = ChunkAccumulator()
        try:
            async with self._upstream.stream(request) as batches:
                async for batch in batches:
                    for chunk in batch:
                        accumulator.feed(chunk)
        except Exception as exc:
            logger.warning("auto-title: the model gave no title (%s)", type(exc).__name__)
            return None
        title = " ".join(accumulator.text.split()).strip("\"'“”«»` ")
        return title[:TITLE_CHARS] or None
