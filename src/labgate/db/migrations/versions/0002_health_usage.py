"""Reachability of target addresses; per-forward port health and usage counters.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "address_health",
        sa.Column("gateway", sa.String(32), primary_key=True),
        sa.Column("address", sa.String(45), primary_key=True),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("rtt_ms", sa.Float, nullable=True),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_checked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "forward_state",
        sa.Column("forward_id", sa.Integer, sa.ForeignKey("forwards.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("port_state", sa.String(12), nullable=False),
        sa.Column("port_failures", sa.Integer, nullable=False),
        sa.Column("port_checked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("connections", sa.BigInteger, nullable=False),
        sa.Column("packets", sa.BigInteger, nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("raw_connections", sa.BigInteger, nullable=False),
        sa.Column("raw_packets", sa.BigInteger, nullable=False),
        sa.Column("raw_bytes", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("forward_state")
    op.drop_table("address_health")
