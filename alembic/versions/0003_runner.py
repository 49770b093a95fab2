"""Which instance runs a user message's answer, so that instance can finish it after a crash.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("runner", sa.String(64), nullable=True))
    op.create_index("ix_messages_runner", "messages", ["runner"])


def downgrade() -> None:
    op.drop_index("ix_messages_runner", table_name="messages")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("runner")
