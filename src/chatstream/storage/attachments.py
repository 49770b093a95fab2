"""Content parts that are not text (images, audio, files), stored once, by content hash.

A message's parts are kept as sent in `messages.parts`, except that each
payload (an image's URL or data URL, audio's base64 data, a file's data) is
replaced by a reference, `chatstream-attachment:sha256:<hex>`, to one row of
`attachments` holding it. The same image sent twice, or in every turn a client
replays, is stored once. Reading a session's history resolves the references,
so what the model is sent again is what the client sent.

    by_reference(parts) → (parts with references, the payloads by hash)
    store(connection, payloads)           inside the turn's write, duplicates skipped
    resolve(connection, history)          the payloads put back, for the context
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, String, Table, Text, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, mapped_column

from chatstream.storage.models import Base, UTCDateTime
from chatstream.storage.records import HistoryMessage

REFERENCE = "chatstream-attachment:sha256:"

# Where each kind of part keeps its payload: (part type, key of its object, payload key).
PAYLOADS = (
    ("image_url", "image_url", "url"),
    ("input_audio", "input_audio", "data"),
    ("file", "file", "file_data"),
)


class AttachmentRow(Base):
    __tablename__ = "attachments"

    hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    data: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


attachments_table = cast(Table, AttachmentRow.__table__)


def _slots(parts: Sequence[Any]) -> Iterator[tuple[dict[str, Any], str, str]]:
    """Each payload slot of `parts`: (the object holding it, its key, the part's type)."""
    for part in parts:
        if not isinstance(part, dict):
            continue
        for kind, holder_key, key in PAYLOADS:
            holder = part.get(holder_key)
            if (
                part.get("type") == kind
                and isinstance(holder, dict)
                and isinstance(holder.get(key), str)
            ):
                yield holder, key, kind


def has_payloads(parts: Sequence[Any] | None) -> bool:
    return any(True for _ in _slots(parts or ()))


def _copy(parts: Sequence[Any]) -> list[Any]:
    """A copy of `parts` whose payload slots can be changed without touching the original."""
    return [
        {key: dict(value) if isinstance(value, dict) else value for key, value in part.items()}
        if isinstance(part, dict)
        else part
        for part in parts
    ]


def by_reference(parts: Sequence[Any]) -> tuple[list[Any], dict[str, tuple[str, str]]]:
    """`parts` with each payload replaced by its reference; the payloads, {hash: (kind, data)}."""
    stored = _copy(parts)
    payloads: dict[str, tuple[str, str]] = {}
    for holder, key, kind in _slots(stored):
        digest = hashlib.sha256(holder[key].encode()).hexdigest()
        payloads[digest] = (kind, holder[key])
        holder[key] = REFERENCE + digest
    return stored, payloads


def store(connection: Connection, payloads: dict[str, tuple[str, str]], now: datetime) -> None:
    """Insert the payloads not stored yet (a concurrent insert of the same one is no error)."""
    if not payloads:
        return
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(attachments_table).on_conflict_do_nothing(index_elements=["hash"])
    connection.execute(
        statement,
        [
            {"hash": digest, "kind": kind, "data": data, "created_at": now}
            for digest, (kind, data) in payloads.items()
        ],
    )


def resolve(connection: Connection, history: list[HistoryMessage]) -> list[HistoryMessage]:
    """`history` with every reference in its messages' parts replaced by the payload."""
    wanted = {
        holder[key][len(REFERENCE) :]
        for message in history
        for holder, key, _ in _slots(message.parts or ())
        if holder[key].startswith(REFERENCE)
    }
    if not wanted:
        return history
    found = dict(
        connection.execute(
            select(attachments_table.c.hash, attachments_table.c.data).where(
                attachments_table.c.hash.in_(wanted)
            )
        ).all()
    )
    resolved = []
    for message in history:
        if not has_payloads(message.parts):
            resolved.append(message)
            continue
        parts = _copy(message.parts or ())
        for holder, key, _ in _slots(parts):
            value = holder[key]
            if value.startswith(REFERENCE):
                holder[key] = found.get(value[len(REFERENCE) :], value)
        resolved.append(dataclasses.replace(message, parts=parts))
    return resolved
