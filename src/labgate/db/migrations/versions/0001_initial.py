"""Initial schema: tokens, forwards, port allocations.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tokens",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False, index=True),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("admin", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked", sa.Boolean, nullable=False),
    )
    op.create_table(
        "forwards",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("gateway", sa.String(32), nullable=False, index=True),
        sa.Column("protocol", sa.String(3), nullable=False),
        sa.Column("external_port", sa.Integer, nullable=False),
        sa.Column("port_count", sa.Integer, nullable=False),
        sa.Column("target_address", sa.String(45), nullable=False),
        sa.Column("target_port", sa.Integer, nullable=False),
        sa.Column("name", sa.String(63), nullable=True),
        sa.Column("kind", sa.String(32), nullable=True),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("description", sa.String(255), nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("allowed_sources", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_forwards_owner_name", "forwards", ["owner", "name"])
    op.create_index("ix_forwards_target", "forwards", ["target_address", "target_port"])
    op.create_table(
        "port_allocations",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("gateway", sa.String(32), nullable=False),
        sa.Column("protocol", sa.String(3), nullable=False),
        sa.Column("port", sa.Integer, nullable=False),
        sa.Column("forward_id", sa.Integer, sa.ForeignKey("forwards.id", ondelete="CASCADE"), nullable=False, index=True),
        sa.UniqueConstraint("gateway", "protocol", "port", name="uq_port_allocation"),
    )


def downgrade() -> None:
    op.drop_table("port_allocations")
    op.drop_index("ix_forwards_target", "forwards")
    op.drop_index("ix_forwards_owner_name", "forwards")
    op.drop_table("forwards")
    op.drop_table("tokens")
