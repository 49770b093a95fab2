"""Sessions are listed most recently active first: index them that way.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_sessions_owner_updated", "sessions", ["owner", "updated_at", "pk"])
    op.drop_index("ix_sessions_owner_pk", table_name="sessions")


def downgrade() -> None:
    op.create_index("ix_sessions_owner_pk", "sessions", ["owner", "pk"])
    op.drop_index("ix_sessions_owner_updated", table_name="sessions")
