"""Content parts that are not text: kept on their message, payloads once each by content hash.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Existing messages are text only: NULL.
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("parts", sa.JSON(), nullable=True))
    op.create_table(
        "attachments",
        sa.Column("hash", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("attachments")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("parts")
