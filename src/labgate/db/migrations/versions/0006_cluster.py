"""Cluster: a generation per gateway (bumped by every committed change), what each agent applied, agent heartbeats.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("forwards") as t:
        t.add_column(sa.Column("generation", sa.BigInteger, nullable=False, server_default="0"))
    op.create_table(
        "gateway_states",
        sa.Column("gateway", sa.String(32), primary_key=True),
        sa.Column("generation", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("applied_generation", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("agent", sa.String(128), nullable=True),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("external_address", sa.String(45), nullable=True),
        sa.Column("last_error", sa.String(1000), nullable=True),
        sa.Column("error_generation", sa.BigInteger, nullable=True),
    )
    op.create_table(
        "agents",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False, server_default=""),
        sa.Column("pid", sa.Integer, nullable=False, server_default="0"),
        sa.Column("version", sa.String(32), nullable=False, server_default=""),
        sa.Column("gateways", sa.JSON, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("interval", sa.Float, nullable=False, server_default="5"),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("agents")
    op.drop_table("gateway_states")
    with op.batch_alter_table("forwards") as t:
        t.drop_column("generation")
