"""Conversations get an owner (tenant isolation); existing rows go to `anonymous`.

Rows written before this revision have no known owner. They are given to `anonymous`, the
principal of a service running without API keys: with keys on they are hidden from every key
rather than shown to all of them.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
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
    # Plain ALTERs, no batch rebuild: on SQLite (foreign keys on) dropping the old table
    # would cascade to the messages.
    op.add_column(
        "conversations",
        sa.Column("owner", sa.String(64), nullable=False, server_default="anonymous"),
    )
    op.create_index("ix_conversations_owner_created_at", "conversations", ["owner", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_conversations_owner_created_at", table_name="conversations")
    op.drop_column("conversations", "owner")  # SQLite >= 3.35 drops a column in place
