"""Every row a run writes names its run, so an ended run can be replayed whole.

A run with tool rounds writes several rows (each round's assistant row and
tool rows, then the answer); `run_id` (the answer's id) ties them together,
where their order in the session could not (two runs of one session may
write at once).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("run_id", sa.Uuid(), nullable=True))
    op.create_index("ix_messages_run_id", "messages", ["run_id"])


def downgrade() -> None:
    op.drop_index("ix_messages_run_id", table_name="messages")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("run_id")
