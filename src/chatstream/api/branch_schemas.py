"""The bodies of a session's branches: the active branch as listed, edits, regenerations,
switching (`api/branches.py`, `GET /api/sessions/{id}/messages`)."""

from __future__ import annotations

import uuid
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from chatstream.api.schemas import ChatRequest, MessageOut, UserText
from chatstream.api.validators import NO_NUL, Text
from chatstream.runs.service import ChatInput
from chatstream.runs.session_gate import IfBusy
from chatstream.storage.branches import BranchMessage


class BranchMessageOut(MessageOut):
    """A message of the session's active branch, and where it stands among its siblings."""

    sibling_ids: list[uuid.UUID] = Field(
        description="The messages with this one's parent, this one among them, oldest first: "
        "the versions of this message (`< 2/3 >`). Show another one with "
        "`PUT /api/sessions/{id}/active-branch`."
    )
    sibling_index: int = Field(description="This message's place in `sibling_ids`, from 0.")
    sibling_count: int = Field(description="How many `sibling_ids` there are (1: no other).")

    @classmethod
    def of(cls, branched: BranchMessage) -> BranchMessageOut:
        row = branched.row
        fields = {name: getattr(row, name) for name in MessageOut.model_fields}
        return cls.model_validate(
            {
                **fields,
                "sibling_ids": branched.sibling_ids,
                "sibling_index": branched.sibling_index,
                "sibling_count": len(branched.sibling_ids),
            }
        )


class MessagePage(BaseModel):
    items: list[BranchMessageOut] = Field(
        description="The active branch, oldest first: from a first message to the session's "
        "active leaf, each message the parent of the next. The other branches are reached "
        "through `sibling_ids`."
    )
    next_cursor: str | None = Field(description="Pass back as `before` for the older page.")


_FIELDS = ChatRequest.model_fields


class RunOptions(BaseModel):
    """How the new answer is generated, as for `POST /api/chat`, and how it is returned."""

    model_config = ConfigDict(extra="forbid")

    model: Text | None = Field(default=None, description=_FIELDS["model"].description)
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description=_FIELDS["max_tokens"].description
    )
    chunk_chars: Annotated[int, Field(ge=1, le=4096)] | None = Field(
        default=None, description=_FIELDS["chunk_chars"].description
    )
    if_busy: IfBusy = Field(default="reject", description=_FIELDS["if_busy"].description)
    stream: bool = Field(
        default=False,
        description="false: answer once the run has ended, as `POST /api/chat` does (JSON). "
        "true: stream the run's events, as `POST /api/chat/stream` does (SSE).",
    )

    def to_input(
        self, session_id: uuid.UUID, message: str, client_message_id: str | None = None
    ) -> ChatInput:
        return ChatInput(
            message=message,
            session_id=session_id,
            model=self.model,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            chunk_chars=self.chunk_chars,
            if_busy=self.if_busy,
            client_message_id=client_message_id,
        )


class EditRequest(RunOptions):
    content: UserText = Field(
        description="The user message's new text: 1 to CHATSTREAM_MAX_MESSAGE_CHARS characters, "
        "not only whitespace. It becomes a new message beside the one edited (a sibling: the "
        "same parent), which is kept with everything that followed it."
    )
    client_message_id: Annotated[str, Field(min_length=1, max_length=200), NO_NUL] | None = Field(
        default=None, description=_FIELDS["client_message_id"].description
    )


class RegenerateRequest(RunOptions):
    """A new answer to the same message; the earlier answers are kept as its siblings."""


class ActiveBranchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message_id: uuid.UUID = Field(
        description="Any message of the session, typically one of a message's `sibling_ids`. "
        "The branch through it becomes the active one: its ancestors, it, and after it the "
        "conversation that went on from it (down to the most recent message under it)."
    )
