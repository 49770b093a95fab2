"""What a Responses request asked beyond its input, kept on the message it sent.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07

`GET /v1/responses/{id}` reads a response back as it was created (its
instructions, tools, metadata, ...). Existing messages have none: a response
stored before this reads back with the defaults, as before.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("request_options", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("request_options")
