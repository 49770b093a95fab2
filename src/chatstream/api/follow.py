"""Follow a run to its end for a request that answers once (JSON, not a stream).

Every protocol's non-streamed answer is this loop around its own reader of
the events (the native `POST /api/chat`, `/v1/chat/completions`,
`/v1/responses`): following the run, rather than only awaiting it, makes
the request count as the run's reader for the disconnect policy, and a
client that leaves stops the loop (the run goes on unless that policy says
otherwise).
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
from starlette.requests import Request

from chatstream.runs.events import Event
from chatstream.runs.handle import RunHandle


async def follow_to_end(
    run: RunHandle, request: Request, read: Callable[[list[Event]], object]
) -> bool:
    """Hand every batch of the run's events to `read`; False if the client left first."""
    ended = False
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(_cancel_scope_on_disconnect, request, tasks.cancel_scope)
        async with run.follow() as batches:
            async for batch in batches:
                read(batch)
                if batch and batch[-1].type == "done":
                    ended = True
        tasks.cancel_scope.cancel()
    return ended


async def _cancel_scope_on_disconnect(request: Request, scope: anyio.CancelScope) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
    scope.cancel()
