"""Sessions named by a client's own chat id (the Vercel AI SDK's `id`), unique per owner.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("external_id", sa.String(200), nullable=True))
    # One session per chat id and owner; sessions without one (NULL) never collide.
    op.create_index(
        "ux_sessions_owner_external_id", "sessions", ["owner", "external_id"], unique=True
    )


def downgrade() -> None:
    op.drop_index("ux_sessions_owner_external_id", table_name="sessions")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("external_id")
