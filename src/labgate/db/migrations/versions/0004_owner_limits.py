"""Per-owner limits set by an admin (overriding [limits] for that owner).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "owner_limits",
        sa.Column("owner", sa.String(64), primary_key=True),
        sa.Column("forwards", sa.Integer, nullable=True),   # NULL: the [limits] default
        sa.Column("ports", sa.Integer, nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(64), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("owner_limits")
