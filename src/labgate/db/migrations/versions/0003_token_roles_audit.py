"""Token roles, lifetimes and client networks; the audit trail.

`tokens.admin` becomes `tokens.role` (admin tokens -> "admin", every other token -> "user"); tokens gain
`expires_at`, `allowed_networks` (CIDRs, NULL = anywhere), `last_used_at`, `created_by` and `revoked_at`.
`audit` holds one row per change (who, token, client address, when, action, object, before/after JSON); its ids are
never reused (AUTOINCREMENT on SQLite).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tokens") as batch:
        batch.add_column(sa.Column("role", sa.String(16), nullable=False, server_default="user"))
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("allowed_networks", sa.JSON, nullable=True))
        batch.add_column(sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("created_by", sa.String(64), nullable=True))
        batch.add_column(sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True))
    op.execute(sa.text("UPDATE tokens SET role = CASE WHEN admin THEN 'admin' ELSE 'user' END"))
    with op.batch_alter_table("tokens") as batch:
        batch.drop_column("admin")

    op.create_table(
        "audit",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("token_id", sa.Integer, nullable=True),
        sa.Column("client", sa.String(64), nullable=True),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("object_type", sa.String(16), nullable=False),
        sa.Column("object_id", sa.Integer, nullable=True),
        sa.Column("before", sa.Text, nullable=True),
        sa.Column("after", sa.Text, nullable=True),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_audit_time", "audit", ["time"])
    op.create_index("ix_audit_actor", "audit", ["actor"])
    op.create_index("ix_audit_action", "audit", ["action"])
    op.create_index("ix_audit_object", "audit", ["object_type", "object_id"])


def downgrade() -> None:
    op.drop_index("ix_audit_object", "audit")
    op.drop_index("ix_audit_action", "audit")
    op.drop_index("ix_audit_actor", "audit")
    op.drop_index("ix_audit_time", "audit")
    op.drop_table("audit")
    with op.batch_alter_table("tokens") as batch:
        batch.add_column(sa.Column("admin", sa.Boolean, nullable=False, server_default=sa.false()))
    op.execute(sa.text("UPDATE tokens SET admin = (role = 'admin')"))
    with op.batch_alter_table("tokens") as batch:
        batch.drop_column("revoked_at")
        batch.drop_column("created_by")
        batch.drop_column("last_used_at")
        batch.drop_column("allowed_networks")
        batch.drop_column("expires_at")
        batch.drop_column("role")
