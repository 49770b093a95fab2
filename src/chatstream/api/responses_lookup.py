"""Finding responses: a response's run from its id, where it stands, items it refers to.

A response id names its run's answer (`resp_<message_id>`, hex); an output
item's id names its response and place (`msg_<hex>_<index>`, `fc_…`,
`rs_…`). A response is found live through the registry (any instance), or
rebuilt from its stored rows once it has left memory (`StoredRun`); either
way the same encoder (`api/responses_encoder.py`) says what it is.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

from chatstream.api.responses_encoder import ResponseEcho, ResponseEncoder
from chatstream.errors import InvalidRequest, NotFound, ServiceUnavailable
from chatstream.runs.handle import RunHandle
from chatstream.runs.replay import StoredRun
from chatstream.storage.turns import Turns

# A live response read without streaming: the events that arrive within this are its state.
SNAPSHOT_WAIT_S = 0.2


class PreviousResponseNotFound(InvalidRequest):
    code = "previous_response_not_found"


def message_id_of(response_id: str) -> uuid.UUID | None:
    if not response_id.startswith("resp_"):
        return None
    try:
        return uuid.UUID(hex=response_id.removeprefix("resp_"))
    except ValueError:
        return None


async def resolved(
    items: list[dict[str, Any]], state: Any, registry: Any, owner: str
) -> list[dict[str, Any]]:
    """The input with each `item_reference` (an output item of an earlier response) in full.

    Item ids name their response and place (`msg_<hex>_<index>`), so the
    response is encoded again from its run to find the item.
    """
    outputs: dict[str, list[dict[str, Any]]] = {}
    resolved: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        if item.get("type") != "item_reference":
            resolved.append(item)
            continue
        reference = str(item.get("id") or "")
        _, _, rest = reference.partition("_")
        run_hex, _, place = rest.partition("_")
        if run_hex not in outputs:
            try:
                run, created_at, _ = await handle(state, registry, owner, f"resp_{run_hex}")
            except NotFound:
                outputs[run_hex] = []
            else:
                encoder = ResponseEncoder(message_id=str(run.id), model="", created_at=created_at)
                await snapshot(run, encoder)
                outputs[run_hex] = encoder.response()["output"]
        found = [out for out in outputs[run_hex] if out["id"] == reference and place.isdigit()]
        if not found:
            raise InvalidRequest(
                f"Input item {index} refers to '{reference}', which is not an output item of "
                "one of your responses; send the item itself instead.",
                details=[{"loc": ["body", "input", index]}],
            )
        output = found[0]
        if output["type"] == "function_call":
            resolved.append({k: output[k] for k in ("type", "call_id", "name", "arguments")})
        else:
            resolved.append({"type": output["type"], "role": "assistant", **output})
    return resolved


async def session_of(state: Any, owner: str, previous: str) -> tuple[uuid.UUID, uuid.UUID]:
    """The previous response's session and answer: the new turn follows that answer."""
    message_id = message_id_of(previous)
    row = await state.store.get_message(owner, message_id) if message_id else None
    if row is None or row.role != "assistant":
        raise PreviousResponseNotFound(
            f"Previous response with id '{previous}' not found.",
            details=[{"loc": ["body", "previous_response_id"]}],
        )
    session_id: uuid.UUID = row.session_id
    answer_id: uuid.UUID = row.id
    return session_id, answer_id


async def handle(
    state: Any, registry: Any, owner: str, response_id: str
) -> tuple[RunHandle, float | None, ResponseEcho | None]:
    """The response's run: live (any instance), or rebuilt from its stored rows; when it
    was made, and what its request asked (kept with the message it sent)."""
    message_id = message_id_of(response_id)
    if message_id is None:
        raise NotFound(f"No response with id '{response_id}'.")
    run: RunHandle | None
    try:
        run = await registry.get(message_id, owner)
    except ServiceUnavailable:
        run = None  # other instances unreachable: the database still knows how it ended
    turns = Turns(state.database)
    turn = await turns.get(owner, message_id)
    created_at = turn.outputs[-1].created_at.timestamp() if turn is not None else None
    if turn is not None:
        asked = turn.inputs[-1] if turn.inputs else None
    else:
        asked = await turns.question_of(owner, message_id) if run is not None else None
    echo = _echo_of(asked)
    if run is not None and (turn is not None or (await run.state()).live):
        return run, created_at, echo  # (an ended run whose rows are gone was deleted)
    if turn is None:
        raise NotFound(f"No response with id '{response_id}'.")
    user = next((row.id for row in reversed(turn.inputs) if row.role == "user"), message_id)
    rows = await state.store.run_rows(owner, message_id)
    return StoredRun(turn.session_id, user, rows), created_at, echo


def _echo_of(asked: Any) -> ResponseEcho | None:
    """The request's options kept on the message it sent (none: made before 0009, or
    not by `/v1/responses`); a key this release does not know is left out."""
    stored = asked.request_options if asked is not None else None
    if not isinstance(stored, dict):
        return None
    known = {f.name for f in dataclasses.fields(ResponseEcho)}
    return ResponseEcho(**{key: value for key, value in stored.items() if key in known})


async def snapshot(run: RunHandle, encoder: ResponseEncoder) -> None:
    """Encode what the run has so far: the events it had when asked, or all to its end."""
    state = await run.state()
    async with run.follow(0, SNAPSHOT_WAIT_S) as batches:
        async for batch in batches:
            if not batch:
                return  # nothing new within SNAPSHOT_WAIT_S: that is where it stands
            encoder.encode(batch)
            if encoder.status != "in_progress" or (state.live and batch[-1].seq >= state.last_seq):
                return


def input_item(row: Any) -> dict[str, Any]:
    hex_id = row.id.hex
    if row.role == "tool":
        return {
            "id": f"fco_{hex_id}",
            "type": "function_call_output",
            "call_id": row.tool_call_id,
            "output": row.content,
            "status": "completed",
        }
    kind = "output_text" if row.role == "assistant" else "input_text"
    return {
        "id": f"msg_{hex_id}",
        "type": "message",
        "role": row.role,
        "status": "completed",
        "content": [{"type": kind, "text": row.content}],
    }
