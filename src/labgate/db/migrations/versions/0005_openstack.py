"""OpenStack: forwards that follow a Neutron port, project-scoped tokens, and the routers served as gateways.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("forwards") as t:
        t.add_column(sa.Column("target_port_id", sa.String(36), nullable=True))
        t.add_column(sa.Column("target_server_id", sa.String(36), nullable=True))
        t.add_column(sa.Column("target_server_name", sa.String(255), nullable=True))
        t.add_column(sa.Column("orphaned_at", sa.DateTime(timezone=True), nullable=True))
        t.add_column(sa.Column("orphaned_reason", sa.String(255), nullable=True))
        t.create_index("ix_forwards_target_port_id", ["target_port_id"])
    with op.batch_alter_table("tokens") as t:
        t.add_column(sa.Column("project_id", sa.String(64), nullable=True))
    op.create_table(
        "cloud_routers",
        sa.Column("gateway", sa.String(32), primary_key=True),
        sa.Column("router_id", sa.String(36), nullable=False, unique=True),
        sa.Column("router_name", sa.String(255), nullable=False, server_default=""),
        sa.Column("project_id", sa.String(64), nullable=False, server_default=""),
        sa.Column("external_address", sa.String(45), nullable=True),
        sa.Column("target_networks", sa.JSON, nullable=False),
        sa.Column("port_range", sa.JSON, nullable=False),
        sa.Column("revision", sa.Integer, nullable=False, server_default="0"),
        sa.Column("gone_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_cloud_routers_project_id", "cloud_routers", ["project_id"])


def downgrade() -> None:
    op.drop_index("ix_cloud_routers_project_id", "cloud_routers")
    op.drop_table("cloud_routers")
    with op.batch_alter_table("tokens") as t:
        t.drop_column("project_id")
    with op.batch_alter_table("forwards") as t:
        t.drop_index("ix_forwards_target_port_id")
        for c in ("orphaned_reason", "orphaned_at", "target_server_name", "target_server_id", "target_port_id"):
            t.drop_column(c)
