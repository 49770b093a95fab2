"""Idempotent sends: a user message remembers its client key and the run it started.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("client_message_id", sa.String(200), nullable=True))
        batch.add_column(sa.Column("reply_id", sa.Uuid(), nullable=True))
    # One request per key and owner; rows without a key (NULL) never collide.
    op.create_index(
        "ux_messages_owner_client_message_id",
        "messages",
        ["owner", "client_message_id"],
        unique=True,
    )


def downgrade() -> None:
    op.drop_index("ux_messages_owner_client_message_id", table_name="messages")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("reply_id")
        batch.drop_column("client_message_id")
