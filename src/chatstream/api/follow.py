"""Follow a run: to its end for a request that answers once, and how a lost follow ends.

Every protocol's non-streamed answer is this loop around its own reader of
the events (the native `POST /api/chat`, `/v1/chat/completions`,
`/v1/responses`): following the run, rather than only awaiting it, makes
the request count as the run's reader for the disconnect policy, and a
client that leaves stops the loop (the run goes on unless that policy says
otherwise).

Every streamed protocol ends a follow whose run's stream was lost (another
instance's run, Redis away longer than a follower waits: `RunStreamLost`)
with the same two events, `stream_lost`: a retryable `error`, then `done`
`interrupted`, each in the protocol's own shape, so that the client's own
library reports a failure instead of a cut connection. They are not the
run's: they carry no number of the run's (an SSE `id`, a frame's `seq`), so
a client resumes after the last event it was sent, and the run goes on.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import anyio
from starlette.requests import Request

from chatstream.errors import ChatstreamError
from chatstream.runs.events import DoneEvent, ErrorEvent, Event
from chatstream.runs.handle import RunHandle


async def follow_to_end(
    run: RunHandle, request: Request, read: Callable[[list[Event]], object]
) -> bool:
    """Hand every batch of the run's events to `read`; False if the client left first.

    A follow that fails (the run's stream lost: `RunStreamLost`) raises that
    error itself, not wrapped by the task group, so the request is answered
    with it (a 503 in the protocol's shape) rather than as an unexpected failure.
    """
    ended = False
    failed: ChatstreamError | None = None
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(_cancel_scope_on_disconnect, request, tasks.cancel_scope)
        try:
            async with run.follow() as batches:
                async for batch in batches:
                    read(batch)
                    if batch and batch[-1].type == "done":
                        ended = True
        except ChatstreamError as exc:
            failed = exc
        tasks.cancel_scope.cancel()
    if failed is not None:
        raise failed
    return ended


async def _cancel_scope_on_disconnect(request: Request, scope: anyio.CancelScope) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


def stream_lost(run_id: uuid.UUID, exc: ChatstreamError) -> tuple[ErrorEvent, DoneEvent]:
    """The end a follower that lost the run's stream tells its client (the run goes on)."""
    error: ErrorEvent = {
        "type": "error",
        "code": "server_shutdown",  # of the contract's codes, the retryable "not here now"
        "message": exc.message,
        "retryable": True,
    }
    done: DoneEvent = {
        "type": "done",
        "message_id": str(run_id),
        "status": "interrupted",
        "finish_reason": None,
        "persisted": False,  # not known here; the run's own instance saves it
        "usage": None,
        "metrics": None,
    }
    return error, done
