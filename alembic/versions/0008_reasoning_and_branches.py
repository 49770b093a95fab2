"""A reply's reasoning, kept apart from its content; messages form a tree with an active leaf.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07

Every existing session stays one branch: each message's parent is the
message written before it in its session, and the session's active leaf
is its last message.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("reasoning", sa.Text(), nullable=True))
        batch.add_column(sa.Column("parent_id", sa.Uuid(), nullable=True))
        batch.create_index("ix_messages_parent_id", ["parent_id"])
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("active_leaf_id", sa.Uuid(), nullable=True))
    # Correlated subqueries rather than window functions in UPDATE: both
    # SQLite and PostgreSQL run them, and the (session_id, pk) index serves them.
    op.execute(
        """
        UPDATE messages SET parent_id = (
            SELECT earlier.id FROM messages AS earlier
            WHERE earlier.session_id = messages.session_id AND earlier.pk < messages.pk
            ORDER BY earlier.pk DESC LIMIT 1
        )
        """
    )
    op.execute(
        """
        UPDATE sessions SET active_leaf_id = (
            SELECT last.id FROM messages AS last
            WHERE last.session_id = sessions.id
            ORDER BY last.pk DESC LIMIT 1
        )
        """
    )


def downgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("active_leaf_id")
    with op.batch_alter_table("messages") as batch:
        batch.drop_index("ix_messages_parent_id")
        batch.drop_column("parent_id")
        batch.drop_column("reasoning")
