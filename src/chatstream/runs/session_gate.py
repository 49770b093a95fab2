"""One live run per session: what a message sent while one is live does (`if_busy`).

    ChatService.start ── take_turn(session, run id, if_busy) ──▶ the gate claims the session
                         │ free: the new run goes on (the claim is settled once it is launched,
                         │       or released if it never is)
                         └ busy: reject    RunInProgress (409 `run_in_progress`, the live
                                           run's `message_id` in `details`)
                                 enqueue   wait until the live run has ended, then claim again
                                 interrupt cancel the live run (persisted as cancelled, as
                                           any cancel), wait for its end, then claim again

The claim is what makes "live" exact: it is taken before the user message is
committed, atomically, so two messages sent at once never both start a run.
In one process it is a dict (`LocalSessionGate`); with Redis it is a key
every instance checks in one script (`fleet/redis_sessions.py`), so a
message sent to one instance while the run lives on another is handled the
same way.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import anyio

from chatstream.errors import Conflict
from chatstream.runs.handle import RunHost, RunRegistry
from chatstream.runs.session_events import SessionEvents

IfBusy = Literal["reject", "enqueue", "interrupt"]
IF_BUSY_CHOICES: tuple[IfBusy, ...] = ("reject", "enqueue", "interrupt")

# How often a waiting message looks again at a run it cannot see end (launching elsewhere).
POLL_S = 0.02


class RunInProgress(Conflict):
    code = "run_in_progress"

    def __init__(self, message_id: uuid.UUID) -> None:
        super().__init__(
            "This session is still answering an earlier message: follow that answer "
            "(details.message_id), wait for its end, or send again with if_busy `enqueue` "
            "or `interrupt`.",
            details={"message_id": str(message_id)},
        )


class SessionGate(Protocol):
    async def claim(self, owner: str, session_id: uuid.UUID, run_id: uuid.UUID) -> uuid.UUID | None:
        """Take the session for `run_id`; None if taken, else the id of the run live in it.

        A session that is not the owner's is never reported busy (nothing of
        another owner's is revealed); the chat then fails as for any such session.
        """
        ...

    async def settle(self, session_id: uuid.UUID, run_id: uuid.UUID, launched: bool) -> None:
        """The claimed run was launched (the claim now follows it), or never will be."""
        ...

    async def active(
        self, owner: str, session_ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, uuid.UUID]:
        """The live run of each of these sessions of the owner's that has one."""
        ...


@dataclass(slots=True)
class _Claim:
    owner: str
    run_id: uuid.UUID
    launched: bool = False


class LocalSessionGate:
    """One process's sessions: a claim per session whose run is live or launching."""

    def __init__(self, registry: RunHost) -> None:
        self._registry = registry
        self._claims: dict[uuid.UUID, _Claim] = {}

    def _holds(self, claim: _Claim) -> bool:
        if not claim.launched:
            return True  # its user message is being committed
        run = self._registry.local(claim.run_id, claim.owner)
        return run is not None and run.live

    async def claim(self, owner: str, session_id: uuid.UUID, run_id: uuid.UUID) -> uuid.UUID | None:
        held = self._claims.get(session_id)
        if held is not None and self._holds(held):
            return held.run_id if held.owner == owner else None
        self._claims[session_id] = _Claim(owner, run_id)
        return None

    async def settle(self, session_id: uuid.UUID, run_id: uuid.UUID, launched: bool) -> None:
        held = self._claims.get(session_id)
        if held is None or held.run_id != run_id:
            return
        if launched:
            held.launched = True
        else:
            del self._claims[session_id]

    def ended(self, session_id: uuid.UUID, run_id: uuid.UUID) -> None:
        held = self._claims.get(session_id)
        if held is not None and held.run_id == run_id:
            del self._claims[session_id]

    async def active(
        self, owner: str, session_ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, uuid.UUID]:
        wanted = set(session_ids)
        return {
            run.session_id: run.id
            for run in self._registry.live_runs()
            if run.owner == owner and run.session_id in wanted and run.live
        }


class LiveSessions:
    """The live state of sessions: their events, their gate, and how a turn is taken."""

    def __init__(
        self, events: SessionEvents, gate: SessionGate, registry: RunRegistry, *, wait_s: float
    ) -> None:
        self.events = events
        self.gate = gate
        self._registry = registry
        self._wait_s = wait_s

    async def take_turn(
        self, owner: str, session_id: uuid.UUID, run_id: uuid.UUID, if_busy: IfBusy
    ) -> None:
        """Claim the session for `run_id`, as `if_busy` says; `RunInProgress` if it cannot.

        `enqueue` and `interrupt` wait at most `wait_s` (the longest a run may
        live) for their turn.
        """
        deadline = anyio.current_time() + self._wait_s
        previous: uuid.UUID | None = None
        while True:
            live = await self.gate.claim(owner, session_id, run_id)
            if live is None:
                return
            left = deadline - anyio.current_time()
            if if_busy == "reject" or left <= 0:
                raise RunInProgress(live)
            with anyio.move_on_after(left):
                if live == previous:
                    # Seen ending already, not yet everywhere (Redis is a flush behind).
                    await anyio.sleep(POLL_S)
                await self._wait_out(owner, live, stop=if_busy == "interrupt")
            previous = live

    async def _wait_out(self, owner: str, run_id: uuid.UUID, *, stop: bool) -> None:
        run = await self._registry.get(run_id, owner)
        if run is None:
            await anyio.sleep(POLL_S)  # launching, and not yet visible from here
            return
        if stop:
            await run.cancel()
        await run.wait()

    async def active(
        self, owner: str, session_ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, uuid.UUID]:
        if not session_ids:
            return {}
        return await self.gate.active(owner, session_ids)


def local_sessions(events: SessionEvents, registry: RunHost, *, wait_s: float) -> LiveSessions:
    """The live state of one process's sessions (no Redis)."""
    gate = LocalSessionGate(registry)
    events.on_run_end = gate.ended
    return LiveSessions(events, gate, registry, wait_s=wait_s)
