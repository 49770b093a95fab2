"""The AI SDK's edits and regenerations, as branches of the chat's session.

`useChat` rewrites its own list of messages and sends it with a trigger:

    sendMessage({text, messageId})   trigger submit-message, messageId: the user
                                     message replaced (the list ends with it, new text)
    regenerate({messageId?})         trigger regenerate-message, messageId: the
                                     answer (or user message) to answer again, or
                                     none: the last answer

Both map onto the session's tree, so that nothing the SDK dropped from its
list is dropped here: an edit is a new sibling of the stored user message,
a regeneration a new answer to the stored question (`api/branches.py` does
the same for the native API).

Which stored message `messageId` names: an answer's id is ours (the SDK
takes it from the `start` chunk), and so is any id of a chat loaded from
`GET /api/sessions/{id}/messages`; a user message the SDK made itself has
an id of its own. That one is found by its place: the message before it in
the list, if that is one of ours, is what the edit follows; otherwise the
n-th user message of the list is the n-th of the session's active branch
(the branch the SDK's list shows, as long as no other client switched it).
"""

from __future__ import annotations

import uuid

from chatstream.api.ui_schemas import UIChatRequest, UIMessage
from chatstream.errors import NotAUserMessage, NotFound
from chatstream.runs.service import TurnShape
from chatstream.storage.branches import Branches
from chatstream.storage.models import MessageRow
from chatstream.storage.records import Parent


async def regenerated(
    branches: Branches, owner: str, session_id: uuid.UUID, body: UIChatRequest
) -> tuple[str, TurnShape]:
    """The question `regenerate()` answers again, and the turn that does it."""
    question: MessageRow | None
    if body.messageId is None:
        question = await branches.question_of(owner, session_id, None)
    else:
        stored = await _stored(branches, owner, session_id, body.messageId)
        if stored is not None:
            question = await branches.question_of(owner, session_id, stored.id)
        else:
            question = await _by_place(branches, owner, session_id, body, body.messageId)
    if question is None:
        raise NotFound("This chat has no question to answer again.")
    return question.content, TurnShape(reanswer=question.id)


def replaces(body: UIChatRequest) -> str | None:
    """The id of the user message `sendMessage({messageId})` replaced, if it did: the list
    ends with it. (`sendMessage()` without a message names the last answer instead, to
    go on after it: that is no edit.)"""
    last = body.messages[-1] if body.messages else None
    if body.messageId is None or last is None or last.id != body.messageId:
        return None
    return body.messageId if last.role == "user" else None


async def edited(
    branches: Branches, owner: str, session_id: uuid.UUID, body: UIChatRequest, message_id: str
) -> TurnShape:
    """The turn of `sendMessage({messageId})`: the new text beside the message it replaces."""
    stored = await _stored(branches, owner, session_id, message_id)
    if stored is not None:
        if stored.role != "user":
            raise NotAUserMessage(
                f"messageId {message_id} is not a user message; only a user message can be "
                "replaced (regenerate() answers again).",
                details=[{"loc": ["body", "messageId"], "msg": "not a user message"}],
            )
        return TurnShape(parent=Parent(stored.parent_id))
    index = _index_of(body.messages, message_id)
    if index == 0:
        return TurnShape(parent=Parent(None))  # the first message: a new root
    before = await _stored(branches, owner, session_id, body.messages[index - 1].id)
    if before is not None:
        return TurnShape(parent=Parent(before.id))
    question = await _by_place(branches, owner, session_id, body, message_id)
    if question is None:
        raise NotFound(_UNKNOWN.format(message_id))
    return TurnShape(parent=Parent(question.parent_id))


_UNKNOWN = (
    "messageId {} is not a message of this chat's session, and its place in `messages` "
    "matches no user message of it; reload the chat's messages from the server."
)


async def _stored(
    branches: Branches, owner: str, session_id: uuid.UUID, message_id: str | None
) -> MessageRow | None:
    """The session's message whose id `message_id` is, if it is one of ours."""
    try:
        candidate = uuid.UUID(message_id) if message_id else None
    except ValueError:
        return None
    if candidate is None:
        return None
    try:
        return await branches.message(owner, session_id, candidate)
    except NotFound:
        return None


def _index_of(messages: list[UIMessage], message_id: str) -> int:
    for index, message in enumerate(messages):
        if message.id == message_id:
            return index
    raise NotFound(
        f"messageId {message_id} is not in `messages`.",
        details=[{"loc": ["body", "messageId"], "msg": "not in messages"}],
    )


async def _by_place(
    branches: Branches,
    owner: str,
    session_id: uuid.UUID,
    body: UIChatRequest,
    message_id: str,
) -> MessageRow | None:
    """The stored user message at the place of the SDK's own `message_id`: as many user
    messages before it on the active branch as before it in the SDK's list."""
    index = _index_of(body.messages, message_id)
    if body.messages[index].role != "user":
        raise NotFound(_UNKNOWN.format(message_id))
    place = sum(1 for message in body.messages[:index] if message.role == "user")
    questions = await branches.questions(owner, session_id)
    return questions[place] if place < len(questions) else None
